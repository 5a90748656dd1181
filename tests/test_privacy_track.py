"CKKS inference and aggregation against plaintext, the DP-FL accountant against Opacus, the refusals, the benchmark"
import json, math, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from labkit.privacy_track import (he_context, public_context, encrypt, decrypt, encrypted_sum, encrypt_features,
                                  encrypted_predict, encrypted_inference, he_mul, power_error, key_fingerprint,
                                  KeyMismatch, DepthExhausted, UpdateRejected, INFERENCE_ATOL, check_update, clip_update,
                                  dp_aggregate, dp_fedavg, noise_for_epsilon, HESum, open_sealed, Sealed,
                                  check_ciphertext_bytes, check_technique_choice, SCENARIOS)
from labkit.privacy import dp_sgd_epsilon
from labkit.serving import make_hiring, split_hiring, clean_hiring, train_salary_model, predict_salary
from labkit.federated import digits_federation, secure_sum

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(scope='module')
def ctx(): return he_context()

@pytest.fixture(scope='module')
def other(): return he_context()

@pytest.fixture(scope='module')
def salary_model():
    train, test = split_hiring(make_hiring(400))
    return train_salary_model(train, test, 'v1')

# --- encrypted inference --------------------------------------------------------------------------------

@pytest.mark.parametrize('seed', [0, 1, 2])
def test_encrypted_inference_matches_plaintext_within_stated_ckks_error(ctx, salary_model, seed):
    X = clean_hiring(make_hiring(300, seed=seed))[salary_model['features']].to_numpy()
    run = encrypted_inference(salary_model, X, ctx)
    np.testing.assert_allclose(run['pred'], predict_salary(salary_model, X), rtol=0, atol=INFERENCE_ATOL)
    assert run['rows'] == len(X) and run['bytes_up'] > 100 * run['plain_bytes'] / 2

def test_server_context_cannot_decrypt_and_never_holds_the_secret_key(ctx, salary_model):
    server = public_context(ctx)
    assert not server.has_secret_key()
    answer = encrypted_predict(server, salary_model, encrypt_features(ctx, [[3, 7.0, 6.5]]))
    with pytest.raises(KeyMismatch, match='no secret key'): decrypt(server, answer)
    np.testing.assert_allclose(decrypt(ctx, answer), predict_salary(salary_model, [[3, 7.0, 6.5]]), atol=INFERENCE_ATOL)

# --- encrypted aggregation ------------------------------------------------------------------------------

@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 6), size=st.integers(1, 5000), scale=st.sampled_from([1e-3, 1.0, 100.0]), seed=st.integers(0, 2**31))
def test_encrypted_sum_equals_plain_sum(ctx, n, size, scale, seed):
    rng = np.random.default_rng(seed)
    updates = [rng.normal(0, scale, size) for _ in range(n)]
    total = decrypt(ctx, encrypted_sum(public_context(ctx), [encrypt(ctx, u) for u in updates]))
    np.testing.assert_allclose(total, np.sum(updates, axis=0), rtol=0, atol=1e-6 * max(scale, 1) * n)

def test_he_summer_and_masking_train_the_same_model_as_plain_fedavg(ctx):
    fed = digits_federation(30, 'iid', hidden=8)
    recipe = dict(rounds=2, q=0.3, clip_norm=math.inf, noise_multiplier=0.0, local_epochs=1, batch_size=None, lr=0.5)
    plain = dp_fedavg(fed, **recipe).meta['weights']
    np.testing.assert_allclose(dp_fedavg(fed, summer=HESum(ctx), **recipe).meta['weights'], plain, atol=1e-5)
    np.testing.assert_allclose(dp_fedavg(fed, summer=secure_sum, **recipe).meta['weights'], plain, atol=1e-5)

# --- the noise budget -----------------------------------------------------------------------------------

def test_exhausted_modulus_chain_is_a_clear_error_not_a_wrong_number(ctx):
    assert power_error(ctx, 2) < 1e-5
    with pytest.raises(DepthExhausted, match='no level left in the modulus chain'): power_error(ctx, 3)

def test_fewer_scale_bits_give_larger_errors():
    assert power_error(he_context(8192, (35, 25, 25, 35), 25), 1) > 100 * power_error(he_context(), 1)

def test_parameters_too_large_for_the_ring_are_refused_clearly():
    with pytest.raises(ValueError, match='N=8192 allows 218 bits'): he_context(4096, (60, 40, 40, 60))

# --- bad input: ciphertexts of other keys or parameters, wrong shapes, clipping ---------------------------

def test_ciphertext_of_other_keys_is_refused_everywhere(ctx, other, salary_model):
    foreign = encrypt(other, [1.0, 2.0])
    assert key_fingerprint(other) != key_fingerprint(ctx)
    with pytest.raises(KeyMismatch, match='other keys or other parameters'): decrypt(ctx, foreign)
    with pytest.raises(KeyMismatch, match='update of client 1 was encrypted under key'):
        encrypted_sum(public_context(ctx), [encrypt(ctx, [1.0, 2.0]), foreign])
    with pytest.raises(KeyMismatch, match="feature 'experience'"):
        encrypted_predict(public_context(ctx), salary_model, encrypt_features(other, [[1, 2, 3]]))

def test_ciphertext_of_other_parameters_is_refused(ctx):
    with pytest.raises(KeyMismatch): decrypt(ctx, encrypt(he_context(8192, (40, 30, 30, 40), 30), [1.0]))

def test_forged_fingerprint_with_garbage_payload_is_refused(ctx):
    forged = Sealed(key_fingerprint(ctx), 2, (b'not a ciphertext',))
    with pytest.raises(ValueError, match='not a ciphertext of this context'): decrypt(ctx, forged)
    with pytest.raises(TypeError, match='expected a Sealed'): open_sealed(ctx, b'raw bytes')

def test_encrypted_updates_of_another_length_are_refused_naming_the_client(ctx):
    with pytest.raises(ValueError, match='update of client 2 has 3 values'):
        encrypted_sum(public_context(ctx), [encrypt(ctx, [1.0, 2.0]), encrypt(ctx, [1.0, 2.0]), encrypt(ctx, [1.0, 2.0, 3.0])])

def test_non_finite_values_are_not_encrypted(ctx):
    with pytest.raises(ValueError, match='NaN or infinite'): encrypt(ctx, [1.0, math.nan])

def test_wrong_shape_or_non_finite_update_is_refused_naming_the_client():
    with pytest.raises(UpdateRejected, match=r'update of client 4 has shape \(2, 2\)'): check_update(np.zeros((2, 2)), 4, 4)
    with pytest.raises(UpdateRejected, match='client 9 holds NaN'): check_update([0, 0, math.inf], 3, 9)
    with pytest.raises(UpdateRejected, match='update of client 1 has shape'):
        dp_aggregate([np.zeros(3), np.zeros(4)], [0, 1], 3, 1.0, 1.0, 2, np.random.default_rng(0))

@settings(max_examples=30, deadline=None)
@given(v=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), C=st.floats(0.01, 100))
def test_clipped_update_never_exceeds_the_bound(v, C):
    u, was = clip_update(np.array(v), C)
    assert np.linalg.norm(u) <= C * (1 + 1e-9)
    assert was == (np.linalg.norm(v) > C)
    if not was: np.testing.assert_array_equal(u, v)

def test_updates_outside_the_bound_are_clipped_and_counted():
    mean, n = dp_aggregate([np.array([30.0, 40.0]), np.array([0.3, 0.4]), np.array([0.0, 5.0])], [0, 1, 2], 2,
                           clip_norm=1.0, noise_multiplier=0.0, expected_clients=3, rng=np.random.default_rng(0))
    assert n == 2
    np.testing.assert_allclose(mean, (np.array([0.6, 0.8]) + [0.3, 0.4] + [0, 1]) / 3)

def test_dp_fedavg_counts_clipped_updates_and_reports_epsilon():
    h = dp_fedavg(digits_federation(20, 'iid', hidden=8), rounds=2, q=0.5, clip_norm=1e-3, noise_multiplier=2.0,
                  local_epochs=1, batch_size=None)
    assert h.meta['clipped'] == h.meta['updates'] > 0
    assert h.meta['epsilon'] == pytest.approx(dp_sgd_epsilon(0.5, 2.0, 2))

# --- the accountant against an independent computation --------------------------------------------------

@pytest.mark.parametrize('q,z,rounds', [(0.2, 1.0, 30), (0.05, 0.8, 200), (0.5, 3.0, 10)])
def test_dp_fl_epsilon_matches_opacus_rdp_accountant(q, z, rounds):
    from opacus.accountants import RDPAccountant
    acc = RDPAccountant(); acc.history = [(z, q, rounds)]
    assert dp_sgd_epsilon(q, z, rounds) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-3)

@pytest.mark.parametrize('eps', [1.0, 4.0, 8.0])
def test_noise_for_epsilon_reaches_the_target_and_not_much_more(eps):
    from opacus.accountants.utils import get_noise_multiplier
    z = noise_for_epsilon(eps, 0.2, 30)
    assert dp_sgd_epsilon(0.2, z, 30) <= eps
    theirs = get_noise_multiplier(target_epsilon=eps, target_delta=1e-5, sample_rate=0.2, steps=30, accountant='rdp')
    assert z == pytest.approx(theirs, rel=0.03)

# --- exercises' self-checks -----------------------------------------------------------------------------

def test_self_checks_accept_the_solution_and_name_the_mistake():
    right = lambda n, N, chain: math.ceil(n / (N // 2)) * 2 * N * (len(chain) - 1) * 8
    assert check_ciphertext_bytes(right)
    wrong = check_ciphertext_bytes(lambda n, N, chain: math.ceil(n / N) * 2 * N * (len(chain) - 1) * 8)
    assert not wrong and 'N/2 values' in wrong.message
    assert check_technique_choice(lambda: dict(SCENARIOS))
    bad = check_technique_choice(lambda: {**SCENARIOS, 'salary_api': 'DP-FedAvg'})
    assert not bad and 'salary_api' in bad.message and 'computation on ciphertexts' in bad.message
    assert 'choose one of' in check_technique_choice(lambda: {**SCENARIOS, 'salary_api': 'HE'}).message
    def unwritten(): raise NotImplementedError
    assert 'not written yet' in check_technique_choice(unwritten).message
    assert 'not written yet' in check_ciphertext_bytes(lambda *a: unwritten()).message

# --- the benchmark, tiny ----------------------------------------------------------------------------------

def test_benchmark_runs_in_a_tiny_configuration(tmp_path):
    out = tmp_path / 'bench.json'
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'LABKIT_FAST': '1'}
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'privacy_track.py'), '--tiny', '--json', str(out)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res['inference']['encrypted_over_plain_latency'] > 1 and res['inference']['encrypted_over_plain_bytes'] > 100
    assert res['inference']['max_error'] < INFERENCE_ATOL
    assert {r['method'] for r in res['aggregation']} == {'pairwise masking', 'CKKS'}
    assert [r['target_epsilon'] for r in res['dp_fl']] == [None, 8, 4, 1]
    assert 'DP-FL accuracy' in r.stdout

def test_lab_image_requirements_include_tenseal():
    "The lab image installs what docker/lab/requirements.py derives from settings.ini: tenseal must be in it"
    r = subprocess.run([sys.executable, str(ROOT / 'docker' / 'lab' / 'requirements.py'), 'all'], capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert 'tenseal==0.3.18' in r.stdout.splitlines()
