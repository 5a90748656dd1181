"""ONNX lab: what the notebook cannot prove in its own process.

- the deployable detector runs in an interpreter that has only numpy, Pillow and onnxruntime (a bare virtual
  environment), imports neither PyTorch nor ultralytics, and its boxes agree with ultralytics' own;
- the Keras -> ONNX parity holds on the held-out digits;
- the `labkit onnx-detect` command.
"""
import importlib.metadata as md
import json
import os
import subprocess
import venv
from pathlib import Path
import pytest

from labkit.onnx_deploy import (EDGE_STACK, HEAVY_MODULES, box_agreement, course_detector_weights, digits_images,
                                distribution_closure, export_yolo_onnx, heldout_scenes, keras_onnx_parity,
                                keras_to_onnx, run_edge_probe, train_digits_cnn, ultralytics_detections)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def detector(tmp_path_factory):
    "The course detector exported to ONNX, a few held-out scenes, and ultralytics' detections on them"
    tmp = tmp_path_factory.mktemp('onnx')
    weights = course_detector_weights()
    model = export_yolo_onnx(weights, tmp/'detector.onnx', imgsz=320)
    scenes = heldout_scenes(tmp/'scenes', n=8)
    return model, scenes, ultralytics_detections(weights, scenes, imgsz=320, conf=0.25)


def _bare_env(folder:Path) -> Path:
    """A virtual environment (no pip, no system site-packages) that sees only the edge stack:
    the installed files of numpy, Pillow, onnxruntime-gpu and their dependencies, linked into one folder"""
    venv.EnvBuilder(with_pip=False, system_site_packages=False, symlinks=True).create(folder)
    python = folder/'bin'/'python'
    site = Path(subprocess.run([str(python), '-c', 'import site; print(site.getsitepackages()[0])'],
                               capture_output=True, text=True, check=True).stdout.strip())
    lib = folder/'edge_stack'
    for name in distribution_closure(EDGE_STACK):             # mirror each installed file as a link
        for f in md.distribution(name).files or []:
            if str(f).startswith('..'): continue               # scripts installed outside site-packages
            src, dst = Path(f.locate()), lib/str(f)
            if src.is_file() and not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True); dst.symlink_to(src)
    (site/'edge_stack.pth').write_text(str(lib) + '\n')
    return python


def test_edge_detector_runs_in_bare_env_and_agrees_with_ultralytics(detector, tmp_path):
    model, scenes, reference = detector
    python = _bare_env(tmp_path/'venv')
    probe = run_edge_probe(model, scenes, python=str(python))
    assert probe['installed'] == [], f"the bare environment should not even contain {probe['installed']}"
    assert probe['imported'] == []
    agree = box_agreement(reference, probe['detections'])
    assert agree['reference_boxes'] > 0
    assert agree['agreement'] >= 0.95, agree


def test_edge_detector_imports_no_heavy_module(detector):
    model, scenes, _ = detector
    probe = run_edge_probe(model, scenes[:2])           # this environment has torch and ultralytics installed
    assert 'torch' in probe['installed'] and 'ultralytics' in probe['installed']
    assert not set(probe['imported']) & set(HEAVY_MODULES), probe['imported']


def test_keras_onnx_parity():
    X_train, X_test, y_train, y_test = digits_images()
    model = train_digits_cnn(X_train, y_train, epochs=3)
    parity = keras_onnx_parity(model, keras_to_onnx(model), X_test)
    assert parity['n'] == len(X_test)
    assert parity['max_abs_diff'] <= 1e-4 and parity['argmax_agreement'] == 1.0, parity


def test_detect_command(detector, tmp_path):
    from conftest import labkit_cmd
    model, scenes, _ = detector
    run = subprocess.run(labkit_cmd('onnx-detect', scenes[0].parent, tmp_path/'out', model),
                         capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert run.returncode == 0, run.stderr
    found = json.loads((tmp_path/'out'/'detections.json').read_text())
    assert sorted(found) == sorted(p.name for p in scenes)
    assert all({'class', 'name', 'score', 'box'} <= set(d) for ds in found.values() for d in ds)
