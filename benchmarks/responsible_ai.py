"""Responsible-AI lab benchmark: what each mitigation reaches, and what an explanation costs.

1. Mitigation: for each seed, 4,000 generated applicants (1,000 held out); baseline, re-weighting,
   ExponentiatedGradient and ThresholdOptimizer side by side: accuracy (on the biased `hired` and on
   `qualified`), demographic parity and equalized odds differences, accuracy cost in points, DPD
   reduction factor, and whether the goal is met (DPD reduced >= 5x or <= 0.05, for <= 2 points).
2. Latency: the Flask test client in one process, `/predict` (the salary model), `/explain` and `/hire`
   (no audit log, then with the fsync'ed audit log) interleaved in rounds; medians, p99 and the ratio
   /explain : /predict.

    python benchmarks/responsible_ai.py                  # 3 seeds, 2,000 requests per route
    python benchmarks/responsible_ai.py --seeds 1 --requests 300
"""
import argparse, os, platform, tempfile
import pandas as pd
from labkit.responsible_ai import (make_applicants, split_applicants, compare_mitigations, train_hiring_classifier,
                                   background_sample, hiring_model_json, create_hiring_app, route_latency,
                                   _markdown_table)


def mitigation_figures(seeds: int, n: int, max_iter: int) -> pd.DataFrame:
    tables = []
    for seed in range(seeds):
        train, test = split_applicants(make_applicants(n, seed=seed))
        tables.append(compare_mitigations(train, test, max_iter=max_iter).assign(seed=seed))
    return pd.concat(tables).rename_axis('method').reset_index()


def latency_figures(requests: int) -> pd.DataFrame:
    train, _ = split_applicants(make_applicants())
    model = hiring_model_json(train_hiring_classifier(train), background_sample(train))
    applicant = {'experience': 6, 'test_score': 8.5, 'interview_score': 8, 'career_break': 0, 'consent_automated': True}
    routes = {'/predict': {'experience': 6, 'test_score': 8.5, 'interview_score': 8}, '/explain': applicant, '/hire': applicant}
    plain = route_latency(create_hiring_app(model).test_client(), routes, n=requests, rounds=10)
    with tempfile.TemporaryDirectory() as d:
        audited_app = create_hiring_app(model, audit_log=os.path.join(d, 'audit'), key=b'benchmark-key-0123456789')
        audited = route_latency(audited_app.test_client(), {'/hire': {**applicant, 'applicant_id': 'bench-1'}}, n=requests, rounds=10)
    return pd.concat([plain, audited.rename(index={'/hire': '/hire (audited, fsync)'})])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--seeds', type=int, default=3)
    p.add_argument('--applicants', type=int, default=4000)
    p.add_argument('--max-iter', type=int, default=50)
    p.add_argument('--requests', type=int, default=2000)
    a = p.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    mit = mitigation_figures(a.seeds, a.applicants, a.max_iter)
    cols = ['accuracy', 'accuracy_on_merit', 'dpd', 'eod', 'accuracy_cost_points', 'dpd_reduction', 'seconds']
    met = mit.groupby('method', sort=False).meets_goal.sum().astype(int).astype(str) + f' of {a.seeds}'
    print('\n## Mitigation (mean over seeds)\n')
    print(_markdown_table(mit.groupby('method', sort=False)[cols].mean().assign(meets_goal=met)))
    print('\n## Mitigation, per seed\n')
    print(_markdown_table(mit.set_index('method')))
    lat = latency_figures(a.requests)
    print('\n## Latency (Flask test client, one process)\n')
    print(_markdown_table(lat))
    ratio = lat.p50_ms['/explain'] / lat.p50_ms['/predict']
    print(f"\n/explain : /predict median latency = {ratio:.2f}; /hire audited : /hire = {lat.p50_ms['/hire (audited, fsync)'] / lat.p50_ms['/hire']:.2f}")


if __name__ == '__main__':
    main()
