"`labkit detect` and `labkit train-detector` from the command line: exit status, outputs, messages, weights checked, inputs kept safe"
import csv
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
import pytest

pytest.importorskip('ultralytics')
from labkit.docker_yolo import make_image_folder, SHAPE_CLASSES, EXIT_OK, EXIT_ERROR, EXIT_SKIPPED

from labkit.core import sha256_file, data_dir
from conftest import labkit_cmd
from hostile_inputs import evil_pt, huge_png_header

def labkit(*args):
    "Run the `labkit` console script of this environment"
    return subprocess.run(labkit_cmd(*args), capture_output=True, text=True, timeout=600)

@pytest.fixture(scope='module')
def images(tmp_path_factory):
    root = make_image_folder(tmp_path_factory.mktemp('in')/'images', n=6, corrupt=1)
    (root/'notes.txt').write_text('not an image')
    return root

def test_folder_with_a_corrupt_file(images, tmp_path):
    out = tmp_path/'out'
    r = labkit('detect', images, out, '--device', 'cpu', '--quiet')
    assert r.returncode == EXIT_SKIPPED, r.stderr
    assert 'broken_0.jpg' in r.stderr and 'notes.txt' in r.stderr
    annotated = sorted(p.relative_to(out).as_posix() for p in out.rglob('scene_*'))
    assert annotated == sorted(p.relative_to(images).as_posix() for p in images.rglob('scene_*'))
    rows = list(csv.DictReader(open(out/'detections.csv')))
    assert rows and {r['class'] for r in rows} <= set(SHAPE_CLASSES)
    assert set(rows[0]) == {'file', 'class', 'confidence', 'x0', 'y0', 'x1', 'y1'}
    summary = json.loads((out/'summary.json').read_text())
    assert summary['images'] == 6 and [f for f, _ in summary['skipped']] == ['broken_0.jpg', 'notes.txt']

def test_shipped_detector_note(images, tmp_path):
    "The shipped detector's classes and the way to official weights, said once on stderr; not said for other weights"
    r = labkit('detect', images, tmp_path/'out', '--device', 'cpu', '--quiet')
    note = [line for line in r.stderr.splitlines() if 'knows only' in line]
    assert len(note) == 1, r.stderr
    assert all(c in note[0] for c in SHAPE_CLASSES) and '--weights /path/to/yolo11n.pt' in note[0], note
    mine = tmp_path/'mine.pt'; shutil.copyfile(data_dir()/'yolo'/'shapes_yolo11n.pt', mine)
    r = labkit('detect', images, tmp_path/'o2', '--weights', mine, '--weights-sha256', sha256_file(mine), '--device', 'cpu', '--quiet')
    assert r.returncode == EXIT_SKIPPED and 'knows only' not in r.stderr, r.stderr[-2000:]

def test_clean_folder_exits_zero(tmp_path):
    src = make_image_folder(tmp_path/'clean', n=2, corrupt=0)
    assert labkit('detect', src, tmp_path/'out', '--device', 'cpu', '--quiet').returncode == EXIT_OK

@pytest.mark.parametrize('case, message', [('missing', 'does not exist'), ('empty', 'holds no files'),
                                           ('inside', 'inside SRC'), ('occupied', 'already holds files')])
def test_bad_src_or_dst(images, tmp_path, case, message):
    (tmp_path/'empty').mkdir(); (tmp_path/'occupied').mkdir(); (tmp_path/'occupied'/'old.jpg').write_bytes(b'x')
    src, dst = {'missing': (tmp_path/'nowhere', tmp_path/'o'), 'empty': (tmp_path/'empty', tmp_path/'o'),
                'inside': (images, images/'out'), 'occupied': (images, tmp_path/'occupied')}[case]
    r = labkit('detect', src, dst, '--device', 'cpu', '--quiet')
    assert r.returncode == EXIT_ERROR and message in r.stderr
    assert not (images/'out').exists()

def test_overwrite_replaces(images, tmp_path):
    out = tmp_path/'out'
    assert labkit('detect', images, out, '--device', 'cpu', '--quiet').returncode == EXIT_SKIPPED
    assert labkit('detect', images, out, '--device', 'cpu', '--quiet', '--overwrite').returncode == EXIT_SKIPPED

def test_official_weights_offline(images, tmp_path):
    r = labkit('detect', images, tmp_path/'out', '--weights', 'yolo11n.pt', '--quiet')
    assert r.returncode == EXIT_ERROR and 'need a download' in r.stderr

def test_train_detector_help():
    r = labkit('train-detector', '--help')
    assert r.returncode == 0 and '--epochs' in r.stdout and '--register' in r.stdout
    assert 'real_backgrounds' in r.stdout.replace('-', '_') and 'n_negatives' in r.stdout.replace('-', '_')


# --- weights that could run code: hash-checked wherever they come from ------------------------------------------

@pytest.fixture
def tampered_data(tmp_path):
    "A copy of the data folder whose shipped detector was replaced by a pickle payload"
    data = tmp_path/'data'
    shutil.copytree(data_dir(), data)
    evil_pt(data/'yolo'/'shapes_yolo11n.pt', tmp_path/'ran')
    return data

@pytest.mark.parametrize('how', ['shipped path', 'shipped name', 'path outside', 'sha256 given', 'onnx-export'])
def test_tampered_weights_never_run(images, tmp_path, tampered_data, how):
    marker = tmp_path/'ran'
    outside = evil_pt(tmp_path/'elsewhere'/'best.pt', marker)
    args = {'shipped path': ['detect', images, tmp_path/'o', '--weights', tampered_data/'yolo'/'shapes_yolo11n.pt'],
            'shipped name': ['detect', images, tmp_path/'o', '--weights', 'shapes'],
            'path outside': ['detect', images, tmp_path/'o', '--weights', outside],
            'sha256 given': ['detect', images, tmp_path/'o', '--weights', outside, '--weights-sha256', sha256_file(outside)],
            'onnx-export': ['onnx-export', tmp_path/'o.onnx', '--weights', outside]}[how]
    r = subprocess.run(labkit_cmd(*args, *(['--device', 'cpu', '--quiet'] if args[0] == 'detect' else [])),
                       capture_output=True, text=True, timeout=600, env={**os.environ, 'LABKIT_DATA': str(tampered_data)})
    assert not marker.exists(), f"the pickle payload ran ({how})"
    assert r.returncode == EXIT_ERROR, (r.returncode, r.stderr[-2000:])
    assert 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert {'shipped path': 'refusing to load', 'shipped name': 'refusing to load', 'path outside': '--weights-sha256',
            'sha256 given': 'error', 'onnx-export': '--weights-sha256'}[how] in r.stderr, r.stderr[-2000:]
    assert not (tmp_path/'o').exists() and not (tmp_path/'o.onnx').exists()

def test_own_weights_load_with_their_sha256(tmp_path):
    src = make_image_folder(tmp_path/'in', n=1, corrupt=0)
    mine = tmp_path/'mine'/'best.pt'; mine.parent.mkdir(); shutil.copyfile(data_dir()/'yolo'/'shapes_yolo11n.pt', mine)
    r = labkit('detect', src, tmp_path/'out', '--weights', mine, '--weights_sha256', sha256_file(mine), '--device', 'cpu', '--quiet')
    assert r.returncode == EXIT_OK, r.stderr[-2000:]
    assert json.loads((tmp_path/'out'/'summary.json').read_text())['images'] == 1

def test_missing_manifest_is_an_error(images, tmp_path):
    data = tmp_path/'data'; shutil.copytree(data_dir(), data); (data/'manifest.json').unlink()
    r = subprocess.run(labkit_cmd('detect', images, tmp_path/'o', '--device', 'cpu', '--quiet'), capture_output=True,
                       text=True, timeout=600, env={**os.environ, 'LABKIT_DATA': str(data)})
    assert r.returncode == EXIT_ERROR and 'manifest.json is missing' in r.stderr and 'Restore it' in r.stderr, r.stderr[-2000:]


# --- outputs never touch SRC; they are whole or absent -----------------------------------------------------------
def _tree(folder:Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}

@pytest.mark.parametrize('where', ['holds SRC', 'is SRC', 'inside SRC'])
def test_output_never_overlaps_src(tmp_path, where):
    p = tmp_path/'p'
    src = make_image_folder(p/'in', n=2, corrupt=0)
    shutil.copytree(src/'park', src/'in')             # so that DST=p would write p/in/scene_0000.png over a source
    (p/'summary.json').write_text('{}')               # DST looks like an earlier run's, as --overwrite asks
    before = _tree(p)
    dst = {'holds SRC': p, 'is SRC': src, 'inside SRC': src/'out'}[where]
    r = labkit('detect', src, dst, '--device', 'cpu', '--quiet', '--overwrite')
    assert r.returncode == EXIT_ERROR, r.stderr[-2000:]
    assert where.split()[0] in r.stderr and 'Traceback' not in r.stderr
    assert _tree(p) == before

def test_dst_under_a_file(images, tmp_path):
    (tmp_path/'a_file').write_text('x')
    r = labkit('detect', images, tmp_path/'a_file'/'out', '--device', 'cpu', '--quiet')
    assert r.returncode == EXIT_ERROR and 'is a file, not a folder' in r.stderr and 'Traceback' not in r.stderr

def test_overwrite_needs_an_earlier_runs_folder(images, tmp_path):
    (tmp_path/'mine').mkdir(); (tmp_path/'mine'/'thesis.txt').write_text('keep me')
    r = labkit('detect', images, tmp_path/'mine', '--device', 'cpu', '--quiet', '--overwrite')
    assert r.returncode == EXIT_ERROR and 'not an earlier run' in r.stderr
    assert (tmp_path/'mine'/'thesis.txt').read_text() == 'keep me'

def _consistent(out:Path):
    "detections.csv, summary.json and the annotated images describe the same run"
    summary = json.loads((out/'summary.json').read_text())
    annotated = {p.relative_to(out).as_posix() for p in out.rglob('scene_*')}
    rows = list(csv.DictReader(open(out/'detections.csv')))
    assert len(annotated) == summary['images'] and {r['file'] for r in rows} <= annotated
    assert len(rows) == summary['detections']
    return summary

def test_stopped_rerun_leaves_previous_outputs_whole(images, tmp_path, monkeypatch):
    import labkit.docker_yolo as dy
    out = tmp_path/'out'
    assert dy.detect_cli(str(images), str(out), device='cpu', quiet=True) == EXIT_SKIPPED
    before = _tree(out)
    real, written = dy._write_image, []
    def write_then_sigterm(path, bgr):                 # docker stop, after two images of the re-run
        real(path, bgr); written.append(path)
        if len(written) == 2: os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(dy, '_write_image', write_then_sigterm)
    assert dy.detect_cli(str(images), str(out), device='cpu', quiet=True, overwrite=True) == 128 + signal.SIGTERM
    assert len(written) == 2
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out']   # no half-built folder left beside it
    _consistent(out)

def test_smaller_rerun_leaves_no_stale_images(images, tmp_path):
    out = tmp_path/'out'
    assert labkit('detect', images, out, '--device', 'cpu', '--quiet').returncode == EXIT_SKIPPED
    fewer = tmp_path/'fewer'; (fewer/'park').mkdir(parents=True)
    shutil.copy(images/'park'/'scene_0000.png', fewer/'park')
    assert labkit('detect', fewer, out, '--device', 'cpu', '--quiet', '--overwrite').returncode == EXIT_OK
    assert _consistent(out)['images'] == 1
    assert sorted(_tree(out)) == ['detections.csv', 'park/scene_0000.png', 'summary.json']


# --- every input processed or reported ---------------------------------------------------------------------------
def test_awkward_files_each_reported(tmp_path):
    src = make_image_folder(tmp_path/'in', n=1, corrupt=0)
    (src/'zero.jpg').write_bytes(b''); (src/'text.jpg').write_text('hello, not a picture')
    huge_png_header(src/'huge.png'); (src/'.hidden.jpg').write_bytes(b'x')
    (src/'dangling.jpg').symlink_to(src/'nowhere.jpg'); (src/'loop.jpg').symlink_to(src/'loop.jpg')
    r = labkit('detect', src, tmp_path/'out', '--device', 'cpu', '--quiet')
    assert r.returncode == EXIT_SKIPPED, r.stderr[-2000:]
    assert 'Traceback' not in r.stderr and 'pi_heif' not in r.stderr
    reasons = dict(json.loads((tmp_path/'out'/'summary.json').read_text())['skipped'])
    assert sorted(reasons) == ['.hidden.jpg', 'dangling.jpg', 'huge.png', 'loop.jpg', 'text.jpg', 'zero.jpg']
    assert 'not an image' in reasons['zero.jpg'] and 'not an image' in reasons['text.jpg']
    assert 'too large' in reasons['huge.png'] and '144000000 pixels' in reasons['huge.png']
    assert 'dangling' in reasons['dangling.jpg'] and 'loop' in reasons['loop.jpg'] and 'hidden' in reasons['.hidden.jpg']
    assert (tmp_path/'out'/'park'/'scene_0000.png').exists()

def test_rerun_into_a_volume(images, tmp_path, monkeypatch):
    "A DST that cannot move (a container's mount point) gets its outputs built inside it, then renamed in"
    import labkit.core
    import labkit.docker_yolo as dy
    monkeypatch.setattr(labkit.core, '_movable', lambda dst: False)
    out = tmp_path/'volume'; out.mkdir()
    assert dy.detect_cli(str(images), str(out), device='cpu', quiet=True) == EXIT_SKIPPED
    fewer = tmp_path/'fewer'; (fewer/'park').mkdir(parents=True); shutil.copy(images/'park'/'scene_0000.png', fewer/'park')
    assert dy.detect_cli(str(fewer), str(out), device='cpu', quiet=True, overwrite=True) == EXIT_OK
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob('*')) == ['detections.csv', 'park', 'park/scene_0000.png', 'summary.json']
    assert _consistent(out)['images'] == 1

def test_signals_wait_for_the_swap(tmp_path):
    "SIGTERM during the final renames takes effect once they are done: the new outputs are in place, whole"
    from labkit.core import signals_interrupt, staged_dir
    import labkit.core
    (tmp_path/'out').mkdir(); (tmp_path/'out'/'summary.json').write_text('old')
    real, events = labkit.core._swap_folder, []
    def swap_under_sigterm(new, dst):
        os.kill(os.getpid(), signal.SIGTERM); events.append('swapping'); real(new, dst); events.append('swapped')
    labkit.core._swap_folder = swap_under_sigterm
    try:
        with signals_interrupt():
            with pytest.raises(KeyboardInterrupt):
                with staged_dir(tmp_path/'out') as new: (new/'summary.json').write_text('new')
    finally: labkit.core._swap_folder = real
    assert events == ['swapping', 'swapped']
    assert (tmp_path/'out'/'summary.json').read_text() == 'new' and sorted(p.name for p in tmp_path.iterdir()) == ['out']
