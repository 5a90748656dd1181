"The monitoring stack's local images: Prometheus and Alertmanager from Debian, non-root, ready on 127.0.0.1, healthy; cleaned up after"
import json, subprocess, time, urllib.error, urllib.request, uuid
import pytest
from conftest import REPO, docker, image_build, poll, running_container

# each build is one apt-get install on debian:bookworm-slim (about a minute on 2 cores)
pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

IMAGES = {'prometheus': 'PROMETHEUS_LISTEN', 'alertmanager': 'ALERTMANAGER_LISTEN'}   # image -> its listen-address variable

def _status(url:str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r: return r.status
    except urllib.error.HTTPError as e: return e.code
    except OSError: return 0

@pytest.fixture(scope='module', params=sorted(IMAGES))
def image(request, docker_engine):
    name = request.param
    tag = f'labkit-{name}:test-{uuid.uuid4().hex[:8]}'
    image_build('-f', REPO/f'docker/{name}/Dockerfile', '-t', tag, REPO, timeout=600)
    yield name, tag
    docker('rmi', '-f', tag, check=False)

@pytest.fixture(scope='module')
def container(image):
    name, tag = image
    with running_container(tag, IMAGES[name], '/-/ready') as (cname, url): yield name, cname, url

def test_ready_on_loopback(container):
    name, _, url = container
    assert _status(url + '/-/ready') == 200 and _status(url + '/-/healthy') == 200

def test_runs_as_non_root(container):
    _, cname, _ = container
    assert docker('exec', cname, 'id', '-u').stdout.strip() not in ('', '0')
    users = docker('exec', cname, 'bash', '-c', "awk '/^Uid:/ {print $2}' /proc/1/status").stdout.split()   # the server is PID 1
    assert users and users != ['0'], users

def test_configuration_baked_in_is_valid(container):
    name, cname, _ = container
    check = (['promtool', 'check', 'config', '/etc/prometheus/prometheus.yml'] if name == 'prometheus'
             else ['amtool', 'check-config', '/etc/alertmanager/alertmanager.yml'])
    out = docker('exec', cname, *check)
    assert 'SUCCESS' in out.stdout + out.stderr, out.stdout + out.stderr
    rules = (REPO/'docker/monitoring/alerts.yml').read_text().count('- alert:')
    if name == 'prometheus': assert f'{rules} rules found' in out.stdout + out.stderr   # the committed alerts.yml, all of it

def test_serves_the_configuration_of_the_compose_folder(container):
    "Prometheus holds the lab's alert rules; Alertmanager the route of docker/monitoring/alertmanager.yml"
    name, _, url = container
    if name == 'prometheus':
        with urllib.request.urlopen(url + '/api/v1/rules', timeout=5) as r: groups = json.load(r)['data']['groups']
        assert {'FeatureDrift', 'MonitorStale'} <= {rule['name'] for g in groups for rule in g['rules']}
    else:
        with urllib.request.urlopen(url + '/api/v2/status', timeout=5) as r: config = json.load(r)['config']['original']
        assert 'receiver: default' in config and 'group_by:' in config, config

def test_turns_healthy(container):
    _, cname, _ = container
    def healthy():
        state = json.loads(docker('inspect', '--format', '{{json .State.Health}}', cname).stdout)
        return state if state and state['Status'] == 'healthy' else None
    assert poll(healthy, 60), docker('inspect', '--format', '{{json .State.Health}}', cname).stdout
