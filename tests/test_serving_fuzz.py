"Fuzzing the salary service: well over 1,000 generated bad requests, zero 5xx, and the field at fault named"
import html, io, json, math, re
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from labkit.serving import SALARY_FEATURES, MAX_BATCH, MAX_BODY, create_app

APP = create_app(admin_token='fuzz-token')
CLIENT = APP.test_client()
SPEC = CLIENT.get('/openapi.json').get_json()
RECORD = SPEC['components']['schemas']['Record']          # the strategies below are built from the OpenAPI description
PROPS = RECORD['properties']
FUZZ = settings(max_examples=1100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])

# ---- strategies -------------------------------------------------------------------------------------------------
def in_range(name):
    p = PROPS[name]
    return st.floats(p['minimum'], p['maximum'], allow_nan=False) | st.integers(int(math.ceil(p['minimum'])), int(p['maximum']))

valid_record = st.fixed_dictionaries({f: in_range(f) for f in RECORD['required']})
ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)

@st.composite
def out_of_range(draw, name):
    p = PROPS[name]
    above = draw(st.booleans())
    if draw(st.booleans()):
        v = draw(st.floats(min_value=p['maximum'], exclude_min=True, allow_infinity=False) if above
                 else st.floats(max_value=p['minimum'], exclude_max=True, allow_infinity=False))
    else:
        v = draw(st.integers(min_value=int(p['maximum']) + 1) if above else st.integers(max_value=int(p['minimum']) - 1))
    return v

@st.composite
def broken_record(draw):
    "A valid record with one field broken; returns (record, the field at fault)"
    rec = draw(valid_record)
    field = draw(st.sampled_from(list(SALARY_FEATURES)))
    how = draw(st.sampled_from(['drop', 'extra', 'type', 'nonfinite', 'range']))
    if how == 'drop': del rec[field]
    elif how == 'extra':
        field = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in SALARY_FEATURES))
        rec[field] = draw(json_values)
    elif how == 'type': rec[field] = draw(st.text(max_size=10) | st.booleans() | st.none() | st.lists(st.integers(), max_size=3) | st.just({}))
    elif how == 'nonfinite': rec[field] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    else: rec[field] = draw(out_of_range(field))
    return rec, field[:40]

@st.composite
def bad_single(draw):
    rec, field = draw(broken_record())
    return dict(kind='bad record', kw=dict(data=json.dumps(rec), content_type='application/json'), status=422, field=field)

@st.composite
def bad_batch(draw):
    good = draw(st.lists(valid_record, min_size=0, max_size=5))
    rec, field = draw(broken_record())
    i = draw(st.integers(0, len(good)))
    batch = good[:i] + [rec] + good[i:]
    return dict(kind='bad batch', kw=dict(data=json.dumps(batch), content_type='application/json'), status=422, field=f'[{i}].{field}')

@st.composite
def oversized_batch(draw):
    n = draw(st.integers(MAX_BATCH + 1, MAX_BATCH + 300))
    body = json.dumps([{'experience': 1, 'test_score': 2, 'interview_score': 3}] * n)
    return dict(kind='batch too large', kw=dict(data=body, content_type='application/json'),
                status=413 if len(body) > MAX_BODY else 422, field='(body)')

@st.composite
def any_json(draw):
    "Arbitrary JSON (NaN and Infinity tokens included): never a 5xx"
    return dict(kind='any JSON', kw=dict(data=json.dumps(draw(json_values)), content_type='application/json'), status=None, field=None)

@st.composite
def raw_bytes(draw):
    return dict(kind='raw bytes', kw=dict(data=draw(st.binary(max_size=300)), content_type='application/json'), status=None, field=None)

@st.composite
def wrong_content_type(draw):
    ctype = draw(st.sampled_from(['text/plain', 'application/xml', 'multipart/form-data; boundary=x', 'application/octet-stream',
                                  'image/png', 'application/jsonx', 'text/json', '']) | ascii_text.filter(
                                  lambda t: t.split(';')[0].strip().lower() not in ('application/json', 'application/x-www-form-urlencoded')))
    return dict(kind='content type', kw=dict(data=draw(st.binary(max_size=100)), content_type=ctype), status=415, field='Content-Type')

@st.composite
def oversized_body(draw):
    size = draw(st.integers(MAX_BODY + 1, MAX_BODY * 3))
    ctype = draw(st.sampled_from(['application/json', 'application/x-www-form-urlencoded']))
    return dict(kind='body too large', size=size, kw=dict(content_type=ctype), status=413, field='(body)')   # body made in `send`

@st.composite
def form_post(draw):
    "Form fields with arbitrary text: a page with the prediction or the errors, never a 5xx"
    fields = draw(st.dictionaries(st.sampled_from(list(SALARY_FEATURES) + ['user_id', 'x']), st.text(max_size=15), max_size=5))
    return dict(kind='form', kw=dict(data=fields), status=None, field=None)

@st.composite
def bad_user_id(draw):
    uid = draw(st.text(st.characters(min_codepoint=32, max_codepoint=255), min_size=1, max_size=40).filter(
        lambda u: not all(c.isascii() and (c.isalnum() or c in '_.@:+-') for c in u)) | st.just('u' * 129))
    rec = draw(valid_record)
    return dict(kind='user id', kw=dict(data=json.dumps(rec), content_type='application/json', headers={'X-User-Id': uid}),
                status=400, field='X-User-Id')

@st.composite
def stray_request(draw):
    "Random method and path: 404 or 405, never a 5xx"
    path = '/' + draw(st.text(st.sampled_from('abcdehlimnoprstuvy_-./%0123456789'), max_size=20))
    method = draw(st.sampled_from(['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD']))
    return dict(kind='stray', method=method, path=path, kw={}, status=None, field=None)

@st.composite
def admin_request(draw):
    "Policy changes: bad tokens get 401, bad policies 422 with the field"
    token = draw(st.sampled_from(['fuzz-token', 'wrong', '']))
    body = draw(st.fixed_dictionaries({}, optional={'strategy': st.sampled_from(['blue_green', 'canary', 'ab', 'shadow', 'rolling']) | json_scalars,
                                                    'live': st.sampled_from(['v1', 'v2', 'v9']) | json_scalars,
                                                    'candidate': st.sampled_from(['v1', 'v2', 'v7', None]) | json_scalars,
                                                    'percent': st.floats() | st.integers() | json_scalars}) | json_values)
    headers = {'Authorization': f'Bearer {token}'} if token else {}
    return dict(kind='admin', method='PUT', path='/admin/policy', kw=dict(data=json.dumps(body), content_type='application/json', headers=headers),
                status=None if token == 'fuzz-token' else 401, field=None if token == 'fuzz-token' else 'Authorization')

BAD_REQUESTS = st.one_of(bad_single(), bad_batch(), oversized_batch(), any_json(), raw_bytes(), wrong_content_type(),
                         oversized_body(), form_post(), bad_user_id(), stray_request(), admin_request())

# ---- the test ---------------------------------------------------------------------------------------------------
def send(req):
    kw = dict(req['kw'], data=b'[' + b' ' * (req['size'] - 2) + b']') if 'size' in req else req['kw']
    return CLIENT.open(req.get('path', '/predict'), method=req.get('method', 'POST'), **kw)

def fields_named(r) -> list:
    "The fields a 4xx answer names: JSON problems, or the summary line of the HTML form page"
    if r.mimetype == 'application/json': return [p['field'] for p in r.get_json()['problems']]
    m = re.search(r'<p class="error" id="errors">\d+ field\(s\) to correct: (.*)\.</p>', r.get_data(as_text=True), re.S)
    return html.unescape(m.group(1)).split(', ') if m else []

def check(req, r):
    assert r.status_code < 500, f"{req['kind']}: {r.status_code} {r.get_data(as_text=True)[:300]}"
    if req['status'] is not None:
        assert r.status_code == req['status'], f"{req['kind']}: expected {req['status']}, got {r.status_code}: {r.get_data(as_text=True)[:300]}"
    if req['field'] is not None:
        fields = fields_named(r)
        assert req['field'] in fields, f"{req['kind']}: the field at fault {req['field']!r} is not named in {fields}"
    if r.status_code >= 400 and r.mimetype == 'application/json' and req.get('method') != 'HEAD':
        body = r.get_json()
        assert body['problems'] and all(p['field'] and p['message'] for p in body['problems'])

def test_fuzz_over_1000_bad_requests_never_5xx():
    seen = []
    @FUZZ
    @given(BAD_REQUESTS)
    def run(req):
        r = send(req); seen.append((req['kind'], r.status_code)); check(req, r)
    run()
    try:
        assert len(seen) >= 1000, f"only {len(seen)} requests were generated"
        assert not [s for _, s in seen if s >= 500]
        kinds = {k for k, _ in seen}
        assert len(kinds) == 11, kinds
    finally:
        APP.extensions['labkit_serving'].router.set_policy({'strategy': 'blue_green', 'live': 'v2'})

@pytest.mark.parametrize('what,body,ctype,status', [
    ('deep nesting', b'[' * 30000 + b']' * 30000, 'application/json', 400),
    ('deep object nesting', b'{"a":' * 10000 + b'1' + b'}' * 10000, 'application/json', 400),
    ('5000-digit integer', b'{"experience": 1' + b'0' * 5000 + b', "test_score": 1, "interview_score": 1}', 'application/json', 400),
    ('huge exponent', b'{"experience": 1e999, "test_score": 1, "interview_score": 1}', 'application/json', 422),
    ('invalid UTF-8', b'{"experience": "\xff\xfe"}', 'application/json', 400),
    ('UTF-16 JSON', '{"experience": 1, "test_score": 2, "interview_score": 3}'.encode('utf-16'), 'application/json', 200),
    ('charset parameter', b'{"experience": 1, "test_score": 2, "interview_score": 3}', 'application/json; charset=utf-8', 200),
    ('only whitespace', b'  \n ', 'application/json', 400),
    ('JSON null', b'null', 'application/json', 422),
    ('form without fields', b'', 'application/x-www-form-urlencoded', 422),
    ('form with bad percent-encoding', b'experience=%zz&test_score=%ff&interview_score=1', 'application/x-www-form-urlencoded', 422),
    ('no content type', b'{}', None, 415),
])
def test_edge_cases_are_4xx(what, body, ctype, status):
    r = CLIENT.post('/predict', data=body, content_type=ctype) if ctype else CLIENT.post('/predict', data=body)
    assert r.status_code == status, (what, r.status_code, r.get_data(as_text=True)[:200])

def test_chunked_body_over_the_limit_is_413():
    "No Content-Length (a chunked upload): the limit still holds while the body is read"
    r = CLIENT.post('/predict', input_stream=io.BytesIO(b'[' + b' ' * (MAX_BODY + 100) + b']'), content_type='application/json',
                    headers={'Transfer-Encoding': 'chunked'}, environ_overrides={'wsgi.input_terminated': True})
    assert r.status_code == 413, r.status_code

def test_openapi_describes_every_route():
    "The OpenAPI paths are exactly the app's routes, with their methods"
    routes = {r.rule: r.methods - {'HEAD', 'OPTIONS'} for r in APP.url_map.iter_rules() if r.endpoint != 'static'}
    routes.pop('/')                                   # the HTML form is for people, not part of the API
    assert {p: {m.upper() for m in ops} for p, ops in SPEC['paths'].items()} == routes
    assert SPEC['openapi'].startswith('3.')

# ---- chunked uploads through the Flask test client (de-chunked as werkzeug's development server does) ---------------
def chunked_stream(raw:bytes):
    from werkzeug.serving import DechunkedInput
    return DechunkedInput(io.BytesIO(raw))

def chunk(*parts:bytes) -> bytes: return b''.join(b'%x\r\n%s\r\n' % (len(p), p) for p in parts) + b'0\r\n\r\n'

@pytest.mark.parametrize('what,raw,status', [
    ('valid, two chunks', chunk(b'{"experience": 5, "test_score"', b': 8, "interview_score": 7}'), 200),
    ('chunk size zz', b'zz\r\n{"experience": 5}\r\n0\r\n\r\n', 400),
    ('over the limit', chunk(*[b' ' * 8192] * 9), 413),
])
def test_chunked_bodies_in_process(what, raw, status):
    r = CLIENT.post('/predict', content_type='application/json', headers={'Transfer-Encoding': 'chunked'},
                    environ_overrides={'wsgi.input': chunked_stream(raw), 'wsgi.input_terminated': True})
    assert r.status_code == status, (what, r.status_code, r.get_data(as_text=True)[:300])
    if status == 200: assert r.get_json()['version'] == 'v2'
    if status == 400: assert r.get_json()['problems'][0]['field'] == 'Transfer-Encoding'

# ---- metric labels stay bounded ---------------------------------------------------------------------------------
def test_random_methods_and_paths_do_not_grow_the_metrics():
    app = create_app(); client = app.test_client()
    rng = __import__('random').Random(0)
    letters = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'
    for i in range(600):
        method = ''.join(rng.choices(letters, k=rng.randint(3, 10)))
        path = '/' + ''.join(rng.choices(letters + '0123456789/', k=rng.randint(1, 20)))
        assert client.open(path, method=method).status_code < 500
        assert client.open(f'/predict{i}' if i % 2 else '/predict', method=rng.choice(['GET', 'POST', 'BREW'])).status_code < 500
    text = client.get('/metrics').get_data(as_text=True)
    series = [l for l in text.splitlines() if l.startswith('labkit_http_requests_total{')]
    routes = {r.rule for r in app.url_map.iter_rules()} | {'unmatched'}
    assert 0 < len(series) <= 30, '\n'.join(series)
    for line in series:
        labels = dict(kv.split('=', 1) for kv in line[line.index('{') + 1:line.index('}')].split(','))
        assert labels['route'].strip('"') in routes and labels['method'].strip('"') in {'GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE', 'CONNECT', 'other'}, line
    buckets = [l for l in text.splitlines() if l.startswith('labkit_request_seconds_count{')]
    assert len(buckets) <= len(routes), buckets

# ---- the HTML form, fuzzed on its own ---------------------------------------------------------------------------
FORM_FIELDS = st.sampled_from(list(SALARY_FEATURES) + ['user_id']) | st.text(max_size=12)
FORM_VALUES = st.text(max_size=40) | st.sampled_from(['5', '1e3', '-0', 'nan', 'inf', '1e999', '0x10', '٣', ' 7 ', '<script>x</script>'])

@settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(FORM_FIELDS, FORM_VALUES, max_size=6))
def test_fuzz_form_never_5xx(fields):
    "Any form a browser (or a script) can post: the page again, with the prediction or each error; never a 5xx"
    r = CLIENT.post('/predict', data=fields, content_type='application/x-www-form-urlencoded')
    assert r.status_code in (200, 400, 413, 422), (fields, r.status_code, r.get_data(as_text=True)[:300])
    assert r.mimetype == 'text/html'
    page = r.get_data(as_text=True)
    assert '<script>x</script>' not in page                       # what was typed comes back escaped
    if r.status_code == 200: assert 'id="salary"' in page
    else: assert fields_named(r), page[-500:]                     # the errors name their fields
