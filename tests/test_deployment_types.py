"Deployment types: the batch job (killed and resumed, corrupt chunks), precalculation, Redis Streams (killed consumer, killed broker, dead letters), reimplementation parity"
import json, os, select, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st
from labkit.core import ServiceUnavailable, find_program, wait_for_port, port_open, free_port
from labkit.serving import SALARY_FEATURES, predict_salary
from labkit.deployment_types import *
from labkit.deployment_types import _journal
from conftest import labkit_cmd

MODEL = salary_model()

def wait_until(condition, timeout:float, what:str, proc=None):
    "Poll `condition` until true; fail naming what was awaited (or the process that ended early)"
    end = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, f"the process exited ({proc.returncode}) while waiting for {what}"
        assert time.monotonic() < end, f"{what} did not happen within {timeout:.0f} s"
        time.sleep(0.05)

@pytest.fixture
def broker(tmp_path):
    "A redis-server of `redis_service` in tmp_path; skipped only where redis-server is not installed"
    try: service = redis_service(tmp_path/'redis')
    except ServiceUnavailable as e: pytest.skip(str(e))
    with service: yield service

@pytest.fixture
def requests():
    return hiring_requests(200)

# ---- batch ----

def scored_table(dst) -> pd.DataFrame:
    return pd.concat(pd.read_csv(p) for p in sorted(Path(dst).glob('chunk-*.csv'))).reset_index(drop=True)

def test_killed_batch_job_resumes_without_redoing_or_duplicating(tmp_path, requests):
    inbox, dst = tmp_path/'inbox', tmp_path/'out'
    chunks = write_chunks(requests, inbox, chunk_rows=20)
    job = subprocess.Popen(labkit_cmd('batch-score', inbox, dst, '--delay', 0.5), stdout=subprocess.DEVNULL, start_new_session=True)
    try: wait_until(lambda: len(list((dst/'_done').glob('*.json'))) >= 2, 60, 'two chunks journalled', job)
    finally: job.kill(); job.wait()
    done = sorted(p.stem for p in (dst/'_done').glob('*.json'))
    stamps = {n: os.stat(dst/f'{n}.csv').st_mtime_ns for n in done}
    rerun = subprocess.run(labkit_cmd('batch-score', inbox, dst), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads((dst/'report.json').read_text())
    assert sorted(Path(n).stem for n in report['already_done']) == done
    assert len(report['scored']) + len(done) == len(chunks) and len(done) < len(chunks)
    assert {n: os.stat(dst/f'{n}.csv').st_mtime_ns for n in done} == stamps          # finished chunks not redone
    table = scored_table(dst)
    assert table['id'].tolist() == requests['id'].tolist()                            # each request once
    np.testing.assert_allclose(table['salary'], predict_salary(MODEL, requests[list(SALARY_FEATURES)].to_numpy()), atol=0.006)
    assert not list(dst.rglob('*.partial*')), 'a killed job left a partial file'

def test_batch_rerun_is_idempotent_and_rescoring_an_edited_chunk(tmp_path, requests):
    inbox = tmp_path/'inbox'; chunks = write_chunks(requests, inbox, chunk_rows=50)
    run_batch(inbox, tmp_path/'out'); before = scored_table(tmp_path/'out')
    assert run_batch(inbox, tmp_path/'out')['scored'] == []
    pd.testing.assert_frame_equal(scored_table(tmp_path/'out'), before)
    edited = pd.read_csv(chunks[2]); edited.loc[0, 'experience'] = 40; edited.to_csv(chunks[2], index=False)
    assert run_batch(inbox, tmp_path/'out')['scored'] == [chunks[2].name]
    assert len(scored_table(tmp_path/'out')) == len(requests)

BAD_CHUNKS = {
    'not-a-number.csv': ('id,experience,test_score,interview_score\nx,3,seven,5\n', "line 2: test_score must be a number, got 'seven'"),
    'no-column.csv': ('id,experience,interview_score\nx,3,5\n', 'missing column(s) test_score'),
    'out-of-range.csv': ('id,experience,test_score,interview_score\nx,3,7,11\n', 'interview_score must be between 0 and 10'),
    'empty.csv': ('', 'missing column(s) id'),
    'twice.csv': ('id,experience,test_score,interview_score\nx,3,7,5\nx,3,7,5\n', "id 'x' appears twice"),
    'nan.csv': ('id,experience,test_score,interview_score\nx,nan,7,5\n', 'experience must be a finite number'),
}

def test_corrupt_chunks_are_reported_and_skipped_the_rest_scored(tmp_path, requests):
    inbox = tmp_path/'inbox'; good = write_chunks(requests, inbox, chunk_rows=100)
    for name, (text, _) in BAD_CHUNKS.items(): (inbox/name).write_text(text)
    (inbox/'binary.csv').write_bytes(b'\xff\xfe\x00garbage')
    before = {p.name: p.read_bytes() for p in inbox.iterdir()}
    out = subprocess.run(labkit_cmd('batch-score', inbox, tmp_path/'out'), capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr
    for name, (_, reason) in BAD_CHUNKS.items(): assert f'{name}' in out.stderr and reason in out.stderr, (name, out.stderr)
    assert 'binary.csv: not UTF-8' in out.stderr
    report = json.loads((tmp_path/'out'/'report.json').read_text())
    assert sorted(report['scored']) == [p.name for p in good] and len(report['rejected']) == len(BAD_CHUNKS) + 1
    assert {p.name: p.read_bytes() for p in inbox.iterdir()} == before                # the input is never written
    assert not (tmp_path/'out'/'twice.csv').exists()

@given(st.text(max_size=200).map(str.encode) | st.binary(max_size=200))
@settings(max_examples=60, deadline=None)
def test_read_chunk_accepts_or_names_the_fault_never_crashes(tmp_path_factory, body):
    path = tmp_path_factory.mktemp('fuzz')/'c.csv'
    path.write_bytes(b'id,experience,test_score,interview_score\n' + body)
    try: ids, rows = read_chunk(path)
    except ChunkRejected as e: assert 'c.csv' in str(e)
    else: assert len(ids) == len(rows) and all(len(r) == len(SALARY_FEATURES) for r in rows)

def test_batch_cli_refuses_bad_folders_with_a_clear_message(tmp_path, requests):
    inbox = tmp_path/'inbox'; write_chunks(requests, inbox)
    out = subprocess.run(labkit_cmd('batch-score', inbox, inbox/'out'), capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and 'inside SRC' in out.stderr and 'Traceback' not in out.stderr, out.stderr
    (tmp_path/'empty').mkdir(); (tmp_path/'file.csv').write_text('x')
    for src, says in [(tmp_path/'missing', 'no such folder'), (tmp_path/'file.csv', 'no such folder'), (tmp_path/'empty', 'no .csv chunks')]:
        with pytest.raises(SystemExit, match=says): batch_score_cli(str(src), str(tmp_path/'o'))
    with pytest.raises(SystemExit, match="model version 'v9' is not in the registry"): batch_score_cli(str(inbox), str(tmp_path/'o'), version='v9')
    assert not (tmp_path/'o').exists()

def test_precalculated_scores_load_twice_without_duplicates(tmp_path, requests):
    inbox = tmp_path/'inbox'; write_chunks(requests, inbox); run_batch(inbox, tmp_path/'out')
    assert precalculate(tmp_path/'out', tmp_path/'s.db') == len(requests) == precalculate(tmp_path/'out', tmp_path/'s.db')
    hit = lookup_score(tmp_path/'s.db', requests['id'][5])
    assert hit['model_version'] == 'v2'
    assert abs(hit['salary'] - predict_salary(MODEL, requests.loc[5, list(SALARY_FEATURES)].to_numpy())[0]) < 0.006
    assert lookup_score(tmp_path/'s.db', "x' OR '1'='1") is None

# ---- streaming ----

def result_ids(r, prefix='') -> list: return sorted(k for k in r.hkeys(RESULTS) if k.startswith(prefix))

def test_broker_keeps_its_stream_over_a_restart_and_listens_only_on_loopback(broker):
    r = redis_client(broker.port)
    assert r.config_get('bind')['bind'] == '127.0.0.1' and r.config_get('appendonly')['appendonly'] == 'yes'
    ids = publish(r, hiring_requests(10))
    broker.proc.kill(); broker.proc.wait(); broker.proc = None      # SIGKILL: nothing flushed at shutdown
    broker.start()
    assert [m for m, _ in redis_client(broker.port).xrange(STREAM)] == ids

def test_malformed_messages_go_to_the_dead_letter_stream_and_the_consumer_goes_on(broker):
    r, reqs = redis_client(broker.port), hiring_requests(20)
    publish(r, reqs.iloc[:5])
    r.xadd(STREAM, {'id': 'not-json', 'payload': '{"experience":'})
    r.xadd(STREAM, {'payload': json.dumps({'experience': 1, 'test_score': 2, 'interview_score': 3})})
    r.xadd(STREAM, {'id': 'wrong-type', 'payload': json.dumps({'experience': 'ten', 'test_score': 2, 'interview_score': 3})})
    r.xadd(STREAM, {'id': 'extra', 'payload': json.dumps({'experience': 1, 'test_score': 2, 'interview_score': 3, 'x': 1})})
    r.xadd(STREAM, {'id': 'array', 'payload': '[1, 2, 3]'})
    publish(r, reqs.iloc[5:])
    counts = consume(broker.port, 'c1', MODEL, idle_exit=0.5)
    assert counts['scored'] == len(reqs) and counts['dead'] == 5
    assert result_ids(r) == sorted(reqs['id'])
    reasons = {f.get('id', '(none)'): f['reason'] for _, f in r.xrange(DEAD_LETTER)}
    assert 'payload is not JSON' in reasons['not-json'] and 'no request id' in reasons['(none)']
    assert 'experience: must be a number, got string' in reasons['wrong-type']
    assert 'x: unknown field' in reasons['extra'] and 'must be an object' in reasons['array']
    assert r.xpending(STREAM, GROUP)['pending'] == 0

def _stopped_holding_messages(proc, r, consumer:str, timeout:float=30) -> list:
    "Stop `proc` (SIGSTOP) at a moment its consumer holds pending messages; those messages"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        os.kill(proc.pid, signal.SIGSTOP)
        if held := r.xpending_range(STREAM, GROUP, '-', '+', 100, consumername=consumer): return held
        os.kill(proc.pid, signal.SIGCONT); time.sleep(0.02)   # between a commit and its next read: let it read
    raise AssertionError(f"{consumer} never held a pending message within {timeout} s")

def test_a_consumer_killed_mid_stream_loses_nothing(broker):
    r, reqs = redis_client(broker.port), hiring_requests(300)
    publish(r, reqs)
    consume_cmd = lambda name, delay: labkit_cmd('stream-consume', '--port', broker.port, '--consumer', name, '--delay', delay, '--idle-exit', 3)
    first, second = subprocess.Popen(consume_cmd('c1', 0.02), stdout=subprocess.DEVNULL, start_new_session=True), None   # 6 s of work: not drained before it is stopped
    try:
        wait_until(lambda: r.hlen(RESULTS) >= 20, 60, "c1's first committed batch", first)
        held = _stopped_holding_messages(first, r, 'c1')      # killed mid-batch: read, not yet committed
        first.kill(); first.wait()
        assert len(r.xpending_range(STREAM, GROUP, '-', '+', 100, consumername='c1')) == len(held)
        second = subprocess.Popen(consume_cmd('c2', 0.01), stdout=subprocess.DEVNULL, start_new_session=True)
        wait_until(lambda: r.hlen(RESULTS) == len(reqs), 90, f'{len(reqs)} results after the kill', second)
        assert second.wait(timeout=30) == 0
    finally:
        for c in (first, second):
            if c is not None: c.kill(); c.wait()
    assert result_ids(r) == sorted(reqs['id'])
    assert r.xpending(STREAM, GROUP)['pending'] == 0 and r.xlen(DEAD_LETTER) == 0
    deliveries = int(r.hget(STATS, 'deliveries'))
    assert deliveries == len(reqs), 'a killed consumer had not committed its transaction: nothing of it counts'

def test_broker_killed_and_restarted_mid_stream_no_lost_no_duplicated_results(broker):
    r, reqs = redis_client(broker.port), hiring_requests(300)
    ids = publish(r, reqs)
    consumer = subprocess.Popen(labkit_cmd('stream-consume', '--port', broker.port, '--consumer', 'c1', '--delay', 0.005,
                                           '--idle-exit', 2), stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_until(lambda: r.hlen(RESULTS) >= 100, 60, '100 results before the broker restart', consumer)
        broker.proc.kill(); broker.proc.wait(); broker.proc = None
        time.sleep(0.5)                                             # the consumer meets a closed port
        broker.start()
        wait_until(lambda: r.hlen(RESULTS) == len(reqs), 90, f'{len(reqs)} results after the restart', consumer)
        out, _ = consumer.communicate(timeout=30)
    finally: consumer.kill(); consumer.wait()
    assert consumer.returncode == 0, out
    assert result_ids(r) == sorted(reqs['id']) and r.xlen(STREAM) == len(ids)
    assert [m for m, _ in r.xrange(STREAM)] == ids                  # every message kept, in order
    assert r.xpending(STREAM, GROUP)['pending'] == 0
    results = {k: json.loads(v)['salary'] for k, v in r.hgetall(RESULTS).items()}
    np.testing.assert_allclose([results[i] for i in reqs['id']], predict_salary(MODEL, reqs[list(SALARY_FEATURES)].to_numpy()), atol=0.006)

def test_consumer_gives_up_on_an_absent_broker_with_a_clear_error():
    with pytest.raises(ServiceUnavailable, match='did not answer for 1 s'):
        consume(free_port(), 'c1', MODEL, idle_exit=0, reconnect_timeout=1)

def test_redis_command_serves_until_sigterm_and_frees_its_port(tmp_path):
    try: find_program('redis-server', '/usr/sbin/redis-server', package='redis-server')
    except ServiceUnavailable as e: pytest.skip(str(e))
    port = free_port()
    proc = subprocess.Popen(labkit_cmd('redis', '--data', tmp_path/'r', '--port', port), stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_for_port(port, 30, proc, what='labkit redis')
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, 'labkit redis printed nothing within 30 s of listening'
        assert f'127.0.0.1:{port}' in proc.stdout.readline() and redis_client(port).ping()
        proc.send_signal(signal.SIGTERM); proc.communicate(timeout=30)
    finally: proc.kill(); proc.wait()
    assert proc.returncode == 0
    assert not port_open(port) and (tmp_path/'r'/'appendonlydir').is_dir()

def test_redis_command_says_when_its_port_is_taken(broker, tmp_path):
    out = subprocess.run(labkit_cmd('redis', '--port', broker.port, '--data', tmp_path/'r2'), capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and 'already in use' in out.stderr and 'Traceback' not in out.stderr, out.stderr

def test_stream_publish_and_consume_commands(broker, capsys):
    assert stream_publish_cli(port=broker.port, n=50) == 0
    n = redis_client(broker.port).xlen(STREAM)
    assert f'{n} messages' in capsys.readouterr().out and n > 40
    assert stream_consume_cli(port=broker.port, idle_exit=0.5) == 0
    assert f"'scored': {n}" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="model version 'v9'"): stream_consume_cli(port=broker.port, version='v9')

# ---- reimplementation ----

def test_sql_reimplementation_matches_python(requests):
    np.testing.assert_allclose(sql_predict(MODEL, requests), predict_salary(MODEL, requests[list(SALARY_FEATURES)].to_numpy()), rtol=1e-12)
    v1 = salary_model('v1')
    np.testing.assert_allclose(sql_predict(v1, requests), predict_salary(v1, requests[list(SALARY_FEATURES)].to_numpy()), rtol=1e-12)
    with pytest.raises(ValueError, match='not a plain SQL identifier'): salary_sql(MODEL, 'hires; DROP TABLE x')

def test_javascript_reimplementation_matches_python(requests):
    try: find_program('node', '/usr/bin/node', package='nodejs')
    except ServiceUnavailable as e: pytest.skip(str(e))
    np.testing.assert_allclose(js_predict(MODEL, requests), predict_salary(MODEL, requests[list(SALARY_FEATURES)].to_numpy()), rtol=1e-12)
