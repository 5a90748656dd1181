"The CI/CD lab: the pipeline runner and its workflow, each stage's gate, the real engine and registry, deploy and rollback under load"
import json, shutil, subprocess, threading, time, uuid
from pathlib import Path
import pandas as pd
import pytest
import yaml
from conftest import labkit_cmd
from labkit.core import ServiceUnavailable, find_program
from labkit.cicd import (GateFailed, behavioural_report, commit_all, github_workflow, load_pipeline, make_project,
                         publish_image, registry_service, run_pipeline, validate_data, workflow_stages)

@pytest.fixture(scope='module')
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp('cicd')/'salary')

def _run(project, *stages, **kw):
    return run_pipeline(project, only=list(stages) or None, **kw)

def test_workflow_runs_the_same_stages_as_the_runner(tmp_path, project):
    names = [s.name for s in load_pipeline()]
    assert workflow_stages(github_workflow()) == names
    r = subprocess.run(labkit_cmd('pipeline', 'workflow', '--project', project), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    written = yaml.safe_load((project/'.github'/'workflows'/'ml-pipeline.yml').read_text())
    assert workflow_stages(written) == names
    shutil.rmtree(project/'.github')

def test_bad_pipeline_definitions_name_the_stage_and_field():
    with pytest.raises(ValueError, match=r"stage 1 \(b\): the name 'a'|stage 1 \(a\): the name 'a' is used twice"):
        load_pipeline([{'name': 'a', 'run': 'm:f'}, {'name': 'a', 'run': 'm:f'}])
    with pytest.raises(ValueError, match="unknown need 'gpu'"):
        load_pipeline([{'name': 'a', 'run': 'm:f', 'needs': ['gpu']}])

def test_cli_stops_at_the_failing_gate_with_its_log_then_caches(tmp_path):
    root = tmp_path/'p'
    assert subprocess.run(labkit_cmd('pipeline', 'init', '--project', root), capture_output=True, timeout=120).returncode == 0
    src = root/'src'/'salary_features.py'
    good = src.read_text()
    src.write_text(good.replace("return 'mid' if years < 8 else 'senior'", "return 'mid'"))
    r = subprocess.run(labkit_cmd('pipeline', 'run', '--project', root, '--stage', 'lint,unit-tests,validate-data'),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert '--- log of unit-tests ---' in r.stdout and 'test_seniority' in r.stdout and 'validate-data' not in r.stdout.split('--- log of')[0].split('unit-tests')[-1]
    assert 'lint' in r.stdout.splitlines()[-3] or 'passed' in r.stdout   # summary table at the end
    src.write_text(good)
    assert _run(root, 'lint', 'unit-tests').ok
    state = json.loads((root/'build'/'pipeline_state.json').read_text())
    assert set(state) == {'lint', 'unit-tests'} and state['unit-tests']['figures']['coverage_percent'] >= 90
    assert [x.status for x in _run(root, 'lint', 'unit-tests').results] == ['cached', 'cached']
    (root/'tests'/'test_salary_features.py').write_text('from salary_features import seniority\ndef test_one(): assert seniority(1) == "junior"\n')
    again = _run(root, 'lint', 'unit-tests')
    assert again.status('lint') == 'passed' and again.status('unit-tests') == 'failed' and 'coverage' in again.failed.detail
    assert 'unit-tests' not in json.loads((root/'build'/'pipeline_state.json').read_text())   # a failed stage is not recorded as done

def test_cli_refuses_bad_input_with_one_line(tmp_path):
    r = subprocess.run(labkit_cmd('pipeline', 'run', '--project', tmp_path), capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and 'not a pipeline project' in r.stderr and 'Traceback' not in r.stderr
    (tmp_path/'x').write_text('')
    r = subprocess.run(labkit_cmd('pipeline', 'init', '--project', tmp_path), capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and 'is not empty' in r.stderr and 'Traceback' not in r.stderr

def test_data_validation_catches_each_kind_of_problem(tmp_path, project):
    data = tmp_path/'data'; shutil.copytree(project/'data', data)
    assert validate_data(data) == []
    train = pd.read_csv(data/'train.csv')
    bad = train.copy()
    bad.loc[0, 'test_score'] = -1                     # out of range
    bad.loc[1:60, 'salary'] = None                    # too many gaps
    bad.loc[2, 'experience'] = 'lots'                 # unreadable
    bad = pd.concat([bad, bad.iloc[[5]]])             # a duplicated row
    bad.to_csv(data/'train.csv', index=False)
    found = {(p['column'], p['check'].split(' ')[0]) for p in validate_data(data)}
    assert {('test_score', 'in_range(0,'), ('salary', 'at'), ('experience', 'readable'), ('(rows)', 'no')} <= found, found
    train.assign(bonus=1).to_csv(data/'train.csv', index=False)
    assert any(p['column'] == 'bonus' and 'does not know' in p['check'] for p in validate_data(data))   # strict: an unknown column is a problem

def test_behavioural_tests_catch_a_model_with_the_wrong_direction(project):
    from labkit.serving import ModelRegistry
    model = ModelRegistry(project/'production'/'registry').get('v2')
    assert all(r['passed'] for r in behavioural_report(model))
    flipped = {**model, 'coef': {**model['coef'], 'interview_score': -abs(model['coef']['interview_score'])}}
    failed = [r['test'] for r in behavioural_report(flipped) if not r['passed']]
    assert failed == ['dir_interview_raises_salary'], failed

def test_deploy_rolls_back_a_bad_candidate_under_load_with_no_failed_request(project):
    assert _run(project, 'validate-data', 'train', 'model-tests', 'evaluate').ok
    ok = _run(project, 'deploy')
    report = json.loads((project/'build'/'deploy.json').read_text())
    assert ok.ok and report['serving'] == 'v3' and report['load']['failed'] == 0 and report['load']['versions'].get('v3', 0) > 0
    params = json.loads((project/'params.json').read_text())
    (project/'params.json').write_text(json.dumps({**params, 'deploy_p99_ms_max': 0.001}))   # a latency budget no service meets
    try: bad = _run(project, 'deploy')
    finally: (project/'params.json').write_text(json.dumps(params, indent=1) + '\n')
    report = json.loads((project/'build'/'deploy.json').read_text())
    assert bad.status('deploy') == 'failed' and 'rolled back to v2' in bad.failed.detail and 'p99 latency' in report['reason']
    assert report['serving'] == 'v2' and report['load']['failed'] == 0 and report['load']['ok'] > 0
    assert report['rollback_seconds'] < 30   # the <5 s goal is measured by benchmarks/cicd.py

def test_engine_stages_say_why_they_skip(tmp_path, project, monkeypatch):
    import labkit.cicd as cicd
    monkeypatch.setitem(cicd._ENGINE, 'why', 'no Docker engine answers (test)')
    r = _run(project, 'k8s-manifests', 'build-image', 'cve-scan', 'publish')
    assert r.ok and r.status('k8s-manifests') in ('passed', 'cached')
    assert [x.detail for x in r.results[1:]] == ['no Docker engine answers (test)'] * 3

# ---- the real engine and registry ----

@pytest.fixture(scope='module')
def registry_program():
    try: return find_program('docker-registry', '/usr/bin/docker-registry')
    except ServiceUnavailable as e: pytest.skip(str(e))

@pytest.fixture
def engine_project(project, docker_engine):
    yield project
    for tag in subprocess.run(['docker', 'images', 'labkit-salary', '--format', '{{.Repository}}:{{.Tag}}'], capture_output=True, text=True).stdout.split():
        subprocess.run(['docker', 'rmi', '-f', tag], capture_output=True)

def _uploading(storage:Path) -> bool:
    return any(p.name == '_uploads' and any(p.iterdir()) for p in storage.rglob('_uploads')) if storage.exists() else False

@pytest.mark.docker
@pytest.mark.timeout(900)
def test_whole_pipeline_on_the_engine_and_registry(engine_project, registry_program, tmp_path):
    project = engine_project
    reg_data = tmp_path/'registry'
    run = _run(project, *[s.name for s in load_pipeline() if s.name != 'deploy'])   # deploy: its own test above
    assert run.ok and run.status('publish') == 'skipped' and 'no registry given' in run.results[-1].detail, run.table()
    assert run.status('build-image') == 'passed' and run.status('image-checks') == 'passed' and run.status('cve-scan') == 'skipped'
    sbom = json.loads((project/'build'/'sbom.json').read_text())
    assert {'flask', 'gunicorn', 'numpy'} <= {c['name'].lower() for c in sbom['components']}
    image = json.loads((project/'build'/'image.json').read_text())
    service = registry_service(reg_data).start()
    try:   # the registry stops in the middle of the push: a clear failure, quickly
        push = threading.Thread(target=lambda: box.append(_run(project, 'publish', options={'registry': f'127.0.0.1:{service.port}'})))
        box = []; push.start()
        deadline = time.monotonic() + 120
        while not _uploading(reg_data/'storage') and push.is_alive():
            assert time.monotonic() < deadline, 'waited 120 s for the push to start uploading'
            time.sleep(0.05)
        service.stop(); push.join(120)
        assert box and box[0].status('publish') == 'failed' and 'stopped answering during the push' in box[0].failed.detail, box and box[0].table()
    finally: service.stop()
    with registry_service(reg_data, port=service.port) as again:   # same storage, same port: the rerun pushes what is missing
        reg = f'127.0.0.1:{again.port}'
        rerun = _run(project, 'publish', options={'registry': reg})
        assert rerun.ok and rerun.status('publish') == 'passed', rerun.table()
        published = json.loads((project/'build'/'published.json').read_text())
        assert published['id'] == image['id'] and len(published['tags']) == 2
        assert published['tags'][0].startswith('git-') and not any(t == 'latest' for t in published['tags'])
        with pytest.raises(GateFailed, match='never overwritten'):   # another image under the same tags
            publish_image('labkit-serve:' + published['tags'][1].split('-')[0], reg, published['tags'])
        broken = project/'docker'/'Dockerfile'; good = broken.read_text()
        broken.write_text(good.replace('USER 10001:10001\n', 'ENV API_TOKEN=s3cr3t-t0ken\nUSER root\n'))
        try:
            bad = _run(project, 'build-image', 'image-checks')
            assert bad.status('image-checks') == 'failed' and 'runs as root' in bad.failed.log and 'ENV API_TOKEN' in bad.failed.log
        finally: broken.write_text(good)
