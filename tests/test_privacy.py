"Privacy lab: estimators are unbiased, ε of the survey schemes, Laplace scale, ε accounting, the benchmark script"
import json, math, os, subprocess, sys, warnings
from pathlib import Path
import numpy as np
import pytest
from labkit.privacy import (SURVEY_NOISE, add_survey_noise, additive_noise_matrix, dp_mean, dp_sgd_epsilon,
                            laplace_mechanism, laplace_scale, local_laplace, mechanism_epsilon, randomized_response,
                            rr_epsilon, rr_estimate, survey_population, two_coin_matrix, two_coin_response,
                            digits_tensors, privacy_sweep, subsampled_gaussian_log_a)

ROOT = Path(__file__).resolve().parents[1]
RUNS = 4000   # seeded repetitions of each survey


def assert_unbiased(estimates, truth, z=4.0):
    "The mean of many independent estimates lies within z standard errors of the truth"
    estimates = np.asarray(estimates, dtype=float)
    se = estimates.std(ddof=1) / math.sqrt(len(estimates))
    assert abs(estimates.mean() - truth) <= z * se, (estimates.mean(), truth, se)
    return se


# --- estimators are unbiased ----------------------------------------------------------------------------

@pytest.mark.parametrize('q', [0.1, 0.25, 0.4])
def test_randomized_response_estimate_is_unbiased(q):
    truths = (survey_population(500, seed=1) >= 3).astype(int)
    rng = np.random.default_rng(100)
    reports = randomized_response(np.broadcast_to(truths, (RUNS, len(truths))), q, rng)
    estimates = rr_estimate(reports, q)
    assert_unbiased(estimates, truths.mean())
    assert abs(reports.mean() - truths.mean()) > 5 * estimates.std() / math.sqrt(RUNS)   # the raw share is biased


def test_two_coin_estimate_is_unbiased():
    truths = (survey_population(500, seed=2) >= 3).astype(int)
    reports = two_coin_response(np.broadcast_to(truths, (RUNS, len(truths))), np.random.default_rng(101))
    assert_unbiased(rr_estimate(reports, 0.25), truths.mean())


def test_local_laplace_mean_is_unbiased_for_the_clipped_mean():
    answers = survey_population(300, seed=3)
    noisy = local_laplace(np.broadcast_to(answers, (RUNS, len(answers))), 0, 7, 1.0, np.random.default_rng(102))
    assert_unbiased(noisy.mean(axis=1), np.clip(answers, 0, 7).mean())


def test_central_dp_mean_is_unbiased_for_the_clipped_mean():
    answers = survey_population(300, seed=4)
    rng = np.random.default_rng(103)
    assert_unbiased([dp_mean(answers, 0, 7, 0.5, rng) for _ in range(RUNS)], np.clip(answers, 0, 7).mean())


def test_course_noise_keeps_the_mean():
    answers = survey_population(300, seed=5)
    stored = add_survey_noise(np.broadcast_to(answers, (RUNS, len(answers))), np.random.default_rng(104))
    assert_unbiased(stored.mean(axis=1), answers.mean())
    assert not np.any(stored == answers)   # no stored answer is the true one...


def test_course_noise_gives_no_epsilon():
    outputs, P = additive_noise_matrix(np.arange(15), SURVEY_NOISE)
    assert np.allclose(P.sum(axis=1), 1)
    assert mechanism_epsilon(P) == math.inf   # ...yet some outputs reveal the answer exactly


# --- ε of the survey schemes ----------------------------------------------------------------------------

def test_two_coin_scheme_has_epsilon_ln3():
    assert np.allclose(two_coin_matrix(), [[0.75, 0.25], [0.25, 0.75]])
    assert mechanism_epsilon(two_coin_matrix()) == pytest.approx(math.log(3), rel=1e-12)
    assert rr_epsilon(0.25) == pytest.approx(math.log(3), rel=1e-12)


def test_two_coin_simulation_matches_its_matrix():
    rng = np.random.default_rng(105)
    yes_given_yes = two_coin_response(np.ones(200_000, int), rng).mean()
    yes_given_no = two_coin_response(np.zeros(200_000, int), rng).mean()
    assert yes_given_yes == pytest.approx(0.75, abs=0.005) and yes_given_no == pytest.approx(0.25, abs=0.005)
    assert math.log(yes_given_yes / yes_given_no) == pytest.approx(math.log(3), abs=0.03)


@pytest.mark.parametrize('q', [0.05, 0.2, 0.25, 0.45])
def test_randomized_response_epsilon_formula(q):
    assert mechanism_epsilon([[1 - q, q], [q, 1 - q]]) == pytest.approx(rr_epsilon(q), rel=1e-12)
    assert rr_epsilon(q) == pytest.approx(math.log((1 - q) / q))


# --- Laplace mechanism ------------------------------------------------------------------------------------

@pytest.mark.parametrize('sensitivity,epsilon', [(1, 1), (7, 0.5), (14, 2), (0.1, 0.01)])
def test_laplace_scale_is_sensitivity_over_epsilon(sensitivity, epsilon):
    assert laplace_scale(sensitivity, epsilon) == pytest.approx(sensitivity / epsilon)


@pytest.mark.parametrize('sensitivity,epsilon', [(1, 1), (7, 0.5), (14, 2)])
def test_laplace_noise_has_that_scale(sensitivity, epsilon):
    b = sensitivity / epsilon
    noise = laplace_mechanism(np.zeros(400_000), sensitivity, epsilon, np.random.default_rng(106))
    assert np.abs(noise).mean() == pytest.approx(b, rel=0.01)          # E|X| = b
    assert noise.var() == pytest.approx(2 * b * b, rel=0.02)           # Var X = 2b²
    assert abs(noise.mean()) < 5 * math.sqrt(2) * b / math.sqrt(len(noise))


def test_laplace_density_ratio_is_bounded_by_e_to_epsilon():
    "Shifting the value by the sensitivity changes the output density by at most e^ε"
    b = laplace_scale(7, 0.5)
    z = np.linspace(-100, 100, 2001)
    log_ratio = (-np.abs(z) + np.abs(z - 7)) / b
    assert log_ratio.max() == pytest.approx(0.5) and log_ratio.min() == pytest.approx(-0.5)


# --- DP-SGD accounting ------------------------------------------------------------------------------------

def _opacus_rdp_epsilon(q, sigma, steps, delta=1e-5):
    "ε of Opacus' RDP accountant for `steps` steps at sampling rate q and noise multiplier σ"
    from opacus.accountants import RDPAccountant
    acc = RDPAccountant()
    acc.history = [(sigma, q, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')   # Opacus warns when the best order is at the end of its range
        return acc.get_epsilon(delta)


@pytest.mark.parametrize('q,sigma,steps', [(1/3, 12.97, 90), (1/3, 2.21, 90), (0.05, 1.0, 1000), (0.004, 1.1, 30_000),
                                           (1.0, 5.0, 10), (1.0, 1.0, 1), (1.0, 12.0, 300), (0.9, 3.0, 50),
                                           (0.5, 0.8, 10), (0.01, 0.6, 100), (0.0, 1.0, 10)])
def test_recomputed_epsilon_matches_opacus_accountant(q, sigma, steps):
    assert dp_sgd_epsilon(q, sigma, steps, 1e-5) == pytest.approx(_opacus_rdp_epsilon(q, sigma, steps), rel=1e-6)


def test_full_batch_epsilon_is_the_plain_gaussian_mechanism():
    "q = 1 (no subsampling) once raised a math domain error from log1p(-q)"
    assert dp_sgd_epsilon(1.0, 5.0, 10) == pytest.approx(2.8137, abs=1e-4)
    assert subsampled_gaussian_log_a(1.0, 5.0, 3.0) == pytest.approx(3.0 * 2.0 / (2 * 5.0**2), rel=1e-12)


@pytest.mark.parametrize('q,sigma,message', [(1.5, 1.0, 'sample rate'), (-0.1, 1.0, 'sample rate'),
                                             (math.nan, 1.0, 'sample rate'), (0.5, -1.0, 'noise multiplier')])
def test_epsilon_of_impossible_settings_is_refused(q, sigma, message):
    with pytest.raises(ValueError, match=message): dp_sgd_epsilon(q, sigma, 10)


def test_edge_settings_of_the_accountant():
    assert dp_sgd_epsilon(0.5, 0.0, 10) == math.inf       # no noise: no guarantee


def test_privacy_sweep_with_full_batches():
    "A batch at least the size of the training set gives sample rate 1; the sweep still accounts it"
    data = digits_tensors()
    rows = privacy_sweep(data, epsilons=(8,), epochs=2, memorize_epochs=1, batch_size=len(data['y_train']) + 10)
    dp = next(r for r in rows if r['setting'] == 'DP ε=8')
    assert dp['sample_rate'] == 1.0 and dp['steps'] == 2
    assert dp['epsilon_recomputed'] == pytest.approx(dp['epsilon_spent'], rel=1e-6)
    assert dp['epsilon_spent'] <= 8.0


# --- the benchmark, as a script and as a command -------------------------------------------------------------

TINY = ['--epsilons', '1', '--epochs', '2', '--memorize_epochs', '3', '--seeds', '1', '--timing_epochs', '2']


def _check_report(report):
    table = {r['setting']: r for r in report['table']}
    assert set(table) == {'no DP, 3 epochs', 'no DP, 2 epochs', 'DP ε=1'}
    dp = table['DP ε=1']
    assert dp['epsilon_spent'] <= 1.0 and dp['noise_multiplier'] > 1 and dp['steps'] == 2 * 3
    assert dp['epsilon_rel_diff'] < 0.01
    assert set(report['timing']['ratio']) == {'DP (ghost)', 'DP (hooks)'}
    assert 'non-private accuracy' in report['goals']


def test_benchmark_script_prints_json_and_writes_figures(tmp_path):
    env = {**os.environ, 'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', '')}
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'privacy.py'), *TINY, '--out', str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    printed = json.loads(r.stdout[:r.stdout.index('\n}\n') + 2])   # the JSON comes first, then the table
    _check_report(printed)
    assert 'epsilon_recomputed' in r.stdout and 'DP ε=1' in r.stdout
    _check_report(json.loads((tmp_path/'privacy.json').read_text()))
    for f in ['accuracy_vs_epsilon.png', 'advantage_vs_epsilon.png']: assert (tmp_path/f).stat().st_size > 10_000


def test_cli_command(tmp_path):
    from conftest import labkit_cmd
    r = subprocess.run(labkit_cmd('privacy', *TINY, '--out', tmp_path), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    _check_report(json.loads((tmp_path/'privacy.json').read_text()))
