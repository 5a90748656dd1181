"Student copies: no solution survives; self-checks fail helpfully on the stubs and pass on the solutions"
import ast, os, re, subprocess
from pathlib import Path
import nbformat, pytest
from conftest import labkit_cmd, REPO
from labkit.core import SOLUTION_BEGIN, SOLUTION_END, CheckResult
from labkit.instructor import strip_solutions, solution_spans, student_notebook, cell_directives, write_student_copies

NOTEBOOKS = sorted((REPO/'nbs').glob('*.ipynb'))

def _solutions(source:str) -> list:
    "The text between each pair of marker lines"
    return re.findall(rf"^[ \t]*{re.escape(SOLUTION_BEGIN)}[^\n]*\n(.*?)^[ \t]*{re.escape(SOLUTION_END)}", source, re.M | re.S)

def _exercises(nb) -> list:
    "(setup code, exercise cell, check cell) for each exercise: setup is the notebook's import cells and its module"
    code = [c for c in nb.cells if c.cell_type == 'code']
    module = next((m.group(1) for c in code if (m := re.search(r'^#\|\s*default_exp\s+(\S+)', c.source, re.M))), None)
    def is_import(src):   # every statement an import (continued lines and parentheses included)
        try: body = ast.parse(src).body
        except SyntaxError: return False
        return body and all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in body)
    setup = '\n'.join([c.source for c in code if is_import(c.source)] + ([f'from labkit.{module} import *'] if module else []))
    return [(setup, c.source, code[i + 1].source) for i, c in enumerate(code) if solution_spans(c.source)[0]]

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
        assert dst.nbformat_minor == 5 and dst.metadata.kernelspec.name == 'labkit', p.name
        kept = {c.source for c in dst.cells}
        for a in src.cells:
            sols = _solutions(a.source) if a.cell_type == 'code' else []
            for sol in sols: assert sol.strip() not in dst_text(dst), f"{p.name}: a solution survives"
            if a.cell_type == 'code' and 'hidden_test' in cell_directives(a.source): assert a.source not in kept, p.name
        for b in dst.cells:
            if b.cell_type == 'code': assert solution_spans(b.source) == ([], []), p.name
        stubs = [b for b in dst.cells if f'Your turn: write this part ({p.name})' in b.source]
        assert len(stubs) == len(_exercises(src)), p.name
        for b in stubs: assert b.outputs == [] and b.execution_count is None

def dst_text(nb) -> str:
    return '\n'.join(c.source for c in nb.cells)

def test_every_cell_reading_an_exercise_is_cleared_and_checker_tests_are_dropped(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in [
        'import numpy as np',
        f'def mine(x):\n    {SOLUTION_BEGIN}\n    return 2 * x\n    {SOLUTION_END}',
        'check_mine(mine)',
        'y = mine(3)',
        'print(y + 1)',
        'print("independent")',
        '#| hide\ncheck_mine(lambda x: x)',
        '#| hidden_test\nassert mine(4) == 8']])
    for c in nb.cells: c.outputs = [nbformat.v4.new_output('stream', text='✅ correct')]
    copy, n = student_notebook(nb, 'lab.ipynb')
    by = {c.source.split('\n')[0]: c for c in copy.cells}
    assert n == 1 and len(copy.cells) == 6
    for first in ('def mine(x):', 'check_mine(mine)', 'y = mine(3)', 'print(y + 1)'): assert by[first].outputs == [], first
    assert by['print("independent")'].outputs and by['import numpy as np'].outputs
    assert 'raises-exception' in by['y = mine(3)'].metadata.tags and 'tags' not in by['check_mine(mine)'].metadata

def test_directive_only_cells_are_collapsed_for_students():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in ['#| default_exp lab', '#| export\nx = 1']])
    copy, _ = student_notebook(nb, 'lab.ipynb')
    assert copy.cells[0].metadata.jupyter.source_hidden and 'jupyter' not in copy.cells[1].metadata

@pytest.mark.parametrize('path', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_normalising_a_copy_gives_nbformat_4_5_with_ids_that_nbdev_clean_keeps(tmp_path, path):
    from labkit.instructor import normalise_notebook
    nb = normalise_notebook(nbformat.read(path, as_version=4), path.name)
    nbformat.validate(nb)
    copy = tmp_path/path.name
    nbformat.write(nb, copy)
    r = subprocess.run([str(Path(os.sys.executable).parent/'nbdev_clean'), '--fname', str(copy)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    clean = nbformat.read(copy, as_version=4)
    assert clean.nbformat_minor == 5 and [c.id for c in clean.cells] == [c.id for c in nb.cells]
    assert clean.metadata.kernelspec.name == 'labkit'
    assert path.read_bytes() != copy.read_bytes() or nb.nbformat_minor == 5   # the source itself is left alone

def test_student_refuses_to_overwrite_sources():
    r = subprocess.run(labkit_cmd('student', REPO/'nbs', REPO/'nbs'), capture_output=True, text=True)
    assert r.returncode != 0 and 'must differ' in r.stderr

# --- Malformed markers, broken notebooks, and what is left on disk ---------------------------------------------

from hypothesis import event, given, settings, strategies as st
from labkit.instructor import student_cli

SECRET = 'answer = 42  # the solution'

def _write_nb(folder, name, *cells):
    "Write notebook `name` in `folder`: each cell a str (a code cell) or a ('markdown'|'raw', source) pair"
    nb = nbformat.v4.new_notebook()
    for c in cells:
        kind, src = ('code', c) if isinstance(c, str) else c
        nb.cells.append({'code': nbformat.v4.new_code_cell, 'markdown': nbformat.v4.new_markdown_cell,
                         'raw': nbformat.v4.new_raw_cell}[kind](src))
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder/name)
    return folder/name

def _snapshot(folder) -> dict:
    "Every file under `folder` with its bytes ({} when it does not exist)"
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()} if folder.exists() else {}

def _student(src, out, capsys):
    "Run `labkit student SRC OUT` in-process: (exit code, stdout, stderr)"
    rc = student_cli(str(src), str(out))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err

def _cell(*lines): return '\n'.join(lines)
GOOD = _cell('def f():', f'    {SOLUTION_BEGIN}', f'    {SECRET}', f'    {SOLUTION_END}')

MALFORMED = {   # a cell's source, and the line the error must name
    'nested':       (_cell(SOLUTION_BEGIN, SOLUTION_BEGIN, SECRET, SOLUTION_END, SECRET, SOLUTION_END), 'line 2'),
    'reversed':     (_cell('def f():', f'    {SOLUTION_END}', f'    {SECRET}', f'    {SOLUTION_BEGIN}'), 'line 2'),
    'missing-end':  (_cell('def f():', f'    {SOLUTION_BEGIN}', f'    {SECRET}'), 'line 2'),
    'stray-end':    (_cell(SECRET, SOLUTION_END), 'line 2'),
    'no-space':     (_cell('###BEGIN SOLUTION', SECRET, SOLUTION_END), 'line 1'),
    'lower-case':   (_cell('### begin solution', SECRET, '### end solution'), 'line 1'),
    'double-space': (_cell(SOLUTION_BEGIN, SECRET, '###  END SOLUTION'), 'line 3'),
    'two-hashes':   (_cell('## BEGIN SOLUTION', SECRET, '## END SOLUTION'), 'line 1'),
    'after-code':   (_cell(SOLUTION_BEGIN, SECRET + '  ' + SOLUTION_END), 'line 2'),
    'extra-text':   (_cell(SOLUTION_BEGIN + ' (part 1)', SECRET, SOLUTION_END), 'line 1'),
}

@pytest.mark.parametrize('case', MALFORMED)
def test_malformed_markers_are_refused_and_named(tmp_path, capsys, case):
    source, line = MALFORMED[case]
    _write_nb(tmp_path/'nbs', 'lab.ipynb', ('markdown', '# A lab'), source)
    rc, out, err = _student(tmp_path/'nbs', tmp_path/'student', capsys)
    assert rc != 0, out
    assert f'lab.ipynb: cell 1, {line}:' in err, err
    assert not (tmp_path/'student').exists()

@pytest.mark.parametrize('kind', ['markdown', 'raw'])
def test_markers_in_a_markdown_or_raw_cell_are_refused(tmp_path, capsys, kind):
    _write_nb(tmp_path/'nbs', 'lab.ipynb', (kind, _cell('```python', SOLUTION_BEGIN, SECRET, SOLUTION_END, '```')))
    rc, out, err = _student(tmp_path/'nbs', tmp_path/'student', capsys)
    assert rc != 0 and 'lab.ipynb: cell 0, line 2:' in err and f'in a {kind} cell' in err, err
    assert not (tmp_path/'student').exists()

def test_prose_that_mentions_the_markers_is_fine(tmp_path, capsys):
    _write_nb(tmp_path/'nbs', 'lab.ipynb', ('markdown', f'Solutions lie between `{SOLUTION_BEGIN}` and `{SOLUTION_END}`.'), GOOD)
    rc, out, err = _student(tmp_path/'nbs', tmp_path/'student', capsys)
    assert rc == 0, err
    assert 'lab.ipynb: 1 exercise(s) stubbed' in out
    assert SECRET not in (tmp_path/'student'/'lab.ipynb').read_text()

def test_every_problem_of_every_notebook_is_listed(tmp_path, capsys):
    src = tmp_path/'nbs'
    _write_nb(src, 'a.ipynb', GOOD)
    _write_nb(src, 'b.ipynb', MALFORMED['nested'][0], MALFORMED['reversed'][0])
    (src/'c.ipynb').write_text('{"cells": [')
    _write_nb(src, 'd.ipynb', MALFORMED['missing-end'][0])
    rc, out, err = _student(src, tmp_path/'student', capsys)
    assert rc != 0
    for where in ('b.ipynb: cell 0, line 2:', 'b.ipynb: cell 1, line 2:', 'c.ipynb:', 'd.ipynb: cell 0, line 2:'):
        assert where in err, (where, err)
    assert 'a.ipynb' not in err and not (tmp_path/'student').exists()

def test_invalid_json_is_named_not_a_traceback(tmp_path):
    src = tmp_path/'nbs'
    _write_nb(src, 'a.ipynb', GOOD)
    (src/'b.ipynb').write_text('{"cells": [}')
    r = subprocess.run(labkit_cmd('student', src, tmp_path/'student'), capture_output=True, text=True)
    assert r.returncode != 0
    assert 'b.ipynb' in r.stderr and 'JSON' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path/'student').exists(), "copies were written before the error"

@pytest.mark.parametrize('text', ['{"cells": [{"cell_type": "code", "source": 3}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}',
                                  '[]', '{"nbformat": 4}', '{}', '\udcff'])
def test_schema_invalid_notebook_is_named(tmp_path, capsys, text):
    src = tmp_path/'nbs'
    _write_nb(src, 'a.ipynb', GOOD)
    (src/'b.ipynb').write_bytes(text.encode('utf-8', 'surrogateescape'))
    rc, out, err = _student(src, tmp_path/'student', capsys)
    assert rc != 0 and 'b.ipynb: ' in err and 'not a valid notebook' in err, err
    assert not (tmp_path/'student').exists()

def test_an_earlier_output_stays_whole_when_a_run_fails(tmp_path, capsys):
    src, out = tmp_path/'nbs', tmp_path/'student'
    _write_nb(src, 'a.ipynb', GOOD)
    _write_nb(src, 'b.ipynb', GOOD)
    assert _student(src, out, capsys)[0] == 0
    before = _snapshot(out)
    _write_nb(src, 'b.ipynb', MALFORMED['missing-end'][0])
    rc, _, err = _student(src, out, capsys)
    assert rc != 0 and 'b.ipynb' in err
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['nbs', 'student'], "a temporary folder was left behind"

def test_a_new_run_replaces_the_earlier_copies(tmp_path, capsys):
    src, out = tmp_path/'nbs', tmp_path/'student'
    _write_nb(src, 'a.ipynb', GOOD)
    _write_nb(src, 'gone.ipynb', GOOD)
    assert _student(src, out, capsys)[0] == 0
    (src/'gone.ipynb').unlink()
    assert _student(src, out, capsys)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ['a.ipynb']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['nbs', 'student']
    assert out.stat().st_mode & 0o777 == (tmp_path/'nbs').stat().st_mode & 0o777, "OUT_DIR is not made as any folder would be"

@pytest.mark.parametrize('where', ['inside', 'parent', 'foreign'])
def test_out_dir_that_would_lose_files_is_refused(tmp_path, capsys, where):
    src = tmp_path/'course'/'nbs'
    _write_nb(src, 'a.ipynb', GOOD)
    (tmp_path/'course'/'notes.txt').write_text('keep me')
    (tmp_path/'other').mkdir()
    (tmp_path/'other'/'notes.txt').write_text('keep me too')
    out = {'inside': src/'student', 'parent': tmp_path/'course', 'foreign': tmp_path/'other'}[where]
    before = _snapshot(tmp_path)
    rc, _, err = _student(src, out, capsys)
    assert rc != 0 and str(out) in err, err
    assert _snapshot(tmp_path) == before

def test_an_interrupted_write_leaves_the_earlier_copies_whole(tmp_path, capsys, monkeypatch):
    src, out = tmp_path/'nbs', tmp_path/'student'
    _write_nb(src, 'a.ipynb', GOOD)
    _write_nb(src, 'b.ipynb', GOOD)
    assert _student(src, out, capsys)[0] == 0
    before = _snapshot(out)
    _write_nb(src, 'a.ipynb', GOOD, 'new_cell = 1')
    _write_nb(src, 'b.ipynb', GOOD, 'new_cell = 2')
    written, write = [], nbformat.write
    def write_then_stop(nb, path, **kw):
        if written: raise KeyboardInterrupt('SIGTERM')
        written.append(path); write(nb, path, **kw)
    monkeypatch.setattr(nbformat, 'write', write_then_stop)
    with pytest.raises(KeyboardInterrupt): student_cli(str(src), str(out))
    assert written and _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['nbs', 'student'], "a temporary folder was left behind"

def test_a_swap_stopped_halfway_puts_the_earlier_copies_back(tmp_path, capsys, monkeypatch):
    src, out = tmp_path/'nbs', tmp_path/'student'
    _write_nb(src, 'a.ipynb', GOOD)
    assert _student(src, out, capsys)[0] == 0
    before = _snapshot(out)
    renames, rename = [], Path.rename
    def rename_then_stop(self, target):
        renames.append(target)
        if len(renames) == 2: raise KeyboardInterrupt('SIGTERM')   # the new copies' move into place
        return rename(self, target)
    monkeypatch.setattr(Path, 'rename', rename_then_stop)
    with pytest.raises(KeyboardInterrupt): student_cli(str(src), str(out))
    assert len(renames) >= 2 and _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['nbs', 'student'], "a temporary folder was left behind"

# Fuzz: random cells made of random marker lines. Either the copy holds no solution line (and every other line), or
# the run fails, names the problem, and writes nothing.
MARKER_LINES = [SOLUTION_BEGIN, SOLUTION_END, '  ' + SOLUTION_BEGIN, '\t' + SOLUTION_END, SOLUTION_BEGIN + '   ',
                '###BEGIN SOLUTION', '### begin solution', '### End Solution', '#### END SOLUTION', '###  BEGIN SOLUTION',
                '# END_SOLUTION', SOLUTION_BEGIN + ' x', 'y = 0  ' + SOLUTION_END]
SOLVED = st.tuples(st.sampled_from(['', '    ', '\t']), st.integers(0, 2)).map(lambda t: [t[0] + SOLUTION_BEGIN] + ['plain'] * t[1] + [t[0] + SOLUTION_END])
PIECE = st.one_of(st.just(['plain']), SOLVED, st.sampled_from(MARKER_LINES).map(lambda line: [line]))
CELL = st.tuples(st.sampled_from(['code', 'code', 'code', 'markdown']), st.lists(PIECE, max_size=4).map(lambda ps: sum(ps, [])))

def _is_begin(line): return re.search(r'begin', line, re.I) is not None
def _is_marker(line): return line in MARKER_LINES or line.strip() in (SOLUTION_BEGIN, SOLUTION_END)

def _numbered(cells):
    "Give every plain line a unique text, so that each can be looked for in the copy"
    n = iter(range(10**6))
    return [(kind, [f'line_{next(n)} = 1' if l == 'plain' else l for l in lines]) for kind, lines in cells]

def _well_formed(cells) -> bool:
    "The oracle: code cells only hold exact markers, alternating BEGIN, END; other cells hold none"
    for kind, lines in cells:
        marks = [l.strip() for l in lines if _is_marker(l)]
        if kind != 'code' and marks: return False
        if any(m not in (SOLUTION_BEGIN, SOLUTION_END) for m in marks): return False
        if marks != [SOLUTION_BEGIN, SOLUTION_END] * (len(marks) // 2): return False
    return True

def _solution_lines(lines) -> set:
    "Plain lines after a BEGIN-like marker and before the next marker-like line: what must never reach a student"
    inside, found = False, set()
    for l in lines:
        if _is_marker(l): inside = _is_begin(l)
        elif inside: found.add(l)
    return found

@settings(max_examples=60, deadline=None)
@given(st.lists(CELL, min_size=1, max_size=4))
def test_fuzz_markers_give_a_clean_copy_or_a_clear_error(tmp_path_factory, cells):
    tmp, cells = tmp_path_factory.mktemp('fuzz'), _numbered(cells)
    src, out = tmp/'nbs', tmp/'student'
    _write_nb(src, 'lab.ipynb', *[('\n'.join(ls) if kind == 'code' else (kind, '\n'.join(ls))) for kind, ls in cells])
    (out/'old.ipynb').parent.mkdir()
    (out/'old.ipynb').write_text('{}')
    source_before, out_before = _snapshot(src), _snapshot(out)
    from labkit.instructor import write_student_copies, StudentCopyError
    try: done = write_student_copies(src, out)
    except StudentCopyError as e:
        event('refused')
        assert not _well_formed(cells), e.problems
        assert e.problems and all(p.startswith('lab.ipynb: cell ') for p in e.problems), e.problems
        assert _snapshot(out) == out_before
    else:
        event('copied')
        assert _well_formed(cells), cells
        copy = (out/'lab.ipynb').read_text()
        secret = set().union(*[_solution_lines(ls) for _, ls in cells])
        assert not any(s in copy for s in secret)
        assert all(l in copy for _, ls in cells for l in ls if l.startswith('line_') and l not in secret)
        assert done == {'lab.ipynb': sum(l.strip() == SOLUTION_BEGIN for _, ls in cells for l in ls)}
        assert sorted(p.name for p in out.iterdir()) == ['lab.ipynb']
    assert _snapshot(src) == source_before
    assert sorted(p.name for p in tmp.iterdir()) == ['nbs', 'student']


# --- Every student copy executed, once, in fast mode ------------------------------------------------------------

import os
from concurrent.futures import ThreadPoolExecutor

def _execute(path):
    "Run a student copy in a fresh kernel, cwd its folder: (executed notebook, error or None)"
    import nbclient
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name='python3', resources={'metadata': {'path': str(path.parent)}})
    try: client.execute(); return nb, None
    except Exception as e: return nb, f"{type(e).__name__}: {str(e)[-1500:]}"

@pytest.fixture(scope='module')
def executed(tmp_path_factory):
    "{name: (executed student copy, error)}: every copy run once, two at a time (nbclient kernels, fast mode)"
    out = tmp_path_factory.mktemp('run')/'student'
    write_student_copies(REPO/'nbs', out)
    saved = {k: os.environ.get(k) for k in ('LABKIT_FAST', 'LABKIT_DATA')}
    os.environ.update(LABKIT_FAST='1', LABKIT_DATA=str(REPO/'data'))
    try:
        with ThreadPoolExecutor(2) as pool: runs = dict(zip([p.name for p in NOTEBOOKS], pool.map(_execute, [out/p.name for p in NOTEBOOKS])))
    finally:
        for k, v in saved.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    return runs

def _texts(cell) -> str:
    return '\n'.join(o.get('text', '') + str(o.get('data', {}).get('text/plain', '')) + f"{o.get('ename', '')} {o.get('evalue', '')}"
                     for o in cell.get('outputs', []))

@pytest.mark.timeout(3600)   # the first one waits for every copy to run (the fixture): minutes on two cores
@pytest.mark.course_run
@pytest.mark.parametrize('name', [p.name for p in NOTEBOOKS])
def test_student_copy_runs_to_the_end_and_earns_no_correct(executed, name):
    nb, error = executed[name]
    assert error is None, f"{name} stopped: {error}"
    code = [c for c in nb.cells if c.cell_type == 'code']
    assert all(c.execution_count is not None for c in code), f"{name}: not every cell ran"
    for c in code:
        text = _texts(c)
        assert '✅ correct' not in text, f"{name}: a self-check says correct on the stub: {c.source[:80]!r}"
        if any(o.get('output_type') == 'error' for o in c.outputs):
            assert 'raises-exception' in c.metadata.get('tags', []) and 'NotImplementedError' in text, (name, c.source[:80], text[-300:])
    stubs = [i for i, c in enumerate(code) if f'Your turn: write this part ({name})' in c.source]
    for i in stubs:
        check = next((c for c in code[i + 1:] if 'check_' in c.source), None)
        assert check is not None and 'not written yet' in _texts(check), f"{name}: the self-check after the stub does not say 'not written yet'"
