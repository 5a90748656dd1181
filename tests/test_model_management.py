"Model management: tracking in an embedded store, the registry's checks, the lifecycle, and serving models:/NAME@ALIAS"
import http.client, json, os, shutil, signal, threading, time
from pathlib import Path
import numpy as np
import pytest
from werkzeug.serving import make_server
from labkit.model_management import (ArtifactMismatch, Lifecycle, ModelNotFound, ModelRetired, PromotionRefused,
                                     TrackingUnavailable, behaviour_checks, best_run, check_best_run, check_gate,
                                     create_registry_app, fetch_version, make_properties, parse_model_uri,
                                     read_events, register_concurrently, register_folder, register_salary_model,
                                     reload_on_sighup, resolve, track_run, use_store, use_tracking, _client, _mlflow)
from labkit.core import http_call
from labkit.serving import MODEL_NAME, make_hiring, split_hiring, train_salary_model
from conftest import free_port

RECORD = {'experience': 5, 'test_score': 8, 'interview_score': 7}

@pytest.fixture(scope='session')
def empty_store(tmp_path_factory):
    "An empty embedded store, its tables created once (that takes seconds); each test gets a copy"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('MLFLOW_TRACKING_URI', 'sqlite:///unset.db')
        root = tmp_path_factory.mktemp('template')
        use_store(root)
    return root/'mlflow.db'

@pytest.fixture
def store(tmp_path, monkeypatch, empty_store):
    "An embedded MLflow store of its own (the environment restored afterwards)"
    monkeypatch.setenv('MLFLOW_TRACKING_URI', 'sqlite:///unset.db')
    (tmp_path/'runs').mkdir(); shutil.copy(empty_store, tmp_path/'runs'/'mlflow.db')
    use_tracking(f"sqlite:///{tmp_path/'runs'/'mlflow.db'}")
    return tmp_path/'runs'

def test_tracking_records_params_metrics_digest_and_commit(store):
    homes = make_properties(200)
    train, test = homes.iloc[:150], homes.iloc[150:]
    ids = [track_run(train, test, {'n_estimators': n, 'max_depth': 4}) for n in (3, 12)]
    run = _client().get_run(ids[0])
    assert run.data.params['n_estimators'] == '3'            # sklearn autolog
    assert len(run.data.tags['data_sha256']) == 64 and 'git_commit' in run.data.tags
    assert {'test_rmse', 'test_mae', 'test_r2'} <= set(run.data.metrics)
    artifacts = {a.path for a in _client().list_artifacts(ids[0])}
    assert {'pred_vs_actual.png', 'feature_importances.json'} <= artifacts
    rmse = {i: _client().get_run(i).data.metrics['test_rmse'] for i in ids}
    assert best_run()['run_id'] == min(rmse, key=rmse.get)

def test_autologging_stays_inside_tracked_runs(store, tmp_path, monkeypatch):
    "A fit outside `track_run` (the serving lab's linear model) starts no run and writes no ./mlruns"
    from sklearn.linear_model import LinearRegression
    homes = make_properties(100)
    track_run(homes.iloc[:80], homes.iloc[80:], {'n_estimators': 3})
    monkeypatch.chdir(tmp_path)
    LinearRegression().fit(np.arange(10.0).reshape(-1, 1), np.arange(10.0))
    assert not (tmp_path/'mlruns').exists()
    assert _mlflow().search_runs(experiment_ids=['0']).empty

def test_unreachable_server_names_the_uri_and_how_to_start_one():
    uri = f'http://127.0.0.1:{free_port()}'
    with pytest.raises(TrackingUnavailable) as e: use_tracking(uri)
    assert uri in str(e.value) and 'labkit tracking-server' in str(e.value)

def test_two_processes_registering_at_once_lose_no_version(store):
    versions = register_concurrently('race', processes=2, each=4)
    assert versions == list(range(1, 9))
    assert len(_client().search_model_versions("name='race'")) == 8

def _files(tmp_path, text):
    d = tmp_path/f'files-{abs(hash(text))}'; d.mkdir(); (d/'weights.txt').write_text(text); return d

def test_an_altered_artifact_is_refused(store, tmp_path):
    mv = register_folder(_files(tmp_path, '1.0\n'), 'm')
    folder, _ = fetch_version('m', mv.version)
    assert (folder/'weights.txt').read_text() == '1.0\n'
    stored = next(store.rglob('weights.txt'))
    stored.write_text('2.0\n')
    with pytest.raises(ArtifactMismatch, match='refusing to load it'): fetch_version('m', mv.version)
    with pytest.raises(ModelNotFound, match=r"no alias 'champion' \(versions \[1\]"): resolve('m', 'champion')

class _Scaled:
    "A stand-in model: value proportional to area, shrinking with distance, times a quality factor"
    def __init__(self, noise): self.noise = noise
    def predict(self, X):
        base = (0.9 + 2.6 * np.exp(-X['distance_km'] / 15)) * X['area_m2'] + 40 + 12 * X['rooms'] - 0.6 * X['age_years']
        return np.asarray(base + 1.5 * X['floor'] + 35 * X['garden']) * (1 + self.noise)

def test_lifecycle_approval_gate_rollback_retirement_and_history(store, tmp_path):
    quality = {'1': 0.10, '2': 0.01, '3': 0.0995, '4': 0.0}   # relative error of each version's answers
    for v in quality: register_folder(_files(tmp_path, v), 'homes')
    life = Lifecycle('homes', history=tmp_path/'h.jsonl', loader=lambda n, v: _Scaled(quality[str(v)]))
    holdout = make_properties(200, seed=7)
    life.approve('1', by='lee', why='first'); life.promote('1', holdout, by='ana', why='first model')
    with pytest.raises(PromotionRefused, match='no approval recorded'): life.promote('2', holdout, by='ana', why='x')
    life.approve('2', by='lee', why='reviewed'); life.approve('3', by='lee', why='reviewed')
    with pytest.raises(PromotionRefused, match='not 2% below'): life.promote('3', holdout, by='ana', why='tiny gain')
    assert life.promote('2', holdout, by='ana', why='much better').passed and life.champion() == '2'
    assert life.rollback(by='ana', why='complaints') == '1' and life.champion() == '1'
    life.retire('2', by='ana', why='superseded')
    assert 'champion' not in resolve('homes', '2').aliases
    with pytest.raises(ModelRetired, match='was retired'): fetch_version('homes', '2')
    with pytest.raises(PromotionRefused, match='retired'): life.promote('2', holdout, by='ana', why='again')
    events = read_events(tmp_path/'h.jsonl')
    assert [e['action'] for e in events] == ['approved', 'promoted', 'refused', 'approved', 'approved', 'refused',
                                             'promoted', 'rolled_back', 'retired', 'refused']
    assert all(e['by'] and e['time'] and 'why' in e for e in events)
    assert life.history()['action'].tolist() == [e['action'] for e in events]

def test_behaviour_checks_catch_a_model_that_ignores_its_inputs():
    class Constant:
        def predict(self, X): return np.full(len(X), 300.0)
    assert behaviour_checks(Constant()) == {'bigger_is_dearer': False, 'farther_is_cheaper': False, 'finite_and_positive': True}
    assert all(behaviour_checks(_Scaled(0.0)).values())

def test_model_uri_is_checked():
    assert parse_model_uri('models:/hiring-salary@champion') == ('hiring-salary', 'champion')
    for bad in ('hiring-salary', 'models:/x/3', 'models:/@champion', 'runs:/abc/model'):
        with pytest.raises(ValueError, match='model_uri: expected models:/NAME@ALIAS'): parse_model_uri(bad)

def test_self_checks_name_the_mistake():
    assert check_gate(lambda new, old, margin, checks: old is None or new <= old * (1 - margin)).message.endswith(
        'every behavioural check must pass, even when the RMSE is better')
    assert 'relative' in check_gate(lambda new, old, margin, checks: all(checks.values()) and (old is None or new <= old - margin)).message
    assert check_gate(lambda new, old, margin, checks: all(checks.values()) and (old is None or new <= old * (1 - margin))).ok
    assert 'FAILED' in check_best_run(lambda runs: runs.sort_values('metrics.test_rmse')['run_id'].iloc[0]).message
    assert 'lower-is-better' in check_best_run(lambda runs: runs[runs.status == 'FINISHED'].sort_values('metrics.test_rmse')['run_id'].iloc[-1]).message

class _Served:
    "A registry app on a threaded WSGI server in this process, for the length of a `with` block"
    def __init__(self, app): self.server = make_server('127.0.0.1', 0, app, threaded=True)
    def __enter__(self):
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True); self.thread.start()
        self.url = f'http://127.0.0.1:{self.server.server_port}'
        return self
    def __exit__(self, *exc): self.server.shutdown(); self.thread.join(10)

def _hammer(url, stop, seen, failures, lock, max_requests=3000):
    for _ in range(max_requests):   # bounded even if never stopped
        if stop.is_set(): return
        try: status, body, _ = http_call(url + '/predict', 'POST', RECORD, timeout=10)
        except (OSError, http.client.HTTPException) as e: status, body = type(e).__name__, None
        with lock:
            if status == 200: seen.append(body['version'])
            else: failures.append(status)

def _wait_for_version(seen, lock, version, timeout=30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with lock:
            if seen and seen[-1] == version: return
        time.sleep(0.05)
    raise AssertionError(f"no answer from version {version} within {timeout} s (last: {seen[-1:]})")

def test_served_alias_switch_with_requests_in_flight(store):
    tr, te = split_hiring(make_hiring())
    v1 = register_salary_model(train_salary_model(tr.iloc[:80], te, 'v1')).version
    v2 = register_salary_model(train_salary_model(tr, te, 'v2')).version
    client, auth = _client(), {'Authorization': 'Bearer tok'}
    client.set_registered_model_alias(MODEL_NAME, 'champion', v1)
    app = create_registry_app(f'models:/{MODEL_NAME}@champion', admin_token='tok')
    previous = reload_on_sighup(app)
    seen, failures, lock, stop = [], [], threading.Lock(), threading.Event()
    try:
        with _Served(app) as served:
            threads = [threading.Thread(target=_hammer, args=(served.url, stop, seen, failures, lock)) for _ in range(3)]
            for t in threads: t.start()
            _wait_for_version(seen, lock, 'v1')
            client.set_registered_model_alias(MODEL_NAME, 'champion', v2)
            assert http_call(served.url + '/admin/reload', 'POST')[0] == 401
            status, body, _ = http_call(served.url + '/admin/reload', 'POST', headers=auth)
            assert (status, body['live']) == (200, 'v2')
            _wait_for_version(seen, lock, 'v2')
            client.set_registered_model_alias(MODEL_NAME, 'champion', v1)
            os.kill(os.getpid(), signal.SIGHUP)                      # the same switch, on a signal
            _wait_for_version(seen, lock, 'v1')
            client.delete_registered_model_alias(MODEL_NAME, 'champion')
            status, body, _ = http_call(served.url + '/admin/reload', 'POST', headers=auth)
            assert status == 404 and "no alias 'champion'" in body['problems'][0]['message']
            Lifecycle(MODEL_NAME, history=store/'h.jsonl').retire(v2, by='ana', why='bad')
            client.set_registered_model_alias(MODEL_NAME, 'champion', v2)
            status, body, _ = http_call(served.url + '/admin/reload', 'POST', headers=auth)
            assert status == 409 and 'was retired' in body['problems'][0]['message']
            stop.set()
            for t in threads: t.join(30)
    finally:
        stop.set(); signal.signal(signal.SIGHUP, previous)
    assert failures == [] and {'v1', 'v2'} <= set(seen), (failures[:5], set(seen))
    assert seen[-1] == 'v1'   # refused switches leave the service on what it had

def test_unknown_model_or_alias_is_refused_at_start(store):
    with pytest.raises(ModelNotFound, match="no registered model 'nobody'"): create_registry_app('models:/nobody@champion')

@pytest.mark.timeout(900)   # about twenty git and DVC commands, each a fresh Python
def test_dvc_pipeline_reruns_what_changed_and_reproduces_the_model_bit_for_bit(tmp_path):
    from labkit.model_management import dvc_demo
    shown = dvc_demo(tmp_path/'repo', n=300)
    assert shown['first_repro'] == ['prepare', 'train', 'evaluate']
    assert shown['after_param_change'] == ['train', 'evaluate']        # the data did not change: prepare is skipped
    assert shown['unchanged_repro'] == []
    assert shown['after_new_data'] == ['prepare', 'train', 'evaluate']
    assert {k: shown['params_diff']['params.yaml']['train.n_estimators'][k] for k in ('old', 'new')} == {'old': 20, 'new': 40}
    assert 'rmse' in shown['metrics_diff']['metrics.json']
    assert shown['model_v1_sha256'] == shown['model_checked_out_sha256'] == shown['model_retrained_sha256']
