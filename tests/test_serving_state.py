"What the service keeps between requests: the request log's user keys, and the policy file every worker watches"
import json
from labkit.serving import Policy, PolicyFile, Router, ModelRegistry, create_app, default_registry_dir, user_key

RECORD = {'experience': 5, 'test_score': 8, 'interview_score': 7}

def test_the_request_log_keeps_a_keyed_hash_of_the_user_never_the_id(monkeypatch):
    monkeypatch.delenv('LABKIT_LOG_SALT', raising=False)
    log = []
    app = create_app(request_log=log)
    client = app.test_client()
    for _ in range(2): assert client.post('/predict', json=RECORD, headers={'X-User-Id': 'jane.doe@example.org'}).status_code == 200
    form = {k: str(v) for k, v in RECORD.items()} | {'user_id': 'jane.doe@example.org'}
    assert client.post('/predict', data=form).status_code == 200
    assert client.post('/predict', json=RECORD).status_code == 200
    assert 'jane' not in json.dumps(log)
    keys = [r['user_key'] for r in log]
    assert keys[0] == keys[1] == keys[2] == user_key('jane.doe@example.org', app.extensions['labkit_serving'].log_salt)
    assert keys[3] is None and 'user_id' not in log[0]

def test_one_salt_in_the_environment_gives_every_app_the_same_keys(monkeypatch):
    monkeypatch.setenv('LABKIT_LOG_SALT', 'shared-secret')
    logs = [[], []]
    for log in logs: create_app(request_log=log).test_client().post('/predict', json=RECORD, headers={'X-User-Id': 'u1'})
    assert logs[0][0]['user_key'] == logs[1][0]['user_key'] == user_key('u1', b'shared-secret')
    monkeypatch.delenv('LABKIT_LOG_SALT')
    apps = [create_app(), create_app()]   # without it, each app draws its own salt
    assert apps[0].extensions['labkit_serving'].log_salt != apps[1].extensions['labkit_serving'].log_salt

def test_a_policy_file_that_cannot_be_applied_keeps_the_policy_in_force(tmp_path):
    registry = ModelRegistry(default_registry_dir())
    path = tmp_path/'policy.json'
    router = Router(registry, Policy(live='v1'), policy_file=path)
    for bad in ('{"current": {"live": "v2"}, "previous": {"bogus": 1}}',   # a previous policy with an unknown field
                '{"current": {"live": "v9"}}', '{"current": ', '[]'):
        path.write_text(bad)
        assert router.route().version == 'v1', bad
    path.write_text(json.dumps({'current': Policy(live='v2').to_dict(), 'previous': None}))
    assert router.route().version == 'v2'

def test_a_worker_reads_the_policy_file_only_when_it_changed(tmp_path):
    registry = ModelRegistry(default_registry_dir())
    writer, reader = PolicyFile(tmp_path/'policy.json'), PolicyFile(tmp_path/'policy.json')
    writer.write(Policy(live='v2'), None)
    calls = []
    versions = lambda: calls.append(1) or registry.versions()
    assert reader.read(versions) == (Policy(live='v2'), None)
    assert reader.read(versions) is None and reader.read(versions) is None
    assert len(calls) == 1   # the registry is listed once, when the file changed, not on every request
