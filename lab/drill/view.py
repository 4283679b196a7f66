"""Pure: the drill as the classroom sees it, one view for the live page and the report.

`model(journal)` turns a journal (finished, or a snapshot of one still running) into
lanes: one per access path (fresh probes) and per long-lived watch, two per node
(heartbeats, Ready), one per HAProxy backend, one per lease holder, the etcd leader
and the VIP holder; markers for injection, restore and recovery; beside each lane
what the Case predicts; at the end the verdict with its explanation. Each lane is a
list of segments `[from, to, state, text]` in seconds since the injection.

`page(model)` is the one HTML page that draws a model (lab/drill/assets/view.js): the
offline report is that page with the model inlined; the live server (lab.drill.live)
serves the same page and pushes new models as the drill goes on. Both draw the same
data with the same code, so they never disagree.
"""
from __future__ import annotations

import html
import json
import time
from importlib import resources

from lab.drill import mechanisms, nodes as nodelib

# lane states the page knows (colours and text labels in view.css / view.js)
OK, FAIL, NONE = "ok", "fail", "none"
SLOW = 2.0          # an OK answer this slow is drawn as "slow" (a stall the client felt)
GAP = 3.0           # probes with the same outcome less than this apart (s) join one segment


def _t0(journal: dict) -> float:
    t = journal.get("times", {})
    return (t.get("inject_start") or t.get("injected") or t.get("probes_started")
            or t.get("started") or 0.0)


def _end(journal: dict, now: float | None) -> float:
    t = journal.get("times", {})
    return t.get("probes_stopped") or t.get("finished") or now or time.time()


def _seg(a: float, b: float, state: str, text: str, t0: float) -> list:
    return [round(a - t0, 2), round(max(b, a) - t0, 2), state, text]


def slow_limit(probes: list[dict], t0: float) -> float:
    """An OK answer this slow is a stall the client felt: SLOW, or 4x the steady median
    (an emulated VM's handshakes take seconds even when all is well)."""
    steady = sorted(p.get("lat", 0.0) for p in probes if p["ok"] and p["t"] < t0)
    return max(SLOW, 4 * steady[len(steady) // 2]) if steady else SLOW


def probe_segments(probes: list[dict], t0: float) -> list[list]:
    """Consecutive probes with the same outcome as one segment (each probe covers its own
    time, [t, t + latency], and the gap until the next one)."""
    out: list[list] = []
    rows = sorted(probes, key=lambda r: r["t"])
    limit = slow_limit(rows, t0)
    for i, p in enumerate(rows):
        state = OK if p["ok"] else FAIL
        if p["ok"] and p.get("lat", 0.0) >= limit:
            state = "slow"
        a = p["t"]
        b = rows[i + 1]["t"] if i + 1 < len(rows) else p["t"] + max(p.get("lat", 0.0), 0.2)
        b = max(b, p["t"] + p.get("lat", 0.0)) if not p["ok"] else b
        text = {"ok": "OK", "fail": "FAIL " + str(p.get("err", ""))[:40], "slow":
                f"slow {p.get('lat', 0):.1f} s"}[state]
        if out and out[-1][2] == state and a - t0 <= out[-1][1] + GAP:
            out[-1][1] = round(max(out[-1][1], b - t0), 2)
            continue
        out.append(_seg(a, b, state, text, t0))
    # segments must not overlap the next one's start
    for x, y in zip(out, out[1:]):
        x[1] = min(x[1], y[0])
    return out


def step_segments(changes: list[tuple[float, str]], end: float, t0: float,
                  kind=lambda s: "info") -> list[list]:
    """A state that changes now and then (HAProxy server, holder, Ready) as segments."""
    out = []
    for i, (t, state) in enumerate(changes):
        nt = changes[i + 1][0] if i + 1 < len(changes) else end
        if out and out[-1][3] == state:
            out[-1][1] = round(nt - t0, 2)
            continue
        out.append(_seg(t, nt, kind(state), state, t0))
    return out


def _lb_state(s: str) -> str:
    s = s.upper()
    if s.startswith("UP"):
        return OK if "/" not in s else "slow"      # "UP 1/3": failing checks, still UP
    if s.startswith("DOWN") or s in ("NO HAPROXY",):
        return FAIL
    if s.startswith(("MAINT", "NOLB", "DRAIN")):
        return "slow"
    return NONE


def _holder_state(s: str) -> str:
    return NONE if s == "?" else FAIL if s in ("nobody", "none", "") else "info"


def _expect_words(e: dict | None) -> str:
    if not e:
        return ""
    word = e.get("expect", "").upper() + (f" < {e['within']:g} s" if e.get("within") else "")
    acts = ", ".join(f"{mechanisms.NAMES.get(m['id'], m['id'])}"
                     + (f" ~{m['predicted']:g} s" if m.get("predicted") is not None else "")
                     for m in e.get("mechanisms", ()) if m["id"] != "no_failover")
    return word + (f" ({acts})" if acts else "")


def _current(probes: list[dict], now: float, stale: float) -> str:
    """What the lane shows right now: the last probe's outcome if it is recent."""
    if not probes:
        return NONE
    last = max(probes, key=lambda r: r["t"])
    if now - (last["t"] + last.get("lat", 0.0)) > stale:
        return NONE
    return OK if last["ok"] else FAIL


def _watch_segments(recs: list[dict], t_start: float, end: float,
                    t0: float) -> tuple[list[list], list[list]]:
    """A long-lived watch: 'flowing' while it delivers (renewals arrive every few s),
    'silent' when nothing came for longer than a kubelet's renewal period, 'broken'
    between a break and the reopening."""
    out: list[list] = []
    data = sorted(r["t"] for r in recs if r.get("kind") != "conn")
    conn = sorted((r["t"], r.get("state"), r.get("err", "")) for r in recs
                  if r.get("kind") == "conn")
    points = [t_start] + data + [end]
    for a, b in zip(points, points[1:]):
        if b - a > nodelib.RENEW_EVERY:
            out.append(_seg(a, b, FAIL, f"silent {b - a:.0f} s", t0))
        else:
            if out and out[-1][2] == OK:
                out[-1][1] = round(b - t0, 2)
            else:
                out.append(_seg(a, b, OK, "flowing", t0))
    marks = [[round(t - t0, 2), "broken" if st == "broken" else "open", err[:60]]
             for t, st, err in conn if st in ("broken", "open")]
    return out, marks


def _drill_model(journal: dict, now: float | None = None) -> dict:
    t0 = _t0(journal)
    times = journal.get("times", {})
    end = _end(journal, now)
    start = times.get("probes_started") or times.get("started") or t0
    exps = journal.get("expectations", {})
    v = journal.get("verdict") or {}
    vpaths = v.get("paths", {})
    probes = journal.get("probes", {})
    interval = journal.get("settings", {}).get("probe_interval", 0.2) or 0.2
    stale = max(3.0, 3 * interval + journal.get("settings", {}).get("probe_timeout", 1.0))
    path_info = {p["key"]: p for p in journal.get("paths", [])}
    groups = []

    lanes = []
    for key in list(exps) or sorted(k for k in probes if k not in ("canary",)):
        rows = probes.get(key, [])
        info = path_info.get(key, {})
        vp = vpaths.get(key, {})
        lanes.append({
            "id": f"path:{key}", "label": key,
            "sub": (f"{info.get('client', '')}" + (f" via {info['via']}" if info.get("via")
                                                    else "")) if info else
                   ("create+delete a ConfigMap" if key == "write" else ""),
            "segments": probe_segments(rows, t0),
            "state": _current(rows, end, stale),
            "failed": sum(1 for r in rows if not r["ok"]),
            "expect": _expect_words(exps.get(key)),
            "expect_kind": (exps.get(key) or {}).get("expect", ""),
            "measured": vp.get("measured"), "agree": vp.get("agree"),
            "verdict": vp.get("verdict", "")})
    if probes.get("canary"):
        rows = probes["canary"]
        lanes.append({"id": "path:canary", "label": "host canary",
                      "sub": "a loopback server of the probe worker: when it is slow, the host "
                             "was starved and timeouts then are not counted",
                      "segments": probe_segments(rows, t0), "state": _current(rows, end, stale),
                      "expect": ""})
    groups.append({"id": "paths", "title": "Access paths (a fresh connection per probe)",
                   "lanes": lanes})

    watches = journal.get("watches", {})
    lanes = []
    for key in sorted(k for k in watches if k.startswith(nodelib.WATCH_PREFIX)):
        segs, marks = _watch_segments(watches[key], start, end, t0)
        ll = journal.get("long_lived", {}).get(key[len(nodelib.WATCH_PREFIX):], {})
        lanes.append({"id": key, "label": key[len(nodelib.WATCH_PREFIX):],
                      "sub": "a watch that stays open, as kubelets and kube-proxy hold it",
                      "segments": segs, "marks": marks,
                      "state": segs[-1][2] if segs else NONE, "expect": "",
                      "measured": (f"longest silence {ll['longest_silence']:.1f} s"
                                   + (f", {len(ll['breaks'])} break(s)" if ll.get("breaks")
                                      else "") if ll else None)})
    if lanes:
        groups.append({"id": "watches", "title": "Long-lived watches (what a kubelet's "
                       "connection feels)", "lanes": lanes})

    nexp = journal.get("node_expectations", {})
    vnodes = v.get("nodes", {})
    lanes = []
    for label, changes in node_rows(journal):
        node, what = label.rsplit(" ", 1)
        e = nexp.get(node, {})
        kind = (lambda s: OK if s.startswith("UP") else FAIL)
        segs = step_segments(changes, end, t0, kind)
        for s in segs:
            s[3] = s[3].split(" ", 1)[1]
        lanes.append({
            "id": f"node:{node}:{what}", "label": f"{node} {what}",
            "sub": "Lease renewals (every 10 s)" if what == "heartbeats" else
                   "; ".join(filter(None, ("Ready condition (node controller)",
                                           nodelib.eviction_text(journal.get("nodes", {})
                                                                 .get(node, {}))))),
            "segments": segs, "state": segs[-1][2] if segs else NONE,
            "expect": (f"heartbeats {e['heartbeats']}" if what == "heartbeats" and e else
                       {True: "NotReady expected", False: "stays Ready",
                        None: "Ready or not (timing)"}.get(e.get("not_ready"), "")
                       if e else ""),
            "agree": vnodes.get(node, {}).get("agree") if what == "Ready" else None,
            "verdict": vnodes.get(node, {}).get("verdict", "") if what == "Ready" else ""})
    if lanes:
        groups.append({"id": "nodes", "title": "Nodes (what their kubelets live through)",
                       "lanes": lanes})

    lanes = []
    for label, changes in state_rows(journal):
        kind = _lb_state if "->" in label or "HAProxy" in label else _holder_state
        segs = step_segments(changes, end, t0, kind)
        lanes.append({"id": "state:" + label, "label": label, "segments": segs,
                      "state": segs[-1][2] if segs else NONE,
                      "sub": ("HAProxy backend server" if "->" in label else
                              "who holds it" if "leader" in label or "VIP" in label
                              else "leader election lease holder"), "expect": ""})
    if lanes:
        groups.append({"id": "state", "title": "Load balancer, VIP, leases, etcd leader",
                       "lanes": lanes})

    markers = []
    for name, label in (("inject_start", "injected"), ("restore_start", "restore"),
                        ("restored", "restored"), ("recovered", "recovered"),
                        ("nodes_recovered", "nodes recovered")):
        if times.get(name):
            markers.append({"id": label.replace(" ", "-"), "t": round(times[name] - t0, 2),
                            "label": label})
    fault_end = times.get("restore_start")
    verdict = None
    if v:
        sp = v.get("mechanisms") or {}
        verdict = {"ok": bool(v.get("ok")), "reasons": v.get("reasons", []),
                   "headline": ("as expected on every path" if v.get("ok") else
                                "differs from the expectation"),
                   "mechanisms": [{"name": m["name"], "predicted": mechanisms._s(m["predicted"]),
                                   "measured": mechanisms._s(m["measured"]),
                                   "agree": m["agree"], "setting": m["setting"]}
                                  for m in sp.get("mechanisms", [])],
                   "why": [f"{k}: expected {exps.get(k, {}).get('expect')}: "
                           f"{exps.get(k, {}).get('reason', '')}"
                           for k, p in vpaths.items() if not p.get("agree")]}
    return {
        "kind": "drill", "id": journal.get("id", ""), "lab": journal.get("lab", ""),
        "case": journal.get("case"), "provider": journal.get("provider", ""),
        "fault": journal.get("fault", ""), "targets": journal.get("targets", []),
        "status": journal.get("status", ""), "fault_summary": journal.get("fault_summary", ""),
        "restore_summary": journal.get("restore_summary", ""),
        "duration": journal.get("settings", {}).get("duration"),
        "start": round(start - t0, 2), "end": round(end - t0, 2),
        "now": round((now or end) - t0, 2),
        "injected": bool(times.get("inject_start")),
        "fault_band": ([round(times["inject_start"] - t0, 2),
                        round((fault_end or end) - t0, 2)] if times.get("inject_start")
                       else None),
        "markers": markers, "groups": groups, "verdict": verdict,
        "errors": journal.get("errors", []),
    }


def model(journal: dict, now: float | None = None) -> dict:
    """The view of a drill journal, or of a runbook (its drills one after another)."""
    if journal.get("kind") == "runbook":
        return {"kind": "runbook", "id": journal.get("id", ""), "lab": journal.get("lab", ""),
                "case": journal.get("case"),
                "steps": [{"step": s.get("step"), "fault": s.get("fault"),
                           "targets": s.get("targets", []), "result": s.get("result", ""),
                           "ok": s.get("ok")} for s in journal.get("steps", [])],
                "verdict": journal.get("verdict") or None,
                "drills": [_drill_model(j) for j in journal.get("journals", [])]}
    return _drill_model(journal, now)


def live_journal(journal: dict, collector_snapshot: dict) -> dict:
    """A running drill's journal with what the collector has seen so far (and its node
    lanes), for the live view."""
    j = {**journal, **collector_snapshot}
    j["nodes"] = nodelib.node_lanes(j) if j.get("times", {}).get("inject_start") else {}
    return j


# ------------------------------------------------------------------ lanes from the journal

def state_rows(journal: dict) -> list[tuple[str, list[tuple[float, str]]]]:
    """HAProxy servers, the VIP holder, the two leases and the etcd leader as step lanes."""
    rows: dict[str, list] = {}
    for t, lb, server, status, _check in journal.get("haproxy", []):
        rows.setdefault(f"{lb} -> {server}" if server != "*" else f"{lb} (HAProxy)",
                        []).append((t, status))
    out = sorted(rows.items())
    if journal.get("vip"):
        out.append(("VIP holder", [(t, "+".join(h) or "nobody") for t, h in journal["vip"]]))
    leases = journal.get("leases", [])
    for lease in ("kube-controller-manager", "kube-scheduler"):
        changes = [(t, (h.get(lease) or "nobody").rsplit("_", 1)[0]) for t, h in leases]
        if changes:
            out.append((lease.replace("kube-", "") + " leader", changes))
    if journal.get("etcd"):
        out.append(("etcd leader", [(t, leader or "none") for t, leader, _ in
                                    sorted(journal["etcd"], key=lambda r: r[0])]))
    return out


def node_rows(journal: dict) -> list[tuple[str, list[tuple[float, str]]]]:
    """Two lanes per node: heartbeats (from the Lease renewals) and the Ready condition."""
    rows = []
    beats = nodelib.renewals(journal)
    ready: dict[str, list] = {}
    for r in journal.get("watches", {}).get(nodelib.NODES_WATCH, []):
        if r.get("kind") == "node":
            state = "UP Ready" if r["ready"] else "DOWN NotReady"
            lane = ready.setdefault(r["node"], [])
            if not lane or lane[-1][1] != state:
                lane.append((r["t"], state))
    stop = journal.get("times", {}).get("probes_stopped")
    for node in sorted(set(beats) | set(ready)):
        changes = []
        times = beats.get(node, [])
        for a, b in zip(times, times[1:] + [None]):
            changes.append((a, "UP beats"))
            late = b if b is not None else (stop or time.time())
            if late - a > nodelib.RENEW_EVERY * 1.5:
                changes.append((a + nodelib.RENEW_EVERY, "DOWN no heartbeat"))
        if changes:
            rows.append((f"{node} heartbeats", changes))
        if ready.get(node):
            rows.append((f"{node} Ready", ready[node]))
    return rows


# ------------------------------------------------------------------ the page

def asset(name: str) -> str:
    return resources.files("lab.drill").joinpath("assets", name).read_text(encoding="utf-8")


def _json_for_script(data) -> str:
    """JSON that is safe inside <script>: no `</` can close the element."""
    return (json.dumps(data, separators=(",", ":"))
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def page(view: dict | None, *, live: bool = False, title: str = "halab drill") -> str:
    """The page. Offline (`live=False`): one self-contained file, the model inlined.
    Live: the same page; it loads view.css/view.js from the server and listens to
    /events."""
    if live:
        head = '<link rel="stylesheet" href="/view.css">'
        tail = '<script src="/view.js"></script>'
    else:
        head = f"<style>{asset('view.css')}</style>"
        tail = f"<script>{asset('view.js')}</script>"
    data = (f'<script type="application/json" id="halab-model">{_json_for_script(view)}'
            "</script>") if view is not None else ""
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{html.escape(title)}</title>{head}</head>"
            f'<body data-live="{"1" if live else "0"}"><main id="app">'
            '<p class="muted">halab draws this drill with JavaScript (nothing is loaded from '
            "outside this page).</p></main>"
            f"{data}{tail}</body></html>\n")


def report_page(journal: dict) -> str:
    """The offline HTML report: the page with the journal's view inlined (the caller
    brings the verdict: report.verdict_of)."""
    title = ("halab runbook " if journal.get("kind") == "runbook" else "halab drill ") + \
        str(journal.get("id", ""))
    return page(model(journal), title=title)
