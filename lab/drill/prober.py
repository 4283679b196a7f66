"""The probe worker: `python -m lab.drill.prober ...`, started inside a node's namespace.

One process per access path, alive for the whole drill, so a probe costs one
TLS handshake and one HTTP request instead of a kubectl start (~50-150 ms CPU).
Every probe opens a NEW connection and has its own deadline: a dead server shows
up as a failed probe after `--timeout`, never as a hang, and a slow probe does not
delay the next one (each probe runs in its own thread, started on a fixed tick).

Modes (one JSON line per result on stdout, `t` is the probe's start, wall clock;
`lag` how late it started against its tick, i.e. how starved this process was):
    read   GET PATH                              {"t", "ok", "lat", "lag", "code", "err"}
    write  POST then DELETE a ConfigMap         {"t", "ok", "lat", "code", "err", "step"}
    lease  GET the leader-election Leases        {"t", "ok", "lat", "holders", "err"}
    etcd   POST /v3/maintenance/status per member {"t", "members": {ip: {...}}}
    cleanup  DELETE the ConfigMaps a write prober left (label halab-drill=ID), once
    canary GET a loopback server of its own: measures the host, not the lab
    watch  one long-lived LIST+WATCH, as client-go's informers keep it (kubelet, kube-proxy
           and the controllers are such clients), of the nodes' Leases or of the Nodes:
           {"t", "kind": "lease", "node", "renew"} per renewal a kubelet made,
           {"t", "kind": "node", "node", "ready", "taints"} per change of a Node,
           {"t", "kind": "pod", "pod", "node", "phase", "deleting", "deleted"} per change
           of a pod bound to a node (evictions: a deletion begun by the node controller),
           {"t", "kind": "conn", "state": "open"|"broken", "err"} for the connection
           itself. A connection that carries nothing for `--idle` seconds is given up,
           as client-go's HTTP/2 health check gives up on one (read idle 30 s + ping
           15 s); the watch then starts again, from the last resourceVersion it saw

Names resolve through the namespace's /etc/hosts (`ip netns exec` bind-mounts
/etc/netns/<ns>/hosts), so `localhost` and the LB name mean what they mean on
that node. The worker exits when its parent (halab) is gone or stdout is closed.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import ssl
import sys
import tempfile
import threading
import time
from urllib.parse import urlsplit

LEASES = ("kube-controller-manager", "kube-scheduler")


# ------------------------------------------------------------------ TLS and HTTP

def tls_context(ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """Client context like kubectl's: verify the server against the lab CA, present a cert."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=ca_pem.decode())
    # load_cert_chain wants files: write them to a private temp folder, load, delete
    with tempfile.TemporaryDirectory(prefix="halab-probe-") as tmp:
        cert, key = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
        for path, data in ((cert, cert_pem), (key, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(cert, key)
    return ctx


def from_kubeconfig(path: str, context: str | None = None) -> tuple[str, ssl.SSLContext]:
    """(server URL, TLS context) of a kubeconfig context (embedded data, as halab writes them).

    Kubeconfigs halab puts on nodes are JSON (standard library only: a VM may have no
    PyYAML); the lab kubeconfig on the host is YAML, and the host has PyYAML.
    """
    with open(path) as f:
        text = f.read()
    try:
        cfg = json.loads(text)
    except ValueError:
        import yaml
        cfg = yaml.safe_load(text)
    name = context or cfg.get("current-context")
    ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == name)
    cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
    user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
    b = base64.b64decode
    return cluster["server"], tls_context(b(cluster["certificate-authority-data"]),
                                          b(user["client-certificate-data"]),
                                          b(user["client-key-data"]))


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        return left


def request(server: str, ctx: ssl.SSLContext, method: str, path: str, timeout: float,
            body: bytes | None = None, content_type: str = "application/json") -> tuple[int, bytes]:
    """One HTTPS request on a new connection, the whole exchange bounded by `timeout`."""
    u = urlsplit(server)
    host, port = u.hostname, u.port or (443 if u.scheme == "https" else 80)
    dl = Deadline(timeout)
    raw = socket.create_connection((host, port), timeout=dl.left())
    try:
        raw.settimeout(dl.left())
        s = ctx.wrap_socket(raw, server_hostname=host) if ctx is not None else raw
        head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close",
                "Accept: application/json, */*", "User-Agent: halab-drill-prober"]
        if body is not None:
            head += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
        s.settimeout(dl.left())
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + (body or b""))
        data = b""
        while True:
            s.settimeout(dl.left())
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if _complete(data):
                break
        if s is not raw:
            s.close()
    finally:
        raw.close()
    return _parse(data)


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return len(body) >= int(v.strip())
    return False  # chunked or unknown length: read until the server closes


def _parse(data: bytes) -> tuple[int, bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise ConnectionError("connection closed before a full HTTP response"
                              if data else "connection closed without an answer (EOF)")
    status = head.split(b"\r\n", 1)[0].split()
    code = int(status[1]) if len(status) > 1 and status[1].isdigit() else 0
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return code, body


def _unchunk(body: bytes) -> bytes:
    out, rest = b"", body
    while rest:
        size, _, rest = rest.partition(b"\r\n")
        try:
            n = int(size.split(b";")[0], 16)
        except ValueError:
            break
        if n == 0:
            break
        out, rest = out + rest[:n], rest[n + 2:]
    return out


def describe(exc: BaseException) -> str:
    """A short, stable error text: what a student would see from kubectl."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


# ------------------------------------------------------------------ probes

def probe_read(server, ctx, path, timeout) -> dict:
    code, body = request(server, ctx, "GET", path, timeout)
    text = body.decode(errors="replace").strip()
    ok = code == 200 and (path not in ("/readyz", "/healthz", "/livez") or text == "ok")
    out = {"ok": ok, "code": code}
    if not ok:
        out["err"] = f"HTTP {code}: {_last_line(text)}"
    return out


def probe_write(server, ctx, timeout, label: str, seq: int) -> dict:
    name = f"halab-drill-{label}-{seq}"
    cm = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": name, "labels": {"halab-drill": label}},
          "data": {"by": "halab drill"}}
    base = "/api/v1/namespaces/default/configmaps"
    t0 = time.monotonic()
    code, body = request(server, ctx, "POST", base, timeout, json.dumps(cm).encode())
    if code != 201:
        return {"ok": False, "code": code, "step": "create",
                "err": f"create: HTTP {code}: {_message(body)}"}
    left = max(0.05, timeout - (time.monotonic() - t0))
    code, body = request(server, ctx, "DELETE", f"{base}/{name}", left)
    if code not in (200, 202):
        return {"ok": False, "code": code, "step": "delete",
                "err": f"delete: HTTP {code}: {_message(body)}"}
    return {"ok": True, "code": code}


def probe_leases(server, ctx, timeout) -> dict:
    holders = {}
    for lease in LEASES:
        code, body = request(server, ctx, "GET",
                             f"/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{lease}",
                             timeout)
        if code != 200:
            return {"ok": False, "code": code, "err": f"{lease}: HTTP {code}: {_message(body)}"}
        spec = json.loads(body).get("spec", {})
        holders[lease] = {"holder": spec.get("holderIdentity"),
                          "renew": spec.get("renewTime")}
    return {"ok": True, "holders": holders}


def probe_etcd(endpoints: list[str], ctx, timeout) -> dict:
    members = {}
    for ep in endpoints:
        try:
            code, body = request(ep, ctx, "POST", "/v3/maintenance/status", timeout, b"{}")
            data = json.loads(body) if code == 200 else {}
            members[urlsplit(ep).hostname] = {
                "ok": code == 200, "id": data.get("header", {}).get("member_id"),
                "leader": data.get("leader"), "err": None if code == 200 else f"HTTP {code}"}
        except Exception as exc:  # noqa: BLE001 - every failure is a result
            members[urlsplit(ep).hostname] = {"ok": False, "err": describe(exc)}
    return {"ok": any(m["ok"] for m in members.values()), "members": members}


def _message(body: bytes) -> str:
    try:
        return json.loads(body).get("message", "")[:160]
    except (ValueError, AttributeError):
        return _last_line(body.decode(errors="replace"))


def _last_line(text: str) -> str:
    lines = [l for l in text.splitlines() if l.strip()]
    return lines[-1][:160] if lines else ""


def start_canary_server() -> str:
    """A loopback HTTP server in this process: probing it needs nothing from the lab, so
    when it is slow too, the host (CPU starved) is to blame, not the lab."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{srv.server_address[1]}"


# ------------------------------------------------------------------ long-lived watches

WATCHES = {
    "leases": "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
    "nodes": "/api/v1/nodes",
    "pods": "/api/v1/pods",
}


def rfc3339(text: str | None) -> float | None:
    """Kubernetes' times (`2026-12-04T14:41:08.116333Z`, MicroTime or Time) -> epoch."""
    if not text:
        return None
    from datetime import datetime, timezone
    text = text.rstrip("Z")
    fmt = "%Y-%m-%dT%H:%M:%S.%f" if "." in text else "%Y-%m-%dT%H:%M:%S"
    return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp()


def event_record(resource: str, obj: dict, deleted: bool = False) -> dict | None:
    """What a watch event says, as a probe record (without "t")."""
    meta = obj.get("metadata", {})
    name = meta.get("name")
    if resource == "pods":
        # a pod bound to a node, and whether it is being deleted (the node controller's
        # taint manager evicts by deleting: deletionTimestamp set; on a node that does not
        # answer the pod then stays Terminating) or is gone
        node = obj.get("spec", {}).get("nodeName")
        if not node:
            return None
        return {"kind": "pod", "pod": f"{meta.get('namespace')}/{name}", "node": node,
                "phase": obj.get("status", {}).get("phase", ""),
                "deleting": bool(meta.get("deletionTimestamp")) or deleted,
                "deleted": deleted}
    if resource == "leases":
        renew = rfc3339(obj.get("spec", {}).get("renewTime"))
        return {"kind": "lease", "node": name, "renew": renew} if renew else None
    conds = obj.get("status", {}).get("conditions", []) or []
    ready = next((c for c in conds if c.get("type") == "Ready"), {})
    return {"kind": "node", "node": name, "ready": ready.get("status") == "True",
            "reason": ready.get("reason", ""),
            "taints": sorted(f"{t.get('key')}:{t.get('effect')}"
                             for t in obj.get("spec", {}).get("taints", []) or [])}


class Stream:
    """An HTTP/1.1 response read as it arrives, chunk by chunk, one line at a time."""

    def __init__(self, sock, idle: float):
        self.sock, self.idle, self.buf = sock, idle, b""

    def _more(self) -> bytes:
        self.sock.settimeout(self.idle)
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the watch")
        return data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self.buf += self._more()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def head(self) -> int:
        status = self._line().split()
        while self._line():
            pass
        return int(status[1]) if len(status) > 1 and status[1].isdigit() else 0

    def chunks(self):
        """The body's chunks (Transfer-Encoding: chunked, as the API server streams)."""
        while True:
            n = int(self._line().split(b";")[0] or b"0", 16)
            if n == 0:
                return
            while len(self.buf) < n + 2:
                self.buf += self._more()
            chunk, self.buf = self.buf[:n], self.buf[n + 2:]
            yield chunk


def watch_once(server, ctx, resource: str, rv: str | None, timeout: float, idle: float,
               out: "Output", seen: dict) -> str:
    """LIST (when `rv` is None) then WATCH on one connection each; returns the last
    resourceVersion when the server ends the watch; raises when the connection fails."""
    base = WATCHES[resource]
    if rv is None:
        code, body = request(server, ctx, "GET", base, timeout)
        if code != 200:
            raise ConnectionError(f"list: HTTP {code}: {_message(body)}")
        doc = json.loads(body)
        for obj in doc.get("items", []):
            _emit_event(resource, obj, out, seen)
        rv = doc.get("metadata", {}).get("resourceVersion", "")
    u = urlsplit(server)
    host, port = u.hostname, u.port or 443
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        raw.settimeout(timeout)
        sock = ctx.wrap_socket(raw, server_hostname=host)
        path = (f"{base}?watch=1&resourceVersion={rv}&allowWatchBookmarks=true"
                f"&timeoutSeconds=600")
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                      "Accept: application/json\r\nUser-Agent: halab-drill-watch\r\n\r\n"
                      ).encode())
        stream = Stream(sock, idle)
        code = stream.head()
        if code != 200:
            raise ConnectionError(f"watch: HTTP {code}")
        out.emit({"t": round(time.time(), 3), "kind": "conn", "state": "open"})
        pending = b""
        for chunk in stream.chunks():
            pending += chunk
            while b"\n" in pending:
                line, _, pending = pending.partition(b"\n")
                if not line.strip():
                    continue
                ev = json.loads(line)
                obj = ev.get("object", {})
                if ev.get("type") == "ERROR":   # e.g. 410 Gone: the version is too old
                    raise ConnectionError(f"watch: {obj.get('message', 'error')}")
                rv = obj.get("metadata", {}).get("resourceVersion", rv)
                if ev.get("type") in ("ADDED", "MODIFIED"):
                    _emit_event(resource, obj, out, seen)
                elif ev.get("type") == "DELETED" and resource == "pods":
                    _emit_event(resource, obj, out, seen, deleted=True)
        return rv
    finally:
        raw.close()


def _emit_event(resource: str, obj: dict, out: "Output", seen: dict,
                deleted: bool = False) -> None:
    rec = event_record(resource, obj, deleted)
    if rec is None:
        return
    who = rec.get("pod") or rec["node"]
    if seen.get(who) == rec:   # a relist repeats what is known
        return
    seen[who] = rec
    out.emit({"t": round(time.time(), 3), **rec})


def watch_loop(server, ctx, resource: str, timeout: float, idle: float, out: "Output") -> None:
    """Keep one watch open for as long as halab runs; say when it breaks and starts again."""
    rv: str | None = None
    seen: dict = {}
    while not out.orphaned():
        try:
            rv = watch_once(server, ctx, resource, rv, timeout, idle, out, seen)
        except Exception as exc:  # noqa: BLE001 - every failure is a result
            out.emit({"t": round(time.time(), 3), "kind": "conn", "state": "broken",
                      "err": describe(exc)})
            if "too old" in str(exc) or "Gone" in str(exc):
                rv = None
            time.sleep(1.0)     # client-go's reflector backs off before it lists again


# ------------------------------------------------------------------ loop

class Output:
    """Serialised JSON lines; exits the process when halab is gone."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()
        self.parent = os.getppid()

    def emit(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self.lock:
            try:
                self.stream.write(line)
                self.stream.flush()
            except (BrokenPipeError, ValueError):
                os._exit(0)

    def orphaned(self) -> bool:
        return os.getppid() != self.parent


def run_probe(fn, out: Output, t: float, timeout: float, scheduled: float | None = None) -> None:
    t0 = time.monotonic()
    try:
        rec = fn()
    except Exception as exc:  # noqa: BLE001 - every failure is a result
        rec = {"ok": False, "err": describe(exc)}
    rec = {"t": round(t, 3), "lat": round(time.monotonic() - t0, 3), **rec}
    if scheduled is not None:
        # how late the probe started: a starved host, not the lab
        rec["lag"] = round(max(0.0, t0 - scheduled), 3)
    out.emit(rec)


def loop(make_probe, interval: float, timeout: float, out: Output, count: int = 0,
         max_in_flight: int = 20) -> None:
    """Start a probe every `interval` seconds, each in its own thread; never wait for one."""
    in_flight = threading.Semaphore(max_in_flight)
    threads: list[threading.Thread] = []
    n = 0
    next_tick = time.monotonic()
    while not out.orphaned():
        n += 1
        t = time.time()
        if in_flight.acquire(blocking=False):
            fn = make_probe(n)

            def work(fn=fn, t=t, scheduled=next_tick):
                try:
                    run_probe(fn, out, t, timeout, scheduled)
                finally:
                    in_flight.release()
            th = threading.Thread(target=work, daemon=True)
            th.start()
            threads = [x for x in threads if x.is_alive()] + [th]
        else:
            out.emit({"t": round(t, 3), "ok": False, "lat": 0.0,
                      "err": f"{max_in_flight} probes still in flight"})
        if count and n >= count:
            break
        next_tick += interval
        delay = next_tick - time.monotonic()
        if delay < 0:  # fell behind (CPU starved): skip ticks instead of bursting
            next_tick = time.monotonic()
            delay = 0
        time.sleep(delay)
    deadline = time.monotonic() + timeout + 1
    for th in threads:  # let the last probes report (each ends by its own deadline)
        th.join(max(0.0, deadline - time.monotonic()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.drill.prober")
    ap.add_argument("--mode", choices=("read", "write", "lease", "etcd", "cleanup", "canary",
                                       "watch"), default="read")
    ap.add_argument("--resource", choices=sorted(WATCHES), default="leases",
                    help="watch: what to keep a watch on")
    ap.add_argument("--idle", type=float, default=45.0,
                    help="watch: give a connection up after this long without a byte")
    ap.add_argument("--kubeconfig")
    ap.add_argument("--context")
    ap.add_argument("--path", default="/readyz")
    ap.add_argument("--interval", type=float, default=0.2)
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--count", type=int, default=0, help="stop after N probes (0: run on)")
    ap.add_argument("--label", default="x", help="write/cleanup: the drill's id")
    ap.add_argument("--etcd-endpoints", default="", help="etcd: comma-separated URLs")
    ap.add_argument("--ca"), ap.add_argument("--cert"), ap.add_argument("--key")
    a = ap.parse_args(argv)
    out = Output()
    if a.mode == "canary":
        url = start_canary_server()
        loop(lambda n: lambda: probe_read(url, None, "/", a.timeout), a.interval, a.timeout,
             out, a.count)
        return 0
    if a.mode == "etcd":
        rd = lambda p: open(p, "rb").read()  # noqa: E731
        ctx = tls_context(rd(a.ca), rd(a.cert), rd(a.key))
        eps = [e for e in a.etcd_endpoints.split(",") if e]
        loop(lambda n: lambda: probe_etcd(eps, ctx, a.timeout), a.interval,
             a.timeout * len(eps), out, a.count, max_in_flight=3)
        return 0
    server, ctx = from_kubeconfig(a.kubeconfig, a.context)
    if a.mode == "cleanup":
        sel = f"/api/v1/namespaces/default/configmaps?labelSelector=halab-drill%3D{a.label}"
        fn = lambda: {"ok": request(server, ctx, "DELETE", sel, a.timeout)[0] == 200}  # noqa: E731
        run_probe(fn, out, time.time(), a.timeout)
        return 0
    if a.mode == "watch":
        watch_loop(server, ctx, a.resource, a.timeout, a.idle, out)
        return 0
    if a.mode == "read":
        make = lambda n: lambda: probe_read(server, ctx, a.path, a.timeout)  # noqa: E731
    elif a.mode == "write":
        make = lambda n: lambda: probe_write(server, ctx, a.timeout, a.label, n)  # noqa: E731
    else:
        make = lambda n: lambda: probe_leases(server, ctx, a.timeout)  # noqa: E731
    loop(make, a.interval, a.timeout, out, a.count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
