"The docs site has a page for every notebook, built by Quarto or by the static fallback"
import shutil
import nbformat, pytest
from conftest import REPO
from labkit.instructor import build_docs, page_title

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp('site')/'_docs'
    rep = build_docs(out_dir=out, force_fallback=not shutil.which('quarto'))
    return rep, out

def test_every_notebook_has_its_page(site):
    rep, out = site
    for nb in sorted((REPO/'nbs').glob('*.ipynb')):
        page = out/('index.html' if nb.stem == 'index' else f'{nb.stem}.html')
        assert page.exists(), f"no page for {nb.name}"
        html = page.read_text()
        assert page_title(nbformat.read(nb, as_version=4), nb.stem).split('`')[0][:20] in html

def test_pages_link_each_other_and_embed_plots(site):
    rep, out = site
    if rep['engine'] != 'fallback': pytest.skip('Quarto built the site')
    index = (out/'index.html').read_text()
    for nb in sorted((REPO/'nbs').glob('*.ipynb')):
        if nb.stem != 'index': assert f'href="{nb.stem}.html"' in index
    plots = [nb.stem for nb in (REPO/'nbs').glob('*.ipynb') if '"image/png"' in nb.read_text()]
    for stem in plots: assert 'data:image/png;base64' in (out/f'{stem}.html').read_text(), stem
