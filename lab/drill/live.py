"""The live view's server: the drill page on 127.0.0.1, new views pushed as they come.

Python's own `http.server` (threads, one per browser) is all it takes: a page, its
script and stylesheet (from the wheel), the current view as JSON, and `/events`, a
server-sent-events stream that sends the current view at once and then every new one.
Read-only: GET and HEAD only, nothing that changes the lab or the drill. It listens on
loopback unless `--bind` names another address (a classroom's projector machine), and
every page says, in its Content-Security-Policy, that it loads nothing from elsewhere.
"""
from __future__ import annotations

import ipaddress
import json
import threading
import time
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lab.drill import view as viewlib
from lab.errors import HalabError

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
KEEPALIVE = 15.0      # an SSE comment this often keeps idle proxies and browsers attached


class LiveView:
    """Holds the latest view; serves it to any number of browsers."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, title: str = "halab drill"):
        _check_bind(host)
        self.title = title
        self.cond = threading.Condition()
        self.version = 0
        self.data = b"null"
        self.final = False
        self.closed = False
        self.delivered: dict[int, int] = {}     # connection id -> version it has seen
        handler = type("Handler", (_Handler,), {"live": self})
        try:
            self.server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise HalabError(f"the live view cannot listen on {host}:{port} ({exc.strerror})",
                             hint="give another --port, or leave it out for a free one") from exc
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="halab-live",
                                       kwargs={"poll_interval": 0.2}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def start(self, open_browser: bool = False) -> "LiveView":
        self.thread.start()
        if open_browser:
            webbrowser.open(self.url)
        return self

    def publish(self, model: dict, final: bool = False) -> None:
        data = json.dumps({**model, "final": final}, separators=(",", ":")).encode()
        with self.cond:
            if data == self.data:
                return
            self.data, self.final = data, final
            self.version += 1
            self.cond.notify_all()

    def wait_delivered(self, timeout: float) -> bool:
        """Until every connected browser has the latest view (or timeout)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while any(v < self.version for v in self.delivered.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()


def _check_bind(host: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise HalabError(f"--bind {host!r} is not an IP address",
                         hint="e.g. --bind 127.0.0.1 (the default) or the projector machine's "
                              "address on the classroom network") from None


class _Handler(BaseHTTPRequestHandler):
    live: LiveView
    server_version = "halab-live"
    sys_version = ""

    def log_message(self, fmt, *args):  # noqa: D401 - quiet: the drill owns the terminal
        pass

    def _send(self, status: int, body: bytes, ctype: str, head_only: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET(head_only=True)

    def do_GET(self, head_only: bool = False):
        path = self.path.split("?", 1)[0]
        if path == "/":
            body = viewlib.page(None, live=True, title=self.live.title).encode()
            return self._send(200, body, "text/html; charset=utf-8", head_only)
        if path == "/view.js":
            return self._send(200, viewlib.asset("view.js").encode(),
                              "text/javascript; charset=utf-8", head_only)
        if path == "/view.css":
            return self._send(200, viewlib.asset("view.css").encode(),
                              "text/css; charset=utf-8", head_only)
        if path == "/view.json":
            with self.live.cond:
                data = self.live.data
            return self._send(200, data, "application/json", head_only)
        if path == "/favicon.ico":
            return self._send(204, b"", "image/x-icon", head_only)
        if path == "/events" and not head_only:
            return self._events()
        return self._send(404, b"not found\n", "text/plain; charset=utf-8", head_only)

    def _refuse(self):
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def _events(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        live, me, seen = self.live, id(self), 0
        try:
            while True:
                with live.cond:
                    live.delivered.setdefault(me, seen)
                    if live.version == seen and not live.closed:
                        live.cond.wait(KEEPALIVE)
                    if live.closed:
                        return
                    version, data, final = live.version, live.data, live.final
                if version != seen:
                    self.wfile.write(b"event: model\ndata: " + data + b"\n\n")
                    self.wfile.flush()
                    seen = version
                    with live.cond:
                        live.delivered[me] = seen
                        live.cond.notify_all()
                    if final:
                        return
                else:
                    self.wfile.write(b": keepalive\n\n")
                    self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:
            with live.cond:
                live.delivered.pop(me, None)
                live.cond.notify_all()


class Publisher:
    """Builds the view of a running drill once a second and hands it to the server."""

    def __init__(self, live: LiveView, snapshot, every: float = 1.0):
        self.live, self.snapshot, self.every = live, snapshot, every
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="halab-live-publish", daemon=True)

    def start(self) -> "Publisher":
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                journal = self.snapshot()
                if journal:
                    self.live.publish(viewlib.model(journal, now=time.time()))
            except Exception as exc:  # noqa: BLE001 - a view is never worth a failed drill
                # typically the journal changed while it was read (RuntimeError): the next
                # round has it; anything else is kept for --debug
                self.error = exc
            self.stop.wait(self.every)

    def finish(self, journal: dict) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.live.publish(viewlib.model(journal), final=True)
