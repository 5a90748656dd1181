"Secure aggregation by pairwise masking, and FedAvg over the network with Flower (server + 3 client processes)"
import os
import re
import shutil
import subprocess
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from labkit.federated import (MaskingClient, SecureAggregationRound, SecureAggregationRefused, secure_sum,
                              secure_weighted_average, weighted_average, decode_fixed, encode_fixed,
                              run_flower, fedavg, digits_federation)

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
