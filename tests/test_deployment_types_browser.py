"The detector page in a real browser: onnxruntime-web (WebAssembly) in Debian's headless Chromium against ONNX Runtime in Python"
import urllib.request
import numpy as np
import pytest
from PIL import Image
from labkit.core import ServiceUnavailable, find_program
from labkit.onnx_deploy import EdgeDetector, box_agreement, heldout_scenes
from labkit.deployment_types import (BrowserPage, ISOLATION_HEADERS, ORT_WEB, edge_model, fetch_web_assets, web_assets_ready)

pytestmark = pytest.mark.browser
pytest.importorskip('selenium.webdriver', reason='selenium is not installed (pip install "labkit[dev]")')
from selenium.webdriver.support.ui import WebDriverWait

@pytest.fixture(scope='module')
def assets():
    "The page's runtime files: fetched with npm at set-up time when absent; skipped where neither npm nor the files are here"
    if web_assets_ready(): return
    try: find_program('npm', '/usr/bin/npm', package='npm')
    except ServiceUnavailable as e: pytest.skip(f"{ORT_WEB} is not fetched and {e}")
    fetch_web_assets()

@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    pngs = []
    for p in heldout_scenes(tmp_path_factory.mktemp('scenes'), 6):
        Image.open(p).save(p.with_suffix('.png')); pngs.append(p.with_suffix('.png'))
    return pngs

def test_page_boxes_agree_with_onnxruntime_in_python_and_it_reports_latency(assets, scenes, browser):
    model = edge_model()
    with BrowserPage(model, scenes) as page:
        browser.get(page.url)
        WebDriverWait(browser, 180).until(lambda b: b.execute_script('return window.labkitResults || window.labkitError'),
                                          message='the page to detect objects in every scene within 180 s')
        error = browser.execute_script('return window.labkitError')
        assert not error, error
        got = browser.execute_script('return window.labkitResults')
        latency_text = browser.find_element('id', 'latency').text
    assert got['isolated'] is True, 'the page is not cross-origin isolated: the COOP/COEP headers did not reach it'
    detector = EdgeDetector(model, device='cpu')
    reference = [detector(p) for p in scenes]
    page_dets = [{'boxes': np.array([d['box'] for d in got['results'][p.name]], np.float32).reshape(-1, 4),
                  'classes': np.array([d['cls'] for d in got['results'][p.name]], int)} for p in scenes]
    agreement = box_agreement(reference, page_dets, iou_min=0.9)
    assert agreement['reference_boxes'] > 0 and agreement['agreement'] == 1.0, agreement
    assert len(got['latency_ms']) == len(scenes) and all(t > 0 for t in got['latency_ms'])
    assert float(latency_text) == pytest.approx(got['median_ms'], abs=0.06)

def test_server_sends_isolation_headers_and_only_the_pages_files(assets, scenes):
    with BrowserPage(edge_model(), scenes) as page:
        for path, ctype in [('', 'text/html'), ('assets/ort-wasm-simd-threaded.wasm', 'application/wasm'),
                            ('assets/ort.wasm.min.mjs', 'text/javascript')]:
            with urllib.request.urlopen(page.url + path, timeout=10) as r:
                assert r.headers['Content-Type'].startswith(ctype), path
                assert all(r.headers[k] == v for k, v in ISOLATION_HEADERS.items()), path
        for path in ('../settings.ini', 'assets/../../x', 'model.onnx/..', 'images/../model.onnx'):
            with pytest.raises(urllib.error.HTTPError, match='404'): urllib.request.urlopen(page.url + path, timeout=10)
