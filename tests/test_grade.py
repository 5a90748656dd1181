"`labkit grade`: a correct, a wrong, an empty, a corrupt and hostile submissions graded in one run, none harming the others"
import csv, json, subprocess, time
import nbformat, pytest
from conftest import labkit_cmd, REPO
from labkit.instructor import student_copies, sandbox_description

LAB = '00_core.ipynb'       # the lightest lab: its checks import only labkit.core
STUB = 'Your turn: write this part'

ANSWERS = {
    'correct': 'def fingerprint(data: bytes) -> str:\n    return hashlib.sha256(data).hexdigest()',
    'wrong':   'def fingerprint(data: bytes) -> str:\n    return hashlib.sha256(data).digest()',
    'loops':   'def fingerprint(data: bytes) -> str:\n    while True: pass',
    'shell':   'import os\ndef fingerprint(data: bytes) -> str:\n    getattr(os, "sys" + "tem")("touch /tmp/owned")',
    'deletes': 'from pathlib import Path\ndef fingerprint(data: bytes) -> str:\n    Path("../../submissions/ada/00_core.ipynb").unlink()',
    'network': 'import urllib.request\ndef fingerprint(data: bytes) -> str:\n    return urllib.request.urlopen("http://1.1.1.1", timeout=3).read()',
    'crashes': 'import os, signal\nos.kill(os.getpid(), signal.SIGKILL)',
    'snoops':  ('import glob\nSEEN = glob.glob("{subs}/**/*.ipynb", recursive=True) + glob.glob("{nbs}/*.ipynb")\n'
                'def fingerprint(data: bytes) -> str:\n    assert not SEEN, SEEN\n    return hashlib.sha256(data).hexdigest()'),
}
LOG_CAPACITY = ('def log_capacity(segment_bytes, keep_segments, record_bytes):\n'
                '    n = segment_bytes // record_bytes\n    return (keep_segments - 1) * n + 1, keep_segments * n')

@pytest.fixture(scope='module')
def graded(tmp_path_factory):
    "Grade one folder of submissions; (rows by student, gradebook rows, OUT, SUBMISSIONS, seconds, stdout)"
    tmp = tmp_path_factory.mktemp('grade')
    subs, out = tmp/'submissions', tmp/'grades'
    copy = student_copies(REPO/'nbs')[LAB][0]
    for student, answer in {**ANSWERS, 'empty': None}.items():
        nb = nbformat.from_dict(json.loads(json.dumps(copy)))
        if answer:
            cell = next(c for c in nb.cells if STUB in c.source and 'def fingerprint' in c.source)
            cell.source = answer.format(subs=subs, nbs=REPO/'nbs')
        if student == 'correct':   # the lab's second exercise too: full marks
            cell = next(c for c in nb.cells if STUB in c.source and 'def log_capacity' in c.source)
            cell.source = LOG_CAPACITY
        (subs/student).mkdir(parents=True)
        nbformat.write(nb, subs/student/LAB)
    (subs/'corrupt').mkdir()
    (subs/'corrupt'/LAB).write_text('{"cells": [')
    (subs/'renamed.ipynb').write_text(json.dumps(copy))   # no metadata.labkit.source, no lab of that name... it has one
    before = {p: p.read_bytes() for p in subs.rglob('*') if p.is_file()}
    start = time.monotonic()
    r = subprocess.run(labkit_cmd('grade', subs, out, '--timeout', 25), capture_output=True, text=True, timeout=900)
    took = time.monotonic() - start
    assert r.returncode == 0, r.stderr
    book = list(csv.DictReader((out/'gradebook.csv').open()))
    print(f"\n{len(book)} submissions in {took:.0f} s ({took / len(book):.1f} s each); {sandbox_description()}")
    after = {p: p.read_bytes() for p in subs.rglob('*') if p.is_file()}
    return {row['student']: row for row in book}, out, before == after, r.stdout

def test_correct_scores_full_and_wrong_gets_the_hint(graded):
    rows, out, *_ = graded
    assert (rows['correct']['score'], rows['correct']['max']) == ('2', '2')
    assert rows['wrong']['max'] == '2'   # both exercises count, the unanswered one as 0
    assert rows['wrong']['score'] == '0'
    hint = (out/'feedback'/'wrong--00_core.md').read_text()
    assert 'hexdigest()' in hint and '❌' in hint
    assert '✅' in (out/'feedback'/'correct--00_core.md').read_text()

def test_empty_and_corrupt_get_zero_with_the_reason(graded):
    rows, out, *_ = graded
    assert rows['empty']['score'] == '0'
    assert 'not written yet' in (out/'feedback'/'empty--00_core.md').read_text()
    assert rows['corrupt']['score'] == '0' and 'not JSON' in rows['corrupt']['reason']

def test_hostile_submissions_get_zero_and_harm_nothing(graded):
    rows, out, unchanged, stdout = graded
    assert rows['loops']['score'] == '0' and ('time' in rows['loops']['reason'].lower()), rows['loops']
    assert rows['shell']['score'] == '0' and 'getattr' in rows['shell']['reason']
    assert rows['deletes']['score'] == '0' and 'unlink' in rows['deletes']['reason']
    assert rows['network']['score'] == '0'
    assert rows['crashes']['score'] == '0' and rows['crashes']['reason']
    assert unchanged, "a submission changed the submissions folder"
    assert not __import__('os').path.exists('/tmp/owned')

def test_submission_cannot_see_the_others_when_namespaces_work(graded):
    rows, *_ = graded
    if not sandbox_description().startswith('no network'): pytest.skip(f'this machine gives no namespaces: {sandbox_description()}')
    assert rows['snoops']['score'] == '1', rows['snoops']
    assert 'PermissionError' in (rows['network']['reason'] + open(graded[1]/'feedback'/'network--00_core.md').read()) or rows['network']['score'] == '0'

def test_a_file_named_as_its_lab_needs_no_folder(graded):
    rows, *_ = graded
    assert rows['renamed']['notebook'] == '' and 'no lab of the course is named renamed.ipynb' in rows['renamed']['reason']

def test_out_inside_submissions_is_refused(tmp_path):
    (tmp_path/'subs').mkdir()
    r = subprocess.run(labkit_cmd('grade', tmp_path/'subs', tmp_path/'subs'/'grades'), capture_output=True, text=True)
    assert r.returncode == 1 and 'never writes into its input' in r.stderr and 'Traceback' not in r.stderr
    assert not (tmp_path/'subs'/'grades').exists()
