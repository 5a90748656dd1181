"The monitoring stack for real: Prometheus and Alertmanager as processes, the drift drill through the served app, failures"
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
import pytest
import yaml
from labkit.core import ServiceUnavailable, find_program
from labkit.monitoring import PHASES, make_applicants
from labkit.monitoring_stack import *
from conftest import labkit_cmd

ROOT = Path(__file__).resolve().parents[1]


def _skip_without(*programs):
    "Skip (with the package to install) when the machine lacks one of the (program, Debian package) pairs"
    for name, package in programs:
        try: find_program(name, package=package)
        except ServiceUnavailable as e: pytest.skip(str(e))

@pytest.fixture(scope='module')
def promtool(): _skip_without(('promtool', 'prometheus'))

@pytest.fixture(scope='module')
def stack(tmp_path_factory):
    "One running stack for the module's tests (each test leaves it without a firing alert)"
    _skip_without(('prometheus', 'prometheus'), ('prometheus-alertmanager', 'prometheus-alertmanager'))
    with MonitoringStack(tmp_path_factory.mktemp('stack'), interval=1.0, window=200) as s: yield s

def _post(url:str, body:bytes) -> int:
    req = urllib.request.Request(url, body, {'Content-Type': 'application/json'})
    try:
        with urllib.request.urlopen(req, timeout=5) as r: return r.status
    except urllib.error.HTTPError as e: return e.code


# --- configuration --------------------------------------------------------------------------------------------

def test_generated_configuration_passes_promtool(promtool, tmp_path):
    "prometheus.yml (with its rule file) and alerts.yml pass promtool; the fast `for:` follows the interval"
    files = write_stack_config(tmp_path, {'app': '127.0.0.1:8000', 'monitor': '127.0.0.1:9108'}, '127.0.0.1:9093',
                               'http://127.0.0.1:5001/alerts', interval=1)
    assert 'SUCCESS' in promtool_check('config', files['prometheus'])
    assert 'SUCCESS' in promtool_check('rules', files['rules'])
    assert 'SUCCESS' in promtool_check('rules', ROOT/'docker'/'monitoring'/'alerts.yml')   # the committed rule file too
    rules = {r['alert']: r for r in yaml.safe_load(files['rules'].read_text())['groups'][0]['rules']}
    assert rules['FeatureDrift']['for'] == '1s' and rules['FeatureBroken']['for'] == '0s'
    am = yaml.safe_load(files['alertmanager'].read_text())
    assert am['route']['group_wait'] == '1s' and am['receivers'][0]['webhook_configs'][0]['send_resolved'] is True

def test_promtool_rejects_a_broken_rule_naming_the_file(promtool, tmp_path):
    bad = tmp_path/'broken-rules.yml'
    bad.write_text("groups:\n- name: x\n  rules:\n  - alert: Broken\n    expr: labkit_feature_psi >\n")
    with pytest.raises(ValueError, match='broken-rules.yml'): promtool_check('rules', bad)
    with pytest.raises(ValueError, match="'config' or 'rules'"): promtool_check('web', bad)

def test_webhook_receiver_records_posts_and_rejects_bad_bodies():
    receiver = WebhookReceiver()
    try:
        body = {'status': 'firing', 'alerts': [{'status': 'firing', 'labels': {'alertname': 'FeatureDrift', 'feature': 'age'}}]}
        assert _post(receiver.url, json.dumps(body).encode()) == 200
        assert _post(receiver.url, b'{not json') == 400 and _post(receiver.url, b'[1, 2]') == 400
        assert receiver.alerts()[['alertname', 'feature', 'status']].values.tolist() == [['FeatureDrift', 'age', 'firing']]
        assert receiver.rejected == 2
    finally: receiver.stop()

def test_wait_until_fails_saying_what_it_waited_for():
    with pytest.raises(TimeoutError, match='waited 0.1 s for the moon'): wait_until(lambda: None, 0.1, 'the moon', every=0.02)
    assert wait_until(lambda: 0, 1, 'zero') == 0   # only None and False mean "not yet"


# --- the running stack ------------------------------------------------------------------------------------

def test_drift_fires_in_prometheus_is_delivered_and_resolves(stack):
    "The drill through the served app: FeatureDrift on experience fires, reaches the webhook, resolves, and its resolution too"
    drill = drift_drill(stack, n=200, timeout=60)
    assert drill.event.tolist()[-1] == 'FeatureDrift resolution delivered'
    delivered = stack.receiver.alerts()
    drift = delivered[delivered.alertname == 'FeatureDrift']
    assert set(drift.feature) == {'experience'} and drift.status.tolist()[:1] == ['firing'] and 'resolved' in set(drift.status)
    rules = {r['name']: r for g in prometheus_api(stack.prometheus.url, 'rules')['groups'] for r in g['rules']}
    assert set(rules) >= {'FeatureDrift', 'FeatureBroken', 'PredictionDrift', 'AccuracyDrop', 'MonitorStale'}
    assert all(r['health'] == 'ok' for r in rules.values()), rules
    assert stack.log is not None and len(stack.log.records()) >= 600   # every request went through the app's request log

def test_alertmanager_restarted_loses_no_alert(stack):
    "An alert that fires while Alertmanager is down is delivered once it is back (Prometheus sends it again)"
    stack.alertmanager.stop()
    after = len(stack.receiver.posts)
    try:
        stack.send(salary_requests(200, seed=21, experience_years=8))
        stack.wait_alert('FeatureDrift', 'firing', timeout=60)
        assert 'alertmanager' in stack.health()['degraded']
    finally: stack.alertmanager.start()
    got = stack.wait_delivered('FeatureDrift', 'firing', after=after, timeout=60)
    assert set(got.feature) == {'experience'}
    stack.send(salary_requests(200, seed=22))
    stack.wait_delivered('FeatureDrift', 'resolved', after=after, timeout=60)

def test_prometheus_down_service_and_monitor_serve_and_stack_is_degraded(stack):
    stack.prometheus.stop()
    try:
        assert stack.send(salary_requests(30, seed=31)) == 30
        with urllib.request.urlopen(f'http://127.0.0.1:{stack.monitor.port}/metrics', timeout=5) as r:
            assert r.status == 200 and b'labkit_feature_psi' in r.read()
        health = stack.health()
        assert health['degraded'] == ['prometheus'] and health['app'] and health['monitor'] and health['targets'] == {}
    finally: stack.prometheus.start()
    wait_until(lambda: None if stack.health()['degraded'] else True, 40, 'Prometheus back and scraping every target')

def test_every_dashboard_query_names_metrics_prometheus_has(stack):
    panels = check_dashboard(stack.prometheus.url)
    missing = set(panels.missing.sum())
    assert missing <= {'labkit_prediction_share'}, panels[panels.missing.map(len) > 0]   # no sample: a regression has no classes
    empty = set(panels[panels.series == 0].expr)
    assert empty <= {'labkit_prediction_share'}, empty   # a regression has no predicted classes to share out
    fig = plot_panels(stack.prometheus.url, step=2)
    assert sum(bool(ax.lines) for ax in fig.axes) >= len(panels.panel.unique()) - 1

def test_hardware_metrics_of_the_app_and_gpu_presence(stack):
    "The app's process CPU and memory reach Prometheus; the GPU count says how many NVML sees (0: absent)"
    def value(expr):
        result = prometheus_api(stack.prometheus.url, 'query', query=expr)['result']
        return float(result[0]['value'][1]) if result else None
    assert value('process_resident_memory_bytes{job="hardware"}') > 10e6
    assert value('process_cpu_seconds_total{job="hardware"}') > 0
    assert value('labkit_gpu_count{job="hardware"}') == len(gpu_readings())


# --- malformed metrics pages ------------------------------------------------------------------------------------

GOOD_PAGE = b'# TYPE labkit_predictions_total counter\nlabkit_predictions_total{version="v2"} 3\n'
BAD_PAGES = [  # (status, headers, body, the reason the monitor must count)
    ('200 OK', [('Content-Type', 'text/html')], b'<html><body>502 Bad Gateway</body></html>', 'not_text'),
    ('200 OK', [('Content-Type', 'text/plain')], b'<html><body>502 Bad Gateway</body></html>', 'malformed'),
    ('200 OK', [('Content-Type', 'text/plain')], b'labkit_predictions_total one\n', 'malformed'),
    ('200 OK', [], GOOD_PAGE + b'# TYPE labkit_predictions_total gauge\n', 'malformed'),
    ('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', str(len(GOOD_PAGE)))], GOOD_PAGE[:30], 'truncated'),
    ('200 OK', [], GOOD_PAGE[:-12], 'malformed'),
    ('200 OK', [], b'x ' + b'9' * 200_000 + b'\n', 'too_large'),
    ('200 OK', [], b'up \xff\xfe\n', 'not_text'),
    ('500 Internal Server Error', [], b'boom', 'http_status'),
]

@pytest.fixture
def monitor_service(tmp_path):
    "A served monitor of an empty request log, updating every 0.2 s"
    from labkit.monitoring import serve_monitor
    make_applicants(300, seed=0).assign(prediction=0).to_csv(tmp_path/'reference.csv', index=False)
    service = serve_monitor(str(tmp_path/'requests'), str(tmp_path/'reference.csv'), port=0, interval=0.2)
    yield service
    service.stop()

def _scrape_errors(port:int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=5) as r: text = r.read().decode()
    return {(s.labels['target'], s.labels['reason']): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == 'labkit_monitor_scrape_errors_total'}

def test_malformed_pages_are_counted_by_reason_and_the_monitor_keeps_serving(monitor_service):
    served = {}
    def exporter(environ, start_response):
        status, headers, body, _ = served['page']
        start_response(status, headers)
        return [body]
    server = ThreadedServer(exporter)
    try:
        watch = ScrapeWatch(monitor_service.monitor.registry, {'exporter': f'{server.url}/metrics'}, max_bytes=100_000)
        assert set(_scrape_errors(monitor_service.port).values()) == {0.0}   # every reason exposed at 0 before the first error
        for page in BAD_PAGES:
            served['page'] = page
            assert watch.scrape('exporter') == page[3], page[2][:60]
        served['page'] = ('200 OK', [('Content-Type', 'text/plain; version=0.0.4')], GOOD_PAGE, None)
        assert watch.scrape('exporter') is None
        served['page'] = ('200 OK', [('Content-Type', 'text/plain')], b'', None)   # no sample yet (an app before its first request)
        assert watch.scrape('exporter') is None
    finally: server.stop()
    assert watch.scrape('exporter') == 'unreachable'
    expected = {why: sum(p[3] == why for p in BAD_PAGES) + (why == 'unreachable') for why in SCRAPE_ERROR_REASONS}
    assert watch.errors('exporter') == expected
    assert {why: v for (t, why), v in _scrape_errors(monitor_service.port).items() if t == 'exporter'} == expected   # on its /metrics
    assert monitor_service.thread.is_alive() and monitor_service.monitor.registry.get_sample_value('labkit_monitor_update_errors_total') == 0

def test_the_stack_watches_the_pages_prometheus_scrapes(stack):
    def scraped():
        errors = _scrape_errors(stack.monitor.port)
        return errors if stack.monitor.monitor.registry.get_sample_value('labkit_monitor_scrapes_total', {'target': 'app'}) >= 2 else None
    errors = wait_until(scraped, 30, "the monitor to scrape the app's /metrics twice")
    assert {t for t, _ in errors} == {'app', 'hardware'} and set(errors.values()) == {0.0}, errors

# --- the command --------------------------------------------------------------------------------------------

def test_cli_drill_runs_the_stack_and_stops(tmp_path):
    _skip_without(('prometheus', 'prometheus'), ('prometheus-alertmanager', 'prometheus-alertmanager'))
    out = subprocess.run(labkit_cmd('monitoring-stack', '--data', tmp_path/'stack', '--drill'), capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'FeatureDrift resolution delivered' in out.stdout and 'prometheus http://127.0.0.1:' in out.stdout
    assert (tmp_path/'stack'/'prometheus'/'tsdb').is_dir() and (tmp_path/'stack'/'config'/'alerts.yml').is_file()

def test_cli_bad_window_is_one_clear_line(tmp_path):
    out = subprocess.run(labkit_cmd('monitoring-stack', '--data', tmp_path, '--window', '10'), capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and '--window' in out.stderr and 'Traceback' not in out.stderr, out.stderr


# --- what watching costs: the benchmarks, run small ------------------------------------------------------------

def _run_benchmark(tmp_path, script:str, *args) -> dict:
    "Run benchmarks/`script` with a scratch TMPDIR; its --json output, after checking it left no scratch folder behind"
    scratch = tmp_path/'scratch'; scratch.mkdir()
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/script), *map(str, args), '--json', str(tmp_path/'out.json')],
                       capture_output=True, text=True, timeout=300, env={**os.environ, 'TMPDIR': str(scratch)})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert list(scratch.iterdir()) == [], list(scratch.iterdir())
    return json.loads((tmp_path/'out.json').read_text()) | {'stdout': r.stdout}

def test_overhead_benchmark_runs_every_setup_on_fresh_servers(tmp_path):
    "Five setups, each round on new gunicorns, every request answered, the intervals of the medians in the table"
    _skip_without(('prometheus', 'prometheus'))
    out = _run_benchmark(tmp_path, 'monitoring_stack.py', '--requests', 120, '--rounds', 2, '--warmup', 10)
    assert (out['rounds'], out['restart']) == (2, True)
    assert set(out['results']) == {'bare', 'bare-again', 'log', 'log+monitor', 'log+monitor+scrape'}
    for name, r in out['results'].items():
        assert (r['requests'], r['failed'], len(r['per_round'])) == (120, 0, 2), (name, r)
        assert all(app > 0 and total >= app for app, total in r['per_round']), (name, r)
    assert 'new gunicorns each round' in out['stdout'] and '95% of medians' in out['stdout']

def test_in_process_benchmark_gives_both_apps_every_round(tmp_path):
    "Each setup's process times the bare and the logging app in every round"
    out = _run_benchmark(tmp_path, 'predict_with_log.py', '--rounds', 3, '--block', 20)
    assert set(out['results']) == {'this', 'this again'}
    for r in out['results'].values():
        assert {k: len(v) for k, v in r.items()} == {'bare': 3, 'log': 3} and all(us > 0 for v in r.values() for us in v)
    assert 'log extra µs' in out['stdout']

# --- Evidently ------------------------------------------------------------------------------------------------

def test_evidently_agrees_with_labkit_tests_on_small_windows():
    "Up to 1000 rows Evidently runs KS / chi-squared at 0.05 as labkit does: same p-values, same significance per feature"
    both = compare_drift(make_applicants(800, seed=0), make_applicants(400, seed=1, **PHASES['drift']))
    assert both.agree_on_test.all(), both
    assert set(both.ev_method) == {'K-S p_value', 'chi-square p_value'}
    ks = both[both.test == 'KS']
    assert ((ks.p_value - ks.ev_score).abs() < 1e-9 + 1e-6*ks.p_value).all(), both
    assert both.loc[['age', 'income', 'channel'], 'ev_drift'].all() and both.loc[['age', 'income', 'channel'], 'verdict'].eq('drift').all()


# --- retraining by transfer, and TensorBoard ------------------------------------------------------------------

def test_transfer_table_fine_tuning_needs_fewest_labels(tmp_path):
    "After a concept drift the deployed model fails; fine-tuning beats training from scratch on few labels; runs logged"
    table = transfer_table((50, 400), epochs=30, log_dir=tmp_path/'runs')
    acc = table.set_index(['strategy', 'labels']).accuracy
    assert acc['deployed, not retrained', 0] < 0.6
    assert acc['fine-tuned', 50] > acc['from scratch', 50] + 0.02
    retrained = [('fine-tuned', 50), ('frozen features', 50), ('from scratch', 400), ('fine-tuned', 400), ('frozen features', 400)]
    assert all(acc[k] > acc['deployed, not retrained', 0] + 0.2 for k in retrained), table   # from scratch on 50 labels: barely trained
    scalars = read_scalars(tmp_path/'runs')
    assert set(scalars.run) == {'deployed-not-retrained-0'} | {f'{r}-{n}' for r in ('from-scratch', 'fine-tuned', 'frozen-features') for n in (50, 400)}
    assert scalars.groupby('run').step.max().loc['fine-tuned-50'] == 29
    with pytest.raises(ValueError, match='unknown strategy'): retrain('distill', None, None, None, None, None)

def test_scalar_log_needs_no_tensorflow(tmp_path):
    "Writing and reading TensorBoard scalars imports no TensorFlow (a fresh interpreter checks)"
    code = ("import sys; from labkit.monitoring_stack import ScalarLog, read_scalars\n"
            f"with ScalarLog({str(tmp_path/'r')!r}) as log: log.add('loss', 0.5, 1)\n"
            f"assert read_scalars({str(tmp_path)!r}).value.tolist() == [0.5]\n"
            "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]

@pytest.fixture(scope='module')
def tensorboard(tmp_path_factory):
    "TensorBoard on 127.0.0.1 over two logged runs"
    runs = tmp_path_factory.mktemp('tb')/'runs'
    for name, values in {'fine-tuned-50': [0.6, 0.8, 0.84], 'from-scratch-50': [0.5, 0.7, 0.78]}.items():
        with ScalarLog(runs/name) as log:
            for step, v in enumerate(values): log.add('accuracy/test', v, step)
    with tensorboard_service(runs, runs.parent/'tensorboard') as tb: yield tb

def test_tensorboard_serves_the_runs(tensorboard):
    tags = wait_until(lambda: tensorboard_scalars(tensorboard.url) or None, 60, 'TensorBoard to list the runs')
    assert tags == {'fine-tuned-50': ['accuracy/test'], 'from-scratch-50': ['accuracy/test']}

_ALL_TEXT = '''function text(node) {   // TensorBoard's scalars dashboard is Polymer: its text is inside shadow roots
  let out = node.shadowRoot ? text(node.shadowRoot) : '';
  for (const c of node.childNodes) out += c.nodeType === 3 ? c.textContent + ' ' : text(c);
  return out;
}
return text(document.body);'''

def test_tensorboard_shows_the_scalars_in_a_browser(tensorboard):
    "Headless Chromium opens TensorBoard's scalars dashboard and sees the runs and the tag"
    chromium, driver = shutil.which('chromium') or shutil.which('chromium-browser'), shutil.which('chromedriver')
    if not (chromium and driver): pytest.skip("headless Chromium is not installed: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip('selenium.webdriver', reason='selenium is not installed (pip install "labkit[dev]")')
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions(); opts.binary_location = chromium
    profile = tempfile.mkdtemp(prefix='labkit-chromium-')
    for flag in ('--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                 '--disable-sync', '--no-first-run', '--disable-dev-shm-usage', f'--user-data-dir={profile}'):
        opts.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        browser.set_page_load_timeout(60)
        browser.get(f'{tensorboard.url}/#scalars')
        seen = lambda: all(w in browser.execute_script(_ALL_TEXT) for w in ('fine-tuned-50', 'from-scratch-50', 'accuracy/test')) or None
        wait_until(seen, 90, 'TensorBoard\'s page to show both runs and the accuracy/test tag', every=1)
    finally:
        browser.quit(); shutil.rmtree(profile, ignore_errors=True)
