"""The lab image on a real engine: it builds, turns healthy, keeps token authentication on, runs a notebook and
the doctor on the CPU, writes a mounted folder as the host user, and stops on SIGTERM."""
import json, os, re, secrets, subprocess, time, urllib.error, urllib.request, uuid
from configparser import ConfigParser
from pathlib import Path
from types import SimpleNamespace
import pytest
from conftest import REPO, buildkit_build, docker, free_port, image_build, poll

# the image is built by the first test: a cold build (the CUDA torch layer) takes up to 15 min on 2 cores
pytestmark = [pytest.mark.docker, pytest.mark.timeout(2700)]

DOCKERFILE = REPO/'docker'/'lab'/'Dockerfile'
IMAGE_UID = 1000                                  # the image's notebook user (build ARG NB_UID)
HOST_USER = (2345, 2345) if os.getuid() == 0 else (os.getuid(), os.getgid())   # as root, play an ordinary host user
VERSION = ConfigParser(delimiters=['=']); VERSION.read(REPO/'settings.ini'); VERSION = VERSION['DEFAULT']['version']

@pytest.fixture(scope='module')
def lab_image(docker_engine):
    "The image: LABKIT_LAB_IMAGE when a tag was built earlier in this run, else built now (layers come from the build cache)"
    if tag := os.environ.get('LABKIT_LAB_IMAGE'):
        docker('image', 'inspect', tag)
        yield tag
        return
    if not buildkit_build(): pytest.skip('no docker client builds with BuildKit (install docker buildx)')
    tag = f'labkit-lab:test-{uuid.uuid4().hex[:8]}'
    t0 = time.monotonic()
    image_build('-f', DOCKERFILE, '--build-arg', f'LABKIT_VERSION={VERSION}', '-t', tag, REPO)
    print(f"\n{tag}: built in {time.monotonic() - t0:.0f} s")
    yield tag
    docker('rmi', tag, check=False)               # its layers stay in the build cache for the next build
    docker('image', 'prune', '--force', '--filter', 'label=labkit.image=lab', check=False)

def http(url, token=None, method='GET', body=None):
    "Status and body of a request to the lab server"
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={'Authorization': f'token {token}'} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=20) as r: return r.status, r.read().decode()
    except urllib.error.HTTPError as e: return e.code, e.read().decode()

def answers(url):
    try: return http(url)[0] == 200
    except OSError: return False

@pytest.fixture(scope='module')
def lab(lab_image, tmp_path_factory):
    "JupyterLab as the documented command runs it, as the host user, on a free port of 127.0.0.1 (host network)"
    work = tmp_path_factory.mktemp('work')
    os.chown(work, *HOST_USER)
    name, port, token = f'labkit-lab-test-{uuid.uuid4().hex[:8]}', free_port(), secrets.token_hex(16)
    docker('run', '-d', '--name', name, '--network', 'host', '--user', f'{HOST_USER[0]}:{HOST_USER[1]}',
           '-e', f'JUPYTER_PORT={port}', '-e', 'JUPYTER_IP=127.0.0.1', '-e', f'JUPYTER_TOKEN={token}',
           '-v', f'{work}:/home/lab/work', lab_image)
    try: yield SimpleNamespace(name=name, url=f'http://127.0.0.1:{port}', token=token, work=work, started=time.monotonic())
    finally: docker('rm', '-f', '-v', name, check=False)

def logs(name): return (lambda r: r.stdout + r.stderr)(docker('logs', name, check=False))

def test_turns_healthy_within_60_s(lab):
    status = lambda: docker('inspect', '--format', '{{.State.Health.Status}}', lab.name).stdout.strip()
    poll(lambda: status() in ('healthy', 'unhealthy'), 60 - (time.monotonic() - lab.started))
    took = time.monotonic() - lab.started
    assert status() == 'healthy', f"health is {status()!r} after {took:.0f} s:\n{logs(lab.name)[-3000:]}"
    print(f"\nhealthy {took:.0f} s after docker run")

def test_token_is_required(lab):
    assert poll(lambda: answers(lab.url + '/api'), 60), logs(lab.name)[-3000:]
    assert http(lab.url + '/api/status')[0] == 403
    assert http(lab.url + '/api/status', token='not-the-token')[0] == 403
    assert http(lab.url + '/api/contents/labs')[0] == 403
    assert http(lab.url + '/api/status', token=lab.token)[0] == 200
    assert http(f'{lab.url}/api/status?token={lab.token}')[0] == 200
    status, body = http(lab.url + '/api')           # open without the token: the server's version, nothing else
    assert status == 200 and set(json.loads(body)) == {'version'}

def test_mounted_folder_is_written_as_the_host_user(lab):
    assert poll(lambda: answers(lab.url + '/api'), 60)
    status, body = http(lab.url + '/api/contents/hello.txt', lab.token, 'PUT',
                        {'type': 'file', 'format': 'text', 'content': 'written by the notebook user\n'})
    assert status == 201, body
    made = lab.work/'hello.txt'
    assert made.read_text() == 'written by the notebook user\n'
    assert (made.stat().st_uid, made.stat().st_gid) == HOST_USER
    status, body = http(lab.url + '/api/contents/labs', lab.token)      # the student copies are there to open
    assert status == 200 and '00_core.ipynb' in {c['name'] for c in json.loads(body)['content']}
    status, body = http(lab.url + '/api/contents/labs/00_core.ipynb', lab.token)
    assert status == 200, body
    cells = json.loads(body)['content']['cells']
    lines = [l.strip() for c in cells for l in c['source'].split('\n')]
    assert '### BEGIN SOLUTION' not in lines and '### END SOLUTION' not in lines   # core's own code names the markers in a string
    assert any('raise NotImplementedError' in c['source'] for c in cells)            # the stub of the exercise,
    assert 'return hashlib.sha256(data).hexdigest()' not in lines                      # not its solution
    assert (lab.work/'labs'/'00_core.ipynb').exists()                   # in the mounted folder: the work outlives the container

def test_default_user_writes_a_folder_owned_by_uid_1000(lab_image, tmp_path):
    if os.getuid() not in (0, IMAGE_UID): pytest.skip(f'needs a folder owned by uid {IMAGE_UID}: run as root or as uid {IMAGE_UID}')
    os.chown(tmp_path, IMAGE_UID, IMAGE_UID)
    docker('run', '--rm', '--network', 'host', '-v', f'{tmp_path}:/home/lab/work', lab_image,
           'bash', '-c', 'id -u > /home/lab/work/who && touch /home/lab/work/made')
    assert (tmp_path/'who').read_text().strip() == str(IMAGE_UID)
    assert (tmp_path/'made').stat().st_uid == IMAGE_UID

RUN_NOTEBOOK = """
import json, nbformat, nbclient
nb = nbformat.read('/home/lab/labs/00_core.ipynb', as_version=4)
nbclient.NotebookClient(nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': '/tmp'}}).execute()
code = [c for c in nb.cells if c.cell_type == 'code']
text = [o.get('text', '') + str(o.get('data', {}).get('text/plain', '')) for c in code for o in c.get('outputs', [])]
print(json.dumps({'cells': len(code), 'executed': sum(c.get('execution_count') is not None for c in code), 'text': text}))
"""

def test_notebook_executes_on_cpu(lab):
    r = docker('exec', '-u', str(IMAGE_UID), '-e', 'LABKIT_FAST=1', lab.name, 'python', '-c', RUN_NOTEBOOK, timeout=900)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out['executed'] == out['cells'] > 10, out
    assert any('correct' in t for t in out['text']), out['text']          # the exercise's self-check passes
    assert any('skipped on this machine' in t for t in out['text'])        # the GPU-only cell says why it is skipped

def run_doctor(name) -> dict:
    "`labkit doctor --json` inside the container: its report and exit status"
    r = docker('exec', '-u', str(IMAGE_UID), name, 'labkit', 'doctor', '--json', timeout=600, check=False)
    assert r.stdout.strip().startswith('{'), r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads(r.stdout), r.returncode

def test_doctor_reports_cpu_and_no_errors(lab):
    rep, rc = run_doctor(lab.name)
    assert rep['errors'] == [] and rc == 0, rep['errors']
    assert rep['gpu_driver'] is False and any('no NVIDIA GPU' in n for n in rep['notes'])
    assert rep['torch']['device'] == 'cpu' and rep['torch']['cuda_build'], rep['torch']   # the CUDA build, on a CPU
    assert rep['tensorflow']['device'] == 'cpu' and rep['tensorflow']['legacy_keras']
    assert rep['onnxruntime']['session_providers'] == ['CPUExecutionProvider']
    assert 'CUDAExecutionProvider' in rep['onnxruntime']['available_providers']           # onnxruntime-gpu
    assert rep['packages']['onnxruntime'] is None and rep['packages']['onnxruntime-gpu']
    assert rep['packages']['labkit'] == VERSION
    assert rep['assets']['data_dir'] == '/opt/labkit/data' and not rep['assets']['problems']

def test_image_is_configured_as_documented(lab_image):
    cfg = json.loads(docker('image', 'inspect', lab_image).stdout)[0]['Config']
    labels = cfg['Labels']
    assert labels['org.opencontainers.image.version'] == VERSION and labels['org.opencontainers.image.source']
    assert cfg['User'] == f'{IMAGE_UID}:{IMAGE_UID}' and '8888/tcp' in cfg['ExposedPorts']
    assert cfg['Entrypoint'][0] == 'tini' and cfg['Healthcheck']['Test'] == ['CMD', 'labkit-healthcheck']
    env = dict(e.split('=', 1) for e in cfg['Env'])
    assert env['NVIDIA_VISIBLE_DEVICES'] == 'all' and 'compute' in env['NVIDIA_DRIVER_CAPABILITIES']
    leftovers = docker('run', '--rm', '--network', 'host', '--user', '0', lab_image, 'bash', '-c',
                       'find /root/.cache /var/lib/apt/lists /var/cache/apt -type f -not -name lock 2>/dev/null | head -3;'
                       'command -v gcc cc make; find /opt /home /tmp -name "*.whl" 2>/dev/null | head -3',
                       check=False).stdout.split()
    assert leftovers == [], f"caches or build tools left in the image: {leftovers}"

def test_the_notebooks_kernel_is_offered(lab):
    "Student copies name the Python (labkit) kernel: the server must offer it, or every notebook asks for one"
    assert poll(lambda: answers(lab.url + '/api'), 60)
    status, body = http(lab.url + '/api/kernelspecs', lab.token)
    specs = json.loads(body)['kernelspecs'] if status == 200 else {}
    assert 'labkit' in specs, f"{status}: {body[:500]}"
    assert specs['labkit']['spec']['display_name'] == 'Python (labkit)'

def test_token_is_generated_when_none_is_set(lab_image):
    name, port = f'labkit-lab-token-{uuid.uuid4().hex[:8]}', free_port()
    docker('run', '-d', '--name', name, '--network', 'host', '-e', f'JUPYTER_PORT={port}', '-e', 'JUPYTER_IP=127.0.0.1',
           '-e', 'JUPYTER_TOKEN=', lab_image)
    try:
        url = f'http://127.0.0.1:{port}'
        assert poll(lambda: answers(url + '/api'), 90), logs(name)[-3000:]
        m = re.search(r'/lab\?token=([0-9a-f]{48})\b', logs(name))
        assert m, logs(name)[-3000:]
        assert http(url + '/api/status')[0] == 403 and http(url + '/api/status', token=m.group(1))[0] == 200
    finally: docker('rm', '-f', '-v', name, check=False)

def test_refuses_to_switch_the_token_off(lab_image):
    r = docker('run', '--rm', '--network', 'host', lab_image, 'labkit-lab-start', '--IdentityProvider.token=', check=False, timeout=60)
    assert r.returncode == 2 and 'token authentication on' in r.stderr

def test_sigterm_stops_within_10_s(lab):
    assert poll(lambda: answers(lab.url + '/api'), 60)
    status, body = http(lab.url + '/api/kernels', lab.token, 'POST', {'name': 'python3'})   # a kernel to shut down too
    assert status == 201, body
    t0 = time.monotonic()
    docker('stop', '--time', '30', lab.name, timeout=60)          # SIGTERM, then SIGKILL after 30 s
    took = time.monotonic() - t0
    state = json.loads(docker('inspect', '--format', '{{json .State}}', lab.name).stdout)
    print(f"\nstopped {took:.1f} s after SIGTERM, exit code {state['ExitCode']}")
    assert took < 10 and state['ExitCode'] != 137, f"stopped after {took:.1f} s with {state['ExitCode']}:\n{logs(lab.name)[-2000:]}"
