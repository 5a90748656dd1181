"`labkit detect` and `labkit train-detector` from the command line: exit status, outputs, messages"
import csv
import json
import subprocess
import pytest

pytest.importorskip('ultralytics')
from labkit.docker_yolo import make_image_folder, SHAPE_CLASSES, EXIT_OK, EXIT_ERROR, EXIT_SKIPPED

from conftest import labkit_cmd

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
