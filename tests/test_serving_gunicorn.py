"The salary service under gunicorn: metrics summed over workers, a worker killed under load, slow clients, chunked bodies, `labkit serve`"
import http.client, json, os, signal, socket, subprocess, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from conftest import REPO, free_port, labkit_cmd
from labkit.cli import COMMANDS
from labkit.core import http_call, wait_until_up
from labkit.serving import GunicornServer, SlowClients, load_test

RECORD = {'experience': 5, 'test_score': 8, 'interview_score': 7}
CONNECTION_ERRORS = (OSError, http.client.HTTPException)   # refused, reset, or an answer cut short (IncompleteRead, BadStatusLine)

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
        assert not any(t.is_alive() for t in threads), 'the load threads did not finish within 30 s of the stop'
        answers_after = set()
        for _ in range(20):
            try: answers_after.add(http_call(server.url + '/health')[1]['pid'])
            except CONNECTION_ERRORS as e: pytest.fail(f"/health did not answer after the workers were replaced: {e!r}")
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
    assert COMMANDS['serve'] == 'labkit.serving:serve_cli'
    port = free_port()
    _serve_and_call(labkit_cmd('serve', '--port', port, '--workers', 1), port)

# ---- answers cut short: counted, never a crash ----------------------------------------------------------------------
class CuttingServer:
    "A loopback server that promises 100 bytes of JSON, sends 3, and hangs up (what a worker killed mid-answer leaves)"
    def __init__(self):
        self.sock = socket.create_server(('127.0.0.1', 0)); self.sock.settimeout(0.2)
        self.url, self.stop = f'http://127.0.0.1:{self.sock.getsockname()[1]}', threading.Event()
    def serve(self):
        deadline = time.monotonic() + 60
        while not self.stop.is_set() and time.monotonic() < deadline:
            try: conn, _ = self.sock.accept()
            except TimeoutError: continue
            with conn:
                conn.settimeout(5); conn.recv(65536)
                conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"a')
    def __enter__(self): self.thread = threading.Thread(target=self.serve, daemon=True); self.thread.start(); return self
    def __exit__(self, *exc): self.stop.set(); self.thread.join(10); self.sock.close()

def test_cut_answers_count_as_failures():
    with CuttingServer() as srv:
        with pytest.raises(http.client.IncompleteRead): http_call(srv.url + '/health', timeout=5)
        res = load_test(srv.url + '/health', n=6, concurrency=2, timeout=5)
        assert (res['ok'], res['failed']) == (0, 6), res            # counted as not acknowledged
        assert wait_until_up(srv.url + '/health', timeout=1) is False   # gives up at its deadline, no exception

# ---- slow clients ---------------------------------------------------------------------------------------------------
def test_health_answers_under_slow_clients():
    "Slow clients (headers one line a second, never finished) hold threads, not workers: /health keeps answering"
    with GunicornServer(workers=2) as server, SlowClients(server.url, n=12, every=1.0, max_seconds=90) as slow:
        time.sleep(2.5)                                        # every slow connection is accepted and half-way through its headers
        answers = []
        for _ in range(5):
            try: answers.append(http_call(server.url + '/health', timeout=10)[0])
            except CONNECTION_ERRORS as e: answers.append(repr(e))
        assert slow.lines_sent >= 2, 'the slow clients did not keep sending'
    assert answers == [200] * 5, f"/health under 12 slow clients: {answers}"

# ---- chunked uploads through real gunicorn --------------------------------------------------------------------------
CHUNKED_HEAD = (b'POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n'
                b'Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n')
BODY = json.dumps(RECORD).encode()

def chunked(*parts:bytes) -> bytes: return b''.join(b'%x\r\n%s\r\n' % (len(p), p) for p in parts) + b'0\r\n\r\n'

def raw_request(port:int, data:bytes, timeout:float=15) -> tuple:
    "Send raw bytes, read the answer to the end: (status, JSON body)"
    with socket.create_connection(('127.0.0.1', port), timeout=timeout) as s:
        s.sendall(data); s.shutdown(socket.SHUT_WR)
        out = b''
        while (part := s.recv(65536)): out += part
    head, _, body = out.partition(b'\r\n\r\n')
    assert head.startswith(b'HTTP/1.1 '), out[:300]
    return int(head.split()[1]), json.loads(body) if body.strip() else None

@pytest.fixture(scope='module')
def one_server():
    with GunicornServer(workers=1) as server: yield server

@pytest.mark.parametrize('what,data,status,message', [
    ('one chunk', CHUNKED_HEAD + chunked(BODY), 200, None),
    ('three chunks', CHUNKED_HEAD + chunked(BODY[:7], BODY[7:20], BODY[20:]), 200, None),
    ('a batch in 1 KiB chunks', CHUNKED_HEAD + chunked(*(lambda b: [b[i:i + 1024] for i in range(0, len(b), 1024)])(json.dumps([RECORD] * 60).encode())), 200, None),
    ('over the limit', CHUNKED_HEAD + chunked(*[b' ' * 8192] * 9), 413, None),
    ('chunk size zz', CHUNKED_HEAD + b'zz\r\n' + BODY + b'\r\n0\r\n\r\n', 400, 'malformed chunked body'),
    ('chunk shorter than announced', CHUNKED_HEAD + b'5\r\n' + BODY + b'\r\n0\r\n\r\n', 400, 'malformed chunked body'),
    ('no final chunk', CHUNKED_HEAD + b'%x\r\n' % len(BODY) + BODY + b'\r\n', 400, 'malformed chunked body'),
])
def test_chunked_bodies_through_gunicorn(one_server, what, data, status, message):
    got, body = raw_request(one_server.port, data)
    assert got == status, (what, got, body)
    if status == 200: assert 'prediction' in body or len(body['predictions']) == 60, body
    if message: assert body['problems'][0]['field'] == 'Transfer-Encoding' and message in body['problems'][0]['message'], body

# ---- labkit serve: SIGTERM, admin token -----------------------------------------------------------------------------
def descendants(pid:int) -> set:
    "Live processes below `pid` (from /proc)"
    parent = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try: fields = stat.read_text().rsplit(')', 1)[1].split()
        except (OSError, IndexError): continue
        if fields[0] != 'Z': parent[int(stat.parent.name)] = int(fields[1])
    out, todo = set(), [pid]
    while todo:
        p = todo.pop(); kids = {c for c, pp in parent.items() if pp == p} - out
        out |= kids; todo += kids
    return out

def alive(pid:int) -> bool:
    try: return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError): return False

def listening(port:int) -> bool:
    with socket.socket() as s: s.settimeout(1); return s.connect_ex(('127.0.0.1', port)) == 0

def wait_for(predicate, seconds:float, what:str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate(): return
        time.sleep(0.1)
    pytest.fail(f"gave up after {seconds:g} s waiting for {what}")

@pytest.mark.parametrize('workers', [2, 0], ids=['gunicorn', 'flask-dev'])
def test_sigterm_stops_labkit_serve_and_what_it_started(workers, tmp_path):
    port = free_port()
    out = open(tmp_path/'serve.log', 'w')   # a file, not a pipe: a leftover child holding a pipe would block reading it
    proc = subprocess.Popen(labkit_cmd('serve', '--port', port, '--workers', workers), cwd=tmp_path, text=True,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    started = set()
    try:
        assert wait_until_up(f'http://127.0.0.1:{port}/health', 60, proc), f"labkit serve did not answer on {port}"
        time.sleep(0.5)
        started = descendants(proc.pid)
        assert len(started) >= (workers + 1 if workers else 0), started
        proc.send_signal(signal.SIGTERM)
        try: code = proc.wait(15)
        except subprocess.TimeoutExpired: pytest.fail('labkit serve was still running 15 s after SIGTERM')
        assert code == 0, (tmp_path/'serve.log').read_text()[-2000:]
        wait_for(lambda: not listening(port), 10, f'port {port} to be free')
        wait_for(lambda: not any(alive(p) for p in started), 10,
                 f'the processes labkit serve started ({sorted(started)}) to end')
    finally:
        for p in started | {proc.pid}:
            try: os.kill(p, signal.SIGKILL)
            except ProcessLookupError: pass
        if proc.poll() is None: proc.wait(5)
        out.close()

def test_admin_token_on_the_command_line_is_refused():
    r = subprocess.run(labkit_cmd('serve', '--port', free_port(), '--admin_token', 'top-secret'), capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert 'LABKIT_ADMIN_TOKEN' in r.stderr and '--admin-token-file' in r.stderr, r.stderr
    assert 'Traceback' not in r.stderr, r.stderr

def test_admin_token_from_a_file_never_in_a_command_line(tmp_path):
    token, port = 'file-token-7f3a', free_port()
    path = tmp_path/'admin-token'; path.write_text(token + '\n'); path.chmod(0o644)   # readable by others: warned
    proc = subprocess.Popen(labkit_cmd('serve', '--port', port, '--workers', 1, '--admin_token_file', path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert wait_until_up(f'http://127.0.0.1:{port}/ready', 60, proc), 'labkit serve did not start'
        url = f'http://127.0.0.1:{port}/admin/policy'
        assert http_call(url, headers={'Authorization': f'Bearer {token}'})[0] == 200
        assert http_call(url, headers={'Authorization': 'Bearer wrong'})[0] == 401
        for pid in descendants(proc.pid) | {proc.pid}:
            assert token.encode() not in Path(f'/proc/{pid}/cmdline').read_bytes(), pid
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=20)[0]
    assert 'can be read by other users' in out, out[-2000:]
    missing = subprocess.run(labkit_cmd('serve', '--port', free_port(), '--admin-token-file', tmp_path/'nope'), capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and 'nope' in missing.stderr and 'Traceback' not in missing.stderr, missing.stderr

# ---- raw HTTP fuzzed through gunicorn --------------------------------------------------------------------------------

def _frame(body:bytes, how:str, cut:int) -> tuple:
    "Headers and bytes of a body sent with a Content-Length, chunked (well or badly), or with nothing said"
    if how == 'length': return [b'Content-Length: %d' % len(body)], body
    if how == 'chunked': return [b'Transfer-Encoding: chunked'], b'%x\r\n%s\r\n0\r\n\r\n' % (len(body), body)
    if how == 'bad chunked': return [b'Transfer-Encoding: chunked'], (b'%x\r\n%s\r\n0\r\n\r\n' % (len(body), body))[:cut] + b'zz\r\n'
    return [], body

RAW_REQUESTS = st.fixed_dictionaries({
    'method': st.sampled_from([b'GET', b'POST', b'PUT', b'DELETE', b'PATCH', b'OPTIONS', b'HEAD', b'BREW', b'PROPFIND']),
    'path': st.sampled_from([b'/predict', b'/', b'/health', b'/admin/policy', b'/metrics']) | st.binary(min_size=1, max_size=30).map(
        lambda b: b'/' + bytes(c for c in b if 0x21 <= c < 0x7f and c != 0x23)),
    'ctype': st.sampled_from([b'application/json', b'application/x-www-form-urlencoded', b'text/plain', b'']),
    'body': st.binary(max_size=200) | st.sampled_from([json.dumps(RECORD).encode(), b'experience=1&test_score=2&interview_score=3', b'[' * 500]),
    'how': st.sampled_from(['length', 'chunked', 'bad chunked', 'none']),
    'cut': st.integers(0, 40),
})

def test_fuzz_raw_http_through_gunicorn_never_5xx(one_server):
    "Generated raw requests (methods, paths, content types, bodies framed well or badly) through gunicorn: never a 5xx"
    seen = []
    @settings(max_examples=80, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(RAW_REQUESTS)
    def run(req):
        headers, payload = _frame(req['body'], req['how'], req['cut'])
        if req['ctype']: headers.append(b'Content-Type: ' + req['ctype'])
        data = b'%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s\r\n%s' % (
            req['method'], req['path'], b''.join(h + b'\r\n' for h in headers), payload)
        with socket.create_connection(('127.0.0.1', one_server.port), timeout=15) as s:
            s.sendall(data); s.shutdown(socket.SHUT_WR)
            out = b''
            while (part := s.recv(65536)): out += part
        status = int(out.split()[1]) if out.startswith(b'HTTP/1.') else None   # None: closed without an answer (a cut request)
        seen.append(status)
        assert status is None or status < 500, (data[:300], out[:400])
    run()
    assert len(seen) >= 50 and sum(s is not None for s in seen) >= 40, seen
    assert http_call(one_server.url + '/health')[0] == 200

def test_every_worker_keys_a_user_alike(tmp_path):
    "The conf draws one log salt in the master: a user's requests share one user_key whichever worker answers"
    from labkit.core import RequestLog
    env = {'LABKIT_REQUEST_LOG': str(tmp_path/'log'), 'LABKIT_WORKER_CLASS': 'sync'}   # sync: a busy worker leaves the next to the other
    with GunicornServer(workers=2, env=env) as server, ThreadPoolExecutor(8) as pool:
        deadline = time.monotonic() + 60
        while True:   # until both workers have answered (each writes its own metrics file when it counts)
            list(pool.map(lambda _: http_call(server.url + '/predict', 'POST', RECORD, headers={'X-User-Id': 'u-7'}), range(40)))
            answered = {f.name for f in (server.dir/'metrics').glob('counter_*.db')}
            if all(any(str(pid) in name for name in answered) for pid in server.worker_pids()): break
            if time.monotonic() > deadline: pytest.fail(f'one worker answered every request for 60 s: {answered}')
    records = RequestLog(tmp_path/'log').records()
    assert records and len({r['user_key'] for r in records}) == 1, records[:3]
    assert all('u-7' not in json.dumps(r) for r in records)
