"""The book: it builds with no warning from the committed results, no page carries a path of the
machine that built it or a word about how the project was built, the notebooks point at the
repository that book/_config.yml names, and every page works in a real browser (Debian's headless
Chromium, started here): no table left as a paragraph of pipes, no table wider than its column, every
image loaded, every same-site link and anchor resolving, no console error. A screenshot of every page
is left in book/_build/screenshots/ (ignored by git) for a person to look at."""
import csv
import functools
import html
import http.server
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "book" / "_build" / "html"
SCREENSHOTS = ROOT / "book" / "_build" / "screenshots"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Words a reader of the book has no use for: paths of the machine that built it, and the vocabulary of
# how the project was built (the paper's claims are "claims", its setting "the paper").
INTERNAL = re.compile(r"/work/|/home/|/tmp/|/root/|\bspec section|\bthe spec\b|\bissues?\b|\bsessions?\b|"
                      r"\bthe brief\b|\bworktree\b|\bTODO\b", re.I)


def load_build():
    spec = importlib.util.spec_from_file_location("book_build", ROOT / "book" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_source_notebooks_point_at_the_configured_repository():
    build = load_build()
    url, _ = build.repository()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        text = path.read_text()
        assert json.loads(build.with_links(text, path.stem)) == json.loads(text), (
            f"{path.name} does not point at {url} (book/_config.yml): run `python book/build.py --sync-notebooks`")
        assert url in text and build.colab_url(path.stem) in text, path.name


def test_placeholders_in_docstrings_stay_text():
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    try:
        from docstring_myst import escape_placeholders
    finally:
        sys.path.pop(0)
    assert escape_placeholders("results/<profile>/<run id>/x") == r"results/\<profile\>/\<run id\>/x"
    assert escape_placeholders("`results/<profile>` and <https://example.org>") == \
        "`results/<profile>` and <https://example.org>"


@pytest.fixture(scope="module")
def built_book():
    profile = profile_with_results()
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "book" / "build.py"), "--profile", profile], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"book build failed for profile {profile}:\n{out[-6000:]}"
    print(f"book ({profile}) built in {time.time() - t0:.0f} s")
    return profile, out


def profile_with_results():
    """cpu (the committed results CI has) if its report exists, else any profile that has one."""
    have = sorted(p.parent.parent.name for p in (ROOT / "results").glob("*/report/numbers.json"))
    if "cpu" in have:
        return "cpu"
    if not have:
        pytest.skip("no profile has a report yet (results/<profile>/report/): run `make reproduce` first")
    return have[0]


def pages():
    """Every page of the built book (not the theme's assets, sources or the search page)."""
    skip = ("_static", "_sources", "_images")
    return sorted(p.relative_to(HTML).as_posix() for p in HTML.rglob("*.html")
                  if not p.relative_to(HTML).parts[0] in skip and p.name != "search.html")


pytestmark = pytest.mark.slow


def test_book_builds_without_warnings(built_book):
    profile, out = built_book
    warnings = [line for line in out.splitlines() if "WARNING" in line or "ERROR" in line]
    assert not warnings, "\n".join(warnings[:30])
    for page in ("index", "intro", "results", "setup", "verdicts", "performance", "api", "notebooks/report"):
        assert (HTML / f"{page}.html").is_file(), page
    # The pages show the rendered profile's report: each of its verdict rows made it into the book.
    with open(ROOT / "results" / profile / "report" / "verdicts.csv", newline="") as f:
        claims = [row["claim"] for row in csv.DictReader(f)]
    page = html.unescape((HTML / "verdicts.html").read_text()).replace("\u2019", "'")
    assert claims and all(claim in page for claim in claims), claims


class _Text(HTMLParser):
    """The visible text of a page (no scripts or styles) and its ids."""

    def __init__(self):
        super().__init__()
        self.ids, self.text, self._hidden = set(), [], 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._hidden += 1
        for key, value in attrs:
            if key in ("id", "name") and value:
                self.ids.add(value)

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._hidden -= 1

    def handle_data(self, data):
        if not self._hidden:
            self.text.append(data)


@functools.lru_cache(maxsize=None)
def parsed(path):
    parser = _Text()
    parser.feed(Path(path).read_text(errors="replace"))
    return frozenset(parser.ids), " ".join(parser.text)


def test_no_build_machine_paths_or_internal_words(built_book):
    found = []
    for page in pages():
        text = parsed(str(HTML / page))[1]
        text = " ".join(text.split())
        found += [f"{page}: ...{text[max(m.start() - 60, 0):m.end() + 60]}..." for m in INTERNAL.finditer(text)]
    assert not found, "\n".join(found[:20])


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/favicon.ico":  # the book has none; a 404 would be a console error on every page
            self.send_response(204)
            self.end_headers()
            return
        super().do_GET()


@pytest.fixture
def server(built_book):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(HTML)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists() or not Path(CHROMEDRIVER).exists():
        pytest.skip(f"no {CHROMIUM} / {CHROMEDRIVER}: apt-get install chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile_dir = tempfile.mkdtemp(prefix="book-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Root in CI needs --no-sandbox; the rest keeps Chromium off the network and quiet.
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile_dir}", "--window-size=1600,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile_dir, ignore_errors=True)


def wait_for(driver, script, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if driver.execute_script(script):
            return True
        time.sleep(0.1)
    return False


# What a page shows, measured in the browser: paragraphs that are a markdown table left as text, tables
# wider than the column they sit in, images that did not load, and the page's links.
INSPECT = """
const article = document.querySelector('article') || document.body;
const pipes = Array.from(article.querySelectorAll('p, li')).map(p => p.textContent.trim())
    .filter(t => /^\\|.*\\|/.test(t) && (t.match(/\\|/g) || []).length >= 4).map(t => t.slice(0, 80));
const right = article.getBoundingClientRect().right;
const wide = Array.from(article.querySelectorAll('table')).filter(t => {
    const box = t.parentElement;
    return t.scrollWidth > box.clientWidth + 1 || t.getBoundingClientRect().right > right + 1;
}).map(t => (t.querySelector('tr') || t).textContent.trim().replace(/\\s+/g, ' ').slice(0, 80));
const images = Array.from(document.images).filter(i => !i.complete || !i.naturalWidth).map(i => i.src);
const links = Array.from(document.querySelectorAll('a[href]')).map(a => a.href);
return {pipes: pipes, wide: wide, images: images, links: links};
"""


def broken_links(hrefs, server):
    """Same-site links that do not resolve to a built file, or whose #anchor is no id on that page."""
    base = urlparse(server)
    broken = []
    for href in sorted(set(hrefs)):
        url, fragment = urldefrag(href)
        parsed_url = urlparse(url)
        if parsed_url.scheme not in ("http", "https") or parsed_url.netloc != base.netloc:
            continue  # external (the repository, Colab): not this site's business
        path = HTML / unquote(parsed_url.path).lstrip("/")
        if path.is_dir():
            path = path / "index.html"
        if not path.is_file():
            broken.append(href)
        elif fragment and path.suffix == ".html" and unquote(fragment) not in parsed(str(path))[0]:
            broken.append(href)
    return broken


def test_every_page_in_chromium(server, browser):
    problems, hrefs = [], {}
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    for page in pages():
        browser.set_window_size(1600, 1000)
        browser.get(f"{server}/{page}")
        browser.get_log("browser")  # nothing of the previous page
        browser.get(f"{server}/{page}")
        assert wait_for(browser, "return document.readyState === 'complete'"), page
        # Open the dropdowns (the per-run gallery starts closed) and load every image now.
        browser.execute_script("""
            document.querySelectorAll('details').forEach(d => d.open = true);
            for (const img of document.images) { img.loading = 'eager'; }
            window.scrollTo(0, document.body.scrollHeight); window.scrollTo(0, 0);""")
        wait_for(browser, "return Array.from(document.images).every(img => img.complete)", timeout=15)
        seen = browser.execute_script(INSPECT)
        hrefs.update({href: page for href in seen["links"]})
        errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        for kind, items in (("raw-pipe paragraph", seen["pipes"]), ("table wider than its column", seen["wide"]),
                            ("image not loaded", seen["images"]), ("console error", errors)):
            problems += [f"{page}: {kind}: {item}" for item in items]
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1600, min(max(height, 1000), 16000))
        assert browser.save_screenshot(str(SCREENSHOTS / (page[:-len(".html")].replace("/", "__") + ".png")))
    problems += [f"{hrefs[href]}: broken link: {href}" for href in broken_links(hrefs, server)]
    assert len(hrefs) > 100, "the pages have almost no links"
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])


def test_page_one_answers_with_the_verdict_grid(server, browser):
    browser.get(f"{server}/intro.html")
    assert wait_for(browser, "return document.readyState === 'complete'")
    grid = browser.execute_script("""
        const t = Array.from(document.querySelectorAll('table')).find(
            t => (t.querySelector('thead') || t).textContent.includes('reward acc.'));
        if (!t) return null;
        return {head: Array.from(t.querySelectorAll('thead th')).map(th => th.textContent.trim()),
                rows: Array.from(t.querySelectorAll('tbody tr')).map(tr => Array.from(tr.querySelectorAll('td')).map(
                    td => [td.textContent.trim(), td.querySelector('a.sd-badge') ? td.querySelector('a').href : null]))};""")
    assert grid, "page one has no verdict grid"
    assert grid["head"] == ["claim", "reward acc.", "BLEU-4", "ROUGE-L", "judge"]
    words = ("confirmed", "refuted", "inconclusive", "not tested", "not yet run")
    cells = [c for row in grid["rows"] for c in row[1:]]
    assert len(grid["rows"]) == 7 and all(text in words and href and "verdicts.html#verdict-" in href
                                          for text, href in cells), cells
    text = browser.execute_script("return document.querySelector('article').innerText")
    for phrase in ("Reproduced:", "Not reproduced:", "Undecided, and why:", "Compute:", "implicit-reward accuracy"):
        assert phrase in text, phrase


def test_main_results_table_sets_ours_beside_the_papers(built_book, server, browser):
    profile, _ = built_book
    counted = json.loads((ROOT / "results" / profile / "report" / "numbers.json").read_text())["runs"]
    browser.get(f"{server}/results.html")
    assert wait_for(browser, "return document.readyState === 'complete'")
    tables = browser.execute_script("""
        return Array.from(document.querySelectorAll('table')).map(t => ({
            head: Array.from(t.querySelectorAll('thead th')).map(th => th.textContent.trim()),
            body: t.querySelector('tbody') ? t.querySelector('tbody').textContent : ''}));""")
    # A difference needs a run of ours that counts: without one the table has ours ("–") beside the paper's.
    main = [t for t in tables if any(h.endswith("ours") for h in t["head"])
            and any(h.endswith("paper") for h in t["head"]) and (not counted or any(h.endswith("diff") for h in t["head"]))]
    assert main, f"no table with ours / paper / diff columns; headers: {[t['head'] for t in tables]}"
    assert all("LifeAlign" in t["body"] and "SeqFT" in t["body"] for t in main)
    if not counted:
        assert "No current results" in browser.execute_script("return document.querySelector('article').innerText")
