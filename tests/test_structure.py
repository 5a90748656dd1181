"The code's structure holds: lab modules depend only on core and on earlier labs, never on the tools or later labs"
import ast
import re
from conftest import REPO

def _notebook_number(module_path) -> int|None:
    "Number of the notebook a module is exported from (`File to edit: ../nbs/NN_name.ipynb`), None for hand-written ones"
    m = re.search(r'File to edit: \.\./nbs/(\d+)_', module_path.read_text()[:400])
    return int(m[1]) if m else None

def _labkit_imports(module_path) -> set:
    "Names of the labkit modules a module imports, at the top or inside functions"
    out = set()
    for node in ast.walk(ast.parse(module_path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module: out.add(node.module.split('.')[0])
            elif node.level == 0 and (node.module or '').startswith('labkit.'): out.add(node.module.split('.')[1])
            elif node.level == 0 and node.module == 'labkit': out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split('.')[1] for a in node.names if a.name.startswith('labkit.'))
    return out

def test_lab_modules_import_only_core_and_earlier_labs():
    numbers = {p.stem: _notebook_number(p) for p in (REPO/'labkit').glob('*.py') if p.stem not in ('__init__', '_modidx')}
    assert numbers['core'] == 0 and numbers['cli'] >= 90, numbers
    wrong = []
    for name, n in numbers.items():
        if n is None or n >= 90: continue                     # the tools (doctor, instructor, cli) may use any lab
        for dep in _labkit_imports(REPO/'labkit'/f'{name}.py'):
            m = numbers.get(dep)
            if m is None or m >= 90 or m > n: wrong.append(f"{name} ({n:02d}) imports {dep} ({m})")
    assert not wrong, 'dependencies pointing the wrong way: ' + '; '.join(wrong)

def test_the_check_sees_a_wrong_import(tmp_path):
    "The reader of imports is not vacuous: it finds relative, absolute and function-level imports"
    p = tmp_path/'m.py'
    p.write_text('from .core import *\ndef f():\n    from labkit.doctor import x\n    import labkit.monitoring\n')
    assert _labkit_imports(p) == {'core', 'doctor', 'monitoring'}
