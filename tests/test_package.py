"The package stays light, and the `labkit` command answers"
import subprocess
import sys
from conftest import REPO, labkit_cmd

def _import_seconds() -> tuple:
    code = ("import time, sys; t = time.perf_counter(); import labkit; dt = time.perf_counter() - t; "
            "print(dt, [m for m in ('torch', 'tensorflow', 'ultralytics', 'pandas', 'matplotlib') if m in sys.modules])")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, timeout=120).stdout.split(maxsplit=1)
    return float(out[0]), eval(out[1])

def test_import_labkit_is_light():
    runs = [_import_seconds() for _ in range(3)]
    assert all(heavy == [] for _, heavy in runs), runs          # no heavy stack imported by `import labkit`
    assert min(t for t, _ in runs) < 0.3, runs

def test_core_imports_no_framework():
    code = "import sys, labkit.core; print(sorted(m for m in ('torch', 'tensorflow', 'ultralytics') if m in sys.modules))"
    assert subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, timeout=120).stdout.strip() == '[]'

def test_cli_lists_commands():
    r = subprocess.run(labkit_cmd('--help'), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and 'doctor' in r.stdout and 'student' in r.stdout

def test_cli_unknown_command_is_clear():
    r = subprocess.run(labkit_cmd('frobnicate'), capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "unknown command 'frobnicate'" in r.stderr

def test_tensorflow_then_torch_compiler_does_not_crash():
    "TensorFlow first, then triton (PyTorch's compiler): crashes the process unless labkit.core ordered them"
    code = "import labkit.core, tensorflow, triton; print('alive')"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and 'alive' in r.stdout, (r.returncode, r.stderr[-500:])

def test_every_notebook_cell_has_an_id():
    "A cell without an id gets a random one at each read: its notebook's student copy would look changed every time"
    import json
    missing = [f"{path.name} cell {i}" for path in sorted((REPO/'nbs').glob('*.ipynb'))
               for i, cell in enumerate(json.loads(path.read_text())['cells']) if not cell.get('id')]
    assert not missing, f"cells without an id (give each a unique one): {missing}"

def test_notebooks_store_no_widget_state_and_small_figures():
    "Stored outputs stay small: no widget state in any notebook, no stored figure over 150 KB"
    import base64, json
    for path in sorted((REPO/'nbs').glob('*.ipynb')):
        nb = json.loads(path.read_text())
        assert 'widgets' not in nb['metadata'], f"{path.name} stores widget state (metadata.widgets): remove it"
        for i, cell in enumerate(nb['cells']):
            for out in cell.get('outputs', []):
                for kind in ('image/png', 'image/jpeg'):
                    data = out.get('data', {}).get(kind)
                    if data is None: continue
                    size = len(base64.b64decode(''.join(data) if isinstance(data, list) else data))
                    assert size <= 150_000, f"{path.name} cell {i} stores a {size/1e3:.0f} KB {kind} figure"
