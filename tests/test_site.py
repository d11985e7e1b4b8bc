"""The site as a reader gets it: every page of the built book, opened in a real browser with no network.

The built book (``_build/html``) is served from a local HTTP server and opened in Debian's Chromium through
Playwright. Every request to another host is aborted and recorded, so a page that needs the network to show
its math, figures, fonts or icons fails here. Each page is visited at desktop width (1280 px) and phone width
(390 px); a screenshot of each lands in ``_build/screenshots/{desktop,phone}/``.
"""
from __future__ import annotations

import functools
import http.server
import re
import threading
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium); the browser test needs it",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
VIEWPORTS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}
TRANSPOSED_CHAPTER = "book/04_conv_transpose2d.html"
REDIRECT = re.compile(r'<meta http-equiv="Refresh" content="0; url=([^"]+)"', re.IGNORECASE)
# TeX that must not survive typesetting in the page's running text (code blocks are left out of the check).
RAW_TEX = ("$$", "\\(", "\\)", "\\[", "\\]", "\\frac", "\\begin{", "\\sum", "\\mathrm")

# Everything measured on one page, in the browser.
PAGE_PROBE = """
async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  const images = Array.from(document.images);
  images.forEach(img => { if (img.loading === 'lazy') img.loading = 'eager'; });
  await Promise.all(images.map(img => img.complete ? null :
      new Promise(done => { img.addEventListener('load', done); img.addEventListener('error', done); })));
  const brokenImages = images.filter(img => !img.complete || img.naturalWidth === 0)
                             .map(img => img.getAttribute('src'));
  const mathNodes = Array.from(document.querySelectorAll('.bd-article .math'));
  const untypeset = mathNodes.filter(node => !node.querySelector('mjx-container')).map(node => node.textContent.slice(0, 80));
  const prose = document.querySelector('.bd-article') ? document.querySelector('.bd-article').cloneNode(true) : document.body.cloneNode(true);
  prose.querySelectorAll('pre, code, script, style, textarea, mjx-container, .highlight').forEach(node => node.remove());
  const width = window.innerWidth;
  const inScrollBox = node => {
    for (let box = node.parentElement; box && box !== document.body; box = box.parentElement) {
      const overflow = getComputedStyle(box).overflowX;
      if (overflow === 'auto' || overflow === 'scroll') return true;
    }
    return false;
  };
  const wideParagraphs = Array.from(document.querySelectorAll('p')).filter(p => {
    const box = p.getBoundingClientRect();
    return box.width > 0 && (box.right > width + 0.5 || box.width > width) && !inScrollBox(p);
  }).map(p => p.textContent.trim().slice(0, 80));
  // Display equations that do not fit their column (they would have to scroll) or run into their number.
  const wideEquations = Array.from(document.querySelectorAll('.bd-article div.math')).filter(box => {
    const container = box.querySelector('mjx-container'), math = box.querySelector('mjx-container > mjx-math');
    if (!container || !math) return false;
    const column = box.getBoundingClientRect(), formula = math.getBoundingClientRect();
    const number = box.querySelector('.eqno');
    const limit = number ? number.getBoundingClientRect().left : column.right;
    return container.scrollWidth > box.clientWidth + 1 || formula.left < column.left - 1 || formula.right > limit + 1;
  }).map(box => `${box.id || 'unlabelled'}: ${box.textContent.trim().slice(0, 60)}`);
  // A backslash in typeset math is TeX that MathJax printed instead of interpreting (e.g. \\_ inside \\texttt).
  const texInMath = Array.from(document.querySelectorAll('.bd-article mjx-container'))
                         .map(node => node.textContent).filter(text => text.includes('\\\\')).map(text => text.slice(0, 80));
  return {
    title: document.title,
    favicon: (document.querySelector('link[rel="icon"]') || {href: ''}).href,
    logo: Array.from(document.querySelectorAll('img.logo__image')).map(img => img.src),
    heading: (document.querySelector('.bd-article h1') || {textContent: ''}).textContent,
    equationNumbers: Array.from(document.querySelectorAll('.bd-article .eqno')).map(node => node.textContent.trim()),
    prevNext: Array.from(document.querySelectorAll('.prev-next-area a')).map(a => a.getAttribute('href')),
    mathCount: mathNodes.length,
    typesetCount: document.querySelectorAll('.bd-article mjx-container').length,
    untypeset, brokenImages,
    proseText: prose.textContent,
    links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
    scrollWidth: document.scrollingElement.scrollWidth, viewportWidth: width, wideParagraphs, wideEquations, texInMath,
  };
}
"""


@dataclass
class PageVisit:
    """What one page did in the browser at one width."""
    page: str
    viewport: str
    probe: dict = field(default_factory=dict)
    external_requests: list[str] = field(default_factory=list)
    failed_local_requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    screenshot: Path | None = None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the signature is http.server's
        pass


@pytest.fixture(scope="module")
def site(built_book):
    """The built book's HTML served on a free localhost port: (base URL, html folder)."""
    if not (built_book.html / "index.html").is_file():
        pytest.fail("the book did not build: no _build/html/index.html\n" + built_book.log[-5000:])
    handler = functools.partial(_QuietHandler, directory=str(built_book.html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", built_book.html
    server.shutdown()
    server.server_close()


def site_pages(html: Path) -> list[str]:
    """Every HTML page of the site (the theme's template fragments in _static are not pages)."""
    return sorted(path.relative_to(html).as_posix() for path in html.rglob("*.html")
                  if path.relative_to(html).parts[0] not in {"_static", "_sources", "_images"})


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _offline_context(browser, base: str, viewport: str):
    """A browser context that lets through requests to the local server only; the rest are aborted and listed."""
    context = browser.new_context(viewport=VIEWPORTS[viewport], device_scale_factor=1, service_workers="block")
    blocked: list[str] = []

    def route(route):
        url = route.request.url
        if url.startswith(base) or url.split(":", 1)[0] in {"data", "blob", "about"}:
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    context.route("**/*", route)
    return context, blocked


def _visit(context, blocked: list[str], site: tuple[str, Path], page_path: str, viewport: str) -> PageVisit:
    base, html = site
    visit = PageVisit(page_path, viewport)
    page = context.new_page()
    page.on("pageerror", lambda error: visit.errors.append(f"uncaught: {error}"))
    page.on("console", lambda message: visit.errors.append(f"console.{message.type}: {message.text}")
            if message.type == "error" else None)
    page.on("requestfailed", lambda request: visit.failed_local_requests.append(
        f"{request.url} ({request.failure})") if request.url.startswith(base) else None)
    page.on("response", lambda response: visit.failed_local_requests.append(
        f"{response.url} (HTTP {response.status})") if response.status >= 400 else None)
    start = len(blocked)
    page.goto(base + page_path, wait_until="load")
    # The root index.html is Jupyter Book's redirect to the home page: follow it, then look at where it lands.
    redirect = REDIRECT.search((html / page_path).read_text(encoding="utf-8", errors="replace")[:500])
    if redirect:
        page.wait_for_url(urljoin(base + page_path, redirect.group(1)), wait_until="load")
    visit.probe = page.evaluate(PAGE_PROBE)
    page.wait_for_timeout(100)  # let late console messages arrive
    visit.external_requests = blocked[start:]
    shot = SCREENSHOTS / viewport / (page_path.replace("/", "__").removesuffix(".html") + ".png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    visit.screenshot = shot
    page.close()
    return visit


@pytest.fixture(scope="module")
def visits(site, browser) -> list[PageVisit]:
    """Every page of the site, visited at desktop and at phone width, offline."""
    base, html = site
    pages = site_pages(html)
    assert "index.html" in pages and TRANSPOSED_CHAPTER in pages, pages
    result = []
    for viewport in VIEWPORTS:
        context, blocked = _offline_context(browser, base, viewport)
        result += [_visit(context, blocked, site, page, viewport) for page in pages]
        context.close()
    return result


def _report(problems: dict[str, list]) -> str:
    return "\n".join(f"{where}: {what}" for where, what in problems.items() if what)


def test_no_page_fetches_anything_from_another_host(visits):
    problems = {f"{v.page} [{v.viewport}]": v.external_requests for v in visits}
    assert not any(problems.values()), "pages tried to fetch external resources:\n" + _report(problems)


def test_every_local_resource_a_page_asks_for_exists(visits):
    problems = {f"{v.page} [{v.viewport}]": v.failed_local_requests for v in visits}
    assert not any(problems.values()), "missing or failed local resources:\n" + _report(problems)


def test_no_page_raises_a_javascript_error(visits):
    problems = {f"{v.page} [{v.viewport}]": v.errors for v in visits}
    assert not any(problems.values()), "JavaScript errors:\n" + _report(problems)


def test_math_is_typeset_on_every_page_that_has_math(visits):
    with_math = [v for v in visits if v.probe["mathCount"]]
    assert any(v.page.startswith("book/0") for v in with_math), "no chapter has any math: is MathJax wired in?"
    problems = {f"{v.page} [{v.viewport}]": v.probe["untypeset"] for v in with_math}
    assert not any(problems.values()), "math left untypeset:\n" + _report(problems)
    for v in with_math:
        assert v.probe["typesetCount"] >= v.probe["mathCount"], (v.page, v.probe["typesetCount"], v.probe["mathCount"])


def test_no_raw_tex_is_left_in_the_text(visits):
    problems = {f"{v.page} [{v.viewport}]": [tex for tex in RAW_TEX if tex in v.probe["proseText"]] for v in visits}
    assert not any(problems.values()), "raw TeX in the page text:\n" + _report(problems)


def test_typeset_math_shows_no_tex_backslash(visits):
    problems = {f"{v.page} [{v.viewport}]": v.probe["texInMath"] for v in visits}
    assert not any(problems.values()), "TeX printed literally inside typeset math:\n" + _report(problems)


def test_every_image_loads(visits):
    problems = {f"{v.page} [{v.viewport}]": v.probe["brokenImages"] for v in visits}
    assert not any(problems.values()), "images that did not load:\n" + _report(problems)


class _Anchors(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)


@functools.lru_cache(maxsize=None)
def _anchors(path: Path) -> frozenset[str]:
    parser = _Anchors()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


def test_every_link_into_the_site_resolves(visits, site):
    base, html = site
    problems: dict[str, list] = {}
    for v in visits:
        for link in sorted(set(v.probe["links"])):
            if not link.startswith(base):
                continue
            parts = urlsplit(link)
            target = html / unquote(parts.path.removeprefix(urlsplit(base).path))
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                problems.setdefault(v.page, []).append(f"{link} (no such file)")
            elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in _anchors(target):
                problems.setdefault(v.page, []).append(f"{link} (no such anchor)")
    assert not problems, "links into the site that do not resolve:\n" + _report(problems)


def test_phone_width_pages_do_not_scroll_sideways(visits):
    phone = [v for v in visits if v.viewport == "phone"]
    problems = {v.page: [f"page is {v.probe['scrollWidth']} px wide in a {v.probe['viewportWidth']} px viewport"]
                for v in phone if v.probe["scrollWidth"] > v.probe["viewportWidth"]}
    assert not problems, "pages wider than a phone:\n" + _report(problems)


def test_phone_width_paragraphs_fit_the_screen(visits):
    problems = {v.page: v.probe["wideParagraphs"] for v in visits if v.viewport == "phone"}
    assert not any(problems.values()), "paragraphs wider than the phone screen:\n" + _report(problems)


def test_desktop_display_equations_fit_the_text_column(visits):
    # On a phone a long equation scrolls inside its own box; on a desktop none should need to, and none may
    # run into its equation number.
    problems = {v.page: v.probe["wideEquations"] for v in visits if v.viewport == "desktop"}
    assert not any(problems.values()), \
        "display equations wider than the desktop text column or overlapping their number:\n" + _report(problems)


def test_every_page_has_a_screenshot_at_both_widths(visits):
    for v in visits:
        assert v.screenshot is not None and v.screenshot.stat().st_size > 0, (v.page, v.viewport)
    assert {v.viewport for v in visits} == set(VIEWPORTS)


def test_every_page_shows_the_books_own_logo_and_favicon(visits, site):
    base, html = site
    for v in visits:
        assert v.probe["favicon"].startswith(base) and v.probe["favicon"].endswith(".svg"), (v.page, v.probe["favicon"])
        assert (html / urlsplit(v.probe["favicon"]).path.lstrip("/")).is_file(), v.probe["favicon"]
        assert v.probe["logo"] and all(src.startswith(base) and src.endswith("logo.svg") for src in v.probe["logo"]), \
            (v.page, v.probe["logo"])


def test_chapters_have_numbered_equations_and_previous_next_links(visits):
    chapters = sorted((v for v in visits if re.fullmatch(r"book/0\d_.*\.html", v.page) and v.viewport == "desktop"),
                      key=lambda v: v.page)
    assert len(chapters) >= 2
    for v in visits:
        assert v.probe["title"].strip(), v.page
    for v in chapters:
        number = int(v.page[len("book/"):][:2])
        # The chapter's number leads its heading ("4. Transposed convolution").
        assert v.probe["heading"].strip().startswith(f"{number}."), (v.page, v.probe["heading"])
        # Equations are numbered per chapter, (N.k), wherever a chapter numbers any.
        for label in v.probe["equationNumbers"]:
            assert re.match(rf"\({number}\.\d+\)", label), (v.page, label)
        assert len(v.probe["prevNext"]) == 2, (v.page, v.probe["prevNext"])
    assert any(v.probe["equationNumbers"] for v in chapters), "no chapter numbers an equation"


def test_search_finds_transposed_and_leads_to_the_transposed_convolution_chapter(site, browser):
    base, _ = site
    context, blocked = _offline_context(browser, base, "desktop")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(base + "book/index.html", wait_until="load")
    # The reader's way in: the theme's search button opens a search box; typing a word and Enter searches.
    page.keyboard.press("Control+k")
    box = page.locator("input[name='q']:visible").first
    box.fill("transposed")
    box.press("Enter")
    page.wait_for_url(re.compile(r"search\.html\?q=transposed"))
    results = page.locator("#search-results ul.search li a")
    results.first.wait_for(timeout=20_000)
    hrefs = [results.nth(i).get_attribute("href") for i in range(results.count())]
    matches = [i for i, href in enumerate(hrefs) if href.split("#")[0].split("?")[0].endswith(TRANSPOSED_CHAPTER)]
    assert matches, f"search for 'transposed' did not list {TRANSPOSED_CHAPTER}: {hrefs}"
    results.nth(matches[0]).click()
    page.wait_for_load_state("load")
    assert urlsplit(page.url).path.endswith(TRANSPOSED_CHAPTER), page.url
    heading = page.locator(".bd-article h1").first.inner_text()
    assert re.search(r"transpos", heading, re.IGNORECASE), heading
    context.close()
    assert not blocked, blocked
    assert not errors, errors
