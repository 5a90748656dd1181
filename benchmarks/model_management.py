"""Model management benchmark, ratios measured side by side in one run:
tracking overhead of the lab's training with batched logging, metrics per second to the embedded store and to the
PostgreSQL-backed server, and alias resolution + model load time of the registry model source.

    python benchmarks/model_management.py [--steps 20] [--metrics 300] [--no-server]
"""
import argparse, json, shutil, statistics, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from labkit.core import ServiceUnavailable
from labkit.model_management import (RegistrySource, TrackingServer, _mlflow, experiment_id, make_properties,
                                     regression_metrics, register_salary_model, resolve, use_store, use_tracking, _client)
from labkit.serving import MODEL_NAME, make_hiring, split_hiring, train_salary_model

def grow_forest(train, test, steps, log=None):
    "The lab's training: a forest grown 10 trees a step (warm start), held-out RMSE after each step"
    from sklearn.ensemble import RandomForestRegressor
    from labkit.model_management import PROPERTY_FEATURES, PROPERTY_TARGET
    rf = RandomForestRegressor(n_estimators=0, warm_start=True, random_state=0, n_jobs=1, max_depth=10)
    history = []
    for step in range(1, steps + 1):
        rf.n_estimators = 10 * step
        rf.fit(train[list(PROPERTY_FEATURES)], train[PROPERTY_TARGET])
        history.append((step, regression_metrics(rf, test)))
    if log: log(history)
    return rf

def batched(history):
    "All the steps' metrics in one log_batch call"
    from mlflow.entities import Metric
    now = int(time.time() * 1000)
    metrics = [Metric(f'test_{k}', v, now, step) for step, m in history for k, v in m.items()]
    _client().log_batch(_mlflow().active_run().info.run_id, metrics=metrics)

def tracking_overhead(train, test, steps, repeats=3):
    mlflow = _mlflow(); eid = experiment_id('bench-overhead')
    plain, tracked = [], []
    for _ in range(repeats):   # interleaved: both see the same machine load
        t = time.perf_counter(); grow_forest(train, test, steps); plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        with mlflow.start_run(experiment_id=eid):
            mlflow.log_params({'steps': steps, 'max_depth': 10}); grow_forest(train, test, steps, log=batched)
        tracked.append(time.perf_counter() - t)
    p, q = statistics.median(plain), statistics.median(tracked)
    return {'untracked_s': round(p, 3), 'tracked_s': round(q, 3), 'overhead_pct': round(100 * (q - p) / p, 1)}

def metrics_per_second(n):
    "log_metric one call at a time, then the same count in one log_batch"
    from mlflow.entities import Metric
    mlflow = _mlflow()
    with mlflow.start_run(experiment_id=experiment_id('bench-metrics')) as run:
        t = time.perf_counter()
        for i in range(n): mlflow.log_metric('loss', 1 / (i + 1), step=i)
        single = n / (time.perf_counter() - t)
        now = int(time.time() * 1000)
        t = time.perf_counter()
        _client().log_batch(run.info.run_id, metrics=[Metric('loss_b', 1 / (i + 1), now, i) for i in range(n)])
        batch = n / (time.perf_counter() - t)
    return {'one_call_each_per_s': round(single, 1), 'log_batch_per_s': round(batch, 1)}

def alias_and_load(repeats=5):
    "Resolving models:/hiring-salary@champion, and downloading + verifying + loading the version, by a fresh source"
    tr, te = split_hiring(make_hiring())
    mv = register_salary_model(train_salary_model(tr, te, 'v1'))
    _client().set_registered_model_alias(MODEL_NAME, 'champion', mv.version)
    res, load = [], []
    for _ in range(repeats):
        source = RegistrySource(MODEL_NAME, 'champion')
        t = time.perf_counter(); v = source.latest(); res.append(time.perf_counter() - t)
        t = time.perf_counter(); source.get(v); load.append(time.perf_counter() - t)
    return {'alias_resolution_ms': round(1000 * statistics.median(res), 1), 'download_verify_load_ms': round(1000 * statistics.median(load), 1)}

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--steps', type=int, default=20); ap.add_argument('--metrics', type=int, default=300)
    ap.add_argument('--no-server', action='store_true')
    a = ap.parse_args()
    homes = make_properties(2000); train, test = homes.iloc[:1500], homes.iloc[1500:]
    out, tmp = {}, Path(tempfile.mkdtemp(prefix='labkit-bench-'))
    use_store(tmp/'embedded')
    out['embedded'] = {'overhead': tracking_overhead(train, test, a.steps), 'metrics': metrics_per_second(a.metrics),
                       'registry': alias_and_load()}
    if not a.no_server:
        try:
            with TrackingServer(tempfile.mkdtemp(prefix='labkit-pg-')) as server:
                use_tracking(server.url)
                out['server'] = {'overhead': tracking_overhead(train, test, a.steps), 'metrics': metrics_per_second(a.metrics),
                                 'registry': alias_and_load()}
        except ServiceUnavailable as e: out['server'] = f'skipped: {e}'
    print(json.dumps(out, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)

if __name__ == '__main__': main()
