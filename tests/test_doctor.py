"`labkit doctor` tells the truth about this machine"
import json, shutil, subprocess
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
