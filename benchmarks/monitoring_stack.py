#!/usr/bin/env python
"""What monitoring costs the service: /predict throughput with and without the request log, the monitor and the scrape.

    python benchmarks/monitoring_stack.py                      # 2 workers, 4 client threads, 2000 requests per setup
    python benchmarks/monitoring_stack.py --requests 6000 --json bench.json

Three gunicorn servers of `labkit.serving:create_app()` run side by side on 127.0.0.1:
  bare      no request log;
  log       every accepted prediction appended (and fsync'd) to a RequestLog;
  watched   the same log, plus `serve_monitor` reading it every second and Prometheus scraping the app and the
            monitor every second (1 s is 15 times the production rate: an upper bound of the scrape's cost).
The load alternates between the three in rounds, so that all see the same machine load. Throughput is noisy on a
shared machine, so the CPU time the gunicorn processes spent per request (from /proc) is reported too.
Goal: watched within 5 % of bare. Prints a table and the figures as JSON.
"""
import argparse, json, os, sys, tempfile, time
from pathlib import Path
from labkit.core import LocalService, cpu_seconds, find_program, free_port
from labkit.monitoring import serve_monitor
from labkit.monitoring_stack import prometheus_config, salary_reference, wait_until, prometheus_api
from labkit.serving import GunicornServer, load_test

RECORD = {'experience': 5, 'test_score': 8, 'interview_score': 7}

def start_watchers(work:Path, log_dir:Path, app_port:int):
    "The monitor on the watched server's log, and Prometheus scraping that server and the monitor every second"
    import yaml
    reference = work/'reference.csv'; salary_reference().to_csv(reference, index=False)
    monitor = serve_monitor(str(log_dir), str(reference), port=0, window=500, interval=1.0)
    (work/'alerts.yml').write_text('groups: []\n')
    cfg = prometheus_config({'app': f'127.0.0.1:{app_port}', 'monitor': f'127.0.0.1:{monitor.port}'}, interval=1)
    (work/'prometheus.yml').write_text(yaml.safe_dump(cfg))
    prom = LocalService('prometheus', [find_program('prometheus'), f'--config.file={work}/prometheus.yml',
                                       '--storage.tsdb.path={data}/tsdb', '--web.listen-address=127.0.0.1:{port}'], work/'prometheus').start()
    up = lambda: all(t['health'] == 'up' for t in prometheus_api(prom.url, 'targets')['activeTargets']) or None
    wait_until(up, 60, 'Prometheus to scrape the app and the monitor')
    return monitor, prom

def bench(workers:int=2, requests:int=2000, concurrency:int=4, rounds:int=10, warmup:int=200) -> dict:
    work = Path(tempfile.mkdtemp(prefix='labkit-bench-'))
    logs = {'log': work/'log-requests', 'watched': work/'watched-requests'}
    servers = {name: GunicornServer(workers=workers, env={'LABKIT_REQUEST_LOG': str(logs[name])} if name in logs else {})
               for name in ('bare', 'log', 'watched')}
    totals = {n: {'ok': 0, 'failed': 0, 'seconds': 0.0, 'cpu': 0.0} for n in servers}
    started, monitor, prom = [], None, None
    try:
        for s in servers.values(): started.append(s.__enter__())
        monitor, prom = start_watchers(work, logs['watched'], servers['watched'].port)
        for s in servers.values(): load_test(s.url + '/predict', warmup, concurrency, RECORD)
        for _ in range(rounds):
            for name, s in servers.items():
                pids = [s.proc.pid] + s.worker_pids()
                c0, t0 = cpu_seconds(pids), time.perf_counter()
                r = load_test(s.url + '/predict', requests // rounds, concurrency, RECORD)
                totals[name]['seconds'] += time.perf_counter() - t0
                totals[name]['cpu'] += cpu_seconds(pids) - c0
                totals[name]['ok'] += r['ok']; totals[name]['failed'] += r['failed']
    finally:
        if prom: prom.stop()
        if monitor: monitor.stop()
        for s in started: s.__exit__(None, None, None)
    return {n: {'requests': t['ok'], 'failed': t['failed'], 'rps': t['ok'] / t['seconds'],
                'cpu_ms_per_request': 1000 * t['cpu'] / max(t['ok'], 1)} for n, t in totals.items()}

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--workers', type=int, default=2); ap.add_argument('--requests', type=int, default=2000)
    ap.add_argument('--concurrency', type=int, default=4); ap.add_argument('--json', default=None)
    a = ap.parse_args(argv)
    res = bench(a.workers, a.requests, a.concurrency)
    base = res['bare']
    print(f"{'setup':<8} {'req/s':>8} {'vs bare':>8} {'CPU ms/req':>11} {'vs bare':>8} {'failed':>6}")
    for name, r in res.items():
        print(f"{name:<8} {r['rps']:8.0f} {r['rps']/base['rps'] - 1:+8.1%} {r['cpu_ms_per_request']:11.2f} "
              f"{r['cpu_ms_per_request']/base['cpu_ms_per_request'] - 1:+8.1%} {r['failed']:6d}")
    out = {'cpus': os.cpu_count(), 'workers': a.workers, 'concurrency': a.concurrency, 'results': res}
    print(json.dumps(out))
    if a.json: Path(a.json).write_text(json.dumps(out, indent=1))
    return 0 if all(r['failed'] == 0 for r in res.values()) else 1

if __name__ == '__main__': sys.exit(main())
