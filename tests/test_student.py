"Student copies: no solution survives; self-checks fail helpfully on the stubs and pass on the solutions"
import ast, re, subprocess
import nbformat, pytest
from conftest import labkit_cmd, REPO
from labkit.core import SOLUTION_BEGIN, SOLUTION_END, CheckResult
from labkit.instructor import strip_solutions, _marker_lines

NOTEBOOKS = sorted((REPO/'nbs').glob('*.ipynb'))

def _solutions(source:str) -> list:
    "The text between each pair of marker lines"
    return re.findall(rf"^[ \t]*{re.escape(SOLUTION_BEGIN)}[^\n]*\n(.*?)^[ \t]*{re.escape(SOLUTION_END)}", source, re.M | re.S)

def _exercises(nb) -> list:
    "(setup code, exercise cell, check cell) for each exercise: setup is the notebook's import cells and its module"
    code = [c for c in nb.cells if c.cell_type == 'code']
    module = next((m.group(1) for c in code if (m := re.search(r'^#\|\s*default_exp\s+(\S+)', c.source, re.M))), None)
    def is_import(src):
        lines = [l for l in src.splitlines() if l.strip() and not l.lstrip().startswith('#')]
        return lines and all(re.match(r'(import|from)\s', l) for l in lines)
    setup = '\n'.join([c.source for c in code if is_import(c.source)] + ([f'from labkit.{module} import *'] if module else []))
    return [(setup, c.source, code[i + 1].source) for i, c in enumerate(code) if _marker_lines(c.source, SOLUTION_BEGIN)]

EXERCISES = [pytest.param(*ex, id=f"{p.stem}-{i}") for p in NOTEBOOKS for i, ex in enumerate(_exercises(nbformat.read(p, as_version=4)))]

def _run_check(setup, exercise, check) -> CheckResult:
    "Run the imports, the exercise cell and the check cell in a fresh namespace; the check's value"
    ns = {}
    exec(compile(setup, 'imports', 'exec'), ns)
    exec(compile(exercise, 'exercise', 'exec'), ns)
    tree = ast.parse(check)
    *body, last = tree.body
    exec(compile(ast.Module(body, []), 'check', 'exec'), ns)
    return eval(compile(ast.Expression(last.value), 'check', 'eval'), ns)

def test_every_lab_has_an_exercise():
    assert EXERCISES, "no exercise found"

@pytest.mark.parametrize('setup,exercise,check', EXERCISES)
def test_self_check_passes_on_solution(setup, exercise, check):
    result = _run_check(setup, exercise, check)
    assert isinstance(result, CheckResult) and result.ok, result

@pytest.mark.parametrize('setup,exercise,check', EXERCISES)
def test_self_check_fails_helpfully_on_stub(setup, exercise, check):
    result = _run_check(setup, strip_solutions(exercise, 'nb'), check)
    assert isinstance(result, CheckResult) and not result.ok
    assert 'not written yet' in result.message

def test_student_copies_hold_no_solution(tmp_path):
    out = tmp_path/'student'
    r = subprocess.run(labkit_cmd('student', REPO/'nbs', out), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for p in NOTEBOOKS:
        src, dst = nbformat.read(p, as_version=4), nbformat.read(out/p.name, as_version=4)
        assert len(src.cells) == len(dst.cells)
        for a, b in zip(src.cells, dst.cells):
            sols = _solutions(a.source) if a.cell_type == 'code' else []
            if not sols:
                assert a == b, f"{p.name}: a cell without a solution changed"
                continue
            for sol in sols: assert sol.strip() not in b.source
            assert _marker_lines(b.source, SOLUTION_BEGIN) == 0 and 'NotImplementedError' in b.source
            assert b.outputs == [] and b.execution_count is None

def test_student_refuses_to_overwrite_sources():
    r = subprocess.run(labkit_cmd('student', REPO/'nbs', REPO/'nbs'), capture_output=True, text=True)
    assert r.returncode != 0 and 'must differ' in r.stderr
