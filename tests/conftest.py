"Shared fixtures: a Docker engine when one answers"
import json, shutil, subprocess
import pytest

@pytest.fixture(scope='session')
def docker_engine():
    "The Docker client's `docker info`, or a skip saying why no engine answers"
    if not shutil.which('docker'): pytest.skip('no docker client on PATH')
    try: r = subprocess.run(['docker', 'info', '--format', '{{json .}}'], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired: pytest.skip('docker info did not answer within 20 s')
    if r.returncode != 0: pytest.skip(f"no Docker engine answers: {(r.stderr.strip().splitlines() or ['docker info failed'])[-1]}")
    return json.loads(r.stdout)
