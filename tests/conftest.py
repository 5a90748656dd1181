"Shared fixtures: the repository, a Docker engine when one answers, a headless browser, free loopback ports"
import json
import shutil
import subprocess
import sys
import tempfile
import time
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
