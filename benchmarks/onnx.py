"""CPU speed of ONNX Runtime against the frameworks, measured side by side in one run.

Keras digits CNN: TensorFlow (eager call, compiled tf.function) vs ONNX Runtime.
YOLO11n (the course detector): PyTorch vs ONNX Runtime fp32 vs ONNX Runtime int8 (dynamic), same image size.
Latency at batch 1 and throughput at a larger batch (32 by default); runners are timed in turns after a
warm-up, medians are compared as ratios. Prints a table and JSON (also written with --out).
Idle threads sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE for PyTorch, no spinning in ONNX Runtime), so that
one runtime's waiting threads do not steal the cores of the runtime timed next.

    python benchmarks/onnx.py [--threads 2] [--repeat 30] [--yolo_repeat 10] [--batch 32] [--out onnx.json]
"""
import argparse, json, os, platform, sys, tempfile, time
from pathlib import Path
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')   # before PyTorch loads OpenMP

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or '.').resolve() != HERE]   # this file is onnx.py: do not shadow the onnx package
sys.path.insert(0, str(HERE.parent))
from labkit.onnx_deploy import *            # noqa: E402  (numpy, Pillow, onnxruntime only at import)
from labkit.core import digits_data         # noqa: E402


def markdown_table(df) -> str:
    "A pandas DataFrame as a GitHub markdown table"
    cols = list(df.columns)
    lines = ['| ' + ' | '.join(cols) + ' |', '|' + '|'.join('---' for _ in cols) + '|']
    lines += ['| ' + ' | '.join(str(v) for v in row) + ' |' for row in df.itertuples(index=False)]
    return '\n'.join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--threads', type=int, default=2, help='threads per operator, for every runtime')
    p.add_argument('--repeat', type=int, default=30, help='timed calls per runner (Keras)')
    p.add_argument('--yolo_repeat', type=int, default=10, help='timed calls per runner (YOLO)')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--batch', type=int, default=32, help='batch size for throughput')
    p.add_argument('--imgsz', type=int, default=320)
    p.add_argument('--out', default=None, help='write the JSON here too')
    a = p.parse_args(argv)

    tf = import_tensorflow()                               # core's import hook loads triton first (see 00_core)
    tf.config.threading.set_intra_op_parallelism_threads(a.threads)
    import torch
    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix='onnx_bench_'))
    t0 = time.perf_counter()

    X_train, X_test, y_train, y_test = digits_data(shape='image')
    cnn = train_digits_cnn(X_train, y_train, epochs=10)
    cnn_onnx = keras_to_onnx(cnn, work/'digits_cnn.onnx')
    parity = keras_onnx_parity(cnn, cnn_onnx, X_test)
    rows = benchmark_rows('digits CNN', keras_runners(cnn, cnn_onnx, threads=a.threads),
                          {1: X_test[:1], a.batch: X_test[:a.batch]}, warmup=a.warmup, repeat=a.repeat)

    weights = course_detector_weights()
    fp32 = {b: export_yolo_onnx(weights, work/f'detector_b{b}.onnx', imgsz=a.imgsz, batch=b) for b in (1, a.batch)}
    int8 = {b: quantize_int8(f, work/f'detector_b{b}_int8.onnx') for b, f in fp32.items()}
    scenes = heldout_scenes(work/'scenes', n=a.batch)
    batch = to_input([letterbox(load_rgb(s), a.imgsz)[0] for s in scenes])
    runners = yolo_runners(weights, {'onnxruntime fp32': fp32, 'onnxruntime int8': int8}, threads=a.threads)
    rows += benchmark_rows(f'YOLO11n {a.imgsz}', runners, {1: batch[:1], a.batch: batch},
                           warmup=a.warmup, repeat=a.yolo_repeat)

    table = speed_table(rows, {'digits CNN': 'tensorflow tf.function', f'YOLO11n {a.imgsz}': 'pytorch'})
    eager = {b: float(table[(table.runtime == 'tensorflow eager') & (table.batch == b)]['ms per batch'].iloc[0]) for b in (1, a.batch)}
    table['vs TF eager'] = [round(eager[b] / ms, 2) if m == 'digits CNN' else '' for m, b, ms in
                            zip(table.model, table.batch, table['ms per batch'])]
    result = {'machine': {'cpu_count': os.cpu_count(), 'platform': platform.platform(), 'python': platform.python_version(),
                          'load_average': os.getloadavg()},
              'settings': vars(a), 'keras_parity': parity, 'seconds': round(time.perf_counter() - t0, 1),
              'rows': table.to_dict(orient='records')}
    print(markdown_table(table))
    print(json.dumps(result, indent=1, default=str))
    if a.out: Path(a.out).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == '__main__':
    sys.exit(main())
