"Shared fixtures: a Docker engine when one answers; stored notebook outputs as nbval's reference"
import json, shutil, subprocess
import pytest
import nbval.plugin

# The notebooks are stored clean (`nbdev_clean` sets every execution count to None), and nbval takes a cell
# with outputs but no execution count for an unrun cell with stale outputs. Stored outputs of clean notebooks
# are the reference: give such cells a count when nbval collects them.
_collect_cells = nbval.plugin.IPyNbFile.collect

def _collect_clean_cells(self):
    for item in _collect_cells(self):
        cell = getattr(item, 'cell', None)
        if cell is not None and cell.get('cell_type') == 'code' and cell.get('execution_count') is None and cell.get('outputs'):
            cell.execution_count = 1
        yield item

nbval.plugin.IPyNbFile.collect = _collect_clean_cells

@pytest.fixture(scope='session')
def docker_engine():
    "The Docker client's `docker info`, or a skip saying why no engine answers"
    if not shutil.which('docker'): pytest.skip('no docker client on PATH')
    try: r = subprocess.run(['docker', 'info', '--format', '{{json .}}'], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired: pytest.skip('docker info did not answer within 20 s')
    if r.returncode != 0: pytest.skip(f"no Docker engine answers: {(r.stderr.strip().splitlines() or ['docker info failed'])[-1]}")
    return json.loads(r.stdout)
