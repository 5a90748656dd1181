"gunicorn settings of the labkit salary service: gunicorn -c gunicorn.conf.py 'labkit.serving:create_app()'"
# Written by labkit.serving.write_gunicorn_conf; every setting can be changed by an environment variable.
import glob, os, shutil, tempfile

bind = os.environ.get('LABKIT_BIND', '127.0.0.1:8000')      # loopback only unless told otherwise
workers = int(os.environ.get('LABKIT_WORKERS', '2'))
worker_class = 'sync'
timeout = int(os.environ.get('LABKIT_TIMEOUT', '30'))       # a worker silent this long is killed and replaced
graceful_timeout = 10
accesslog = os.environ.get('LABKIT_ACCESS_LOG') or None     # '-' for stdout
loglevel = os.environ.get('LABKIT_LOG_LEVEL', 'info')

# Prometheus counters of all workers go to files in one folder (read before prometheus_client is imported)
_own_dir = 'PROMETHEUS_MULTIPROC_DIR' not in os.environ
os.environ.setdefault('PROMETHEUS_MULTIPROC_DIR', os.path.join(tempfile.gettempdir(), f'labkit-serve-{os.getpid()}'))
# The routing policy is a file every worker watches: an admin change reaches all of them
_own_policy = 'LABKIT_POLICY_FILE' not in os.environ
os.environ.setdefault('LABKIT_POLICY_FILE', os.path.join(os.environ['PROMETHEUS_MULTIPROC_DIR'], 'policy.json'))

def on_starting(server):
    d = os.environ['PROMETHEUS_MULTIPROC_DIR']
    os.makedirs(d, exist_ok=True)
    for f in glob.glob(os.path.join(d, '*.db')): os.remove(f)   # counters of an earlier run
    if _own_policy and os.path.exists(os.environ['LABKIT_POLICY_FILE']): os.remove(os.environ['LABKIT_POLICY_FILE'])

def post_worker_init(worker):
    import logging   # the service's own log lines (policy changes, shadow answers) go to gunicorn's error log
    lg = logging.getLogger('labkit.serving')
    lg.handlers, lg.propagate = list(worker.log.error_log.handlers), False
    lg.setLevel(os.environ.get('LABKIT_LOG_LEVEL', 'info').upper())

def child_exit(server, worker):
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)

def on_exit(server):
    if _own_dir: shutil.rmtree(os.environ['PROMETHEUS_MULTIPROC_DIR'], ignore_errors=True)
