"The labkit-yolo image: build it, run it on a folder of the host, check what comes back and who owns it"
import csv
import json
import os
import subprocess
import time
from pathlib import Path
import pytest
from conftest import REPO, image_build

# the module's image is built by its first test: a cold build (the CUDA torch layer) takes up to 15 min on 2 cores
pytestmark = [pytest.mark.docker, pytest.mark.timeout(2700)]
IMAGE = 'labkit-yolo'
SHAPES = {'circle', 'square', 'triangle', 'star', 'cross'}
HOST_USER = (1234, 1234) if os.getuid() == 0 else (os.getuid(), os.getgid())   # as root, play an ordinary user

@pytest.fixture(scope='module')
def image(docker_engine):
    "Build the image from the repository root (dependency layers come from the cache after the first build)"
    t0 = time.perf_counter()
    image_build('-f', REPO/'docker/yolo/Dockerfile', '-t', IMAGE, REPO)
    print(f"labkit-yolo built in {time.perf_counter() - t0:.0f} s")
    yield IMAGE
    # keep the tagged image (the next build reuses its layers); remove the older builds it replaced
    subprocess.run(['docker', 'image', 'prune', '--force', '--filter', 'label=labkit.image=yolo'], capture_output=True, timeout=300)

def make_images(root: Path, n: int = 10) -> Path:
    "Scenes in two sub-folders and one corrupt JPEG, drawn without the deep-learning stack"
    from labkit.docker_yolo import make_image_folder
    return make_image_folder(root, n=n, corrupt=1)

def run(image, src: Path, out: Path, *args, docker_args=(), network='host'):
    cmd = ['docker', 'run', '--rm', '--network', network, *docker_args,
           '-v', f'{src}:/data/in:ro', '-v', f'{out}:/data/out', image, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)

def chown_tree(root: Path, uid: int, gid: int):
    for p in [root, *root.rglob('*')]: os.chown(p, uid, gid)

def owners(root: Path) -> set:
    return {(p.stat().st_uid, p.stat().st_gid) for p in [root, *root.rglob('*')]}

def test_documented_command(image, tmp_path):
    "`docker run --rm -v images:/data/in:ro -v out:/data/out labkit-yolo`, out/ not there yet, as an ordinary user"
    src = make_images(tmp_path/'images')
    if os.getuid() == 0: chown_tree(tmp_path, *HOST_USER)
    out = tmp_path/'out'                      # missing: Docker creates it (as root) for the mount
    r = run(image, src, out)
    assert r.returncode == 3, r.stdout + r.stderr            # 3: some file was skipped, the rest processed
    assert 'skipped broken_0.jpg' in r.stderr and 'cannot decode' in r.stderr
    assert r.stderr.count('knows only 5 synthetic shape classes') == 1, r.stderr   # what the shipped detector knows, once
    annotated = sorted(p.relative_to(out).as_posix() for p in out.rglob('scene_*'))
    assert annotated == sorted(p.relative_to(src).as_posix() for p in src.rglob('scene_*')) and len(annotated) == 10
    rows = list(csv.DictReader(open(out/'detections.csv')))
    assert len(rows) >= 10 and {row['class'] for row in rows} <= SHAPES
    assert {row['file'] for row in rows} <= set(annotated)
    summary = json.loads((out/'summary.json').read_text())
    assert summary['images'] == 10 and [f for f, _ in summary['skipped']] == ['broken_0.jpg']
    assert owners(out) == {HOST_USER}                        # the outputs belong to the host user, not root

def test_outputs_not_mixed_and_overwrite(image, tmp_path):
    src, out = make_images(tmp_path/'images', n=2), tmp_path/'out'
    out.mkdir()
    if os.getuid() == 0: chown_tree(tmp_path, *HOST_USER)
    assert run(image, src, out).returncode == 3
    again = run(image, src, out)
    assert again.returncode == 1 and 'already holds files' in again.stderr
    assert run(image, src, out, '--overwrite', '--conf', '0.5').returncode == 3
    assert json.loads((out/'summary.json').read_text())['settings']['conf'] == 0.5
    assert owners(out) == {HOST_USER}

def test_with_user_flag_and_no_network(image, tmp_path):
    "`--user UID:GID` runs as that user from the start; the container needs no network"
    src, out = make_images(tmp_path/'images', n=2), tmp_path/'out'
    out.mkdir()
    if os.getuid() == 0: chown_tree(tmp_path, *HOST_USER)
    r = run(image, src, out, docker_args=['--user', f'{HOST_USER[0]}:{HOST_USER[1]}'], network='none')
    assert r.returncode == 3, r.stdout + r.stderr
    assert len(list(out.rglob('scene_*'))) == 2 and owners(out) == {HOST_USER}

@pytest.mark.skipif(os.getuid() != 0, reason='only root can own a folder as root')
def test_root_owned_folders_stay_root_owned(image, tmp_path):
    "When root runs it on root's folders, outputs are root's (the detector itself still runs as `labkit`)"
    src, out = make_images(tmp_path/'images', n=2), tmp_path/'out'
    out.mkdir()
    r = run(image, src, out)
    assert r.returncode == 3, r.stdout + r.stderr
    assert owners(out) == {(0, 0)}

def test_missing_input_is_a_clear_error(image, tmp_path):
    (tmp_path/'empty').mkdir(); out = tmp_path/'out'; out.mkdir()
    r = run(image, tmp_path/'empty', out)
    assert r.returncode == 1 and 'holds no files' in r.stderr
