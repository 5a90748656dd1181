"""docker/monitoring's compose file, up: the app, the monitor, Prometheus and Alertmanager from this tree's images, on
the host network; a drift fires in Prometheus, reaches Alertmanager and resolves; everything removed after"""
import json, os, secrets, shutil, socket, subprocess, urllib.request, uuid
from configparser import ConfigParser
from types import SimpleNamespace
import pytest
import yaml
from conftest import REPO, buildkit_build, docker, image_build
from labkit.core import wait_until_up
from labkit.monitoring_stack import prometheus_api, salary_reference, salary_requests, send_requests, wait_until

# four cached builds (`make images` builds the same layers) and a drift at the compose file's 15 s rates
pytestmark = [pytest.mark.docker, pytest.mark.timeout(1200)]

PORTS = {'app': 8000, 'monitor': 9108, 'prometheus': 9090, 'alertmanager': 9093}   # fixed in docker/monitoring
IMAGES = {'app': 'serve', 'monitor': 'lab', 'prometheus': 'prometheus', 'alertmanager': 'alertmanager'}   # service -> docker/<folder>
VERSION = ConfigParser(delimiters=['=']); VERSION.read(REPO/'settings.ini'); VERSION = VERSION['DEFAULT']['version']
PROMETHEUS, ALERTMANAGER, APP = (f'http://127.0.0.1:{PORTS[s]}' for s in ('prometheus', 'alertmanager', 'app'))

def _compose() -> list:
    "`docker compose` (the plugin) or Debian's `docker-compose`; a skip saying how to get one"
    if docker('compose', 'version', check=False).returncode == 0: return ['docker', 'compose']
    if shutil.which('docker-compose'): return ['docker-compose']
    pytest.skip("no docker compose: install the compose plugin, or Debian's docker-compose (apt-get install docker-compose)")

def _busy(port:int) -> bool:
    "Whether something listens on `port` of 127.0.0.1"
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the servers bind: closed connections waiting out TIME_WAIT do not count
        try: s.bind(('127.0.0.1', port)); return False
        except OSError: return True

@pytest.fixture(scope='module')
def stack(docker_engine, tmp_path_factory):
    "The compose file up on a copy of its folder (the reference written there), its images built from this tree; down -v after"
    compose = _compose()
    if busy := [f'{name} {port}' for name, port in PORTS.items() if _busy(port)]:
        pytest.skip(f"the compose file's services listen on fixed ports of 127.0.0.1, in use here: {', '.join(busy)}")
    if not buildkit_build(): pytest.skip('no docker client builds with BuildKit (install docker buildx): the lab image needs it')
    run = uuid.uuid4().hex[:8]
    tags = {service: f'labkit-{folder}:compose-{run}' for service, folder in IMAGES.items()}
    folder = tmp_path_factory.mktemp('compose')/'docker'/'monitoring'   # its build contexts (../..) resolve inside the copy
    shutil.copytree(REPO/'docker'/'monitoring', folder)
    salary_reference().to_csv(folder/'reference.csv', index=False)   # as docker/monitoring/README.md makes it
    (folder/'override.yml').write_text(yaml.safe_dump({'services': {s: {'image': tag} for s, tag in tags.items()}}))
    cmd = [*compose, '-p', f'labkit-compose-{run}', '-f', str(folder/'docker-compose.yml'), '-f', str(folder/'override.yml')]
    env = os.environ | {'GRAFANA_ADMIN_PASSWORD': secrets.token_hex(8)}   # read for the Grafana service, which stays off
    def compose_run(*args, timeout=300):
        return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=folder)
    try:
        for service, folder_name in IMAGES.items():
            image_build('-f', REPO/'docker'/folder_name/'Dockerfile', '--build-arg', f'LABKIT_VERSION={VERSION}', '-t', tags[service], REPO)
        up = compose_run('up', '-d', '--no-build', *PORTS)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        yield SimpleNamespace(logs=lambda: (lambda r: r.stdout[-4000:])(compose_run('logs', '--no-color', '--tail', '30')))
    finally:
        compose_run('down', '-v')
        for tag in tags.values(): docker('rmi', tag, check=False)

def _firing(name:str, **labels) -> list|None:
    "Prometheus' alerts `name` with `labels` in state firing; None when there is none (`wait_until` goes on)"
    return [a for a in prometheus_api(PROMETHEUS, 'alerts')['alerts'] if a['labels']['alertname'] == name and a['state'] == 'firing'
            and all(a['labels'].get(k) == v for k, v in labels.items())] or None

def test_compose_stack_scrapes_fires_delivers_and_resolves(stack):
    "Every target up, the app's logged requests in the monitor's window, FeatureDrift firing and held by Alertmanager, then resolved"
    for url in (PROMETHEUS + '/-/ready', ALERTMANAGER + '/-/ready', APP + '/health', f"http://127.0.0.1:{PORTS['monitor']}/metrics"):
        assert wait_until_up(url, 120), f'{url} did not answer within 120 s:\n{stack.logs()}'
    assert send_requests(APP, salary_requests(500, seed=3)) == 500                  # like the reference
    targets = wait_until(lambda: (lambda t: t if len(t) == 4 and all(x['health'] == 'up' for x in t) else None)(
        prometheus_api(PROMETHEUS, 'targets')['activeTargets']), 90, 'Prometheus scraping its four targets')
    assert {t['labels']['job'] for t in targets} == {'app', 'monitor', 'prometheus', 'alertmanager'}
    window = lambda: float(r[0]['value'][1]) if (r := prometheus_api(PROMETHEUS, 'query', query='labkit_window_records')['result']) else 0.0
    wait_until(lambda: window() >= 500, 90, "the monitor's window of 500 logged requests, in Prometheus")
    assert send_requests(APP, salary_requests(500, seed=4, experience_years=8)) == 500   # eight more years of experience
    wait_until(lambda: _firing('FeatureDrift', feature='experience'), 150, 'FeatureDrift on experience firing in Prometheus')
    def held():
        with urllib.request.urlopen(ALERTMANAGER + '/api/v2/alerts', timeout=5) as r: alerts = json.load(r)
        return [a for a in alerts if a['labels']['alertname'] == 'FeatureDrift' and a['labels'].get('feature') == 'experience'] or None
    assert wait_until(held, 90, 'FeatureDrift on experience in Alertmanager')[0]['status']['state'] == 'active'
    assert send_requests(APP, salary_requests(500, seed=5)) == 500                  # the campaign is over
    wait_until(lambda: not _firing('FeatureDrift'), 150, 'FeatureDrift resolved in Prometheus')
