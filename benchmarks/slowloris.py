#!/usr/bin/env python
"""Does /health keep answering while slow clients hold connections open (a slowloris attack)?

    python benchmarks/slowloris.py                          # 40 slow sockets for 20 s, gthread workers (the course's)
    python benchmarks/slowloris.py --worker-class sync      # the same against sync workers
    python benchmarks/slowloris.py --sockets 80 --threads 16 --json slow.json

gunicorn runs `labkit.serving:create_app()` (2 workers) on a free 127.0.0.1 port. `--sockets` connections each
send a request's first lines, then one more header line every `--every` seconds, never finishing. Meanwhile
/health is probed every `--probe-every` seconds, each probe on a fresh connection with a `--timeout`. Reported:
answered/total and the p50/p99 latency of the probes, an unanswered probe counting as `--timeout`
(goal: every probe answered, p99 < 1 s). Prints a table line and the figures as JSON.
"""
import argparse, http.client, json, os, sys, time
import numpy as np
from labkit.core import http_call
from labkit.serving import GunicornServer, SlowClients

def probe_while_slow(url:str, sockets:int=40, seconds:float=20, every:float=2.0, probe_every:float=0.25, timeout:float=5.0) -> dict:
    "Probe /health for `seconds` while `sockets` slow clients hold connections"
    latencies, answered, total = [], 0, 0
    with SlowClients(url, n=sockets, every=every, max_seconds=seconds + 60) as slow:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0, total = time.monotonic(), total + 1
            try:
                ok = http_call(url + '/health', timeout=timeout)[0] == 200
            except (OSError, http.client.HTTPException): ok = False
            answered += ok
            latencies.append(time.monotonic() - t0 if ok else timeout)
            time.sleep(max(0.0, probe_every - (time.monotonic() - t0)))
        lines = slow.lines_sent
    ms = np.array(latencies) * 1000
    return {'answered': answered, 'probes': total, 'p50_ms': round(float(np.percentile(ms, 50)), 1),
            'p99_ms': round(float(np.percentile(ms, 99)), 1), 'header_lines_per_socket': lines}

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sockets', type=int, default=40)
    ap.add_argument('--seconds', type=float, default=20)
    ap.add_argument('--every', type=float, default=2.0, help='seconds between header lines of a slow client')
    ap.add_argument('--probe-every', type=float, default=0.25)
    ap.add_argument('--timeout', type=float, default=5.0, help='seconds a probe waits for its answer')
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--worker-class', default='gthread', choices=['gthread', 'sync'])
    ap.add_argument('--threads', type=int, default=32, help='threads per gthread worker')
    ap.add_argument('--json', help='also write the figures to this file')
    a = ap.parse_args()
    env = {'LABKIT_WORKER_CLASS': a.worker_class, 'LABKIT_THREADS': str(a.threads)}
    with GunicornServer(workers=a.workers, env=env) as server:
        res = probe_while_slow(server.url, a.sockets, a.seconds, a.every, a.probe_every, a.timeout)
    res.update(worker_class=a.worker_class, workers=a.workers, threads=a.threads if a.worker_class == 'gthread' else 1,
               sockets=a.sockets, seconds=a.seconds, cpus=os.cpu_count(), load_average=os.getloadavg()[0], goal_p99_ms=1000)
    ok = res['answered'] == res['probes'] and res['p99_ms'] < res['goal_p99_ms']
    print(f"{a.worker_class} ({a.workers} workers x {res['threads']} threads), {a.sockets} slow sockets for {a.seconds:g} s: "
          f"/health answered {res['answered']}/{res['probes']}, p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms "
          f"({'meets' if ok else 'misses'} the goal p99 < 1 s); load average {res['load_average']:.1f}")
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, 'w') as f: json.dump(res, f, indent=1)
    return 0 if ok else 1

if __name__ == '__main__':
    sys.exit(main())
