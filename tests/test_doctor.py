"`labkit doctor` tells the truth about this machine, and about the data folder"
import json, shutil, subprocess
import pytest
from conftest import labkit_cmd
from labkit.core import gpu_available

def _doctor(env=None):
    import os
    r = subprocess.run(labkit_cmd('doctor', '--json'), capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)
    return r.returncode, json.loads(r.stdout)

def test_doctor_reports_this_machine():
    rc, rep = _doctor()
    assert rc == 0, rep['errors']
    assert rep['errors'] == []
    expected = 'gpu' if gpu_available() else 'cpu'
    assert rep['torch']['device'] == rep['onnxruntime']['device'] == expected
    assert 'CPUExecutionProvider' in rep['onnxruntime']['session_providers']
    if expected == 'cpu': assert rep['onnxruntime']['session_providers'] == ['CPUExecutionProvider']
    assert rep['tensorflow']['legacy_keras'] is True
    assert rep['packages']['onnxruntime'] is None and rep['packages']['onnxruntime-gpu']   # one ONNX runtime only
    assert rep['assets']['problems'] == {}

def test_doctor_docker_matches_engine():
    engine = shutil.which('docker') and subprocess.run(['docker', 'info'], capture_output=True, timeout=20).returncode == 0
    _, rep = _doctor()
    assert rep['docker']['answers'] == bool(engine)

def test_doctor_fails_on_altered_data(tmp_path):
    data = tmp_path/'data'; data.mkdir()
    (data/'weights.bin').write_bytes(b'\x00' * 64)
    from labkit.core import register_asset
    register_asset('weights.bin', made_by='python make_weights.py', root=data)
    (data/'weights.bin').write_bytes(b'\x01' * 64)        # altered after registration
    rc, rep = _doctor({'LABKIT_DATA': str(data)})
    assert rc == 1
    assert any('weights.bin' in e and 'refusing' in e for e in rep['errors'])
    assert any('weights.bin' in e and 'produce it with: python make_weights.py' in e for e in rep['errors']), rep['errors']

def _data_copy(tmp_path):
    from labkit.core import data_dir
    data = tmp_path/'data'
    shutil.copytree(data_dir(), data)
    return data

def test_doctor_fails_without_manifest(tmp_path):
    data = _data_copy(tmp_path)
    (data/'manifest.json').unlink()
    rc, rep = _doctor({'LABKIT_DATA': str(data)})
    assert rc == 1
    assert any('manifest.json is missing' in e and 'Restore it' in e for e in rep['errors']), rep['errors']

def test_unlisted_registry_version_is_refused_and_reported(tmp_path, monkeypatch):
    from labkit.core import AssetUnlisted
    from labkit.doctor import doctor_report, format_report
    from labkit.serving import ModelRegistry, load_model, save_model
    data = _data_copy(tmp_path)
    hiring = data/'registry'/'hiring'
    v3 = {k: v for k, v in load_model(hiring/'v2'/'model.json').items() if k != 'sha256'} | {'version': 'v3', 'intercept': 1e6}
    save_model(v3, hiring)                              # a version with its own, matching sha256 file, not in the manifest
    monkeypatch.setenv('LABKIT_DATA', str(data))
    registry = ModelRegistry(hiring)
    assert registry.versions() == ['v1', 'v2'] and registry.latest() == 'v2'
    with pytest.raises(AssetUnlisted, match='not listed'): registry.get('v3')
    rep = doctor_report(heavy=False)
    assert sorted(rep['assets']['problems']) == ['registry/hiring/v3/model.json', 'registry/hiring/v3/model.json.sha256']
    assert 'PROBLEMS' in format_report(rep) and 'all verified' not in format_report(rep)
