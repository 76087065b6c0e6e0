"""The book: it builds with no warning from the committed results, and its main-results page works
in a real browser (Debian's headless Chromium, started here): the main table with the paper's and our
columns is there, every image has loaded, and no same-site link is broken. A screenshot of the page
is left in book/_build/screenshots/ for a person to look at."""
import csv
import functools
import html
import http.server
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
SCREENSHOT = ROOT / "book" / "_build" / "screenshots" / "main_results.png"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

pytestmark = pytest.mark.slow


def profile_with_results():
    """cpu (the committed results CI has) if its report exists, else any profile that has one."""
    have = sorted(p.parent.parent.name for p in (ROOT / "results").glob("*/report/numbers.json"))
    if "cpu" in have:
        return "cpu"
    if not have:
        pytest.skip("no profile has a report yet (results/<profile>/report/): run `make reproduce` first")
    return have[0]


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


def test_book_builds_without_warnings(built_book):
    profile, out = built_book
    warnings = [line for line in out.splitlines() if "WARNING" in line or "ERROR" in line]
    assert not warnings, "\n".join(warnings[:30])
    for page in ("index", "results", "setup", "verdicts", "performance", "api", "notebooks/report"):
        assert (HTML / f"{page}.html").is_file(), page
    # The pages show the rendered profile's report: each of its verdict rows made it into the book.
    with open(ROOT / "results" / profile / "report" / "verdicts.csv", newline="") as f:
        claims = [row["claim"] for row in csv.DictReader(f)]
    page = html.unescape((HTML / "verdicts.html").read_text()).replace("\u2019", "'")
    assert claims and all(claim in page for claim in claims), claims


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("id", "name") and value:
                self.ids.add(value)


@functools.lru_cache(maxsize=None)
def ids_of(path):
    parser = _Ids()
    parser.feed(Path(path).read_text(errors="replace"))
    return frozenset(parser.ids)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


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
        time.sleep(0.2)
    return False


def test_main_results_page_in_chromium(server, browser):
    browser.get(f"{server}/results.html")
    assert wait_for(browser, "return document.readyState === 'complete'")
    # Images load lazily in places: scroll through the page, then wait until each one is done.
    browser.execute_script("for (const img of document.images) { img.loading = 'eager'; img.scrollIntoView(); }")
    browser.execute_script("window.scrollTo(0, 0)")
    wait_for(browser, "return Array.from(document.images).every(img => img.complete)")

    # The main table: a table whose header has our columns and the paper's, with LifeAlign in it.
    tables = browser.execute_script("""
        return Array.from(document.querySelectorAll('table')).map(t => ({
            head: Array.from(t.querySelectorAll('thead th')).map(th => th.textContent.trim()),
            body: t.querySelector('tbody') ? t.querySelector('tbody').textContent : ''}));""")
    main = [t for t in tables if any(h.endswith("ours") for h in t["head"])
            and any(h.endswith("paper") for h in t["head"]) and any(h.endswith("diff") for h in t["head"])]
    assert main, f"no table with ours / paper / diff columns; headers: {[t['head'] for t in tables]}"
    assert all("LifeAlign" in t["body"] and "SeqFT" in t["body"] for t in main)
    assert any(t["head"][:1] == ["method"] and "BWT" in " ".join(t["head"]) for t in tables)

    # Every image of the page has loaded.
    images = browser.execute_script(
        "return Array.from(document.images).map(img => [img.currentSrc || img.src, img.complete, img.naturalWidth]);")
    assert images, "the main-results page shows no image"
    broken = [src for src, complete, width in images if not complete or not width]
    assert not broken, f"images that did not load: {broken}"

    # No broken same-site link: each resolves to a built file, and its #anchor to an id on that page.
    hrefs = browser.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href);")
    base = urlparse(server)
    broken = []
    for href in sorted(set(hrefs)):
        url, fragment = urldefrag(href)
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or parsed.netloc != base.netloc:
            continue  # external (the repository, Colab): not this site's business
        path = HTML / unquote(parsed.path).lstrip("/")
        if path.is_dir():
            path = path / "index.html"
        if not path.is_file():
            broken.append(href)
        elif fragment and path.suffix == ".html" and unquote(fragment) not in ids_of(str(path)):
            broken.append(href)
    assert hrefs and not broken, f"broken internal links: {broken}"

    # A full-page screenshot for a person to look at.
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1600, min(max(height, 1000), 12000))
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))
