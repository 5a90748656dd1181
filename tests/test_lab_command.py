"`make lab` starts JupyterLab on nbs/ with token authentication"
import os, re, signal, subprocess, time, urllib.error, urllib.request
from conftest import REPO, free_port

def _status(url) -> int:
    try: return urllib.request.urlopen(url, timeout=5).status
    except urllib.error.HTTPError as e: return e.code

def _venv() -> str:
    "The virtual environment running the tests (the one `make` set up)"
    return os.path.dirname(os.path.dirname(os.sys.executable))

def test_make_lab_requires_the_token(tmp_path):
    port = free_port()
    log = open(tmp_path/'lab.log', 'w+')
    env = {**os.environ, 'JUPYTER_RUNTIME_DIR': str(tmp_path/'runtime')}
    env.pop('JUPYTER_TOKEN', None)
    proc = subprocess.Popen(['make', '-s', 'lab', f'PORT={port}', f'VENV={_venv()}'],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        token, deadline = None, time.monotonic() + 120   # JupyterLab starts in ~10 s; a busy 2-core machine takes longer
        while time.monotonic() < deadline:
            log.seek(0)
            if m := re.search(rf'http://127\.0\.0\.1:{port}/lab\?token=([0-9a-f]+)', log.read()): token = m.group(1); break
            if proc.poll() is not None: break
            time.sleep(0.5)
        log.seek(0)
        assert token, f"no URL with a token printed:\n{log.read()[-2000:]}"
        assert len(token) >= 32
        assert _status(f'http://127.0.0.1:{port}/api/status') == 403
        assert _status(f'http://127.0.0.1:{port}/api/status?token={token}') == 200
        assert _status(f'http://127.0.0.1:{port}/api/contents') == 403
        assert _status(f'http://127.0.0.1:{port}/api/contents?token={token}') == 200
        listing = urllib.request.urlopen(f'http://127.0.0.1:{port}/api/contents?token={token}', timeout=5).read().decode()
        assert '00_core.ipynb' in listing             # served from nbs/
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try: proc.wait(timeout=15)
            except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL)
