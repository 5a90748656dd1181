"Fuzzing the request log reader and the monitor: arbitrary lines (bytes, JSON of any shape) never stop an update, and every bad line is counted once; a metrics page of any bytes is usable or has a reason"
import json, tempfile
from pathlib import Path
import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
from labkit.monitoring import BAD_RECORD_REASONS, APPLICANT_FEATURES, DriftMonitor, RequestLog, make_applicants
from labkit.monitoring_stack import SCRAPE_ERROR_REASONS, metrics_page_problem

REFERENCE = make_applicants(300, seed=0).assign(prediction=lambda d: (d.debt_ratio > 0.3).astype(int))
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=10)
good_record = st.fixed_dictionaries(
    {'inputs': st.fixed_dictionaries({'age': st.integers(18, 90) | st.none(), 'income': st.floats(0, 1e6) | st.none(),
                                      'debt_ratio': st.floats(0, 1), 'channel': st.sampled_from(['web', 'app', 'branch', 'fax'])}),
     'prediction': st.sampled_from([0, 1, [0], [1], {'label': 1}, [0.2, 0.8]]),
     'id': st.integers(0, 10**6), 'version': st.sampled_from(['v1', 'v2'])})
any_record = st.dictionaries(st.sampled_from(['inputs', 'prediction', 'id', 'label', 'version', 'timestamp', 'age', 'channel']) | st.text(max_size=6),
                             json_values, max_size=5)
any_inputs = st.fixed_dictionaries({'inputs': st.dictionaries(st.sampled_from(APPLICANT_FEATURES) | st.text(max_size=4), json_values, max_size=5)
                                              | st.lists(json_values, max_size=4) | json_values,
                                    'prediction': json_values})

def encode(v) -> bytes: return json.dumps(v, allow_nan=True).encode()

lines = st.lists(st.one_of(good_record.map(lambda r: ('good', encode(r))),
                           any_record.map(lambda r: ('object', encode(r))),
                           any_inputs.map(lambda r: ('object', encode(r))),
                           json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: ('not_object', encode(v))),
                           st.binary(max_size=30).map(lambda b: ('bytes', b.replace(b'\n', b'')))),
                 max_size=25)

def expected_kind(kind:str, raw:bytes) -> str:
    "What the reader must make of a line written as `kind`"
    if kind != 'bytes': return kind
    if not raw.strip(): return 'blank'
    try: value = json.loads(raw)
    except (ValueError, RecursionError): return 'unreadable'
    return 'object' if isinstance(value, dict) else 'not_object'

@FUZZ
@given(lines, st.booleans())
def test_monitor_never_dies_and_counts_every_bad_line(written, torn_tail):
    with tempfile.TemporaryDirectory() as d:
        log = RequestLog(d, fsync=False)
        data = b''.join(raw + b'\n' for _, raw in written) + (b'{"inputs": {"age"' if torn_tail else b'')
        (Path(d)/'segment-00000001.jsonl').write_bytes(data)
        mon = DriftMonitor(REFERENCE, window=1000, min_records=5)
        assert mon.try_update(log) and mon.try_update(log)       # twice: nothing is counted twice
        kinds = [expected_kind(k, raw) for k, raw in written]
        bad = {dict(k)['reason']: v for k, v in mon.metric_values('labkit_monitor_bad_records_total').items()}
        window = mon.metric_values('labkit_window_records')[()]
        assert mon.metric_values('labkit_monitor_update_errors_total') == {(): 0.0}
        assert set(bad) == set(BAD_RECORD_REASONS)
        assert bad['unreadable'] == kinds.count('unreadable') and bad['not_object'] == kinds.count('not_object')
        schema_bad = bad['bad_inputs'] + bad['bad_prediction'] + bad['bad_field']
        assert window + schema_bad == kinds.count('object') + kinds.count('good')   # every record is in the window or counted
        assert window >= kinds.count('good')                                      # and no good record is refused
        # the reader agrees: every non-blank complete line is a record or skipped, and a torn tail is skipped
        assert len(log.records()) + log.skipped == len(kinds) - kinds.count('blank') + torn_tail

@FUZZ
@given(st.lists(st.binary(max_size=40), max_size=12))
def test_appends_after_garbage_stay_readable(garbage):
    "Whatever bytes precede them (a torn line, another program's output), records appended later read back whole"
    with tempfile.TemporaryDirectory() as d:
        (Path(d)/'segment-00000001.jsonl').write_bytes(b'\n'.join(garbage))
        log = RequestLog(d, fsync=False)
        for i in range(3): log.append({'i': i, 'x': np.float32(0.5)})
        assert [r for r in log.records() if set(r) == {'i', 'x'}][-3:] == [{'i': i, 'x': 0.5} for i in range(3)]


exposition_lines = st.lists(st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b'\n', b'')),
    st.from_regex(rb'\A# (TYPE|HELP) [a-z_]{1,6} [a-z ]{0,10}\Z'),
    st.from_regex(rb'\A[a-z_]{1,6}(\{[a-z]{1,3}="[^"\n\\]{0,5}"\})? ([-+0-9.eE]{1,8}|NaN|\+Inf|-Inf)\Z')), max_size=15)

@FUZZ
@given(exposition_lines, st.sampled_from(['', 'text/plain; version=0.0.4', 'text/html', 'application/json']))
def test_a_metrics_page_of_any_lines_parses_or_has_a_reason(lines, content_type):
    "Exposition lines, well formed or not, mixed with raw bytes: never an exception, always None or a known reason"
    assert metrics_page_problem(b'\n'.join(lines), content_type) in (None, *SCRAPE_ERROR_REASONS)
