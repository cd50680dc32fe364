"""``browser.run_page(directory) -> dict``: open a static page in headless Chromium and read what it reports.

The directory is served on 127.0.0.1 only, with the headers a WASM page needs (``application/wasm``,
JavaScript modules, and COOP/COEP so that the page is cross-origin isolated and may use threads).
Chromium is Debian's ``chromium`` driven through ``chromium-driver`` by Selenium; it runs with the flags
a closed network needs: no background networking, component updates, sync or first-run fetches, and a
fresh profile every time. The page reports by setting ``document.body.dataset.status`` to ``done`` or
``error`` and leaving its result in ``window.onnxguardResult``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

from onnxguard.errors import InputError, ModelError

# Without the background-networking flags Chromium opens connections that a closed network refuses, many at
# a time, and looks up Google's hosts at every start. Root (as in CI containers) needs --no-sandbox.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--metrics-recording-only", "--mute-audio")

# The MIME types and headers a static host must send for the web target (docs/endpoints.md repeats them).
MIME = {".wasm": "application/wasm", ".mjs": "text/javascript", ".js": "text/javascript", ".json": "application/json",
        ".onnx": "application/octet-stream", ".html": "text/html; charset=utf-8"}
HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}

DEFAULT_TIMEOUT_S = 180.0


class BrowserUnavailable(InputError):
    """No headless Chromium (or its driver, or Selenium) on this machine."""


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **MIME}

    def end_headers(self) -> None:
        for k, v in HEADERS.items():
            self.send_header(k, v)
        super().end_headers()

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's signature
        pass  # requests from the page under test are not the caller's output


@contextlib.contextmanager
def serve(directory: str | os.PathLike[str]) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (an ephemeral port) for the duration; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, name="onnxguard-static", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def executables() -> tuple[str, str]:
    """(chromium, chromedriver) paths: ``$ONNXGUARD_CHROMIUM`` / ``$ONNXGUARD_CHROMEDRIVER`` or the PATH."""
    chromium = os.environ.get("ONNXGUARD_CHROMIUM") or next(
        (p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))), None)
    driver = os.environ.get("ONNXGUARD_CHROMEDRIVER") or shutil.which("chromedriver")
    if not chromium or not driver:
        missing = [n for n, p in (("chromium", chromium), ("chromedriver", driver)) if not p]
        raise BrowserUnavailable(f"headless Chromium is needed to check a web target, and {' and '.join(missing)} "
                                 f"{'is' if len(missing) == 1 else 'are'} not installed "
                                 "(Debian: apt install chromium chromium-driver)")
    return chromium, driver


def _first_line(e: Exception) -> str:
    text = (getattr(e, "msg", None) or str(e) or type(e).__name__).strip()
    return text.splitlines()[0] if text else type(e).__name__


def available() -> bool:
    """Whether headless Chromium, its driver and selenium are all installed here."""
    try:
        executables()
        import selenium  # noqa: F401
    except (BrowserUnavailable, ImportError):
        return False
    return True


@contextlib.contextmanager
def open_page(directory: str | os.PathLike[str], timeout_s: float = DEFAULT_TIMEOUT_S, query: str = ""):
    """Load ``directory/index.html`` in headless Chromium and wait until the page reports; yields the
    Selenium driver (for a caller that also uses the page), and quits Chromium afterwards."""
    chromium, driver_path = executables()
    try:
        import urllib3
        from selenium import webdriver
        from selenium.common.exceptions import TimeoutException, WebDriverException
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError as e:
        raise BrowserUnavailable("checking a web target needs Selenium: pip install 'onnxguard[web]'") from e
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})
    with tempfile.TemporaryDirectory(prefix="onnxguard-chromium-") as profile, serve(directory) as url:
        options.add_argument(f"--user-data-dir={profile}")
        try:
            driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
        except WebDriverException as e:
            raise BrowserUnavailable(f"Chromium did not start: {_first_line(e)}") from e
        try:
            try:
                driver.get(url + "index.html" + query)
                WebDriverWait(driver, timeout_s, poll_frequency=0.2).until(
                    lambda d: d.execute_script("return document.body && document.body.dataset.status"))
            except TimeoutException:
                logs = [e["message"] for e in driver.get_log("browser")]
                raise ModelError(f"the page did not finish within {timeout_s:.0f} s"
                                 + (f": {logs[0]}" if logs else "")) from None
            # Chromium crashed, or stopped answering its driver (a renderer busy past the driver's read timeout)
            except (WebDriverException, urllib3.exceptions.HTTPError) as e:
                raise ModelError(f"Chromium stopped answering while the page ran: {_first_line(e)}") from e
            yield driver
        finally:
            driver.quit()


def run_page(directory: str | os.PathLike[str], timeout_s: float = DEFAULT_TIMEOUT_S, query: str = "") -> dict:
    """Load ``directory/index.html`` in headless Chromium; return ``window.onnxguardResult`` once it is done,
    with the text the page shows a person under ``text``."""
    with open_page(directory, timeout_s, query) as driver:
        result = driver.execute_script("return window.onnxguardResult")
        text = driver.execute_script("return document.body.innerText")
    if not isinstance(result, dict) or result.get("status") != "done":
        error = result.get("error") if isinstance(result, dict) else result
        raise ModelError(f"the page failed in Chromium: {error}")
    return {**result, "text": text}
