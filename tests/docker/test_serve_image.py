"The serve image: builds from docker/serve/Dockerfile, runs as non-root, answers on 127.0.0.1, turns healthy; cleaned up after"
import json, subprocess, time, uuid
import pytest
from conftest import REPO, docker, image_build, running_container
from labkit.core import http_call

# the module's image is built by its first test: a cold build (the CUDA torch layer) takes up to 15 min on 2 cores
pytestmark = [pytest.mark.docker, pytest.mark.timeout(2700)]

@pytest.fixture(scope='module')
def serve_image(docker_engine):
    tag = f'labkit-serve:test-{uuid.uuid4().hex[:8]}'
    t0 = time.monotonic()
    image_build('-f', REPO/'docker/serve/Dockerfile', '-t', tag, REPO, timeout=900)
    build_s = time.monotonic() - t0
    size = int(docker('image', 'inspect', '--format', '{{.Size}}', tag).stdout)
    print(f"\nserve image {tag}: built in {build_s:.0f} s, {size / 1e6:.0f} MB")
    yield tag, size
    docker('rmi', '-f', tag, check=False)

@pytest.fixture(scope='module')
def container(serve_image):
    with running_container(serve_image[0], 'LABKIT_BIND', '/ready') as (name, url): yield name, url

def test_image_is_small(serve_image):
    _, size = serve_image
    assert size < 400e6, f"{size / 1e6:.0f} MB: flask, gunicorn, prometheus-client and numpy only, no ML frameworks"

def test_container_serves_predictions(container):
    _, url = container
    status, body, _ = http_call(url + '/predict', 'POST', {'experience': 5, 'test_score': 8, 'interview_score': 7})
    assert status == 200 and body['version'] == 'v2' and body['prediction'] > 0
    status, body, _ = http_call(url + '/predict', 'POST', {'experience': 5, 'test_score': 80, 'interview_score': 7})
    assert status == 422 and body['problems'][0]['field'] == 'test_score'
    status, body, _ = http_call(url + '/version')
    assert status == 200 and body['name'] == 'hiring-salary' and len(body['sha256']) == 64
    assert 'labkit_predictions_total' in http_call(url + '/metrics')[1]

def test_container_runs_as_non_root_with_gunicorn_workers(container):
    name, _ = container
    assert docker('exec', name, 'id', '-u').stdout.strip() != '0'
    procs = docker('exec', name, 'python', '-c',
                   "import pathlib; print(sum('gunicorn' in p.read_text() for p in pathlib.Path('/proc').glob('[0-9]*/cmdline')))").stdout
    assert int(procs) >= 3, procs    # the master and two workers

def test_container_turns_healthy(container):
    name, _ = container
    deadline, state = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        state = json.loads(docker('inspect', '--format', '{{json .State.Health}}', name).stdout)
        if state and state['Status'] == 'healthy': break
        time.sleep(1)
    assert state and state['Status'] == 'healthy', state

def test_request_log_on_a_named_volume(serve_image):
    "As docker/monitoring's compose runs it: a fresh named volume at /var/log/labkit, writable by the service's user"
    tag, _ = serve_image
    volume = f'labkit-requests-{uuid.uuid4().hex[:8]}'
    try:
        with running_container(tag, 'LABKIT_BIND', '/ready', '-e', 'LABKIT_REQUEST_LOG=/var/log/labkit/requests',
                               '-v', f'{volume}:/var/log/labkit') as (name, url):
            assert http_call(url + '/predict', 'POST', {'experience': 5, 'test_score': 8, 'interview_score': 7})[0] == 200
            lines = docker('exec', name, 'sh', '-c', 'cat /var/log/labkit/requests/segment-*.jsonl').stdout.splitlines()
    finally: docker('volume', 'rm', volume, check=False)
    assert len(lines) == 1 and json.loads(lines[0])['prediction'] > 0, lines
