"Shared fixtures: the repository, a Docker engine when one answers, a headless browser, free loopback ports"
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
import pytest
import nbval.plugin

# The notebooks are stored clean (`nbdev_clean` sets every execution count to None), and nbval takes a cell
# with outputs but no execution count for an unrun cell with stale outputs. Stored outputs of clean notebooks
# are the reference: give such cells a count when nbval collects them (`make test` passes tests/ first,
# so this file is loaded before the notebooks are collected).
_collect_cells = nbval.plugin.IPyNbFile.collect

def _collect_clean_cells(self):
    for item in _collect_cells(self):
        item.output_timeout = 60       # nbval waits 5 s for a cell's outputs after it ran: too short on a busy machine
        item.add_marker(pytest.mark.timeout(900))   # a cell that trains is bounded by nbval's own cell timeout (`make test`), not the 300 s default
        cell = getattr(item, 'cell', None)
        if cell is not None and cell.get('cell_type') == 'code' and cell.get('execution_count') is None and cell.get('outputs'):
            cell.execution_count = 1
        yield item

nbval.plugin.IPyNbFile.collect = _collect_clean_cells

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

@pytest.fixture(scope='session')
def repo() -> Path:
    return REPO

def labkit_cmd(*args) -> list:
    "The `labkit` console script of the running environment, with arguments"
    exe = BIN/'labkit'
    return [str(exe) if exe.exists() else 'labkit', *map(str, args)]

@pytest.fixture(scope='session')
def docker_engine():
    "The Docker client's `docker info`, or a skip saying why no engine answers"
    if not shutil.which('docker'): pytest.skip('no docker client on PATH')
    try: r = subprocess.run(['docker', 'info', '--format', '{{json .}}'], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired: pytest.skip('docker info did not answer within 20 s')
    if r.returncode != 0: pytest.skip(f"no Docker engine answers: {(r.stderr.strip().splitlines() or ['docker info failed'])[-1]}")
    return json.loads(r.stdout)

CHROMIUM_FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                  '--disable-sync', '--no-first-run', '--disable-dev-shm-usage')

@pytest.fixture(scope='module')
def browser():
    "Debian's headless Chromium driven by selenium through Debian's chromedriver, a fresh profile per module; a skip saying what is missing"
    chromium, chromedriver = shutil.which('chromium') or shutil.which('chromium-browser'), shutil.which('chromedriver')
    if not (chromium and chromedriver):
        pytest.skip("headless Chromium is not installed: apt-get install chromium chromium-driver (Debian packages; no browser is downloaded)")
    webdriver = pytest.importorskip('selenium.webdriver', reason='selenium is not installed (pip install "labkit[dev]")')
    from selenium.webdriver.chrome.service import Service
    profile = tempfile.mkdtemp(prefix='labkit-chromium-')
    try:
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for flag in (*CHROMIUM_FLAGS, f'--user-data-dir={profile}'): opts.add_argument(flag)
        driver = webdriver.Chrome(service=Service(chromedriver), options=opts)
        driver.set_page_load_timeout(60)
        yield driver
        driver.quit()
    finally: shutil.rmtree(profile, ignore_errors=True)

from labkit.core import free_port   # one definition, shared with the labs


def docker(*args, timeout=120, check=True, exe='docker', env=None):
    "Run the docker client (or `exe`, e.g. docker-buildx); on failure show what it said"
    r = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)
    if check: assert r.returncode == 0, f"docker {' '.join(map(str, args))[:300]}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r

def poll(fn, seconds:float, every:float=0.5):
    "Call `fn` until it returns something true or `seconds` pass; its last value"
    deadline = time.monotonic() + seconds
    while not (out := fn()) and time.monotonic() < deadline: time.sleep(every)
    return out

def _docker_clients() -> list:
    "Every distinct `docker` executable on PATH, first found first"
    seen = {}
    for d in os.environ.get('PATH', '').split(os.pathsep):
        if (exe := Path(d)/'docker').is_file(): seen.setdefault(exe.resolve(), str(exe))
    return list(seen.values())

def buildkit_build() -> list|None:
    "A build command that uses BuildKit (the Dockerfile needs its cache mounts): `docker buildx build`, else a client older than 23"
    for exe in _docker_clients():
        if subprocess.run([exe, 'buildx', 'version'], capture_output=True, timeout=60).returncode == 0: return [exe, 'buildx', 'build', '--load']
        v = subprocess.run([exe, 'version', '--format', '{{.Client.Version}}'], capture_output=True, text=True, timeout=60).stdout
        if (m := re.match(r'(\d+)\.', v)) and int(m.group(1)) < 23: return [exe, 'build']   # BuildKit built into the client
    return None

def _running(pid:str) -> bool:
    "Whether process `pid` runs (a zombie has finished)"
    try: return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError): return False

def _wait_for_prebuild(seconds:float=3000):
    "Wait for the background `make images` of `.ci/run`, so a build here finds its layers cached"
    done, pid = os.environ.get('LABKIT_IMAGES_DONE'), os.environ.get('LABKIT_IMAGES_PID', '')
    if not done: return
    deadline = time.monotonic() + seconds
    while not Path(done).exists() and _running(pid) and time.monotonic() < deadline: time.sleep(2)

def image_build(*args, timeout=3000):
    "`docker build --network host ARGS` with BuildKit where a client has it (as `make images` builds), else the classic builder"
    _wait_for_prebuild()
    exe, *build = buildkit_build() or ['docker', 'build']
    return docker(*build, '--network', 'host', *args, exe=exe, timeout=timeout, env=os.environ | {'DOCKER_BUILDKIT': '1'})

def pytest_collection_modifyitems(config, items):
    "Container tests last: `.ci/run` builds their images in the background meanwhile, so their builds find the cache warm"
    items.sort(key=lambda item: item.get_closest_marker('docker') is not None)   # stable: the order within each part is kept

@contextmanager
def running_container(tag:str,          # the image
                      listen_var:str,   # its variable for the address to listen on (a free 127.0.0.1 port is given)
                      ready_path:str,   # the path that answers 200 once it is ready
                      *run_args,        # more `docker run` arguments
                      seconds:float=60):
    "A detached container on the host network; (name, url) once it is ready, removed after (its log shown if it never is)"
    from labkit.core import wait_until_up
    name, port = f"{tag.split(':')[0]}-test-{uuid.uuid4().hex[:8]}", free_port()
    docker('run', '-d', '--name', name, '--network', 'host', '-e', f'{listen_var}=127.0.0.1:{port}', *run_args, tag)
    try:
        url = f'http://127.0.0.1:{port}'
        if not wait_until_up(url + ready_path, seconds):
            pytest.fail(f"{name} did not answer {url}{ready_path} within {seconds:.0f} s:\n{docker('logs', name, check=False).stderr[-3000:]}")
        yield name, url
    finally: docker('rm', '-f', '-v', name, check=False)
