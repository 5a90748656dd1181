#!/usr/bin/env python
"""What the request log adds to one /predict request, measured inside one process: no HTTP, no server to differ.

    python benchmarks/predict_with_log.py                        # this revision, twice (the noise floor)
    python benchmarks/predict_with_log.py --before e0c33b3       # and that revision's labkit, side by side
    python benchmarks/predict_with_log.py --rows 16 --rounds 40

A setup is one Python process holding two apps of `labkit.serving.create_app()`: one without a request log, one
appending each accepted request to a RequestLog (the serving default: no fsync). Flask's test client sends
`--block` requests to one app, then to the other, in an order that changes from round to round, and the CPU time
of each block (`time.process_time`) gives microseconds per request. Both apps share the process, so what differs
between them is the log alone: the difference of the two is what the log costs the handler, free of the few percent
by which two server processes of the same code can differ (see benchmarks/monitoring_stack.py). The setups are
this revision, this revision again (in a second process: how far the measure moves) and, with `--before`, that
revision's labkit. Reported: the medians over the rounds of each app's µs per request, of the log's extra µs and of
its ratio to the bare app. Served by gunicorn, a request costs more (HTTP parsing, sockets): divide the extra µs
by the served request's CPU time (benchmarks/monitoring_stack.py) for the log's share of it.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from monitoring_stack import labkit_at

APPS = '''
import json, random, sys, tempfile, time
from labkit.core import RequestLog
from labkit.serving import create_app
rounds, block, rows = map(int, sys.argv[1:4])
record = {'experience': 5, 'test_score': 8, 'interview_score': 7}
body = record if rows == 1 else [record] * rows
with tempfile.TemporaryDirectory() as log_dir:
    clients = {'bare': create_app().test_client(), 'log': create_app(request_log=RequestLog(log_dir)).test_client()}
    for c in clients.values():   # warm up: first requests load and compile what later ones reuse
        for _ in range(300): assert c.post('/predict', json=body).status_code == 200
    out, order = {name: [] for name in clients}, random.Random(0)
    for _ in range(rounds):
        for name in order.sample(list(clients), len(clients)):
            c, cpu = clients[name], time.process_time()
            for _ in range(block): c.post('/predict', json=body)
            out[name].append(1e6 * (time.process_time() - cpu) / block)
print(json.dumps(out))
'''

def run_setup(code:Path, rounds:int, block:int, rows:int, timeout:float=900) -> dict:
    "One process of a setup: µs per request of each round, for the bare app and the logging one"
    env = {k: v for k, v in os.environ.items() if k != 'LABKIT_REQUEST_LOG'}   # the bare app logs nothing
    env['PYTHONPATH'] = os.pathsep.join(p for p in [str(code) if code else '', os.environ.get('PYTHONPATH', '')] if p)
    p = subprocess.run([sys.executable, '-c', APPS, str(rounds), str(block), str(rows)], capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode: raise RuntimeError(f'the apps of {code or "this revision"} failed:\n{p.stderr[-3000:]}')
    return json.loads(p.stdout.splitlines()[-1])

def summary(rounds:dict) -> dict:
    "Medians over the rounds: each app's µs per request, the log's extra µs and its ratio to bare"
    pairs = list(zip(rounds['bare'], rounds['log']))
    return {'bare_us': statistics.median(rounds['bare']), 'log_us': statistics.median(rounds['log']),
            'extra_us': statistics.median(l - b for b, l in pairs), 'ratio': statistics.median(l / b for b, l in pairs) - 1}

def table(results:dict) -> str:
    "One line per setup"
    rows = [f"{'setup':<14} {'bare µs/req':>12} {'log µs/req':>11} {'log extra µs':>13} {'log vs bare':>12}"]
    for name, r in results.items():
        s = summary(r)
        rows.append(f"{name:<14} {s['bare_us']:12.1f} {s['log_us']:11.1f} {s['extra_us']:13.1f} {s['ratio']:+12.1%}")
    return '\n'.join(rows)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--before', default=None, help='git revision whose labkit runs the same setup, side by side')
    ap.add_argument('--rounds', type=int, default=30)
    ap.add_argument('--block', type=int, default=500, help='requests to one app before the other')
    ap.add_argument('--rows', type=int, default=1, help='records per /predict request (more than 1: a batch)')
    ap.add_argument('--json', default=None)
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix='labkit-bench-apps-') as work:
        codes = {'this': None} | ({a.before: labkit_at(a.before, Path(work)/'before')} if a.before else {}) | {'this again': None}
        results = {name: run_setup(code, a.rounds, a.block, a.rows) for name, code in codes.items()}
    print(f"{a.rounds} rounds of {a.block} requests per app, {a.rows} row(s) per request, {os.cpu_count()} CPUs, {time.monotonic() - t0:.0f} s")
    print(table(results))
    if a.json: Path(a.json).write_text(json.dumps({'rounds': a.rounds, 'block': a.block, 'rows': a.rows, 'results': results}, indent=1))
    return 0

if __name__ == '__main__': sys.exit(main())
