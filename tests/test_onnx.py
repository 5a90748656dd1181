"""ONNX lab: what the notebook cannot prove in its own process.

- the deployable detector runs in an interpreter that has only numpy, Pillow and onnxruntime (a bare virtual
  environment), imports neither PyTorch nor ultralytics, and its boxes agree with ultralytics' own;
- the Keras -> ONNX parity holds on the held-out digits;
- the `labkit onnx-detect` command, fuzzed with awkward folders (a tiny torch-free model), and its output rules;
- `labkit onnx-export` refuses weights whose sha256 is not on record.
"""
import contextlib
import importlib.metadata as md
import io
import json
import os
import signal
import subprocess
import tempfile
import venv
from pathlib import Path
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

import labkit.onnx_deploy as od
from labkit.core import EXIT_ERROR, EXIT_OK, EXIT_SKIPPED, digits_data, discover_files, sha256_file
from hostile_inputs import evil_pt, huge_png_header

from labkit.onnx_deploy import (EDGE_STACK, HEAVY_MODULES, box_agreement, course_detector_weights,
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
    X_train, X_test, y_train, y_test = digits_data(shape='image')
    model = train_digits_cnn(X_train, y_train, epochs=3)
    parity = keras_onnx_parity(model, keras_to_onnx(model), X_test)
    assert parity['n'] == len(X_test)
    assert parity['max_abs_diff'] <= 1e-4 and parity['argmax_agreement'] == 1.0, parity


def test_detect_command(detector, tmp_path):
    from conftest import labkit_cmd
    model, scenes, _ = detector
    run = subprocess.run(labkit_cmd('onnx-detect', scenes[0].parent, tmp_path/'out', model),
                         capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert run.returncode == EXIT_SKIPPED, run.stderr               # labels.json beside the scenes: reported
    assert 'skipped labels.json: not an image file' in run.stderr and 'Traceback' not in run.stderr
    found = json.loads((tmp_path/'out'/'detections.json').read_text())
    assert sorted(found) == sorted(p.name for p in scenes)
    assert all({'class', 'name', 'score', 'box'} <= set(d) for ds in found.values() for d in ds)


# --- onnx-detect on awkward folders: outputs apart from SRC, every input processed or reported --------------------
# A tiny YOLO-shaped model keeps these tests fast and torch-free; the decoding path is the real one.


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory) -> Path:
    "A YOLO-shaped ONNX detector: 1x3x32x32 in, 1x(4+2)x16 out (boxes in pixels, two class scores), fixed weights"
    from onnx import TensorProto, helper, numpy_helper, save
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.05, (6, 3, 8, 8)).astype(np.float32), 'w'),
             numpy_helper.from_array(np.array([1, 6, 16], np.int64), 'shape'),
             numpy_helper.from_array(np.array([32, 32, 16, 16, 1, 1], np.float32).reshape(1, 6, 1), 'k')]
    nodes = [helper.make_node('Conv', ['images', 'w'], ['c'], strides=[8, 8]),
             helper.make_node('Reshape', ['c', 'shape'], ['r']), helper.make_node('Sigmoid', ['r'], ['s']),
             helper.make_node('Mul', ['s', 'k'], ['output0'])]
    graph = helper.make_graph(nodes, 'tiny', [helper.make_tensor_value_info('images', TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info('output0', TensorProto.FLOAT, [1, 6, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)])
    model.ir_version = 8
    helper.set_model_props(model, {'names': "{0: 'a', 1: 'b'}"})
    path = tmp_path_factory.mktemp('tiny')/'tiny.onnx'
    save(model, str(path))
    return path


def _png(size=(16, 12)) -> bytes:
    import io
    buf = io.BytesIO(); Image.new('RGB', size, (200, 30, 90)).save(buf, 'PNG'); return buf.getvalue()

def _jpg() -> bytes:
    import io
    buf = io.BytesIO(); Image.new('RGB', (16, 16), (20, 130, 90)).save(buf, 'JPEG'); return buf.getvalue()

def _tree(folder:Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file() and not p.is_symlink()}

KINDS = ('png', 'jpg', 'random', 'truncated jpg', 'truncated png', 'zero', 'text', 'dangling', 'loop', 'link', 'huge')

def _make(path:Path, kind:str, noise:bytes):
    "One folder entry of a kind"
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == 'dangling': path.symlink_to(path.with_name('nowhere'))
    elif kind == 'loop': path.symlink_to(path)
    elif kind == 'link': (path.parent/'_linked.png').write_bytes(_png()); path.symlink_to(path.parent/'_linked.png')
    elif kind == 'huge': huge_png_header(path)
    else: path.write_bytes({'png': _png(), 'jpg': _jpg(), 'random': noise, 'truncated jpg': _jpg()[:len(noise) + 20],
                            'truncated png': _png()[:len(noise) + 20], 'zero': b'', 'text': b'a text file\n'}[kind])

entries = st.lists(st.tuples(st.sampled_from(['', 'sub/', 'sub/deeper/', '.hidden_dir/']), st.sampled_from(KINDS),
                             st.sampled_from(['.jpg', '.png', '.txt', '']), st.booleans(), st.binary(max_size=64)),
                   min_size=1, max_size=6)

DECODABLE = ('png', 'jpg', 'link')

@settings(max_examples=40, deadline=None)
@given(entries)
def test_fuzz_image_folders_never_crash(tiny_model, spec):
    "Random folders through discovery and `labkit onnx-detect`: each entry is processed or reported, SRC untouched"
    with tempfile.TemporaryDirectory() as tmp:
        src, dst, must = Path(tmp)/'src', Path(tmp)/'dst', set()
        made = set()
        for k, (folder, kind, suffix, hidden, noise) in enumerate(spec):
            rel = f"{folder}{'.' if hidden else ''}f{k}{suffix}"
            _make(src/rel, kind, noise); made.add(rel)
            visible = not hidden and not folder.startswith('.')
            if visible and kind in DECODABLE and suffix in ('.jpg', '.png'): must.add(rel)
            if kind == 'link': made.add(f"{folder}_linked.png"); must |= {f"{folder}_linked.png"} if visible else set()
        before = _tree(src)
        files, skipped = discover_files(src)
        in_hidden_dir = {r for r in made if r.startswith('.hidden_dir/')}
        assert {f.as_posix() for f in files} | {f for f, _ in skipped} == (made - in_hidden_dir) | ({'.hidden_dir'} if in_hidden_dir else set())
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = od.onnx_detect_cli(str(src), str(dst), str(tiny_model), device='cpu', annotate=True)
        assert _tree(src) == before
        if rc == 2:                                   # no image at all: said so, with every entry passed over
            assert not must and all(f in err.getvalue() for f, _ in skipped); return
        assert rc in (EXIT_OK, EXIT_SKIPPED), err.getvalue()
        detected = set(json.loads((dst/'detections.json').read_text()))
        reported = {line.split(': ')[1].removeprefix('skipped ') for line in err.getvalue().splitlines() if ': skipped ' in line}
        assert must <= detected and detected | reported == {f.as_posix() for f in files} | {f for f, _ in skipped}
        assert (rc == EXIT_SKIPPED) == bool(reported)


def _scenes(folder:Path, n:int=3) -> Path:
    folder.mkdir(parents=True)
    for i in range(n): Image.new('RGB', (40, 30), (60 * i, 90, 200)).save(folder/f'scene_{i}.png')
    return folder

def test_onnx_detect_never_writes_over_src(tiny_model, tmp_path):
    src = _scenes(tmp_path/'od')
    before = _tree(src)
    for dst in (src, src/'out', tmp_path):
        assert od.onnx_detect_cli(str(src), str(dst), str(tiny_model), device='cpu', annotate=True) == EXIT_ERROR
    assert od.onnx_detect_cli(str(src/'scene_0.png'), str(src), str(tiny_model), device='cpu', annotate=True) == EXIT_ERROR
    assert _tree(src) == before and sorted(p.name for p in tmp_path.iterdir()) == ['od']

def test_onnx_detect_reports_a_zero_byte_image_and_goes_on(tiny_model, tmp_path, capsys):
    src = _scenes(tmp_path/'in', n=2)
    (src/'empty.jpg').write_bytes(b'')
    assert od.onnx_detect_cli(str(src), str(tmp_path/'out'), str(tiny_model), device='cpu') == EXIT_SKIPPED
    assert sorted(json.loads((tmp_path/'out'/'detections.json').read_text())) == ['scene_0.png', 'scene_1.png']
    assert 'skipped empty.jpg: cannot decode: not an image' in capsys.readouterr().err

def test_onnx_detect_stopped_rerun_leaves_previous_outputs(tiny_model, tmp_path, monkeypatch):
    src, out = _scenes(tmp_path/'in'), tmp_path/'out'
    assert od.onnx_detect_cli(str(src), str(out), str(tiny_model), device='cpu', annotate=True) == EXIT_OK
    before = _tree(out)
    real, seen = od.load_rgb, []
    def load_then_sigterm(image):
        seen.append(image)
        if len(seen) == 2: os.kill(os.getpid(), signal.SIGTERM)
        return real(image)
    monkeypatch.setattr(od, 'load_rgb', load_then_sigterm)
    assert od.onnx_detect_cli(str(src), str(out), str(tiny_model), device='cpu', annotate=True, overwrite=True) == 128 + signal.SIGTERM
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ['in', 'out']

def test_onnx_export_refuses_unchecked_weights(tmp_path):
    marker = tmp_path/'ran'
    evil = evil_pt(tmp_path/'evil.pt', marker)
    assert od.export_onnx_cli(str(tmp_path/'o.onnx'), weights=str(evil)) == EXIT_ERROR
    assert od.export_onnx_cli(str(tmp_path/'o.onnx'), weights=str(evil), weights_sha256=sha256_file(evil)) == EXIT_ERROR
    assert not marker.exists() and not (tmp_path/'o.onnx').exists()
