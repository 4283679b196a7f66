"""A real browser watching halab's live view: Debian's chromium, driven by chromedriver
through Selenium, headless, on 127.0.0.1 only.

`LiveWatcher(url)` runs in its own thread (the drill runs in the test's): it loads the
page as soon as the server answers, then samples what the page shows every half second
(each lane's state, the markers, the status, the verdict) until the view is final;
it keeps every URL the browser requested (Chrome's performance log), and saves a
screenshot. Missing browser: `available()` says why; CI sets HALAB_REQUIRE_BROWSER=1
so that it cannot pass without one.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
REQUIRED = os.environ.get("HALAB_REQUIRE_BROWSER") == "1"

SAMPLE_JS = """
const out = {status: null, injected: false, final: document.body.getAttribute('data-final'),
             lanes: {}, markers: [], verdict: null, band: !!document.querySelector('[data-band]')};
const st = document.getElementById('status');
if (st) out.status = st.getAttribute('data-status');
const m = window.halabModel;
if (m) { out.injected = !!m.injected; out.now = m.now; }
document.querySelectorAll('[data-lane]').forEach(e => {
  out.lanes[e.getAttribute('data-lane')] = e.getAttribute('data-state'); });
document.querySelectorAll('[data-marker]').forEach(e => out.markers.push(
  e.getAttribute('data-marker')));
const v = document.getElementById('verdict');
if (v) out.verdict = v.getAttribute('data-ok');
return out;
"""


def available() -> str | None:
    """None if a browser can run here, else why not."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    if not Path(CHROMEDRIVER).exists() or not (shutil.which("chromium")
                                               or Path("/usr/bin/chromium").exists()):
        return "Debian's chromium and chromium-driver are not installed"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    """Whether the live view's port accepts a connection (it is on 127.0.0.1)."""
    from urllib.parse import urlsplit
    u = urlsplit(url)
    try:
        with socket.create_connection((u.hostname, u.port), timeout=1):
            return True
    except OSError:
        return False


def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    opts = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1600,1500", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--disable-default-apps"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


class LiveWatcher(threading.Thread):
    def __init__(self, url: str, screenshot: Path | None = None, timeout: float = 900,
                 every: float = 0.5):
        super().__init__(name="live-watcher", daemon=True)
        self.url, self.screenshot, self.timeout, self.every = url, screenshot, timeout, every
        self.samples: list[dict] = []
        self.requests: list[str] = []      # from the first load of the live view on
        self.discarded: list[str] = []     # from loads that failed before the server was up
        self.console: list[str] = []
        self.error: BaseException | None = None
        self.loaded = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self._watch()
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.error = exc
        finally:
            self.done.set()

    def _watch(self) -> None:
        d = driver()
        try:
            deadline = time.monotonic() + self.timeout
            while True:              # the drill starts its server after opening the lab
                if _answers(self.url):
                    try:
                        d.get(self.url)
                        if d.execute_script(
                                "return document.body.getAttribute('data-live')") == "1":
                            break
                    except Exception:  # noqa: BLE001 - not up yet
                        pass
                    # a load that failed showed chromium's own error page, whose inlined
                    # data: images are not the live view's requests: drop them
                    self.discarded += self._requests(d)
                    d.get_log("browser")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the live view at {self.url} never answered")
                time.sleep(0.5)
            self.loaded.set()
            while time.monotonic() < deadline:
                s = d.execute_script(SAMPLE_JS)
                s["at"] = time.time()
                self.samples.append(s)
                if s.get("final") == "1":
                    break
                time.sleep(self.every)
            if self.screenshot:
                self.screenshot.parent.mkdir(parents=True, exist_ok=True)
                d.execute_script("document.body.classList.add('wall')")
                d.set_window_size(1600, max(1500, d.execute_script(
                    "return document.body.scrollHeight") + 40))
                d.save_screenshot(str(self.screenshot))
            self._logs(d)
        finally:
            d.quit()

    @staticmethod
    def _requests(d) -> list[str]:
        """The URLs requested since the last call (reading the log empties it)."""
        out = []
        for entry in d.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg.get("method") == "Network.requestWillBeSent":
                out.append(msg["params"]["request"]["url"])
        return out

    def _logs(self, d) -> None:
        self.requests += self._requests(d)
        self.console = [e.get("message", "") for e in d.get_log("browser")]

    # --- what the page showed
    def final(self) -> dict:
        return self.samples[-1] if self.samples else {}

    def during_fault(self) -> list[dict]:
        """Samples while the fault was on (injected, the restore marker not yet there)."""
        return [s for s in self.samples if s.get("injected") and s.get("status") == "running"
                and "restore" not in s.get("markers", [])]


def replay_samples(url: str, timeout: float = 60) -> dict:
    """Load a served replay (`halab drill report --serve`) and sample it once it is final."""
    d = driver()
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                d.get(url)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        while time.monotonic() < deadline:
            s = d.execute_script(SAMPLE_JS)
            if s.get("final") == "1":
                return s
            time.sleep(0.3)
        raise TimeoutError(f"the replay at {url} never showed the final view")
    finally:
        d.quit()
