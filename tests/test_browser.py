"""Real-browser tests: headless Chromium (Debian's chromium and chromium-driver) against the real server.

Two HTTPS host names on loopback: cookiesaver as pxl.localhost and a small
"customer site" (Python's http.server over TLS, started here) as
shop.localhost. They are different sites to the browser, so requests from a
shop page to the pixel are third-party. Each test drives a fresh browser
profile whose User-Agent (a current desktop Chrome's, not the headless one,
which the shipped bot list ignores) carries a marker that tells its events
apart in the module's shared database.
"""

from __future__ import annotations

import http.server
import os
import shutil
import ssl
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from cookiesaver.devsecrets import self_signed
from tests.e2e import CookiesaverProcess, write
from tests.test_e2e_tracking import browser_ua, events_with, make_token, tag, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 15.0

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.browser,
    pytest.mark.skipif(
        not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)) and os.environ.get("CI") != "true",
        reason=f"headless Chromium is not installed ({CHROMIUM}, {CHROMEDRIVER}); apt-get install chromium chromium-driver (in CI this fails instead)",
    ),
]

ALLOW_THIRD_PARTY = {
    "profile.cookie_controls_mode": 0,
    "profile.block_third_party_cookies": False,
    "profile.default_content_setting_values.cookies": 1,
}
#: No cookie preferences: Chromium's default, which blocks third-party cookies in headless mode
#: (checked by the test itself before it relies on it).
BROWSER_DEFAULT: dict[str, Any] = {}

PIXEL_JS_PAGE = """<!doctype html><meta charset="utf-8"><title>{title}</title>
<h1>{title}</h1>
<script src="{pxl}/pixel.js" data-site="shop" async></script>
"""

EMBED_PAGE = """<!doctype html><meta charset="utf-8"><title>embedding</title>
<script>
  // One after the other, so the second request can carry a cookie the first one set.
  function embed(name, then) {{
    var img = new Image(1, 1);
    img.onload = img.onerror = then;
    img.src = "{pxl}/pixel?site=shop&e=" + name + "&url=" + encodeURIComponent(location.href);
    document.body.appendChild(img);
  }}
  window.onload = function () {{ embed("embed_one", function () {{ embed("embed_two", function () {{ document.title = "done"; }}); }}); }};
</script>
"""


class ShopSite:
    """The customer's website: https://shop.localhost:PORT, a few fixed pages, and the paths it was asked for."""

    def __init__(self, directory: str) -> None:
        cert, key = self_signed(["shop.localhost"])
        self.cert = write(os.path.join(directory, "shop-cert.pem"), cert)
        self.key = write(os.path.join(directory, "shop-key.pem"), key)
        self.requested: list[str] = []
        self.pages: dict[str, str] = {}
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.requested.append(self.path)
                body = site.pages.get(self.path.split("?")[0])
                if body is None:
                    self.send_error(404)
                    return
                data = body.encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.origin = f"https://shop.localhost:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShopSite]:
    site = ShopSite(str(tmp_path_factory.mktemp("shop")))
    site.start()
    try:
        yield site
    finally:
        site.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, mongo: Any, shop: ShopSite) -> Iterator[CookiesaverProcess]:
    s = CookiesaverProcess(
        tmp_path_factory.mktemp("browser"), mongo.uri, config={"COOKIESAVER_SITES": {"shop": {"origins": [shop.origin]}}}
    )
    s.start()
    pxl = f"https://pxl.localhost:{s.port}"
    shop.pages.update(
        {
            "/landing": PIXEL_JS_PAGE.format(title="landing", pxl=pxl),
            "/second": PIXEL_JS_PAGE.format(title="second", pxl=pxl),
            "/landed": "<!doctype html><title>landed</title><p>welcome</p>",
            "/embed": EMBED_PAGE.format(pxl=pxl),
        }
    )
    try:
        yield s
    finally:
        s.kill()


@pytest.fixture(scope="module")
def db(server: CookiesaverProcess, mongo: Any) -> Iterator[Any]:
    client = mongo.client()
    try:
        yield client[server.db_name]
    finally:
        client.close()


class Browser:
    """One headless Chromium with a fresh profile; always quit it."""

    def __init__(self, prefs: dict[str, Any]) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.marker = tag()
        self.user_agent = browser_ua(self.marker)
        self.profile = tempfile.mkdtemp(prefix="cs-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--ignore-certificate-errors",
            "--host-resolver-rules=MAP pxl.localhost 127.0.0.1, MAP shop.localhost 127.0.0.1",
            f"--user-data-dir={self.profile}",
            f"--user-agent={self.user_agent}",
        ):
            options.add_argument(flag)
        options.add_experimental_option("prefs", prefs)
        self.service = Service(CHROMEDRIVER)
        try:
            self.driver = webdriver.Chrome(options=options, service=self.service)
        except Exception:
            self.service.stop()
            shutil.rmtree(self.profile, ignore_errors=True)
            raise
        self.driver.set_page_load_timeout(WAIT)

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            self.service.stop()
            shutil.rmtree(self.profile, ignore_errors=True)

    def cookies(self) -> dict[str, str]:
        """Every cookie in the browser's jar (HttpOnly ones too), by domain and name."""
        found = self.driver.execute_cdp_cmd("Network.getAllCookies", {})["cookies"]
        return {f"{c['domain']} {c['name']}": c["value"] for c in found}

    def wait_title(self, title: str) -> None:
        wait_until(lambda: self.driver.title == title, WAIT)


def open_browser(request: pytest.FixtureRequest, prefs: dict[str, Any]) -> Browser:
    browser = Browser(prefs)
    request.addfinalizer(browser.quit)
    return browser


def embed_twice(browser: Browser, shop: ShopSite, db: Any) -> tuple[str, str]:
    """Load a shop page that embeds the pixel twice, one after the other; the two stored visitor ids."""
    browser.driver.get(f"{shop.origin}/embed")
    browser.wait_title("done")

    def both() -> list[dict[str, Any]] | None:
        found = events_with(db, browser.marker)
        return found if {e["type"] for e in found} >= {"embed_one", "embed_two"} else None

    stored = wait_until(both, WAIT)
    by_type = {e["type"]: e for e in stored}
    assert by_type["embed_one"]["site"] == "shop"
    assert by_type["embed_one"]["url"] == f"{shop.origin}/embed"
    return by_type["embed_one"]["visitor"], by_type["embed_two"]["visitor"]


class TestBrowser:
    def test_click_lands_on_destination_with_match_recorded(self, request, server, shop, db):
        """Following a click URL lands on the destination, and the click's pixel_open and visitor link carry the browser's cookie id."""
        browser = open_browser(request, ALLOW_THIRD_PARTY)
        profile = "p-" + browser.marker
        destination = f"{shop.origin}/landed?utm_source=mail&id=42"
        token = make_token(server, destination, account="acme", profile=profile, message="m-" + browser.marker)
        browser.driver.get(f"https://pxl.localhost:{server.port}/pixel?_open_pix=1&k={token}")
        browser.wait_title("landed")
        assert browser.driver.current_url == destination
        assert "/landed?utm_source=mail&id=42" in shop.requested
        vid = browser.cookies()["pxl.localhost csid"]
        (click,) = wait_until(lambda: events_with(db, browser.marker), WAIT)
        assert (click["type"], click["visitor"], click["profile"], click["link"]) == ("pixel_open", vid, profile, destination)
        link = wait_until(lambda: db.visitor_links.find_one({"_id": vid}), WAIT)
        assert (link["account"], link["profile"]) == ("acme", profile)

    def test_third_party_cookies_allowed_same_id_twice(self, request, server, shop, db):
        """With third-party cookies allowed, a page on another origin embedding the pixel twice reports the same visitor id both times."""
        browser = open_browser(request, ALLOW_THIRD_PARTY)
        first, second = embed_twice(browser, shop, db)
        assert first == second
        assert browser.cookies()["pxl.localhost csid"] == first

    def test_third_party_cookies_blocked_pixel_js_carries_click_id(self, request, server, shop, db):
        """With the browser's default (third-party cookies blocked), embeds get different ids, but a {cs_vid} click lands on a pixel.js page whose page views carry the click's id."""
        browser = open_browser(request, BROWSER_DEFAULT)
        first, second = embed_twice(browser, shop, db)
        assert first != second, "this Chromium's default profile sent the pixel's cookie cross-site: third-party cookies are not blocked"

        profile = "p-" + browser.marker
        token = make_token(server, f"{shop.origin}/landing?utm_source=mail&cs_vid={{cs_vid}}", account="acme", profile=profile)
        browser.driver.get(f"https://pxl.localhost:{server.port}/pixel?_open_pix=1&k={token}")
        browser.wait_title("landing")
        link = wait_until(lambda: db.visitor_links.find_one({"profile": profile}), WAIT)
        vid = link["_id"]
        assert browser.driver.current_url == f"{shop.origin}/landing?utm_source=mail&cs_vid={vid}"
        assert browser.cookies()["pxl.localhost csid"] == vid

        browser.driver.get(f"{shop.origin}/second")
        browser.wait_title("second")

        def page_views() -> list[dict[str, Any]] | None:
            views = [e for e in events_with(db, browser.marker) if e["type"] == "page_view"]
            return views if {e.get("url", "").split("?")[0] for e in views} >= {f"{shop.origin}/landing", f"{shop.origin}/second"} else None

        views = wait_until(page_views, WAIT)
        click = next(e for e in events_with(db, browser.marker) if e["type"] == "pixel_open")
        assert click["visitor"] == vid
        assert {e["visitor"] for e in views} == {vid}
        assert {e["site"] for e in views} == {"shop"}
