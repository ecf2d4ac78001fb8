"""The built book as a reader sees it: every page opened in headless Chromium (after `make book`).

Each page must decode all its images, show no warning, traceback or temporary path in any cell output, link only to
pages that exist, and raise no JavaScript error. A screenshot of each page goes to `_build/screenshots/`.
Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them) and `selenium` (a dev requirement)."""
import functools, http.server, pathlib, re, shutil, threading, urllib.parse, urllib.request
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
HTML, SHOTS = ROOT / '_build' / 'html', ROOT / '_build' / 'screenshots'
HOW = 'install with `apt-get install chromium chromium-driver` and `pip install selenium`'
BAD_OUTPUT = ('Warning', 'Traceback', '/tmp/')
MIN_SCALE = 0.95   # shown width / natural width of a figure, at the 1280-px window below


def _missing():
    if not (HTML / 'index.html').exists(): return 'the book is not built (make book)'
    if not (shutil.which('chromium') or shutil.which('chromium-browser')) or not shutil.which('chromedriver'):
        return f'headless Chromium is not installed: {HOW}'
    try: import selenium  # noqa: F401
    except ImportError: return f'selenium is not installed: {HOW}'


pytestmark = pytest.mark.skipif(bool(_missing()), reason=_missing() or '')
PAGES = sorted(['index.html'] + [f'nbs/{p.name}' for p in (HTML / 'nbs').glob('*.html')]) if (HTML / 'nbs').exists() else []


@pytest.fixture(scope='module')
def server():
    "The built book over HTTP on a free local port (links and scripts behave as on a web server)."
    handler = functools.partial(type('Quiet', (http.server.SimpleHTTPRequestHandler,), {'log_message': lambda *a: None}), directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}/'
    httpd.shutdown()


@pytest.fixture(scope='module')
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    for a in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', '--window-size=1280,1600'): opts.add_argument(a)
    opts.binary_location = shutil.which('chromium') or shutil.which('chromium-browser')
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    d = webdriver.Chrome(service=Service(shutil.which('chromedriver')), options=opts)
    d.set_page_load_timeout(60)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield d
    d.quit()


@functools.lru_cache(maxsize=None)
def _status(url):
    try: return urllib.request.urlopen(url, timeout=10).status
    except Exception as e: return getattr(e, 'code', str(e))


def test_the_book_has_every_chapter():
    chapters = sorted(p.stem for p in (ROOT / 'nbs').glob('[0-9][0-9]*.ipynb'))
    assert [p for p in chapters if f'nbs/{p}.html' not in PAGES] == [], 'chapters without a page'


@pytest.mark.parametrize('page', PAGES)
def test_page_reads_clean_in_chromium(page, server, browser):
    url = urllib.parse.urljoin(server, page)
    browser.get_log('browser')                                   # empty the log: what follows belongs to this page
    browser.get(url)
    browser.save_screenshot(str(SHOTS / (page.replace('/', '_').replace('.html', '.png'))))
    broken = browser.execute_script("return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
    broken = [b for b in broken if b.startswith(server)]          # the book's own images; badges from the web need a network
    assert broken == [], f'{page}: images that do not decode: {broken}'
    outputs = browser.execute_script("return Array.from(document.querySelectorAll('.cell_output, .output')).map(e => e.innerText)")
    bad = [(word, text[max(0, text.find(word) - 80):text.find(word) + 80]) for text in outputs for word in BAD_OUTPUT if word in text]
    assert bad == [], f'{page}: outputs show {bad}'
    links = browser.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
    internal = {l.split('#')[0] for l in links if l.startswith(server)}
    dead = sorted(l for l in internal if _status(l) != 200)
    assert dead == [], f'{page}: links to missing pages: {dead}'
    # a figure shown far below its natural size has unreadable text: every output image is drawn at least at
    # MIN_SCALE of its pixels at 1280 px (figures are drawn at 100 dpi, so 9-pt labels stay 9 pt or more)
    shrunk = browser.execute_script(
        "return Array.from(document.querySelectorAll('.cell_output img, .output img')).filter(i => i.naturalWidth > 0"
        " && i.clientWidth / i.naturalWidth < arguments[0]).map(i => [i.src.split('/').pop(), i.naturalWidth, i.clientWidth])", MIN_SCALE)
    assert shrunk == [], f'{page}: figures shrunk below {MIN_SCALE:.0%} of their size (file, natural px, shown px): {shrunk}'
    # no code or output block hides the end of its lines behind a horizontal scroll (outputs wrap, see
    # _static/wide.css; code and commands are kept within 100 characters)
    clipped = browser.execute_script(
        "return Array.from(document.querySelectorAll('article pre')).filter(p => p.clientWidth > 0"
        " && p.scrollWidth > p.clientWidth + 2).map(p => p.innerText.split('\\n').find(l => l.length > 90) || p.innerText.slice(0, 90))")
    assert clipped == [], f'{page}: blocks whose lines run past the column: {clipped}'
    # uncaught exceptions and the book's own files that fail to load (the favicon, which the book has none of, and the web aside)
    errors = [e['message'] for e in browser.get_log('browser') if e['level'] == 'SEVERE' and ('Uncaught' in e['message'] or 'Failed to load' in e['message'])
              and not re.search(r'https?://(?!127\.0\.0\.1)|favicon\.ico', e['message'])]
    assert errors == [], f'{page}: JavaScript errors: {errors}'
