"The docs site: a page for every notebook; the student site (the default) without solutions, the instructor's with them; checked in a real browser"
import re, shutil, tempfile
import nbformat, pytest
from conftest import REPO
from labkit.core import SOLUTION_BEGIN, SOLUTION_END
from labkit.instructor import build_docs, page_title, render_static_site, katex_assets

NOTEBOOKS = sorted((REPO/'nbs').glob('*.ipynb'))

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp('site')/'_docs'
    rep = build_docs(out_dir=out, force_fallback=True)
    return rep, out

@pytest.fixture(scope='module')
def instructor_site(site, tmp_path_factory):
    out = tmp_path_factory.mktemp('site')/'_docs_instructor'
    render_static_site(REPO/'_proc', out, student=False, katex=katex_assets())
    return out

def _solution_lines(nb_path) -> list:
    "Solution lines of a notebook that appear nowhere else in it"
    text = '\n'.join(c.source for c in nbformat.read(nb_path, as_version=4).cells)
    pat = rf"^[ \t]*{re.escape(SOLUTION_BEGIN)}\n(.*?)^[ \t]*{re.escape(SOLUTION_END)}"
    rest = re.sub(pat, '', text, flags=re.M | re.S)
    return [l.strip() for s in re.findall(pat, text, re.M | re.S) for l in s.split('\n') if len(l.strip()) > 12 and l.strip() not in rest]

def _page(out, nb): return out/('index.html' if nb.stem == 'index' else f'{nb.stem}.html')

def _visible(html) -> str:
    import html as h
    return h.unescape(re.sub(r'<[^>]+>', '', html))

def test_every_notebook_has_its_page(site):
    rep, out = site
    for nb in NOTEBOOKS:
        assert _page(out, nb).exists(), f"no page for {nb.name}"
        assert page_title(nbformat.read(nb, as_version=4), nb.stem).split('`')[0][:20] in _page(out, nb).read_text()

def test_pages_link_each_other_and_embed_plots(site):
    rep, out = site
    index = (out/'index.html').read_text()
    for nb in NOTEBOOKS:
        if nb.stem != 'index': assert f'href="{nb.stem}.html"' in index
    for nb in NOTEBOOKS:
        if '"image/png"' in nb.read_text() and nb.stem not in ('91_instructor',):
            assert 'data:image/png;base64' in _page(out, nb).read_text(), nb.stem

def test_student_site_has_no_solution_and_the_instructor_site_has_them(site, instructor_site):
    rep, out = site
    found = 0
    for nb in NOTEBOOKS:
        lines = _solution_lines(nb)
        student, instructor = _visible(_page(out, nb).read_text()), _visible(_page(instructor_site, nb).read_text())
        leaked = [l for l in lines if l in student]
        assert not leaked, f"{nb.name}: the student site shows {leaked[:2]}"
        found += sum(l in instructor for l in lines)
    assert found, "the instructor site shows no solution"

def test_pages_hold_no_prompts_markers_noise_or_placeholder_links(site):
    rep, out = site
    for nb in NOTEBOOKS:
        html = _page(out, nb).read_text()
        text = _visible(html)
        assert not re.search(r'\b(In|Out)\s*\[\s*\d*\s*\]:', text), nb.name
        assert not re.search(r'^\s*#\s*NBVAL_\w+\s*$', text, re.M), nb.name
        if nb.stem != '91_instructor': assert 'failed call to cuInit' not in text and 'absl::InitializeLog' not in text, nb.name
        assert not re.search(r'(href|src)="[^"]*example\.org', html), f"{nb.name} links to the placeholder host"
        assert 'widget-view+json' not in html, nb.name

def test_descriptions_are_whole(site):
    rep, out = site
    assert 'the tests and the Docker images run.' in _visible((out/'index.html').read_text())

def test_math_ships_with_the_site_never_from_a_cdn(site):
    rep, out = site
    if not rep.get('math'): pytest.skip('KaTeX could not be fetched on this machine (no npm and nothing cached)')
    assert (out/'katex'/'katex.min.js').exists() and list((out/'katex'/'fonts').glob('*.woff2'))
    for nb in NOTEBOOKS:
        assert not re.search(r'<(script|link)[^>]+(src|href)="(https?:)?//', _page(out, nb).read_text()), nb.name

# --- The pages in a real browser -----------------------------------------------------------------------------

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
DRIVER = shutil.which('chromedriver')

@pytest.fixture(scope='module')
def browser():
    if not (CHROMIUM and DRIVER): pytest.skip("headless Chromium is not installed: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip('selenium.webdriver', reason='selenium is not installed (pip install "labkit[dev]")')
    from selenium.webdriver.chrome.service import Service
    profile = tempfile.mkdtemp(prefix='labkit-chromium-')
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ('--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                 '--disable-sync', '--no-first-run', '--disable-dev-shm-usage', f'--user-data-dir={profile}', '--window-size=1100,900'):
        opts.add_argument(flag)
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)

@pytest.mark.browser
@pytest.mark.parametrize('stem', [p.stem for p in NOTEBOOKS])
def test_page_in_a_browser(site, browser, stem):
    from selenium.webdriver.support.ui import WebDriverWait
    rep, out = site
    nb = REPO/'nbs'/f'{stem}.ipynb'
    browser.get(_page(out, nb).as_uri())
    WebDriverWait(browser, 20).until(lambda b: b.execute_script("return document.readyState === 'complete'"), message='the page to load within 20 s')
    prose = re.sub(r'```.*?```|`[^`\n]*`', '', '\n'.join(c.source for c in nbformat.read(nb, as_version=4).cells if c.cell_type == 'markdown'), flags=re.S)
    if rep.get('math') and re.search(r'\$[^$\s][^$\n]*\$', prose):
        WebDriverWait(browser, 20).until(lambda b: b.execute_script("return document.querySelectorAll('.katex').length > 0"),
                                         message=f'KaTeX to render the math of {stem} within 20 s')
    errors = [e['message'] for e in browser.get_log('browser') if e['level'] == 'SEVERE']
    assert not errors, f"{stem}: console errors {errors[:3]}"
    overflow = browser.execute_script("""return [...document.querySelectorAll('main pre')].filter(p =>
        getComputedStyle(p).whiteSpace !== 'pre-wrap' && p.scrollWidth > p.clientWidth + 1 && getComputedStyle(p).overflowX !== 'auto').length""")
    assert overflow == 0, f"{stem}: {overflow} code blocks are clipped"
    assert browser.execute_script("return document.querySelectorAll('.highlight .k, .highlight .kn, .highlight .nb').length") > 0 or stem == 'index', \
        f"{stem}: code is not highlighted"
    main_width = browser.execute_script("return document.querySelector('main').scrollWidth <= document.documentElement.clientWidth")
    assert main_width, f"{stem}: the page scrolls sideways"
