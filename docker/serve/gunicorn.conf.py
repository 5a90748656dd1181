"gunicorn settings of the labkit salary service: gunicorn -c gunicorn.conf.py 'labkit.serving:create_app()'"
# Written by labkit.serving.write_gunicorn_conf; every setting can be changed by an environment variable.
import glob, os, shutil, tempfile

bind = os.environ.get('LABKIT_BIND', '127.0.0.1:8000')      # loopback only unless told otherwise
workers = int(os.environ.get('LABKIT_WORKERS', '2'))
worker_class = os.environ.get('LABKIT_WORKER_CLASS', 'gthread')   # threads: a slow client holds one thread, not a worker
threads = int(os.environ.get('LABKIT_THREADS', '32')) if worker_class == 'gthread' else 1   # per worker (sync with threads > 1 would be gthread)
worker_connections = threads    # a worker with every thread busy leaves new connections to the others
keepalive = 0                   # one request per connection (as sync workers do): an idle client holds no slot
timeout = int(os.environ.get('LABKIT_TIMEOUT', '30'))       # a worker silent this long is killed and replaced
graceful_timeout = 10
accesslog = os.environ.get('LABKIT_ACCESS_LOG') or None     # '-' for stdout
loglevel = os.environ.get('LABKIT_LOG_LEVEL', 'info')
control_socket_disable = True   # gunicorn >= 25 would open a control socket in $HOME shared by every instance; not used here

# Prometheus counters of all workers go to files in one folder (read before prometheus_client is imported);
# by default a fresh private folder, which also holds the routing policy that every worker watches.
# (This file runs again on HUP, a rolling restart: what is in the environment by then is kept.)
if 'PROMETHEUS_MULTIPROC_DIR' not in os.environ:
    os.environ['PROMETHEUS_MULTIPROC_DIR'] = tempfile.mkdtemp(prefix='labkit-serve-')
    os.environ['LABKIT_OWNS_METRICS_DIR'] = '1'
if 'LABKIT_POLICY_FILE' not in os.environ:
    os.environ['LABKIT_POLICY_FILE'] = os.path.join(os.environ['PROMETHEUS_MULTIPROC_DIR'], 'policy.json')
    os.environ['LABKIT_OWNS_POLICY_FILE'] = '1'
if 'LABKIT_LOG_SALT' not in os.environ:   # one key for every worker, so a user's requests share one user_key
    os.environ['LABKIT_LOG_SALT'] = os.urandom(16).hex()

def on_starting(server):
    d = os.environ['PROMETHEUS_MULTIPROC_DIR']
    os.makedirs(d, exist_ok=True)
    for f in glob.glob(os.path.join(d, '*.db')): os.remove(f)   # counters of an earlier run
    if os.environ.get('LABKIT_OWNS_POLICY_FILE') and os.path.exists(os.environ['LABKIT_POLICY_FILE']): os.remove(os.environ['LABKIT_POLICY_FILE'])

def post_worker_init(worker):
    import logging   # the service's own log lines (policy changes, shadow answers) go to gunicorn's error log
    lg = logging.getLogger('labkit.serving')
    lg.handlers, lg.propagate = list(worker.log.error_log.handlers), False
    lg.setLevel(os.environ.get('LABKIT_LOG_LEVEL', 'info').upper())

def child_exit(server, worker):
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)

def on_exit(server):
    if os.environ.get('LABKIT_OWNS_METRICS_DIR'): shutil.rmtree(os.environ['PROMETHEUS_MULTIPROC_DIR'], ignore_errors=True)
