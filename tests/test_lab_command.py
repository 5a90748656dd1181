"`make lab` starts JupyterLab on the student's own folder of student copies, with token authentication"
import json, os, re, signal, subprocess, time, urllib.error, urllib.request
from pathlib import Path
import nbformat
from conftest import REPO, free_port
from labkit.core import SOLUTION_BEGIN, SOLUTION_END

def _status(url) -> int:
    try: return urllib.request.urlopen(url, timeout=5).status
    except urllib.error.HTTPError as e: return e.code

def _get(url):
    return json.loads(urllib.request.urlopen(url, timeout=10).read().decode())

def _venv() -> str:
    "The virtual environment running the tests (the one `make` set up)"
    return os.path.dirname(os.path.dirname(os.sys.executable))

def _solution_texts() -> dict:
    "{notebook: solution lines that appear nowhere else in it}: lines between the markers, stripped, of some length"
    found = {}
    for p in sorted((REPO/'nbs').glob('*.ipynb')):
        text = '\n'.join(c.source for c in nbformat.read(p, as_version=4).cells)
        solved = re.findall(rf"^[ \t]*{re.escape(SOLUTION_BEGIN)}\n(.*?)^[ \t]*{re.escape(SOLUTION_END)}", text, re.M | re.S)
        rest = re.sub(rf"^[ \t]*{re.escape(SOLUTION_BEGIN)}\n.*?^[ \t]*{re.escape(SOLUTION_END)}", '', text, flags=re.M | re.S)
        found[p.name] = [l.strip() for s in solved for l in s.split('\n') if len(l.strip()) > 12 and l.strip() not in rest]
    return found

def _start_lab(tmp_path, *args):
    "Start `make lab ARGS` in its own session; (process, log file)"
    log = open(tmp_path/'lab.log', 'w+')
    env = {**os.environ, 'JUPYTER_RUNTIME_DIR': str(tmp_path/'runtime')}
    env.pop('JUPYTER_TOKEN', None)
    proc = subprocess.Popen(['make', '-s', 'lab', f'VENV={_venv()}', *args], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, env=env)
    return proc, log

def _wait_token(proc, log, port) -> str:
    deadline = time.monotonic() + 120   # JupyterLab starts in ~10 s; a busy 2-core machine takes longer
    while time.monotonic() < deadline:
        log.seek(0)
        if m := re.search(rf'http://127\.0\.0\.1:{port}/lab\?token=([0-9a-f]+)', log.read()): return m.group(1)
        if proc.poll() is not None: break
        time.sleep(0.5)
    log.seek(0)
    raise AssertionError(f"no URL with a token printed within 120 s:\n{log.read()[-2000:]}")

def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try: proc.wait(timeout=15)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL)

def test_make_lab_serves_student_copies_only_and_requires_the_token(tmp_path):
    port, mine = free_port(), tmp_path/'my-labs'
    mine.mkdir()
    (mine/'00_core.ipynb').write_text('{"my": "work"}')   # a student's earlier work: never overwritten
    proc, log = _start_lab(tmp_path, f'PORT={port}', f'STUDENT_DIR={mine}')
    try:
        token = _wait_token(proc, log, port)
        assert len(token) >= 32
        base = f'http://127.0.0.1:{port}'
        assert _status(f'{base}/api/status') == 403 and _status(f'{base}/api/contents') == 403
        assert _status(f'{base}/api/status?token={token}') == 200
        listing = {c['name'] for c in _get(f'{base}/api/contents?token={token}')['content']}
        course = {p.name for p in (REPO/'nbs').glob('*.ipynb')}
        assert course <= listing, f"missing student copies: {course - listing}"
        assert (mine/'00_core.ipynb').read_text() == '{"my": "work"}'
        solutions = _solution_texts()
        assert any(solutions.values()), "no solution text found in nbs/"
        served = [n for n in listing if n.endswith('.ipynb') and n != '00_core.ipynb']
        for name in served:
            nb = nbformat.from_dict(_get(f'{base}/api/contents/{name}?token={token}&content=1')['content'])
            text = json.dumps(nb)
            markers = [l for c in nb.cells for l in c.source.split('\n') if l.strip() in (SOLUTION_BEGIN, SOLUTION_END)]
            assert not markers, f"{name} serves solution markers"
            leaked = [s for s in solutions.get(name, []) if json.dumps(s)[1:-1] in text]
            assert not leaked, f"{name} serves solution text: {leaked[:3]}"
        log.seek(0)
        assert '00_core.ipynb' in log.read()   # what was kept is said
    finally: _stop(proc)

def test_make_instructor_serves_the_sources():
    r = subprocess.run(['make', '-n', 'instructor', f'VENV={_venv()}'], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert '--notebook-dir=nbs ' in r.stdout, r.stdout
    r = subprocess.run(['make', '-n', 'lab', f'VENV={_venv()}', 'STUDENT_DIR=somewhere'], cwd=REPO, capture_output=True, text=True)
    assert 'student nbs somewhere --keep-work' in r.stdout and '--notebook-dir=somewhere ' in r.stdout, r.stdout
