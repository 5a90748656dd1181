"Monitoring: the request log's guarantees with real processes, the metrics endpoint, and the Prometheus/Grafana files"
import http.client
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
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from scipy import stats
from labkit.core import RequestLog
from labkit.monitoring import *
from labkit.serving import create_app
from labkit.cli import command_parser
from conftest import free_port, labkit_cmd

ROOT = Path(__file__).resolve().parents[1]
MON = ROOT/'docker'/'monitoring'
yaml = pytest.importorskip('yaml')


def wait_for(predicate, seconds:float, what:str, proc=None, every:float=0.1):
    "Poll `predicate` until it is true; fail saying what was awaited (and how the process ended, if it did)"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate(): return
        if proc is not None and proc.poll() is not None: pytest.fail(f"the process exited ({proc.returncode}) while waiting for {what}")
        time.sleep(every)
    pytest.fail(f"gave up after {seconds:g} s waiting for {what}")

def metrics_page(port:int):
    "The /metrics page on 127.0.0.1:`port`, or None while nothing answers there"
    try:
        with urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=5) as r: return r.read().decode()
    except OSError: return None

def sample(text:str, name:str, **labels) -> float:
    "The value of one sample in a Prometheus text page (None when absent)"
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()): return s.value
    return None


# --- the request log -------------------------------------------------------------------------------------

def _in_forked_workers(target, log, n:int, beside=None):
    "Run `target(log, worker, n)` in 4 forked processes (and `beside()` in this one meanwhile); all must exit 0 within 60 s"
    procs = [mp.get_context('fork').Process(target=target, args=(log, w, n)) for w in range(4)]
    try:
        for p in procs: p.start()
        if beside: beside()
        for p in procs: p.join(60)
        assert [p.exitcode for p in procs] == [0] * 4
    finally:
        for p in procs:
            if p.is_alive(): p.kill()                             # one stuck past its deadline is not left behind

def _writer(log, worker, n):
    for i in range(n): log.append({'worker': worker, 'i': i, 'pad': 'x' * (i % 50)})

def test_concurrent_processes_lose_and_interleave_nothing(tmp_path):
    "Forked workers share one RequestLog object (as gunicorn workers share the app): every record, whole, in order"
    log = RequestLog(tmp_path, segment_bytes=8_000, keep_segments=10_000)   # many rotations, no retention
    _in_forked_workers(_writer, log, 300)
    recs = log.records()
    assert log.skipped == 0 and len(recs) == 1200
    for w in range(4): assert [r['i'] for r in recs if r['worker'] == w] == list(range(300))
    segs = log.segments()
    assert len(segs) > 5                                         # several rotations happened
    assert all(s.stat().st_size <= 8_000 for s in segs)          # rotation happened once per full segment
    for s in segs:                                                # every line is one whole JSON record
        for line in s.read_bytes().split(b'\n')[:-1]: json.loads(line)

def _batch_writer(log, worker, n):
    for b in range(n): log.extend([{'worker': worker, 'batch': b, 'row': r, 'pad': 'x' * (b % 40)} for r in range(1 + b % 7)])

def test_concurrent_batches_stay_whole_and_contiguous(tmp_path):
    "Forked workers extend one log with batches: each batch's rows are adjacent lines of one segment, none lost"
    log = RequestLog(tmp_path, segment_bytes=6_000, keep_segments=10_000)
    _in_forked_workers(_batch_writer, log, 150)
    lines = log.scan()
    assert log.skipped == 0 and len(lines) == 4 * sum(1 + b % 7 for b in range(150))
    batches = {}
    for name, _, r, _ in lines: batches.setdefault((r['worker'], r['batch']), []).append((name, r['row']))
    for (w, b), rows in batches.items():
        assert [row for _, row in rows] == list(range(1 + b % 7)) and len({name for name, _ in rows}) == 1
    keys = [(r['worker'], r['batch']) for *_, r, _ in lines]
    assert sum(k != prev for k, prev in zip(keys[1:], keys)) == len(batches) - 1   # never interleaved
    assert len(log.segments()) > 5 and all(s.stat().st_size <= 6_000 for s in log.segments())

def test_a_writer_that_forks_after_appending_shares_no_segment_with_its_children(tmp_path):
    "Each child lets go of the segment its parent holds and claims its own: nobody writes into another's segment"
    log = RequestLog(tmp_path, segment_bytes=8_000, keep_segments=10_000)
    log.append({'worker': -1, 'i': 0, 'pad': ''})                  # the parent now holds open descriptors
    _in_forked_workers(_writer, log, 300, beside=lambda: _writer(log, -1, 300))   # and keeps writing beside them
    recs = log.records()
    assert log.skipped == 0 and len(recs) == 1501
    for w in range(-1, 4): assert [r['i'] for r in recs if r['worker'] == w] == ([0] if w == -1 else []) + list(range(300))
    assert all(s.stat().st_size <= 8_000 for s in log.segments())

def test_a_forked_child_writes_in_a_segment_of_its_own(tmp_path):
    "A child must not write into the segment its parent holds, and must not let go of the parent's flock"
    from labkit.core import _try_lock
    log = RequestLog(tmp_path)
    log.append({'who': 'parent'})                                 # the parent holds its segment now
    held = log.segments()[-1]
    child = mp.get_context('fork').Process(target=_writer, args=(log, 'child', 1))
    child.start(); child.join(60)
    assert child.exitcode == 0 and [r.get('worker', r.get('who')) for r in log.records()] == ['parent', 'child']
    assert [name for name, *_ in log.scan()] == [held.name, log.segments()[-1].name] and len(log.segments()) == 2
    fd = os.open(held, os.O_RDONLY)
    try: assert not _try_lock(fd), "the child's exit let go of the parent's segment"
    finally: os.close(fd)
    theirs = log.segments()[-1].name
    log.append({'who': 'parent'})                                 # the parent goes on in its own segment
    assert [(name, r.get('who', r.get('worker'))) for name, _, r, _ in log.scan()] == [
        (held.name, 'parent'), (held.name, 'parent'), (theirs, 'child')]

def test_threads_of_one_process_write_whole_lines(tmp_path):
    import threading
    log = RequestLog(tmp_path, segment_bytes=4_000, keep_segments=10_000)
    threads = [threading.Thread(target=_writer, args=(log, w, 200)) for w in range(4)]
    for t in threads: t.start()
    for t in threads: t.join(60)
    assert not any(t.is_alive() for t in threads), 'a writer thread did not finish within 60 s'
    recs = log.records()
    assert log.skipped == 0 and len(recs) == 800
    for w in range(4): assert [r['i'] for r in recs if r['worker'] == w] == list(range(200))

def test_fsync_only_when_asked(tmp_path, monkeypatch):
    "A request log does not fsync by default; `fsync=True` (audit logs) fsyncs every record before append returns"
    synced = []
    monkeypatch.setattr(os, 'fsync', lambda fd: synced.append(fd))
    quiet, durable = RequestLog(tmp_path/'requests'), RequestLog(tmp_path/'audit', fsync=True)
    for i in range(3): quiet.append({'i': i})
    assert synced == [] and quiet.fsync is False
    for i in range(3): durable.append({'i': i})
    assert len(synced) == 3 + 1                                   # each record, and the folder once for the new segment
    assert [r['i'] for r in durable.records()] == [0, 1, 2]

def _two_people(log, worker, n):
    for i in range(n): log.append({'worker': worker, 'i': i, 'who': 'ann' if i % 2 else 'bob', 'pad': 'x' * (i % 50)})

def test_an_erasure_while_workers_append_loses_nobody_elses_record(tmp_path):
    "Erasures run in place, without stopping the writers: every other record stays whole, in order, and none is lost"
    log = RequestLog(tmp_path, segment_bytes=6_000, keep_segments=10_000)
    def erase_often():
        for _ in range(40): log.erase(lambda r: r.get('who') == 'ann'); time.sleep(0.005)
    _in_forked_workers(_two_people, log, 400, beside=erase_often)
    log.erase(lambda r: r.get('who') == 'ann')                    # the writers are done: the last one erases the rest
    recs = log.records()
    assert log.skipped == 0 and not [r for r in recs if r['who'] == 'ann']
    for w in range(4): assert [r['i'] for r in recs if r['worker'] == w] == list(range(0, 400, 2))
    assert all(s.stat().st_size <= 6_000 for s in log.segments())

def test_a_writer_that_ends_leaves_its_segment_to_the_next(tmp_path):
    "A writer that closes (or dies) lets go of its segment: the next writer takes it over, so a short-lived one adds no segment"
    for i in range(5):
        log = RequestLog(tmp_path); log.append({'i': i}); log.close()   # as five runs of a command that logs once
    assert len(RequestLog(tmp_path).segments()) == 1
    a, b = RequestLog(tmp_path), RequestLog(tmp_path)           # two at once: the second gets a segment of its own
    a.append({'i': 5}); b.append({'i': 6})
    assert [(name, r['i']) for name, _, r, _ in a.scan()][-2:] == [('segment-00000001.jsonl', 5), ('segment-00000002.jsonl', 6)]

def test_a_reader_decodes_only_what_was_appended_since_its_last_scan(tmp_path, monkeypatch):
    "The monitor scans every few seconds: a scan reuses what the last one read, and sees what a fresh reader sees"
    import labkit.core as core
    writer, reader = RequestLog(tmp_path, segment_bytes=2_000, keep_segments=3), RequestLog(tmp_path)
    fresh = lambda **kw: RequestLog(tmp_path).scan(**kw)
    for i in range(50): writer.append({'i': i})
    assert reader.scan() == fresh()
    decoded, decode = [], core._decode_line
    monkeypatch.setattr(core, '_decode_line', lambda raw: decoded.append(raw) or decode(raw))
    for i in range(50, 55): writer.append({'i': i})
    assert [r['i'] for *_, r, _ in reader.scan()][-6:] == list(range(49, 55)) and len(decoded) == 5   # only the new lines
    monkeypatch.undo()
    writer.close()                                                                 # the writer dies mid-write: a torn line
    with open(writer.segments()[-1], 'ab') as f: f.write(b'{"i": -1, "x')        # (then the next writer ends it)
    assert reader.scan() == fresh() and reader.skipped == 1
    writer.append({'i': 55})
    assert reader.scan() == fresh() and [why for *_, why in reader.scan()][-2:] == ['unreadable', None]
    odd = lambda r: 'odd' if r['i'] % 2 else None                                  # another check: checked anew
    assert reader.scan(problem=odd) == fresh(problem=odd) and reader.scan() == fresh()
    writer.close(); seg = writer.segments()[-1]; core.write_atomic(seg, seg.read_bytes().replace(b'"i":20}', b'"i":-2}'))   # replaced: same size, same end
    assert reader.scan() == fresh() and -2 in [r['i'] for *_, r, _ in reader.scan() if r]
    writer.erase(lambda r: r['i'] == 30)                                          # erased in place: same file, same end
    assert reader.scan() == fresh() and 30 not in [r['i'] for *_, r, _ in reader.scan() if r]
    for i in range(56, 400): writer.append({'i': i})                            # rotations and retention
    assert reader.scan(last=10) == fresh(last=10) and reader.scan() == fresh()

def test_retention_keeps_a_bounded_contiguous_tail(tmp_path):
    log = RequestLog(tmp_path, segment_bytes=2_000, keep_segments=3)
    for i in range(1000): log.append({'i': i})
    assert len(log.segments()) == 3
    assert sum(s.stat().st_size for s in log.segments()) <= 3 * 2_000
    ids = [r['i'] for r in log.records()]
    assert ids == list(range(ids[0], 1000)) and log.records(last=5)[-1]['i'] == 999

def test_append_takes_only_a_mapping(tmp_path):
    "A list used to be logged as a line the monitor could not read"
    log = RequestLog(tmp_path, fsync=False)
    for bad in ([1, 2, 3], 'text', 7, None):
        with pytest.raises(TypeError, match='takes one record: a record is a dict'): log.append(bad)
    assert log.records() == []                                    # nothing was written
    from types import MappingProxyType
    log.append(MappingProxyType({'i': 1}))                       # any mapping is a record
    assert log.records() == [{'i': 1}]

def test_reader_skips_and_names_lines_that_are_not_records(tmp_path):
    log = RequestLog(tmp_path, fsync=False)
    log.append({'i': 0})
    with open(log.segments()[-1], 'ab') as f: f.write(b'[1, 2, 3]\n\xff\xfe\n' + b'[' * 100_000 + b'\n"text"\n')
    log.append({'i': 1})
    assert log.records() == [{'i': 0}, {'i': 1}] and log.skipped == 4
    assert [why for *_, why in log.scan()] == [None, 'not_object', 'unreadable', 'unreadable', 'not_object', None]

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


# --- drift statistics -----------------------------------------------------------------------------------

def test_chi2_is_pearsons_without_yates_correction_on_two_categories():
    "0/1 prediction drift: scipy's default (Yates) gave p 0.057 here, Pearson's gives 0.040, across alpha 0.05"
    ref, cur = [1]*30 + [0]*70, [1]*44 + [0]*56
    observed = np.array([[70, 30], [56, 44]])                    # columns: categories '0', '1'
    expected = observed.sum(1, keepdims=True) * observed.sum(0) / observed.sum()
    by_hand = ((observed - expected)**2 / expected).sum()
    statistic, p = chi2_test(ref, cur)
    assert statistic == pytest.approx(by_hand, rel=1e-12) and p == pytest.approx(stats.chi2.sf(by_hand, 1), rel=1e-12)
    pearson = stats.chi2_contingency(observed, correction=False)
    assert (statistic, p) == pytest.approx((pearson.statistic, pearson.pvalue), rel=1e-12)
    assert p < 0.05 < stats.chi2_contingency(observed).pvalue    # the correction would have hidden this drift
    assert feature_drift(ref, cur, categorical=True)['p_value'] == pytest.approx(p)

def test_chi2_matches_scipy_on_three_categories():
    rng = np.random.default_rng(1)
    ref, cur = rng.choice(list('abc'), 500), rng.choice(list('abc'), 300, p=[.4, .4, .2])
    table = np.array([[np.sum(ref == c) for c in 'abc'], [np.sum(cur == c) for c in 'abc']])
    res = stats.chi2_contingency(table, correction=False)
    assert chi2_test(ref, cur) == pytest.approx((res.statistic, res.pvalue), rel=1e-12)


# --- the monitor and its metrics -------------------------------------------------------------------------

@pytest.fixture(scope='module')
def reference():
    X = make_applicants(1500, seed=0)
    model = train_credit_model(X, true_outcome(X))
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
    service = serve_monitor(str(tmp_path/'log'), str(tmp_path/'ref.csv'), port=0, interval=0.1)
    try:
        wait_for(lambda: service.monitor.history, 60, "the monitor's first update")
        text = metrics_page(service.port)
    finally: service.stop()
    assert 'labkit_window_records 200.0' in text
    assert {'labkit_prediction_psi', 'labkit_feature_drift_p_value', 'labkit_monitor_seconds_since_update'} <= _exposed(text)
    assert not service.thread.is_alive() and metrics_page(service.port) is None    # stopped: thread ended, port closed

def test_served_monitor_survives_bad_lines_and_counts_them(reference, tmp_path):
    "A valid-JSON line that is not an object, or a field of the wrong type, used to kill the update thread (metrics frozen)"
    ref, _ = reference
    log = RequestLog(tmp_path/'log', fsync=False)
    rows = make_applicants(120, seed=4).to_dict('records')
    for rec in rows[:60]: log.append({'inputs': rec, 'prediction': 0, 'version': 'v1'})
    with open(log.segments()[-1], 'ab') as f:
        f.write(b'[1, 2, 3]\n{"inputs": {"age": "forty"}, "prediction": 0}\n{"inputs": 5}\n{"inputs": {}, "prediction": [[1]]}\nnot json\n')
    ref.to_csv(tmp_path/'ref.csv', index=False)
    service = serve_monitor(str(tmp_path/'log'), str(tmp_path/'ref.csv'), port=0, interval=0.1)
    try:
        wait_for(lambda: service.monitor.history, 60, "the monitor's first update")
        first = metrics_page(service.port)
        assert sample(first, 'labkit_window_records') == 60
        for rec in rows[60:]: log.append({'inputs': rec, 'prediction': 0, 'version': 'v1'})
        wait_for(lambda: sample(metrics_page(service.port) or '', 'labkit_window_records') == 120, 60,
                 'the monitor to go on updating after the bad lines (labkit_window_records 120)')
        later = metrics_page(service.port)
    finally: service.stop()
    counts = {r: sample(later, 'labkit_monitor_bad_records_total', reason=r) for r in BAD_RECORD_REASONS}
    assert counts == {'unreadable': 1, 'not_object': 1, 'bad_inputs': 2, 'bad_prediction': 1, 'bad_field': 0}   # once each
    assert sample(later, 'labkit_monitor_last_update_timestamp_seconds') > sample(first, 'labkit_monitor_last_update_timestamp_seconds')
    assert sample(later, 'labkit_monitor_update_errors_total') == 0

def test_a_failed_update_is_counted_logged_and_the_next_one_runs(reference, tmp_path, caplog):
    ref, _ = reference
    log = RequestLog(tmp_path, fsync=False)
    for rec in make_applicants(30, seed=4).to_dict('records'): log.append({'inputs': rec, 'prediction': 1})
    mon = DriftMonitor(ref, window=100)
    assert mon.try_update(log, labels_csv=str(tmp_path/'absent.csv'))    # no labels yet: fine
    stamp = mon.metric_values('labkit_monitor_last_update_timestamp_seconds')[()]
    (tmp_path/'labels.csv').write_text('no,columns,expected\n1,2,3\n')   # a labels file without id/label
    assert not mon.try_update(log, labels_csv=str(tmp_path/'labels.csv'))
    assert mon.metric_values('labkit_monitor_update_errors_total') == {(): 1.0}
    assert mon.metric_values('labkit_monitor_last_update_timestamp_seconds')[()] == stamp     # nothing pretends to be fresh
    assert 'update failed' in caplog.text and 'KeyError' in caplog.text
    (tmp_path/'labels.csv').write_text('id,label\n1,0\n')
    assert mon.try_update(log, labels_csv=str(tmp_path/'labels.csv'))
    assert mon.metric_values('labkit_monitor_last_update_timestamp_seconds')[()] >= stamp

def test_an_idle_log_is_not_recomputed_but_stays_fresh(reference, tmp_path, monkeypatch):
    "No new record since the last update: the same report, the timestamp moves, the statistics are not computed again"
    ref, _ = reference
    log = RequestLog(tmp_path, fsync=False)
    for rec in make_applicants(50, seed=4).to_dict('records'): log.append({'inputs': rec, 'prediction': 1})
    mon = DriftMonitor(ref, window=100)
    first = mon.update_from_log(log)
    stamp = mon.metric_values('labkit_monitor_last_update_timestamp_seconds')[()]
    observed = []
    monkeypatch.setattr(DriftMonitor, 'observe', lambda self, frame, _o=DriftMonitor.observe: observed.append(len(frame)) or _o(self, frame))
    time.sleep(0.01)
    assert mon.update_from_log(log) is first and observed == []
    assert mon.metric_values('labkit_monitor_last_update_timestamp_seconds')[()] > stamp
    log.append({'inputs': make_applicants(1, seed=5).to_dict('records')[0], 'prediction': 0})
    assert mon.update_from_log(log) is not first and observed == [51]
    assert mon.update_from_log(log, labels={}) is not None and observed == [51, 51]   # labels: always computed

def test_staleness_is_exposed_and_alerted(reference):
    ref, _ = reference
    mon = DriftMonitor(ref)
    mon._updated_at -= 400                                        # as if no update had succeeded for 400 s
    assert mon.metric_values('labkit_monitor_seconds_since_update')[()] >= 400
    stale = [r for r in ALERT_RULES if r.metric == 'labkit_monitor_seconds_since_update']
    assert len(stale) == 1 and stale[0].holds(400) and not stale[0].holds(30)
    rules = yaml.safe_load((MON/'alerts.yml').read_text())['groups'][0]['rules']
    assert {'alert': 'MonitorStale', 'expr': 'labkit_monitor_seconds_since_update > 300'}.items() <= \
        next(r for r in rules if r['alert'] == 'MonitorStale').items()

def test_monitor_cli_through_dispatcher(reference, tmp_path):
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    assert subprocess.run(labkit_cmd('monitor', '--help'), env=env, capture_output=True).returncode == 0
    ref, _ = reference
    ref.to_csv(tmp_path/'ref.csv', index=False)
    log = RequestLog(tmp_path/'log', fsync=False)
    for rec in make_applicants(150, seed=4).to_dict('records'): log.append({'inputs': rec, 'prediction': 1})
    port = free_port()
    proc = subprocess.Popen(labkit_cmd('monitor', tmp_path/'log', tmp_path/'ref.csv', '--port', port, '--interval', '0.2'),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: 'labkit_window_records 150.0' in (metrics_page(port) or ''), 120,
                 f'labkit monitor to serve labkit_window_records 150.0 on port {port}', proc)
        proc.send_signal(signal.SIGTERM)                           # what kill and docker stop send
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None: proc.kill(); proc.wait(10)
    assert proc.returncode == 0, out                               # stopped cleanly, not killed by the signal
    assert metrics_page(port) is None and 'Traceback' not in out

def test_monitor_cli_names_a_bad_reference_file(tmp_path):
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    out = subprocess.run(labkit_cmd('monitor', tmp_path/'log', tmp_path/'absent.csv', '--port', free_port()),
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and 'absent.csv' in out.stderr and 'Traceback' not in out.stderr

def test_monitor_cli_says_when_its_port_is_taken(reference, tmp_path):
    import socket
    ref, _ = reference
    ref.to_csv(tmp_path/'ref.csv', index=False)
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0)); taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(labkit_cmd('monitor', tmp_path/'log', tmp_path/'ref.csv', '--port', port),
                             env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and f'127.0.0.1:{port}' in out.stderr and 'Traceback' not in out.stderr, out.stderr


# --- Prometheus + Grafana files ---------------------------------------------------------------------------

def _serving_metrics_text():
    "The /metrics page of the serving lab's app after one prediction"
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
    exposed |= _exposed(_serving_metrics_text())
    assert used - exposed == set(), f"dashboard/rules use metrics nobody exposes: {sorted(used - exposed)}"

def test_serving_metrics_parse_with_prometheus_parser():
    text = _serving_metrics_text()
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
    cmd = compose['services']['monitor']['command']   # what compose runs is a command labkit parses
    assert cmd[:2] == ['labkit', 'monitor'] and compose['services']['monitor']['image'].startswith('labkit-lab:')
    args = command_parser('monitor').parse_args(cmd[2:])
    assert (args.log_dir, args.port) == (compose['services']['app']['environment']['LABKIT_REQUEST_LOG'], 9108)
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

def predict_once(url:str, body:bytes):
    "POST one prediction: its request id, or None when no whole answer came back (server gone, response cut by a kill)"
    req = urllib.request.Request(url + '/predict', body, {'Content-Type': 'application/json'})
    try:
        with urllib.request.urlopen(req, timeout=5) as r: return json.loads(r.read())['request_id']
    except (OSError, ValueError, http.client.HTTPException): return None   # IncompleteRead is an HTTPException, not an OSError

def test_a_response_cut_mid_body_counts_as_not_acknowledged():
    "A SIGKILL can cut a response after its headers: http.client raises IncompleteRead, which the client must absorb"
    import socket, threading
    srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen()
    def answer_half():
        conn, _ = srv.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"request_id": "ab')
    t = threading.Thread(target=answer_half, daemon=True); t.start()
    try: assert predict_once(f'http://127.0.0.1:{srv.getsockname()[1]}', b'{}') is None
    finally: t.join(10); srv.close()

def _answers(url:str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r: return r.status == 200
    except (OSError, http.client.HTTPException): return False

def test_waiting_for_a_server_that_never_answers_fails_saying_so():
    proc = subprocess.Popen([sys.executable, '-c', 'pass'])
    with pytest.raises(pytest.fail.Exception, match='exited .* while waiting for gunicorn to answer'):
        wait_for(lambda: _answers(f'http://127.0.0.1:{free_port()}/health'), 60, 'gunicorn to answer /health', proc)
    with pytest.raises(pytest.fail.Exception, match='gave up after 0.3 s waiting for 300 answers'):
        wait_for(lambda: False, 0.3, '300 answers')

def test_gunicorn_workers_log_every_answered_request_even_when_killed(tmp_path):
    "3 workers forked from one app (--preload: the log object exists before the fork); SIGKILL mid-traffic"
    import threading
    from concurrent.futures import ThreadPoolExecutor
    (tmp_path/'logged_app.py').write_text(LOGGED_APP)
    port = free_port()
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), str(tmp_path)]), 'REQUEST_LOG_DIR': str(tmp_path/'log')}
    env.pop('PROMETHEUS_MULTIPROC_DIR', None)
    proc = subprocess.Popen([sys.executable, '-m', 'gunicorn', '--preload', '-w', '3', '-b', f'127.0.0.1:{port}', 'logged_app:app'],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f'http://127.0.0.1:{port}'
    try:
        wait_for(lambda: _answers(url + '/health'), 120, f'gunicorn to answer {url}/health', proc, every=0.2)
        acked, lock, stop = [], threading.Lock(), threading.Event()
        def client(k):
            i = 0
            while not stop.is_set():
                body = json.dumps({'experience': (k + i) % 30, 'test_score': 7.0, 'interview_score': 6.5}).encode()
                if (rid := predict_once(url, body)) is None: return     # the server is gone, or cut this answer
                with lock: acked.append(rid)
                i += 1
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(client, k) for k in range(6)]
            wait_for(lambda: len(acked) >= 300 or all(f.done() for f in futures), 120, '300 answered predictions', proc, every=0.05)
            assert len(acked) >= 300, f"the clients stopped after {len(acked)} answers, before the kill"
            os.killpg(proc.pid, signal.SIGKILL)                  # master and workers die mid-traffic
            stop.set()
            for f in futures: f.result(30)
    finally:
        if proc.poll() is None: os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    logged = [r['request_id'] for r in RequestLog(tmp_path/'log').records()]
    assert set(acked) <= set(logged)                             # every answered request is on disk
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
