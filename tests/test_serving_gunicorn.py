"The salary service under gunicorn: metrics summed over workers, a worker killed under load, `labkit serve`"
import http.client, os, signal, subprocess, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
import pytest
from conftest import REPO, free_port, labkit_cmd
from labkit.serving import GunicornServer, http_call, wait_until_up

RECORD = {'experience': 5, 'test_score': 8, 'interview_score': 7}
CONNECTION_ERRORS = (OSError, http.client.HTTPException)

def test_metrics_are_summed_over_workers():
    n = 60
    with GunicornServer(workers=2) as server, ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda _: http_call(server.url + '/predict', 'POST', RECORD)[0], range(n)))
        bad = http_call(server.url + '/predict', 'POST', {'experience': -1, 'test_score': 8, 'interview_score': 7})
        for _ in range(4):   # whichever worker answers /metrics, it reports every worker's counts
            text = http_call(server.url + '/metrics')[1]
            served = sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith('labkit_predictions_total{'))
            assert served == n, text
            assert 'labkit_http_requests_total{method="POST",route="/predict",status="422"} 1.0' in text
    assert statuses == [200] * n and bad[0] == 422

def _load(url, stop, stats, lock, max_requests=4000):
    "Steady load from one client, bounded; a request whose connection breaks is retried once (as a proxy would)"
    for _ in range(max_requests):
        if stop.is_set(): return
        for attempt in (1, 2):
            try:
                status = http_call(url, 'POST', RECORD, timeout=10)[0]
                with lock: stats['ok' if status == 200 else 'bad_status'] += 1
                break
            except CONNECTION_ERRORS:
                with lock: stats['dropped' if attempt == 1 else 'failed'] += 1

@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGKILL, signal.SIGHUP], ids=['SIGTERM-worker', 'SIGKILL-worker', 'HUP-master-rolling'])
def test_killing_a_worker_under_load(sig):
    "One worker stopped (TERM) or crashed (KILL) under steady load, or all replaced one by one (HUP to the master: a rolling restart)"
    clients = 3
    with GunicornServer(workers=2) as server:
        before = server.worker_pids()
        assert len(before) == 2
        stats, lock, stop = dict(ok=0, bad_status=0, dropped=0, failed=0), threading.Lock(), threading.Event()
        threads = [threading.Thread(target=_load, args=(server.url + '/predict', stop, stats, lock)) for _ in range(clients)]
        for t in threads: t.start()
        time.sleep(1.0)
        ok_before_kill = stats['ok']
        victim = before[0]
        os.kill(server.proc.pid if sig == signal.SIGHUP else victim, sig)
        gone = set(before) if sig == signal.SIGHUP else {victim}
        deadline, after = time.monotonic() + 20, []
        while time.monotonic() < deadline:                      # the master replaces the worker(s)
            after = server.worker_pids()
            if len(after) == 2 and not gone & set(after): break
            time.sleep(0.1)
        time.sleep(1.0)                                         # keep the load on the replaced pool
        stop.set()
        for t in threads: t.join(30)
        answers_after = {http_call(server.url + '/health')[1]['pid'] for _ in range(20)}
    print(f"\n{sig.name}: {stats} (ok before the kill: {ok_before_kill}); workers {before} -> {after}")
    assert ok_before_kill > 0 and stats['ok'] > ok_before_kill
    assert len(after) == 2 and not gone & set(after), f"workers {sorted(gone)} were not replaced: {after}"
    assert not gone & answers_after
    assert stats['failed'] == 0 and stats['bad_status'] == 0, stats
    if sig != signal.SIGKILL: assert stats['dropped'] == 0, stats     # graceful: the request in progress completes
    else: assert stats['dropped'] <= clients, stats                   # only requests in flight on the killed worker break

def _serve_and_call(cmd, port, env=None):
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_until_up(f'http://127.0.0.1:{port}/ready', 40, proc), proc.stdout.read().decode()[-2000:] if proc.poll() is not None else 'no answer'
        status, body, _ = http_call(f'http://127.0.0.1:{port}/predict', 'POST', RECORD)
        assert status == 200 and body['version'] == 'v2'
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try: proc.wait(20)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait(5)
    return proc.returncode

def test_serve_cli_gunicorn_and_flask():
    "The function behind `labkit serve`: gunicorn (2 workers), then the Flask development server"
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')])}
    for workers in (2, 0):
        port = free_port()
        code = f"from labkit.serving import serve_cli; raise SystemExit(serve_cli(port={port}, workers={workers}))"
        _serve_and_call([sys.executable, '-c', code], port, env)

def test_labkit_serve_command():
    try: from labkit.cli import COMMANDS
    except ImportError: pytest.skip('the labkit command dispatcher (labkit.cli) is not in this checkout')
    if 'serve' not in COMMANDS: pytest.skip("the labkit dispatcher has no 'serve' command yet")
    port = free_port()
    _serve_and_call(labkit_cmd('serve', '--port', port, '--workers', 1), port)
