#!/usr/bin/env python
"""What one record costs the request log: microseconds per append, this revision against another, side by side.

    python benchmarks/request_log.py --before e0c33b3             # 2 writer processes, 20000 appends each, 7 rounds
    python benchmarks/request_log.py --before HEAD~1 --writers 1 --appends 50000

A setup is `--writers` processes appending `--appends` records each (the serving app's record of one request)
to one fresh RequestLog at the same moment, as gunicorn's workers do. The setups are this revision, this revision
again (two identical setups differ a little: the noise floor) and, with `--before`, that revision's labkit. Each
round runs every setup once, in an order that changes from round to round. Reported: the median over the rounds
of the writers' CPU time per append (user + system) and of the wall time per append, and each against this
revision's. Every scratch folder is removed at the end.
"""
import argparse, json, os, random, select, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from monitoring_stack import labkit_at

WRITER = '''
import sys, time
from labkit.core import RequestLog
log, n = RequestLog(sys.argv[1]), int(sys.argv[2])
record = {'timestamp': '2026-12-04T19:00:00.000+00:00', 'request_id': 'f' * 32, 'version': 'v1', 'role': 'live',
          'user_key': None, 'inputs': {'experience': 5, 'test_score': 8, 'interview_score': 7}, 'prediction': 1234.56}
print('ready', flush=True); sys.stdin.readline()                 # all writers start together
cpu, wall = time.process_time(), time.perf_counter()
for _ in range(n): log.append(record)
print(time.process_time() - cpu, time.perf_counter() - wall, flush=True)
'''

def run_setup(code:Path, work:Path, writers:int, appends:int, timeout:float=300) -> tuple:
    "One round of a setup: (CPU µs, wall µs) per append, summed over its writers and over the slowest writer"
    log_dir = Path(tempfile.mkdtemp(dir=work))
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(p for p in [str(code) if code else '', os.environ.get('PYTHONPATH', '')] if p)}
    procs = [subprocess.Popen([sys.executable, '-c', WRITER, str(log_dir), str(appends)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(writers)]
    try:
        for p in procs:   # each says 'ready' once labkit is imported, within the deadline
            if not select.select([p.stdout], [], [], timeout)[0] or p.stdout.readline().strip() != 'ready':
                raise RuntimeError(f'a writer of {code or "this revision"} did not start within {timeout:g} s')
        for p in procs: p.stdin.write('go\n'); p.stdin.flush()
        out = [p.communicate(timeout=timeout)[0].split() for p in procs]
        if any(p.returncode for p in procs): raise RuntimeError(f'a writer of {code or "this revision"} failed')
    finally:
        for p in procs:
            if p.poll() is None: p.kill()
        shutil.rmtree(log_dir, ignore_errors=True)
    cpu, wall = sum(float(o[0]) for o in out), max(float(o[1]) for o in out)
    return 1e6 * cpu / (writers * appends), 1e6 * wall / appends

def bench(before:str=None, writers:int=2, appends:int=20000, rounds:int=7) -> dict:
    "Per setup, the (CPU µs, wall µs) per append of each round"
    work = Path(tempfile.mkdtemp(prefix='labkit-bench-log-'))
    try:
        setups = {'this': None, 'this again': None} | ({before: labkit_at(before, work/'before')} if before else {})
        results, order = {name: [] for name in setups}, random.Random(0)
        for _ in range(rounds):
            for name in order.sample(list(setups), len(setups)): results[name].append(run_setup(setups[name], work, writers, appends))
        return results
    finally: shutil.rmtree(work, ignore_errors=True)

def table(results:dict) -> str:
    "Medians over the rounds, each against this revision's"
    med = {name: [statistics.median(r[k] for r in rounds) for k in (0, 1)] for name, rounds in results.items()}
    rows = [f"{'setup':<14} {'CPU µs/append':>14} {'vs this':>8} {'wall µs/append':>15} {'vs this':>8}"]
    for name, (cpu, wall) in med.items():
        rows.append(f"{name:<14} {cpu:14.2f} {cpu / med['this'][0] - 1:+8.1%} {wall:15.2f} {wall / med['this'][1] - 1:+8.1%}")
    return '\n'.join(rows)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--before', default=None, help='git revision whose labkit runs the same setup, side by side')
    ap.add_argument('--writers', type=int, default=2, help='processes appending at once')
    ap.add_argument('--appends', type=int, default=20000, help='records each writer appends per round')
    ap.add_argument('--rounds', type=int, default=7)
    ap.add_argument('--json', default=None)
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    results = bench(a.before, a.writers, a.appends, a.rounds)
    print(f"{a.rounds} rounds, {a.writers} writer(s) x {a.appends} appends, {os.cpu_count()} CPUs, {time.monotonic() - t0:.0f} s")
    print(table(results))
    if a.json: Path(a.json).write_text(json.dumps({'writers': a.writers, 'appends': a.appends, 'results': results}, indent=1))
    return 0

if __name__ == '__main__': sys.exit(main())
