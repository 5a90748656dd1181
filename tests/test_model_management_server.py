"The PostgreSQL-backed MLflow tracking server: the same code path as the embedded store, PostgreSQL stopped mid-run, the UI in a browser"
import shutil, tempfile, time
import pytest
from labkit.core import ServiceUnavailable, find_program

pytestmark = pytest.mark.timeout(900)   # PostgreSQL's initdb and the server's first migrations take a while on a busy machine
from labkit.model_management import (PG_BIN, TrackingServer, _client, _mlflow, best_run, fetch_version, make_properties,
                                     register_run_model, resolve, track_run, use_tracking)

@pytest.fixture(scope='module')
def server():
    "A tracking server on PostgreSQL 15 in a fresh data folder, or a skip when the machine lacks PostgreSQL"
    try: find_program('initdb', PG_BIN/'initdb', package='postgresql')
    except ServiceUnavailable as e: pytest.skip(str(e))
    data = tempfile.mkdtemp(prefix='labkit-pg-')   # not pytest's tmp_path: the user postgres must reach it
    with pytest.MonkeyPatch.context() as mp, TrackingServer(data) as srv:
        mp.setenv('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '0')   # a failure shows at once, not after minutes of retries
        mp.setenv('MLFLOW_HTTP_REQUEST_TIMEOUT', '20')
        use_tracking(srv.url)
        yield srv
    shutil.rmtree(data, ignore_errors=True)

@pytest.fixture(scope='module')
def homes():
    df = make_properties(200)
    return df.iloc[:150], df.iloc[150:]

def test_same_code_path_as_the_embedded_store(server, homes):
    use_tracking(server.url)
    run_id = track_run(*homes, {'n_estimators': 5}, experiment='on-server')
    assert best_run('on-server')['run_id'] == run_id
    assert _client().get_run(run_id).info.artifact_uri.startswith('mlflow-artifacts:/')   # proxied by the server
    mv = register_run_model(run_id, 'served-homes')
    _client().set_registered_model_alias('served-homes', 'champion', mv.version)
    folder, got = fetch_version('served-homes', 'champion')
    assert got.version == mv.version and (folder/'MLmodel').exists()
    assert list((server.data/'artifacts').rglob('model.skops'))                   # written by the server, in its destination

def test_postgres_stopped_mid_run_fails_clearly_and_a_rerun_succeeds(server, homes):
    mlflow = _mlflow(); use_tracking(server.url)
    exp = mlflow.set_experiment('interrupted')
    with pytest.raises(Exception) as failure:
        with mlflow.start_run() as run:
            mlflow.log_metric('step', 1)
            server.stop_postgres()
            mlflow.log_metric('step', 2)
    assert type(failure.value).__name__ in ('MlflowException', 'RestException'), repr(failure.value)
    server.start_postgres()
    run_id = track_run(*homes, {'n_estimators': 5}, experiment='interrupted')
    assert _client().get_run(run_id).info.status == 'FINISHED'
    assert _client().get_run(run.info.run_id).data.metrics['step'] == 1.0

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')

@pytest.mark.browser
def test_mlflow_ui_shows_runs_and_model_versions(server, homes):
    if not (CHROMIUM and shutil.which('chromedriver')): pytest.skip('headless Chromium is not installed: apt-get install chromium chromium-driver')
    webdriver = pytest.importorskip('selenium.webdriver', reason='selenium is not installed')
    from selenium.webdriver.chrome.service import Service
    use_tracking(server.url)
    run_id = track_run(*homes, {'n_estimators': 5}, experiment='ui-check', run_name='ui-check-run')
    register_run_model(run_id, 'ui-homes')
    exp_id = _mlflow().get_experiment_by_name('ui-check').experiment_id
    profile = tempfile.mkdtemp(prefix='labkit-chromium-')
    opts = webdriver.ChromeOptions(); opts.binary_location = CHROMIUM
    for flag in ('--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                 '--disable-sync', '--no-first-run', '--disable-dev-shm-usage', f'--user-data-dir={profile}'):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which('chromedriver')), options=opts)
    try:
        driver.set_page_load_timeout(60)
        driver.get(server.url + f'/#/experiments/{exp_id}/runs')
        end, text = time.monotonic() + 60, ''
        while time.monotonic() < end and 'ui-check-run' not in text:
            time.sleep(0.5); text = driver.find_element('tag name', 'body').text
        assert 'ui-check-run' in text, f"the run is not on the experiment's runs tab within 60 s; the page says: {text[:500]!r}"
        driver.get(server.url + '/#/models/ui-homes')
        end, links = time.monotonic() + 60, []
        while time.monotonic() < end and not links:   # the versions table links each version to its page
            time.sleep(0.5); links = driver.find_elements('css selector', 'a[href*="/models/ui-homes/versions/1"]')
        assert links, f"no link to version 1 on the model's page within 60 s; it says: {driver.find_element('tag name', 'body').text[:500]!r}"
    finally:
        driver.quit(); shutil.rmtree(profile, ignore_errors=True)
