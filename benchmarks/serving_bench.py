#!/usr/bin/env python
"""Throughput and latency of the salary service under gunicorn, /predict and /health side by side in one run.

    python benchmarks/serving_bench.py                       # 2 workers, 4 client threads, 3000 requests per route
    python benchmarks/serving_bench.py --requests 6000 --concurrency 8 --json bench.json

gunicorn runs `labkit.serving:create_app()` on a free 127.0.0.1 port. The load is bounded (a fixed number of
requests) and alternates between the two routes in rounds (health, predict, predict, health, ...) so that both
see the same machine load. /health does no work: the ratio predict/health of the throughputs says what the
model, the validation and the routing cost (goal: >= 0.8). On a shared machine throughput is noisy, so the
CPU time the gunicorn processes spent per request (read from /proc) is reported too: it does not depend on
what else the machine runs. Prints a table and the figures as JSON.
"""
import argparse
import json
import platform
import os
import sys
import numpy as np
from labkit.core import cpu_seconds
from labkit.serving import GunicornServer, load_test

RECORD = {'experience': 5, 'test_score': 8, 'interview_score': 7}

def bench(workers:int=2, requests:int=3000, concurrency:int=4, rounds:int=20, warmup:int=200) -> dict:
    routes = {'/health': None, '/predict': RECORD}
    per_round = max(1, requests // rounds)
    samples = {r: [] for r in routes}
    totals = {r: {'ok': 0, 'failed': 0, 'seconds': 0.0, 'cpu': 0.0} for r in routes}
    with GunicornServer(workers=workers) as server:
        pids = [server.proc.pid] + server.worker_pids()
        for route, body in routes.items(): load_test(server.url + route, warmup, concurrency, body)
        for i in range(rounds):
            order = list(routes) if i % 2 == 0 else list(routes)[::-1]
            for route in order:
                cpu0 = cpu_seconds(pids)
                res = load_test(server.url + route, per_round, concurrency, routes[route], samples=samples[route])
                totals[route]['cpu'] += cpu_seconds(pids) - cpu0
                for k in ('ok', 'failed'): totals[route][k] += res[k]
                totals[route]['seconds'] += res['seconds']
    out = {'workers': workers, 'concurrency': concurrency, 'requests_per_route': per_round * rounds, 'rounds': rounds,
           'cpus': os.cpu_count(), 'python': platform.python_version(), 'routes': {}}
    for route in routes:
        ms = np.array(samples[route]) * 1000
        t = totals[route]
        out['routes'][route] = {'ok': t['ok'], 'failed': t['failed'], 'rps': round(t['ok'] / t['seconds'], 1),
                                'p50_ms': round(float(np.percentile(ms, 50)), 2), 'p99_ms': round(float(np.percentile(ms, 99)), 2),
                                'server_cpu_us_per_request': round(t['cpu'] / max(t['ok'], 1) * 1e6)}
    out['ratio_predict_health'] = round(out['routes']['/predict']['rps'] / out['routes']['/health']['rps'], 3)
    out['cpu_ratio_health_predict'] = round(out['routes']['/health']['server_cpu_us_per_request'] /
                                            max(out['routes']['/predict']['server_cpu_us_per_request'], 1), 3)
    out['load_average'] = os.getloadavg()[0]
    out['goal_ratio'] = 0.8
    return out

def table(res:dict) -> str:
    lines = [f"{'route':<10} {'ok':>6} {'failed':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'server CPU us/req':>18}"]
    for route, r in res['routes'].items():
        lines.append(f"{route:<10} {r['ok']:>6} {r['failed']:>6} {r['rps']:>8.1f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['server_cpu_us_per_request']:>18}")
    verdict = 'meets' if res['ratio_predict_health'] >= res['goal_ratio'] else 'misses'
    lines.append(f"ratio predict/health = {res['ratio_predict_health']:.3f} ({verdict} the goal {res['goal_ratio']}); "
                 f"gunicorn {res['workers']} workers, {res['concurrency']} client threads, {res['cpus']} CPUs, load average {res['load_average']:.1f}")
    lines.append(f"server CPU per request, health/predict = {res['cpu_ratio_health_predict']:.3f} (what throughput would show on an idle machine)")
    return '\n'.join(lines)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--requests', type=int, default=3000, help='requests per route, in all rounds')
    ap.add_argument('--concurrency', type=int, default=4, help='client threads')
    ap.add_argument('--rounds', type=int, default=20)
    ap.add_argument('--json', help='also write the figures to this file')
    a = ap.parse_args()
    res = bench(a.workers, a.requests, a.concurrency, a.rounds)
    print(table(res))
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, 'w') as f: json.dump(res, f, indent=1)
    sys.exit(0 if all(r['failed'] == 0 for r in res['routes'].values()) else 1)
