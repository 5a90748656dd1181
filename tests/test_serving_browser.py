"The HTML form in a real browser: Debian's headless Chromium, driven by selenium through Debian's chromedriver"
import threading
import pytest
from conftest import free_port

pytestmark = pytest.mark.browser
pytest.importorskip('selenium.webdriver', reason='selenium is not installed (pip install "labkit[dev]")')
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import make_server
from labkit.serving import ModelRegistry, create_app, default_registry_dir, predict_salary

@pytest.fixture(scope='module')
def server():
    "The app on a loopback port, in a thread, for the module's tests"
    seen = []
    srv = make_server('127.0.0.1', free_port(), create_app(request_log=seen), threaded=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True); t.start()
    yield f'http://127.0.0.1:{srv.server_port}', seen
    srv.shutdown(); t.join(10)

def fill_and_submit(browser, url, values):
    browser.get(url + '/')
    for name, value in values.items():
        box = browser.find_element(By.ID, name)
        box.clear(); box.send_keys(value)
    browser.execute_script("window.labkitFormPage = true")   # gone once the answer (a new page) has loaded
    browser.find_element(By.ID, 'submit').click()
    WebDriverWait(browser, 15).until(
        lambda b: b.execute_script("return window.labkitFormPage === undefined && document.readyState === 'complete'"),
        message='the answer page to load within 15 s of submitting the form')

def test_form_shows_the_prediction(browser, server):
    url, seen = server
    fill_and_submit(browser, url, {'experience': '5', 'test_score': '8', 'interview_score': '7'})
    salary = float(browser.find_element(By.ID, 'salary').text.replace(',', ''))
    expected = predict_salary(ModelRegistry(default_registry_dir()).get('v2'), [[5, 8, 7]])[0]
    assert abs(salary - expected) <= 0.5, (salary, expected)
    assert browser.find_element(By.ID, 'version').text == 'v2'
    assert not browser.find_elements(By.CLASS_NAME, 'error')
    assert seen and seen[-1]['inputs'] == {'experience': 5.0, 'test_score': 8.0, 'interview_score': 7.0}

def test_form_shows_errors_next_to_their_fields(browser, server):
    url, seen = server
    n = len(seen)
    fill_and_submit(browser, url, {'experience': '5', 'test_score': '99', 'interview_score': ''})
    assert 'between 0 and 10' in browser.find_element(By.ID, 'error-test_score').text
    assert browser.find_element(By.ID, 'error-interview_score').text == 'is required'
    assert not browser.find_elements(By.ID, 'error-experience')
    assert not browser.find_elements(By.ID, 'prediction')
    assert browser.find_element(By.ID, 'test_score').get_attribute('value') == '99'     # what was typed is kept
    assert len(seen) == n                                                              # rejected: nothing logged
