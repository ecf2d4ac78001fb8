"""The rendered book (after `make book`): every chapter page shows the figures its notebook draws, from this build."""
import json, pathlib, re
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
HTML = ROOT / '_build' / 'html'
pytestmark = pytest.mark.skipif(not (HTML / 'index.html').exists(), reason='the book is not built (make book)')


def figure_cells(nb):
    "Code cells that draw: they call a plotting helper or create a figure."
    cells = json.load(open(nb))['cells']
    return [c for c in cells if c['cell_type'] == 'code' and '#| export' not in ''.join(c['source'])
            and 'plt.close(' not in ''.join(c['source'])                       # a test that draws and discards
            and re.search(r'plt\.(subplots|imshow)|^\s*(\w+\s*=\s*)?(show|plot|draw)_\w+\(', ''.join(c['source']), re.M)]


PRACTICE_WITHOUT_FIGURES = {'14_runtime', '21_sharing', '22_timm_contract', '24_run_safety'}   # practice chapters whose lesson is a contract, not a picture


@pytest.mark.parametrize('nb', sorted((ROOT / 'nbs').glob('[0-9][0-9]_*.ipynb')), ids=lambda p: p.stem)
def test_chapter_page_shows_its_figures(nb):
    page = HTML / 'nbs' / f'{nb.stem}.html'
    assert page.exists(), f'{page} was not rendered'
    images = re.findall(r'<img[^>]+src="\.\./_images/([^"]+\.png)"', page.read_text())
    least = 0 if nb.stem in PRACTICE_WITHOUT_FIGURES else 1   # every chapter of the model and the evidence draws
    assert len(images) >= len(figure_cells(nb)) >= least, f'{nb.stem}: {len(images)} images for {len(figure_cells(nb))} figure cells'
    for img in images:
        f = HTML / '_images' / img
        assert f.exists() and f.stat().st_size > 1000, f'{img} is missing or empty'


PAGES = sorted(HTML.glob('nbs/*.html')) + [HTML / 'index.html']


@pytest.mark.parametrize('page', PAGES, ids=lambda p: p.stem)
def test_pages_with_maths_load_mathjax(page):
    html = page.read_text()
    if 'class="math notranslate' not in html: pytest.skip('no maths on this page')
    assert re.search(r'<script[^>]+src="[^"]*mathjax[^"]*"', html, re.I), f'{page.name} has maths but no MathJax script'


@pytest.mark.parametrize('page', PAGES, ids=lambda p: p.stem)
def test_computed_markdown_renders_tables_and_maths(page):
    "A Markdown table or $maths$ that a cell computes must not reach the reader as raw text in a paragraph."
    paragraphs = re.findall(r'<p>(.*?)</p>', page.read_text(), re.S)
    raw_tables = [p[:80] for p in paragraphs if re.search(r'\|\s*(---|\u2014)\s*\|', p)]
    raw_maths = [p[:80] for p in paragraphs if re.search(r'(?<!\\)\$[^$<\s][^$<]*\$', p)]
    assert raw_tables == [] and raw_maths == [], f'{page.name}: raw tables {raw_tables}, raw maths {raw_maths}'


@pytest.mark.parametrize('page', PAGES, ids=lambda p: p.stem)
def test_no_page_shows_nbdev_directives_or_the_colab_setup(page):
    "`#| default_exp` and the Colab install cell are for nbdev and Colab, not for the reader (they carry the remove-cell tag)."
    html = page.read_text()
    assert 'default_exp' not in html and 'Colab only' not in html, f'{page.name} shows a set-up cell'
