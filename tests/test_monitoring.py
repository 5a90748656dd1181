"Monitoring: the request log's guarantees with real processes, the metrics endpoint, and the Prometheus/Grafana files"
import json
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
import pytest
from prometheus_client.parser import text_string_to_metric_families
from labkit.monitoring import *
from conftest import labkit_cmd

ROOT = Path(__file__).resolve().parents[1]
MON = ROOT/'docker'/'monitoring'
yaml = pytest.importorskip('yaml')


# --- the request log -------------------------------------------------------------------------------------

def _writer(log, worker, n):
    for i in range(n): log.append({'worker': worker, 'i': i, 'pad': 'x' * (i % 50)})

def test_concurrent_processes_lose_and_interleave_nothing(tmp_path):
    "Forked workers share one RequestLog object (as gunicorn workers share the app): every record, whole, in order"
    log = RequestLog(tmp_path, segment_bytes=8_000, keep_segments=10_000)   # many rotations, no retention
    ctx = mp.get_context('fork')
    procs = [ctx.Process(target=_writer, args=(log, w, 300)) for w in range(4)]
    for p in procs: p.start()
    for p in procs: p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    recs = log.records()
    assert log.skipped == 0 and len(recs) == 1200
    for w in range(4): assert [r['i'] for r in recs if r['worker'] == w] == list(range(300))
    segs = log.segments()
    assert len(segs) > 5                                         # several rotations happened
    assert all(s.stat().st_size <= 8_000 for s in segs)          # rotation happened once per full segment
    for s in segs:                                                # every line is one whole JSON record
        for line in s.read_bytes().split(b'\n')[:-1]: json.loads(line)

def test_retention_keeps_a_bounded_contiguous_tail(tmp_path):
    log = RequestLog(tmp_path, segment_bytes=2_000, keep_segments=3)
    for i in range(1000): log.append({'i': i})
    assert len(log.segments()) == 3
    assert sum(s.stat().st_size for s in log.segments()) <= 3 * 2_000
    ids = [r['i'] for r in log.records()]
    assert ids == list(range(ids[0], 1000)) and log.records(last=5)[-1]['i'] == 999

WRITER = textwrap.dedent('''
    import sys, time
    from labkit.monitoring import RequestLog
    log, start = RequestLog(sys.argv[1], segment_bytes=4_000, keep_segments=10_000), int(sys.argv[2])
    i = start
    while True:
        log.append({'i': i, 'payload': 'p' * 100})
        print(i, flush=True)      # acknowledged: append returned
        i += 1
        if len(sys.argv) > 3 and i >= start + int(sys.argv[3]): break
''')

def test_sigkill_loses_no_acknowledged_record_and_restart_continues(tmp_path):
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    script = tmp_path/'writer.py'; script.write_text(WRITER)
    logdir = tmp_path/'log'
    proc = subprocess.Popen([sys.executable, str(script), str(logdir), '0'], stdout=subprocess.PIPE, text=True, env=env)
    acked = []
    for line in proc.stdout:
        acked.append(int(line))
        if len(acked) >= 300: break
    os.kill(proc.pid, signal.SIGKILL)                             # crash in the middle of the stream
    proc.wait(); acked += [int(l) for l in proc.stdout.read().split()]
    log = RequestLog(logdir)
    got = [r['i'] for r in log.records()]
    assert set(acked) <= set(got)                                 # nothing acknowledged is lost
    assert got == list(range(len(got)))                           # in order, no duplicate, no gap
    # a crash can leave a torn last line (a record never acknowledged): simulate one, then restart a writer
    with open(log.segments()[-1], 'ab') as f: f.write(b'{"i": -1, "payl')
    restart = len(got) + 1000
    out = subprocess.run([sys.executable, str(script), str(logdir), str(restart), '50'], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    after = [r['i'] for r in log.records()]
    assert after == got + list(range(restart, restart + 50)) and log.skipped == 1


# --- the monitor and its metrics -------------------------------------------------------------------------

@pytest.fixture(scope='module')
def reference():
    X = make_applicants(1500, seed=0)
    model = fit_model(X, true_outcome(X))
    return X.assign(prediction=model.predict(X)), model

def _exposed(text):
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}

def test_monitor_metrics_parse_and_alerts_fire(reference, tmp_path):
    ref, model = reference
    log = RequestLog(tmp_path, fsync=False)
    mon = DriftMonitor(ref, window=300)
    traffic = make_traffic({'normal': 300, 'broken income': 300}, seed=3)
    timeline = replay(traffic, model_predictor(model), log, mon, step=100, label_delay=100)
    assert timeline.alerts.iloc[2] == [] and 'FeatureBroken(income)' in timeline.alerts.iloc[-1]
    text = mon.metrics_text()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert {'labkit_feature_psi', 'labkit_feature_broken', 'labkit_alert_firing', 'process_cpu_seconds'} <= set(fams)
    broken = {s.labels['feature']: s.value for s in fams['labkit_feature_broken'].samples}
    assert broken == {'age': 0.0, 'income': 1.0, 'debt_ratio': 0.0, 'channel': 0.0}

def test_serve_monitor_over_http(reference, tmp_path):
    ref, model = reference
    log = RequestLog(tmp_path/'log', fsync=False)
    for rec in make_applicants(200, seed=4).to_dict('records'): log.append({'inputs': rec, 'prediction': 0, 'version': 'v1'})
    ref.to_csv(tmp_path/'ref.csv', index=False)
    mon, server, stop = serve_monitor(str(tmp_path/'log'), str(tmp_path/'ref.csv'), port=0, interval=0.1)
    try:
        for _ in range(100):
            if mon.history: break
            time.sleep(0.05)
        with urllib.request.urlopen(f'http://127.0.0.1:{server.server_address[1]}/metrics', timeout=5) as r: text = r.read().decode()
    finally: stop.set(); server.shutdown()
    assert 'labkit_window_records 200.0' in text
    assert {'labkit_prediction_psi', 'labkit_feature_drift_p_value'} <= _exposed(text)

def test_monitor_cli_through_dispatcher(reference, tmp_path):
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    assert subprocess.run(labkit_cmd('monitor', '--help'), env=env, capture_output=True).returncode == 0
    ref, _ = reference
    ref.to_csv(tmp_path/'ref.csv', index=False)
    log = RequestLog(tmp_path/'log', fsync=False)
    for rec in make_applicants(150, seed=4).to_dict('records'): log.append({'inputs': rec, 'prediction': 1})
    import socket
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    proc = subprocess.Popen(labkit_cmd('monitor', tmp_path/'log', tmp_path/'ref.csv',
                                       '--port', port, '--interval', '0.2'), env=env)
    try:
        text = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=2) as r: text = r.read().decode()
                if 'labkit_window_records 150.0' in text: break
            except OSError: pass
            time.sleep(0.2)
        assert text and 'labkit_window_records 150.0' in text
    finally: proc.terminate(); proc.wait(10)


# --- Prometheus + Grafana files ---------------------------------------------------------------------------

def _serving_metrics_text():
    "The /metrics page of the serving lab's app after one prediction, or None where that lab is absent"
    try: from labkit.serving import create_app
    except ImportError: return None
    app = create_app()
    client = app.test_client()
    client.post('/predict', json={'experience': 3, 'test_score': 7.5, 'interview_score': 8.0})
    return client.get('/metrics').get_data(as_text=True)

def test_committed_config_is_generated_from_the_module(tmp_path):
    "alerts.yml and the dashboard JSON are what write_monitoring_config writes (edit the rules in the notebook)"
    write_monitoring_config(tmp_path)
    assert (tmp_path/'alerts.yml').read_text() == (MON/'alerts.yml').read_text()
    name = 'grafana/dashboards/labkit-monitoring.json'
    assert json.loads((tmp_path/name).read_text()) == json.loads((MON/name).read_text())

def test_every_metric_the_dashboard_and_rules_use_is_exposed(reference):
    ref, _ = reference
    mon = DriftMonitor(ref, window=200)
    mon.observe(make_applicants(200, seed=5).assign(prediction=0, label=0))
    exposed = _exposed(mon.metrics_text())
    dash = json.loads((MON/'grafana'/'dashboards'/'labkit-monitoring.json').read_text())
    rules = yaml.safe_load((MON/'alerts.yml').read_text())
    used = dashboard_metric_names(dash, rules)
    app_used = {m for m in used if not m.startswith(('labkit_feature', 'labkit_prediction_psi', 'labkit_prediction_share',
                                                     'labkit_rolling', 'labkit_window', 'labkit_alert', 'labkit_monitor', 'process_'))}
    app_text = _serving_metrics_text()
    if app_text is not None: exposed |= _exposed(app_text)
    elif app_used: pytest.skip(f"the serving lab is not in this checkout: cannot check {sorted(app_used)}")
    assert used - exposed == set(), f"dashboard/rules use metrics nobody exposes: {sorted(used - exposed)}"

def test_serving_metrics_parse_with_prometheus_parser():
    text = _serving_metrics_text()
    if text is None: pytest.skip("the serving lab (labkit.serving) is not in this checkout")
    fams = list(text_string_to_metric_families(text))
    assert fams and any(f.name.startswith('labkit_') for f in fams)

def test_prometheus_and_grafana_files_fit_together():
    prom = yaml.safe_load((MON/'prometheus.yml').read_text())
    targets = {c['job_name']: c['static_configs'][0]['targets'] for c in prom['scrape_configs']}
    assert targets['app'] == ['127.0.0.1:8000'] and targets['monitor'] == ['127.0.0.1:9108']
    assert prom['rule_files'] == ['/etc/prometheus/alerts.yml']
    compose = yaml.safe_load((MON/'docker-compose.yml').read_text())
    mounts = [v for s in compose['services'].values() for v in s.get('volumes', [])]
    for src in ('./prometheus.yml', './alerts.yml', './grafana/provisioning', './grafana/dashboards'):
        assert any(m.startswith(src + ':') for m in mounts) and (MON/src).exists()
    assert './alerts.yml:/etc/prometheus/alerts.yml:ro' in mounts
    ds = yaml.safe_load((MON/'grafana/provisioning/datasources/prometheus.yml').read_text())['datasources'][0]
    dash = json.loads((MON/'grafana/dashboards/labkit-monitoring.json').read_text())
    assert {t['datasource']['uid'] for p in dash['panels'] for t in p['targets']} == {ds['uid']}
    provider = yaml.safe_load((MON/'grafana/provisioning/dashboards/labkit.yml').read_text())['providers'][0]
    assert './grafana/dashboards:' + provider['options']['path'] + ':ro' in mounts
    for rule in yaml.safe_load((MON/'alerts.yml').read_text())['groups'][0]['rules']:
        assert re.fullmatch(r'\d+s', rule['for']) and rule['labels']['severity'] in ('warning', 'critical')


# --- the served app under gunicorn ----------------------------------------------------------------------

LOGGED_APP = textwrap.dedent('''
    import os
    from labkit.serving import create_app
    from labkit.monitoring import RequestLog
    app = create_app(request_log=RequestLog(os.environ['REQUEST_LOG_DIR'], segment_bytes=20_000))
''')

def test_gunicorn_workers_log_every_answered_request_even_when_killed(tmp_path):
    "3 workers forked from one app (--preload: the log object exists before the fork); SIGKILL mid-traffic"
    pytest.importorskip('labkit.serving')
    import socket, threading, urllib.error
    from concurrent.futures import ThreadPoolExecutor
    (tmp_path/'logged_app.py').write_text(LOGGED_APP)
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), str(tmp_path)]), 'REQUEST_LOG_DIR': str(tmp_path/'log')}
    env.pop('PROMETHEUS_MULTIPROC_DIR', None)
    proc = subprocess.Popen([sys.executable, '-m', 'gunicorn', '--preload', '-w', '3', '-b', f'127.0.0.1:{port}', 'logged_app:app'],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f'http://127.0.0.1:{port}'
    try:
        for _ in range(150):
            try: urllib.request.urlopen(url + '/health', timeout=1).read(); break
            except OSError: time.sleep(0.2)
        acked, lock, stop = [], threading.Lock(), threading.Event()
        def client(k):
            i = 0
            while not stop.is_set():
                body = json.dumps({'experience': (k + i) % 30, 'test_score': 7.0, 'interview_score': 6.5}).encode()
                req = urllib.request.Request(url + '/predict', body, {'Content-Type': 'application/json'})
                try:
                    with urllib.request.urlopen(req, timeout=5) as r: rid = json.loads(r.read())['request_id']
                except (OSError, ValueError): return          # the server is gone
                with lock: acked.append(rid)
                i += 1
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(client, k) for k in range(6)]
            while len(acked) < 300: time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGKILL)                  # master and workers die mid-traffic
            stop.set()
            for f in futures: f.result(30)
    finally:
        if proc.poll() is None: os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    logged = [r['request_id'] for r in RequestLog(tmp_path/'log').records()]
    assert len(acked) >= 300 and set(acked) <= set(logged)      # every answered request is on disk
    assert len(logged) == len(set(logged))                       # once


def test_served_app_logs_to_the_folder_named_by_the_environment(tmp_path, monkeypatch):
    "What gunicorn's `labkit.serving:create_app()` does: LABKIT_REQUEST_LOG names the request log's folder"
    from labkit.serving import create_app
    from labkit.monitoring import RequestLog
    monkeypatch.setenv('LABKIT_REQUEST_LOG', str(tmp_path/'requests'))
    client = create_app().test_client()
    r = client.post('/predict', json=[{'experience': 5, 'test_score': 8, 'interview_score': 7}] * 3)
    assert r.status_code == 200
    records = RequestLog(tmp_path/'requests').records()
    assert len(records) == 3 and records[0]['inputs'] == {'experience': 5, 'test_score': 8, 'interview_score': 7}
