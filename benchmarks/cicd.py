#!/usr/bin/env python
"""The CI/CD lab's pipeline: wall time cold and fully cached, and a deploy and a rollback under load.

    python benchmarks/cicd.py                        # the stages that need no engine, then deploy and rollback
    python benchmarks/cicd.py --engine --json out.json   # also build-image and image-checks (Docker engine)

Writes the example project into a temporary folder, runs the pipeline cold (every stage runs) and again
(every stage cached), and reports the ratio. Then it deploys the candidate blue-green under a bounded load and
deploys it again with a latency budget no service meets, so that the metric gate fails and the router is rolled
back: it reports the time from the failed gate to the previous version serving (goal < 5 s) and the requests
that failed during each (goal 0). Prints the figures as JSON.
"""
import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from labkit.cicd import load_pipeline, make_project, run_pipeline

def bench(engine:bool=False) -> dict:
    project = make_project(Path(tempfile.mkdtemp(prefix='labkit-cicd-bench-'))/'salary')
    names = [s.name for s in load_pipeline() if engine or not set(s.needs) & {'docker', 'registry', 'scanner'}]
    t0 = time.monotonic(); cold = run_pipeline(project, only=names); cold_s = time.monotonic() - t0
    assert cold.ok, cold.table()
    t0 = time.monotonic(); warm = run_pipeline(project, only=names); warm_s = time.monotonic() - t0
    deployed = json.loads((project/'build'/'deploy.json').read_text())
    params = json.loads((project/'params.json').read_text())
    (project/'params.json').write_text(json.dumps({**params, 'deploy_p99_ms_max': 0.001}))
    bad = run_pipeline(project, only=['deploy'])
    rolled = json.loads((project/'build'/'deploy.json').read_text())
    assert bad.status('deploy') == 'failed' and rolled['rolled_back'], bad.table()
    return {'machine': platform.processor() or platform.machine(), 'stages': names,
            'cold_seconds': round(cold_s, 2), 'cached_seconds': round(warm_s, 2), 'cold_over_cached': round(cold_s / max(warm_s, 1e-3), 1),
            'stage_seconds': {r.name: r.seconds for r in cold.results},
            'deploy_switch_seconds': deployed['switch_seconds'], 'deploy_requests': deployed['load']['ok'],
            'deploy_failed_requests': deployed['load']['failed'],
            'rollback_seconds': rolled['rollback_seconds'], 'rollback_requests': rolled['load']['ok'],
            'rollback_failed_requests': rolled['load']['failed']}

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--engine', action='store_true', help='include the stages that need a Docker engine')
    ap.add_argument('--json', help='also write the figures to this file')
    args = ap.parse_args()
    out = bench(args.engine)
    print(json.dumps(out, indent=1))
    if args.json: Path(args.json).write_text(json.dumps(out, indent=1))
