"Secure aggregation by pairwise masking, and FedAvg over the network with Flower (server + 3 client processes)"
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from types import SimpleNamespace
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from labkit.federated import (MaskingClient, SecureAggregationRound, SecureAggregationRefused, secure_sum,
                              secure_weighted_average, weighted_average, decode_fixed, encode_fixed,
                              run_flower, fedavg, digits_federation, fixed_point_bound, FIXED_POINT_SCALE,
                              validate_update, checked_fedavg, FederatedRoundFailed, get_weights, train_on_client,
                              _wait_until_listening)
from labkit.core import group_alive, stop_child

P = 4810   # parameters of the lab's model

def _masked_round(updates, round_id=0):
    "Masked vectors of one round, and the clients that made them"
    clients = [MaskingClient(k) for k in range(len(updates))]
    roster = {c.cid: c.public_key for c in clients}
    return [c.mask(u, roster, round_id) for c, u in zip(clients, updates)], clients

# --- the sum is exact ---------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 8), size=st.integers(1, 300), scale=st.sampled_from([1e-3, 1.0, 1e3]), seed=st.integers(0, 2**31))
def test_masked_sum_equals_plain_sum(n, size, scale, seed):
    rng = np.random.default_rng(seed)
    updates = [rng.normal(0, scale, size) for _ in range(n)]
    masked, _ = _masked_round(updates)
    total = decode_fixed(np.sum(np.stack(masked), axis=0, dtype=np.uint64))
    np.testing.assert_allclose(total, np.sum(updates, axis=0), rtol=0, atol=n * 2.0**-24)

def test_secure_sum_of_model_sized_updates_is_exact_to_float_tolerance():
    rng = np.random.default_rng(1)
    updates = [rng.normal(0, 0.05, P).astype(np.float32) for _ in range(10)]
    np.testing.assert_allclose(secure_sum(updates), np.sum(np.stack(updates).astype(np.float64), axis=0), rtol=0, atol=1e-6)

def test_secure_weighted_average_equals_plain_weighted_average():
    rng = np.random.default_rng(2)
    weights, sizes = [rng.normal(0, 0.3, P).astype(np.float32) for _ in range(4)], [120, 135, 98, 140]
    np.testing.assert_allclose(secure_weighted_average(weights, sizes), weighted_average(weights, sizes), rtol=0, atol=1e-6)

# --- a single masked update reveals nothing useful -------------------------------------------------------

def test_single_masked_update_is_uncorrelated_with_the_true_update():
    rng = np.random.default_rng(3)
    updates = [rng.normal(0, 0.1, P) for _ in range(3)]
    updates[0] = np.linspace(-1, 1, P)                     # a very structured update
    masked, _ = _masked_round(updates)
    for k in range(3):
        r = np.corrcoef(decode_fixed(masked[k]), updates[k])[0, 1]
        assert abs(r) < 0.06, (k, r)                       # chance level is ~1/sqrt(P) = 0.014
    # and the masked integers look uniform: each of the 16 top-nibble values about equally often
    top = (masked[0] >> np.uint64(60)).astype(int)
    counts = np.bincount(top, minlength=16)
    assert counts.min() > P / 16 * 0.7 and counts.max() < P / 16 * 1.3

def test_same_update_masked_twice_looks_different_and_masks_change_per_round():
    u = np.ones(64)
    a, _ = _masked_round([u, u, u], round_id=0)
    b, _ = _masked_round([u, u, u], round_id=0)          # fresh keys
    assert not np.array_equal(a[0], b[0])
    c = MaskingClient(0); d = MaskingClient(1)
    roster = {0: c.public_key, 1: d.public_key}
    assert not np.array_equal(c.mask(u, roster, round_id=1), c.mask(u, roster, round_id=2))

def test_pair_secrets_agree_without_the_server():
    a, b = MaskingClient(0), MaskingClient(1)
    roster = {0: a.public_key, 1: b.public_key}
    z = np.zeros(16)
    assert np.array_equal(a.mask(z, roster) + b.mask(z, roster), np.zeros(16, dtype=np.uint64))

# --- dropped clients: handled, or refused ----------------------------------------------------------------

def test_dropped_clients_are_recovered_exactly():
    rng = np.random.default_rng(4)
    updates = [rng.normal(0, 1, 200) for _ in range(6)]
    got = secure_sum(updates, dropped=(2, 5))
    np.testing.assert_allclose(got, updates[0] + updates[1] + updates[3] + updates[4], rtol=0, atol=1e-6)

def test_too_few_survivors_is_refused():
    updates = [np.ones(10) for _ in range(4)]
    with pytest.raises(SecureAggregationRefused, match='round refused'):
        secure_sum(updates, dropped=(0, 1), min_clients=3)
    with pytest.raises(ValueError):
        SecureAggregationRound(min_clients=1)

def test_late_update_and_late_join_are_refused():
    cs = [MaskingClient(k) for k in range(4)]
    rnd = SecureAggregationRound(min_clients=3)
    for c in cs: rnd.join(c.cid, c.public_key)
    for c in cs[:3]: rnd.submit(c.cid, c.mask(np.ones(8), rnd.roster))
    with pytest.raises(SecureAggregationRefused, match='after masking began'):
        rnd.join(9, MaskingClient(9).public_key)
    np.testing.assert_allclose(rnd.finish({c.cid: c for c in cs[:3]}), np.full(8, 3.0), atol=1e-6)
    with pytest.raises(SecureAggregationRefused, match='after the round closed'):
        rnd.submit(3, cs[3].mask(np.ones(8), rnd.roster))

def test_unknown_client_and_silent_survivor_are_refused():
    cs = [MaskingClient(k) for k in range(4)]
    rnd = SecureAggregationRound(min_clients=3)
    for c in cs: rnd.join(c.cid, c.public_key)
    with pytest.raises(SecureAggregationRefused, match='not on the roster'):
        rnd.submit(7, np.zeros(8, dtype=np.uint64))
    for c in cs[:3]: rnd.submit(c.cid, c.mask(np.ones(8), rnd.roster))
    with pytest.raises(SecureAggregationRefused, match='did not answer the recovery step'):
        rnd.finish({c.cid: c for c in cs[:2]})           # client 3 dropped, client 2 does not help recover

def test_fixed_point_round_trip():
    x = np.array([-3.5, -1e-6, 0.0, 2.0**-20, 1e5])
    np.testing.assert_allclose(decode_fixed(encode_fixed(x)), x, rtol=0, atol=2.0**-24)

# --- Flower: a server and three clients as separate processes on 127.0.0.1 --------------------------------

def _alive(pid:int) -> bool:
    try: os.kill(pid, 0)
    except ProcessLookupError: return False
    return True

def test_flower_server_and_three_clients_over_loopback():
    h = run_flower(clients=3, rounds=2)
    assert h.meta['exit_codes'] == [0, 0, 0, 0]
    assert [r['round'] for r in h.rows] == [0, 1, 2]
    acc = [r['accuracy'] for r in h.rows]
    assert acc[0] < 0.2 and acc[-1] > 0.85, acc
    assert all(r['bytes'] == 2 * 3 * 4 * P for r in h.rows[1:])
    sim = fedavg(digits_federation(3), rounds=2, frac=1.0, local_epochs=2)   # the same FedAvg, in one process
    np.testing.assert_allclose(acc, sim.frame.accuracy.values, atol=0.01)
    assert not any(_alive(pid) for pid in h.meta['pids'])

def test_flower_failure_is_reported_and_cleaned_up():
    with pytest.raises(RuntimeError, match='Flower run failed') as e:
        run_flower(clients=3, rounds=1, partition='no-such-partition', timeout=120)
    assert 'no-such-partition' in str(e.value)              # the server's own error, from its log
    logs = re.search(r'logs in (\S+?)\)', str(e.value)).group(1)   # kept for the person debugging; not needed here
    shutil.rmtree(logs, ignore_errors=True)

def test_flower_commands_in_the_labkit_cli():
    from conftest import labkit_cmd
    for cmd, opt in [('fl-server', '--rounds'), ('fl-client', '--address')]:
        r = subprocess.run(labkit_cmd(cmd, '--help'), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and opt in r.stdout, r.stderr


# --- secure aggregation refuses what its fixed-point sum cannot hold ---------------------------------------

@pytest.mark.parametrize('bad,why', [(np.nan, 'NaN or infinite'), (np.inf, 'NaN or infinite'), (-np.inf, 'NaN or infinite')])
def test_secure_sum_refuses_nan_and_inf_naming_the_client(bad, why):
    updates = [np.ones(8) for _ in range(4)]
    updates[2][3] = bad
    with pytest.raises(ValueError, match=f'client 2: 1 values of its update are {why}'):
        secure_sum(updates)


def test_secure_sum_refuses_updates_whose_sum_would_wrap():
    "Three updates of 2**38 sum to 3 * 2**38 > 2**39, past the int64 range in fixed point: once decoded to a wrong number"
    updates = [np.full(4, 2.0**38) for _ in range(3)]
    with pytest.raises(ValueError, match=r'client 0: update value .* exceeds .* fixed-point sum wraps'):
        secure_sum(updates)
    bound = fixed_point_bound(3)
    assert 3 * bound * FIXED_POINT_SCALE <= 2.0**62
    at_bound = [np.full(4, bound), np.full(4, bound), np.full(4, -bound / 2)]
    np.testing.assert_allclose(secure_sum(at_bound), np.full(4, 1.5 * bound), rtol=1e-12)
    with pytest.raises(ValueError, match='within'): encode_fixed([2.0**40])   # a single value beyond int64 too


# --- every client result is checked before it is averaged ------------------------------------------------------

W0 = np.linspace(-1, 1, P).astype(np.float32)

@pytest.mark.parametrize('weights,n,why', [
    ([W0[:100]], 100, r'shape \(100,\)'), ([W0.astype(np.float64)], 100, 'dtype float64'), ([W0, W0], 100, '2 arrays'),
    ([np.where(np.arange(P) == 5, np.nan, W0).astype(np.float32)], 100, '1 weights are NaN'),
    ([np.full(P, np.inf, dtype=np.float32)], 100, f'{P} weights are NaN or infinite'),
    ([W0], 10**12, 'claims 1000000000000 examples'), ([W0], 0, 'claims 0 examples'), ([W0], 2.5, 'claims 2.5'),
    ([W0 + 2], 100, 'update norm 138.7 exceeds the bound 100')])
def test_validate_update_names_the_client_and_the_fault(weights, n, why):
    with pytest.raises(ValueError, match=f'client 4: .*{why}'):
        validate_update(weights, n, W0, max_examples=449, client='client 4')


def test_validate_update_accepts_an_honest_update():
    fed = digits_federation(3)
    w = get_weights(fed.model())
    mine = train_on_client(fed.model(), w, fed.clients[0], epochs=2)
    assert validate_update([mine], len(fed.clients[0]), w, max(len(c) for c in fed.clients)) is mine


def _fit_res(w, n):
    import flwr as fl
    return fl.common.FitRes(fl.common.Status(fl.common.Code.OK, ''), fl.common.ndarrays_to_parameters([w]), n, {})


def _strategy(n_clients=4, min_valid=2):
    s = checked_fedavg(W0, n_clients, min_valid, max_examples=449, round_timeout=5)
    s.asked = [SimpleNamespace(cid=f'{k}' * 32) for k in range(n_clients)]   # stand-ins for Flower's client proxies
    s.names = {p.cid: k for k, p in enumerate(s.asked)}
    return s


def test_strategy_leaves_bad_results_out_counts_and_names_them():
    import flwr as fl
    s = _strategy(5)
    good = [W0 + 0.01, W0 - 0.03]
    results = [(s.asked[0], _fit_res(good[0], 100)), (s.asked[1], _fit_res(good[1], 300)),
               (s.asked[2], _fit_res(np.full_like(W0, np.nan), 100)), (s.asked[3], _fit_res(np.zeros_like(W0), 10**12))]
    failures = [(s.asked[4], fl.common.FitRes(fl.common.Status(fl.common.Code.FIT_NOT_IMPLEMENTED, 'no fit here'),
                                              fl.common.ndarrays_to_parameters([]), 0, {}))]
    params, metrics = s.aggregate_fit(1, results, failures)
    np.testing.assert_allclose(fl.common.parameters_to_ndarrays(params)[0], weighted_average(good, [100, 300]), atol=1e-7)
    assert metrics == {'valid': 2, 'rejected': 3}
    rejected = s.report[0]['rejected']
    assert any(r.startswith('client 2 ') and 'NaN' in r for r in rejected), rejected
    assert any(r.startswith('client 3 ') and 'claims 1000000000000' in r for r in rejected), rejected
    assert any(r.startswith('client 4 ') and 'no fit here' in r for r in rejected), rejected


def test_strategy_names_clients_that_raised_or_never_answered_and_fails_the_round():
    s = _strategy(3, min_valid=2)
    results = [(s.asked[0], _fit_res(W0 + 0.01, 100))]
    with pytest.raises(FederatedRoundFailed, match='round 1: 1 valid results of 3 clients, at least 2 needed') as e:
        s.aggregate_fit(1, results, [TimeoutError('timed out'), RuntimeError('stream closed')])
    assert 'client 1 (11111111): no result within 5 s' in str(e.value) and 'client 2 (22222222)' in str(e.value)
    assert 'TimeoutError: timed out' in str(e.value)


def test_strategy_waits_a_bounded_time_for_clients():
    "Flower's own client manager waits a day for a client that left; a round here waits round_timeout at most"
    class FewClients:
        waited = []
        def wait_for(self, n, timeout): self.waited.append((n, timeout)); return False
        def all(self): return {'a' * 32: SimpleNamespace(cid='a' * 32)}
    s = checked_fedavg(W0, 3, 2, max_examples=449, round_timeout=7)
    with pytest.raises(FederatedRoundFailed, match='round 1: 1 of 3 clients connected within 7 s, at least 2 needed'):
        s.configure_fit(1, None, FewClients())
    assert FewClients.waited == [(3, 7)]


def test_simulated_fedavg_checks_each_local_result():
    fed = digits_federation(3)
    with pytest.raises(ValueError, match='client .*: 4810 weights are NaN or infinite'):
        fedavg(fed, rounds=1, frac=1.0, local_epochs=1, lr=float('nan'))


# --- fl-server with real misbehaving clients, and stopped by SIGTERM -------------------------------------------

HERE = os.path.dirname(os.path.abspath(__file__))

@contextmanager
def _processes():
    "Start processes in their own sessions; stop every one (and what it started) on the way out"
    procs = []
    def start(cmd, log):
        procs.append(subprocess.Popen(list(map(str, cmd)), stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        return procs[-1]
    try: yield start
    finally:
        for p in procs: stop_child(p, grace=5)


def _serve_with(tmp_path, clients:list, *server_args, wait=300):
    "Run `labkit fl-server` with one client process per entry ('honest' or a misbehaving mode); its exit code and log"
    from conftest import labkit_cmd, free_port
    port = free_port(); address = f'127.0.0.1:{port}'
    log = open(tmp_path/'server.log', 'w')
    with _processes() as start:
        server = start(labkit_cmd('fl-server', '--address', address, '--clients', len(clients), '--local_epochs', 1,
                                  '--out', tmp_path/'history.json', *server_args), log)
        assert _wait_until_listening(port, server, time.monotonic() + 120), (tmp_path/'server.log').read_text()[-3000:]
        for k, mode in enumerate(clients):
            cmd = (labkit_cmd('fl-client', k, '--address', address, '--clients', len(clients)) if mode == 'honest' else
                   [sys.executable, os.path.join(HERE, 'misbehaving_flower_client.py'), mode, k, address, len(clients)])
            start(cmd, open(tmp_path/f'client{k}.log', 'w'))
        try: code = server.wait(timeout=wait)
        except subprocess.TimeoutExpired: pytest.fail(f'fl-server did not finish within {wait} s: ' + (tmp_path/'server.log').read_text()[-3000:])
    log.close()
    return code, (tmp_path/'server.log').read_text()


def test_fl_server_leaves_out_a_client_that_sends_nan(tmp_path):
    code, log = _serve_with(tmp_path, ['honest', 'honest', 'nan'], '--rounds', 2, '--round_timeout', 60)
    assert code == 0, log[-3000:]
    rec = json.loads((tmp_path/'history.json').read_text())
    acc = [r['accuracy'] for r in rec['rows']]
    assert len(acc) == 3 and all(np.isfinite(acc)) and acc[-1] > 0.8, acc
    for rnd in rec['rounds']:
        assert rnd['valid'] == 2 and len(rnd['rejected']) == 1, rnd
        assert rnd['rejected'][0].startswith('client 2 ') and 'NaN' in rnd['rejected'][0]
    assert 'left out client 2' in log


def test_fl_server_fails_clearly_when_clients_raise_or_hang(tmp_path):
    "A client that raises and one that never answers: the round waits round_timeout, then fails, exit 1"
    # 30 s: the honest client's fit takes about a second in fast mode, a few on a busy machine
    code, log = _serve_with(tmp_path, ['honest', 'raise', 'hang'], '--rounds', 2, '--round_timeout', 30, '--min_clients', 2)
    assert code == 1, log[-3000:]
    assert 'fl-server: round 1: 1 valid results of 3 clients, at least 2 needed' in log, log[-3000:]
    assert 'client 1 (' in log and 'client 2 (' in log and 'Traceback' not in log.split('fl-server: round 1')[1]
    rec = json.loads((tmp_path/'history.json').read_text())
    assert rec['failed'].startswith('round 1') and len(rec['rows']) == 1


@pytest.mark.parametrize('with_client', [False, True])
def test_fl_server_stops_on_sigterm(tmp_path, with_client):
    "Waiting for clients, or in the middle of a round a client never finishes: SIGTERM frees the port at once"
    from conftest import labkit_cmd, free_port
    port = free_port(); address = f'127.0.0.1:{port}'
    with _processes() as start:
        server = start(labkit_cmd('fl-server', '--address', address, '--clients', 1, '--round_timeout', 600,
                                  '--min_clients', 1, '--out', tmp_path/'history.json'), open(tmp_path/'server.log', 'w'))
        assert _wait_until_listening(port, server, time.monotonic() + 120), (tmp_path/'server.log').read_text()[-3000:]
        if with_client:
            start([sys.executable, os.path.join(HERE, 'misbehaving_flower_client.py'), 'hang', 0, address, 1],
                  open(tmp_path/'client0.log', 'w'))
            deadline = time.monotonic() + 120
            while 'fit started' not in (tmp_path/'client0.log').read_text():
                assert time.monotonic() < deadline, 'the client never received its fit instruction: ' + (tmp_path/'client0.log').read_text()[-2000:]
                time.sleep(0.5)
        server.send_signal(signal.SIGTERM)
        try: code = server.wait(timeout=30)
        except subprocess.TimeoutExpired: pytest.fail('fl-server still running 30 s after SIGTERM')
        assert code == 128 + signal.SIGTERM, (tmp_path/'server.log').read_text()[-3000:]
        assert not group_alive(server.pid)
        with socket.socket() as s:   # nothing listens on the port any more (connections closed by the server may linger in TIME_WAIT)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', port)); s.listen()
    assert 'stopped by SIGTERM' in (tmp_path/'server.log').read_text()
    assert not (tmp_path/'history.json').exists()
