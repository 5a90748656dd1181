#!/usr/bin/env python
"""What monitoring costs the service: /predict throughput with and without the request log, the monitor and the scrape.

    python benchmarks/monitoring_stack.py                          # 2 workers, 4 client threads, 2000 requests per setup
    python benchmarks/monitoring_stack.py --before HEAD~3          # the same setups with that revision's labkit, side by side
    python benchmarks/monitoring_stack.py --requests 6000 --max-seconds 900 --json bench.json
    python benchmarks/monitoring_stack.py --interval 15 --requests 120000 --rounds 20   # the lab's own rates
    python benchmarks/monitoring_stack.py --rows 16      # batch requests of 16 rows: the log writes each batch at once

Five gunicorn servers of `labkit.serving:create_app()` run side by side on 127.0.0.1:
  bare                 no request log;
  bare-again           a second bare server of the same code: how far two identical servers differ, the
                       table's noise floor (a setup within it of bare is not measurably slower);
  log                  every accepted prediction appended to a RequestLog (the serving default: no fsync);
  log+monitor          the same, plus `labkit monitor` (its own process) reading that log every `--interval` s;
  log+monitor+scrape   the same, plus Prometheus scraping the app and the monitor every `--interval` s.
The monitor and the scrape run every `--interval` seconds of their setup's own traffic: 1 by default, 15 times the
lab's rate (its monitor and Prometheus run every 15 s), an upper bound of their cost; `--interval 15` measures them
as the lab runs them (give each setup enough requests for several intervals).
The load alternates between the setups in rounds, so that all see the same machine load, in an order that changes
from round to round. A setup's watchers (monitor, Prometheus) run only while it is measured and are paused
(SIGSTOP) otherwise, so each setup pays only for its own. A paused watcher that is due does its work as soon as it
runs again, so their clocks are set to `--interval` times the number of setups, the share of the time each setup
runs; restarts and warm-ups take time too, so they still run a little more often than every `--interval` s of
their setup's traffic, and they read the warm-up requests as well: their cost is a bound from above.
Every round starts each setup's gunicorn anew on its port (then `--warmup` requests, not counted): two gunicorn
processes of the same code can differ by several percent in CPU per request for as long as they live (the hash
seed is not the reason: fixed, they still differ), so a server kept for the whole run passes its luck to its
setup; restarted each round, the luck changes and the median over the rounds washes most of it out (in runs of
180 rounds two bare setups still came 0.0 and 1.2 % apart; `--keep-servers` keeps the first servers).
Throughput is noisy on a shared machine, so CPU time per request is reported too (/proc schedstat): `app` counts
the gunicorn processes, `total` adds the setup's monitor and Prometheus; `median` is the median over the rounds of
the ratio to bare in the same round, which a burst of load elsewhere moves less than the totals, and `95% of
medians` where it would fall in 95 % of runs like this one (a bootstrap over the rounds): a setup is slower than
bare only where that range lies above zero, and within the goal only where it lies below 5 %. Goal: every setup
within 5 % of bare. The count is bounded (`--requests` per setup) and so is the time (`--max-seconds`: rounds left
are skipped and the table says how many ran). Every process and the scratch folder are removed at the end.
"""
import argparse, json, os, random, shutil, signal, statistics, subprocess, sys, tarfile, tempfile, time
from pathlib import Path
from labkit.core import LocalService, child_pids, data_dir, find_program, wait_until_up
from labkit.monitoring_stack import prometheus_config, salary_reference, wait_until, prometheus_api
from labkit.serving import GunicornServer, load_test

RECORD = {'experience': 5, 'test_score': 8, 'interview_score': 7}
SETUPS = ('bare', 'bare-again', 'log', 'log+monitor', 'log+monitor+scrape')
MONITOR = 'import sys; from labkit.cli import main; sys.exit(main())'

def labkit_at(rev:str, dst:Path) -> Path:
    "The labkit package of git revision `rev`, extracted under `dst` (a folder to put first on PYTHONPATH)"
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(['git', '-C', str(root), 'archive', rev, 'labkit'], capture_output=True, check=True).stdout
    dst.mkdir(parents=True)
    (dst/'labkit.tar').write_bytes(archive)
    with tarfile.open(dst/'labkit.tar') as t: t.extractall(dst, filter='data')
    return dst

def start_monitor(work:Path, log_dir:Path, env:dict, interval:float=1) -> LocalService:
    "`labkit monitor` on the log, updating every `interval` seconds, in its own process"
    reference = work/'reference.csv'
    if not reference.exists(): salary_reference().to_csv(reference, index=False)
    mon = LocalService('monitor', [sys.executable, '-c', MONITOR, 'monitor', str(log_dir), str(reference), '--port', '{port}',
                                   '--window', '500', '--interval', f'{interval:g}'], work/f'monitor-{log_dir.name}', env=env, startup_timeout=60)
    return mon.start()

def start_prometheus(work:Path, targets:dict, name:str, interval:float=1) -> LocalService:
    "Prometheus scraping `targets` every `interval` seconds; returns once it is ready and every target is up"
    import yaml
    data = work/f'prometheus-{name}'; data.mkdir()
    (data/'alerts.yml').write_text('groups: []\n')
    (data/'prometheus.yml').write_text(yaml.safe_dump(prometheus_config(targets, interval=interval)))
    prom = LocalService('prometheus', [find_program('prometheus'), f'--config.file={data}/prometheus.yml',
                                       '--storage.tsdb.path={data}/tsdb', '--web.listen-address=127.0.0.1:{port}'], data).start()
    if not wait_until_up(prom.url + '/-/ready', 60, prom.proc):   # it answers 503 while it replays its storage
        prom.stop(); raise TimeoutError(f"Prometheus was not ready within 60 s; see {prom.log}")
    up = lambda: all(t['health'] == 'up' for t in prometheus_api(prom.url, 'targets')['activeTargets']) or None
    wait_until(up, 60, f'Prometheus to scrape {", ".join(targets)}')
    return prom

def cpu_ns(pids) -> int:
    "Nanoseconds on CPU of every thread of these processes (/proc schedstat: /proc's stat counts 10 ms ticks, too coarse here)"
    total = 0
    for pid in pids:
        for f in Path(f'/proc/{pid}/task').glob('*/schedstat'):
            try: total += int(f.read_text().split()[0])
            except (OSError, ValueError, IndexError): pass   # the thread ended meanwhile
    return total

def pause(services:list, stop:bool):
    "SIGSTOP (or SIGCONT) each service's process group"
    for s in services:
        if s.proc is not None and s.proc.poll() is None: os.killpg(s.proc.pid, signal.SIGSTOP if stop else signal.SIGCONT)

class Setup:
    "One gunicorn server and its watchers, with the counts of its rounds"
    def __init__(self, name:str, work:Path, code:Path=None, workers:int=2, interval:float=1, body=RECORD):
        self.name, self.kind, self.work, self.watchers, self.interval, self.body = name, name.split('@')[0], work, [], interval, body
        self.env = {'PYTHONPATH': os.pathsep.join(p for p in [str(code) if code else '', os.environ.get('PYTHONPATH', '')] if p),
                    'LABKIT_DATA': str(data_dir())}   # an extracted revision holds no data folder of its own
        self.log_dir = work/f"requests-{name.replace('@', '-').replace('+', '-')}"
        env = {'LABKIT_DATA': self.env['LABKIT_DATA']} | ({'GUNICORN_CMD_ARGS': f'--pythonpath {code}'} if code else {})   # first on the workers' sys.path
        if not self.kind.startswith('bare'): env['LABKIT_REQUEST_LOG'] = str(self.log_dir)
        self.server = GunicornServer(workers=workers, env=env)
        self.totals = {'ok': 0, 'failed': 0, 'seconds': 0.0, 'app_cpu': 0.0, 'watch_cpu': 0.0}
        self.per_round = []   # (app, total) CPU ms per request of each round

    def start(self):
        self.server.__enter__()
        if 'monitor' in self.kind: self.watchers.append(start_monitor(self.work, self.log_dir, self.env, self.interval))
        if 'scrape' in self.kind:
            targets = {'app': f'127.0.0.1:{self.server.port}', 'monitor': f'127.0.0.1:{self.watchers[0].port}'}
            self.watchers.append(start_prometheus(self.work, targets, self.log_dir.name, self.interval))
        return self

    def round(self, n:int, concurrency:int):
        "Send `n` requests; add the time, the answers and the CPU they cost"
        app = [self.server.proc.pid] + self.server.worker_pids()
        watch = [p for s in self.watchers for p in [s.proc.pid] + _descendants(s.proc.pid)]
        c0, w0, t0 = cpu_ns(app), cpu_ns(watch), time.perf_counter()
        r = load_test(self.server.url + '/predict', n, concurrency, self.body)
        self.totals['seconds'] += time.perf_counter() - t0
        self.totals['app_cpu'] += (cpu_ns(app) - c0) / 1e9; self.totals['watch_cpu'] += (cpu_ns(watch) - w0) / 1e9
        self.totals['ok'] += r['ok']; self.totals['failed'] += r['failed']
        ok = max(r['ok'], 1); app_ms = 1000 * (cpu_ns(app) - c0) / 1e9 / ok
        self.per_round.append((app_ms, app_ms + 1000 * (cpu_ns(watch) - w0) / 1e9 / ok))

    def restart(self):
        "The same server anew: new gunicorn processes on the same port, appending to the same log"
        self.server.__exit__(None, None, None); self.server.__enter__()

    def stop(self):
        pause(self.watchers, stop=False)      # a stopped process would not see SIGTERM
        for s in reversed(self.watchers): s.stop()
        self.server.__exit__(None, None, None)

    def result(self) -> dict:
        t, ok = self.totals, max(self.totals['ok'], 1)
        return {'requests': t['ok'], 'failed': t['failed'], 'rps': t['ok'] / max(t['seconds'], 1e-9),
                'app_cpu_ms_per_request': 1000 * t['app_cpu'] / ok, 'cpu_ms_per_request': 1000 * (t['app_cpu'] + t['watch_cpu']) / ok,
                'per_round': self.per_round}

def _descendants(pid:int) -> list:
    "Every live process below `pid`"
    out = child_pids(pid)
    return out + [q for p in out for q in _descendants(p)]

def bench(workers:int=2, requests:int=2000, concurrency:int=4, rounds:int=10, warmup:int=200,
          before:str=None, max_seconds:float=600, interval:float=1, rows:int=1, restart:bool=True) -> dict:
    "Each setup's totals (with `before`: also with that revision's labkit); rounds stop once `max_seconds` have passed"
    work = Path(tempfile.mkdtemp(prefix='labkit-bench-'))
    setups, done = [], 0
    try:
        codes = {'': None} | ({f'@{before}': labkit_at(before, work/'before')} if before else {})
        body = RECORD if rows == 1 else [RECORD] * rows   # one record, or a batch of `rows`
        watch_every = interval * len(codes) * len(SETUPS)   # wall-clock seconds: each setup runs about that share of the time
        setups = [Setup(kind + tag, work, code, workers, watch_every, body) for tag, code in codes.items() for kind in SETUPS]
        for s in setups: s.start()
        pause([w for s in setups for w in s.watchers], stop=True)   # each runs only while its setup is measured
        end = time.monotonic() + max_seconds
        order = random.Random(0)
        for done in range(1, rounds + 1):
            for s in setups:
                if restart and done > 1: s.restart()
                load_test(s.server.url + '/predict', warmup, concurrency, s.body)
            for s in order.sample(setups, len(setups)):   # a new order each round: no setup always follows another
                pause(s.watchers, stop=False)
                try: s.round(requests // rounds, concurrency)
                finally: pause(s.watchers, stop=True)
            if time.monotonic() > end: break
    finally:
        for s in setups:
            try: s.stop()
            except Exception as e: print(f"stopping {s.name}: {e!r}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    return {'rounds': done, 'of': rounds, 'results': {s.name: s.result() for s in setups}}

def _median_ratio(rounds:list, bare:list, k:int) -> float:
    "Median over the rounds of a setup's CPU per request over bare's in the same round, minus 1"
    return statistics.median(r[k] / b[k] for r, b in zip(rounds, bare)) - 1

def _interval(rounds:list, bare:list, k:int, resamples:int=2000) -> tuple:
    "95 % bootstrap interval of `_median_ratio`: the rounds drawn again with replacement, seeded"
    pairs, draw = list(zip(rounds, bare)), random.Random(0)
    meds = sorted(_median_ratio(*zip(*draw.choices(pairs, k=len(pairs))), k) for _ in range(resamples))
    return meds[int(0.025 * resamples)], meds[int(0.975 * resamples) - 1]

def table(res:dict) -> str:
    "The side-by-side table: each setup against the bare server of the same code (totals; and the median of per-round ratios)"
    rows = [f"{'setup':<26} {'req/s':>7} {'vs bare':>8} {'app CPU ms/req':>15} {'vs bare':>8} {'median':>7} {'95% of medians':>16} "
            f"{'total CPU ms/req':>17} {'vs bare':>8} {'median':>7} {'95% of medians':>16} {'failed':>6}"]
    for name, r in res.items():
        b = res['bare' + name[len(name.split('@')[0]):]]
        med = [f"{_median_ratio(r['per_round'], b['per_round'], k):+7.1%} {'%+.1f%% to %+.1f%%' % tuple(100 * x for x in _interval(r['per_round'], b['per_round'], k)):>16}"
               for k in (0, 1)]
        rows.append(f"{name:<26} {r['rps']:7.0f} {r['rps']/b['rps'] - 1:+8.1%} {r['app_cpu_ms_per_request']:15.3f} "
                    f"{r['app_cpu_ms_per_request']/b['app_cpu_ms_per_request'] - 1:+8.1%} {med[0]} {r['cpu_ms_per_request']:17.3f} "
                    f"{r['cpu_ms_per_request']/b['cpu_ms_per_request'] - 1:+8.1%} {med[1]} {r['failed']:6d}")
    return '\n'.join(rows)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--workers', type=int, default=2); ap.add_argument('--requests', type=int, default=2000, help='per setup')
    ap.add_argument('--concurrency', type=int, default=4); ap.add_argument('--rounds', type=int, default=10)
    ap.add_argument('--warmup', type=int, default=200, help='requests per setup before each round, not measured')
    ap.add_argument('--keep-servers', action='store_true', help='one gunicorn per setup for the whole run, not a new one each round')
    ap.add_argument('--before', default=None, help='git revision whose labkit runs the same setups, side by side')
    ap.add_argument('--max-seconds', type=float, default=600, help='no new round starts after this')
    ap.add_argument('--interval', type=float, default=1, help="seconds of a setup's own traffic between the monitor's updates and between scrapes (the lab's: 15)")
    ap.add_argument('--rows', type=int, default=1, help='records per /predict request (more than 1: a batch)')
    ap.add_argument('--json', default=None)
    a = ap.parse_args(argv)
    out = bench(a.workers, a.requests, a.concurrency, a.rounds, a.warmup, a.before, a.max_seconds, a.interval, a.rows, not a.keep_servers)
    print(f"{out['rounds']} of {out['of']} rounds, {'one gunicorn per setup' if a.keep_servers else 'new gunicorns each round'}, {a.rows} row(s) per request, {a.workers} workers, {a.concurrency} client threads, monitor and scrape every {a.interval:g} s, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(table(out['results']))
    out |= {'cpus': os.cpu_count(), 'restart': not a.keep_servers, 'workers': a.workers, 'concurrency': a.concurrency, 'interval': a.interval, 'rows': a.rows}
    if a.json: Path(a.json).write_text(json.dumps(out, indent=1))
    return 0 if all(r['failed'] == 0 for r in out['results'].values()) else 1

if __name__ == '__main__': sys.exit(main())
