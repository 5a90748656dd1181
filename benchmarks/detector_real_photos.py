"""False detections on held-out real photos and held-out synthetic mAP50: the synthetic-only detector (stage 1)
beside the shipped one, fine-tuned with real-photo backgrounds and negatives (stage 2).

Run from the repository root:  python benchmarks/detector_real_photos.py [--conf 0.25] [--n-scenes 500] [--device cpu]
The 25 held-out photos (ultralytics' bus.jpg and zidane.jpg, scikit-image's astronaut, coffee and chelsea, and the
20 Debian desktop backgrounds copied into data/yolo/heldout/) were never trained on; they show none of the five
shapes, so every box on them is false. Each photo is also cut into 2x2 and 3x3 tiles and mirrored: 28 views a photo. Synthetic mAP50 is measured on scenes drawn with the held-out seed.
Prints one JSON object per detector, then a table.
"""
import argparse, json
from pathlib import Path

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--conf', type=float, default=0.25, help='confidence threshold (the default of labkit detect)')
    ap.add_argument('--n-scenes', type=int, default=500, help='held-out synthetic scenes for mAP50')
    ap.add_argument('--device', default='cpu')
    args = ap.parse_args()
    from labkit.core import asset, sha256_file
    from labkit.docker_yolo import (SYNTHETIC_ASSET, WEIGHTS_ASSET, HELDOUT_PHOTOS, HELDOUT_ASSET, photo_file, heldout_photos,
                                    false_detections, evaluate_detector)
    copies = {r['source']: r['sha256'] for r in json.loads(asset(HELDOUT_ASSET).read_text())}
    print(json.dumps({'heldout_photos': {s: sha256_file(photo_file(s)) for s in HELDOUT_PHOTOS} | copies}), flush=True)
    photos, rows = heldout_photos(), []
    for stage, name in (('stage 1: synthetic only', SYNTHETIC_ASSET), ('stage 2: + real photos (shipped)', WEIGHTS_ASSET)):
        weights = str(asset(name))
        fd = false_detections(weights, photos, conf=args.conf, device=args.device)
        ev = evaluate_detector(weights, n_images=args.n_scenes, device=args.device)
        row = {'stage': stage, 'weights': name, 'sha256': sha256_file(weights), 'false_per_photo': fd['per_photo'],
               'false_per_view': fd['per_view'], 'photos': fd['photos'], 'views': fd['views'], 'conf': args.conf,
               'synthetic_map50': ev['map50'], 'n_scenes': ev['n_images'],
               'per_photo': {r['photo']: [r['whole'], r['in_views']] for r in fd['rows']}}
        rows.append(row); print(json.dumps(row), flush=True)
    print(f"\n{'detector':<34} {'false/photo':>11} {'false/view':>10} {'synthetic mAP50':>15}")
    for r in rows: print(f"{r['stage']:<34} {r['false_per_photo']:>11} {r['false_per_view']:>10} {r['synthetic_map50']:>15}")
    print(f"({rows[0]['photos']} held-out photos, {rows[0]['views']} views, conf {args.conf}; "
          f"{rows[0]['n_scenes']} held-out synthetic scenes)")

if __name__ == '__main__': main()
