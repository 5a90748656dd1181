"""Every labkit command that serves on a port stops cleanly on SIGTERM (what `kill` and `docker stop` send):
within 10 s its port is free and none of the processes it started is left."""
import os, signal, socket, subprocess, time
from pathlib import Path
import pytest
from conftest import free_port, labkit_cmd

STOP_SECONDS = 10      # the promise: port free and no child left this soon after SIGTERM
START_SECONDS = 120    # start-up (imports of Flask, gunicorn, Flower, pandas) on a busy 2-core machine

def _ppid(pid:int) -> int|None:
    try: return int(Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[1])
    except (OSError, IndexError, ValueError): return None

def descendants(pid:int) -> set:
    "Every live process below `pid` in the process tree (read from /proc)"
    children = {}
    for p in Path('/proc').iterdir():
        if p.name.isdigit() and (pp := _ppid(int(p.name))) is not None: children.setdefault(pp, []).append(int(p.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out: out.add(c); todo.append(c)
    return out

def alive(pid:int) -> bool:
    "True while `pid` exists and is not a zombie"
    try: state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except (OSError, IndexError): return False
    return state != 'Z'

def listening(port:int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(('127.0.0.1', port)) == 0

def wait_for(predicate, seconds:float, what:str, proc=None, every:float=0.1):
    "Poll `predicate` until true; fail saying `what` was awaited (and the command's output if it exited)"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate(): return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the command exited ({proc.returncode}) while waiting for {what}:\n{proc.stdout.read()[-3000:]}")
        time.sleep(every)
    pytest.fail(f"gave up after {seconds:g} s waiting for {what}")

def _monitor_args(tmp_path:Path, port:int) -> list:
    from labkit.monitoring import make_applicants
    ref = tmp_path/'reference.csv'
    make_applicants(200, seed=0).assign(prediction=0).to_csv(ref, index=False)
    (tmp_path/'log').mkdir()
    return ['monitor', tmp_path/'log', ref, '--port', port, '--interval', 1]

COMMANDS = {
    'serve':     lambda tmp_path, port: ['serve', '--port', port, '--workers', 2],
    'serve-dev': lambda tmp_path, port: ['serve', '--port', port, '--workers', 0],
    'fl-server': lambda tmp_path, port: ['fl-server', '--address', f'127.0.0.1:{port}', '--rounds', 1, '--clients', 2],
    'monitor':   _monitor_args,
}

@pytest.mark.parametrize('name', COMMANDS)
def test_sigterm_frees_the_port_and_leaves_no_child(name, tmp_path):
    port = free_port()
    proc = subprocess.Popen(labkit_cmd(*COMMANDS[name](tmp_path, port)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, cwd=tmp_path)
    started = set()
    try:
        wait_for(lambda: listening(port), START_SECONDS, f'labkit {name} to listen on 127.0.0.1:{port}', proc)
        time.sleep(1)                                   # let a server finish forking its workers
        started = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: not listening(port), STOP_SECONDS, f'port {port} to be free after SIGTERM to labkit {name}')
        wait_for(lambda: not any(alive(p) for p in started | {proc.pid}), STOP_SECONDS,
                 f'the processes of labkit {name} to end after SIGTERM: {sorted(p for p in started | {proc.pid} if alive(p))}')
    finally:
        for p in [p for p in descendants(proc.pid) | started | {proc.pid} if alive(p)]:   # never leave them to the next test
            try: os.kill(p, signal.SIGKILL)
            except ProcessLookupError: pass
        try: proc.wait(10)
        except subprocess.TimeoutExpired: pass
    assert proc.returncode is not None
