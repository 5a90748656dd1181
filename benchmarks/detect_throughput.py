"""Throughput of `detect_dir` on the CPU: a folder of 200 scenes with one corrupt file, at several batch sizes.

Run from the repository root:  python benchmarks/detect_throughput.py [--n 200] [--batches 1,8,16] [--device cpu]
Prints one JSON object per configuration, then a table. All configurations run side by side in one process, on the
same folder, so their ratios are comparable even on a busy machine; the absolute figures are this machine's.
"""
import argparse, json, os, shutil, tempfile, time
from pathlib import Path

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=200, help='scenes in the folder (one corrupt file is added)')
    ap.add_argument('--batches', default='1,8,16', help='batch sizes to compare')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: torch default)')
    args = ap.parse_args()
    from labkit.docker_yolo import make_image_folder, detect_dir
    import torch
    if args.threads: torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix='labkit-bench-'))
    try:
        src = make_image_folder(work/'images', n=args.n, corrupt=1)
        detect_dir(src, work/'warmup', device=args.device, show_progress=False)   # model load, first-call costs
        rows = []
        for batch in map(int, args.batches.split(',')):
            t0 = time.perf_counter()
            rep = detect_dir(src, work/f'out-b{batch}', device=args.device, batch=batch, show_progress=False)
            wall = time.perf_counter() - t0
            row = {'batch': batch, 'images': rep.images, 'skipped': len(rep.skipped), 'detections': rep.detections,
                   'seconds': round(wall, 2), 'images_per_s': round(rep.images / wall, 2), 'device': rep.device,
                   'torch_threads': torch.get_num_threads(), 'cpus': os.cpu_count()}
            rows.append(row); print(json.dumps(row), flush=True)
        print(f"\n{'batch':>5} {'images':>6} {'skipped':>7} {'seconds':>8} {'images/s':>9}")
        for r in rows: print(f"{r['batch']:>5} {r['images']:>6} {r['skipped']:>7} {r['seconds']:>8} {r['images_per_s']:>9}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

if __name__ == '__main__': main()
