"""Quantization benchmark: the CNN of the quantization lab (sklearn digits), converted five ways, compared in one run.

Trains the float model, converts it to float32, dynamic-range, float16 and full-integer int8 TensorFlow Lite
files, fine-tunes a quantization-aware copy and converts it to int8, then measures every file side by side
(size, held-out accuracy, CPU time per image with LiteRT's XNNPACK and built-in kernels). Prints the result
as JSON, then as a table. `LABKIT_FAST=1` runs the small configuration used under test.

    python benchmarks/quantization.py [--epochs 30] [--qat-epochs 5] [--seed 0] [--json out.json] [--save-dir dir]
"""
import argparse, json, os, platform, sys, time
from pathlib import Path
from importlib import metadata

from labkit.quantization import run_quantization_project


def _cpu_name() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--epochs', type=int, default=None, help='float training epochs (default 30, 8 in fast mode)')
    p.add_argument('--qat-epochs', type=int, default=None, help='QAT fine-tuning epochs (default 5, 2 in fast mode)')
    p.add_argument('--representative', type=int, default=None, help='calibration images for int8 PTQ (default 300, 100 in fast mode)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', type=Path, default=None, help='also write the JSON to this file')
    p.add_argument('--save-dir', type=Path, default=None, help='write the five .tflite files here')
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    result = run_quantization_project(args.epochs, args.qat_epochs, args.representative, args.seed)
    seconds = time.perf_counter() - t0
    table = result['table']
    report = {'benchmark': 'quantization', 'settings': result['settings'], 'seconds': round(seconds, 1),
              'environment': {'cpu': _cpu_name(), 'cores': os.cpu_count(), 'python': platform.python_version(),
                              **{k: metadata.version(k) for k in ('tensorflow', 'tf-keras', 'tensorflow-model-optimization', 'ai-edge-litert')}},
              'keras_accuracy': result['keras_accuracy'], 'goals': result['goals'], 'models': table.to_dict(orient='records')}
    text = json.dumps(report, indent=1)
    print(text)
    if args.json: args.json.write_text(text + '\n')
    if args.save_dir:
        args.save_dir.mkdir(parents=True, exist_ok=True)
        for name, content in result['models'].items(): (args.save_dir/f"{name.replace(' ', '_')}.tflite").write_bytes(content)
    print()
    print(table.to_string(index=False))
    print()
    for goal, met in result['goals']['met'].items(): print(f"{'met ' if met else 'MISSED'} {goal}")
    return 0


if __name__ == '__main__': sys.exit(main())
