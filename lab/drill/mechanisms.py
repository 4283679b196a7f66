"""Pure: a drill's error windows split into the mechanisms that make them, predicted
against measured.

Every expectation names the mechanisms that end (or keep up) its path's errors, each
with the seconds after injection at which it should act, worked out from the lab's
own settings (`lab.drill.expect`): HAProxy's health check, keepalived's VRRP, etcd's
election, kube-apiserver's etcd client keepalive, nginx's connect timeout, kubelet's
heartbeat, the node lifecycle controller's grace period, leader election. This module
finds, for each of them, what the journal measured: the moment HAProxy marked the
server DOWN, the VIP moved, etcd had a new leader, a lease changed hands, a node went
NotReady, a path's errors stopped, the longest gap between Lease renewals. The report
puts the two side by side, so a window that lasted longer than predicted points at
the mechanism that was late.
"""
from __future__ import annotations

from lab.drill.window import fault_window, in_window

MARGIN = 2.0   # a measurement this much later than predicted still agrees (expect.MARGIN;
               # a journal's timing says the lab's own, larger on emulated VMs)


def _setting(mid: str, tm: dict) -> str:
    """The lab's own settings behind a mechanism, in words with their numbers."""
    g = lambda k, d="?": (f"{tm[k]:g}" if isinstance(tm.get(k), (int, float)) else d)  # noqa: E731
    return {
        "haproxy_check":
            f"HAProxy checks /readyz every {g('haproxy_inter')} s (fastinter "
            f"{g('haproxy_fastinter')} s once failing) and marks a server DOWN after fall "
            f"{g('haproxy_fall')} failed checks; a dead server fails a check after timeout "
            f"connect {g('haproxy_timeout_connect')} s, a hung one after timeout check "
            f"{g('haproxy_timeout_check')} s",
        "haproxy_rise":
            f"HAProxy marks a server UP again after rise {g('haproxy_rise')} good checks "
            f"{g('haproxy_downinter')} s apart",
        "haproxy_redispatch":
            f"option redispatch, retries {g('haproxy_retries')}: a refused connection is "
            "retried on another server",
        "vrrp":
            f"keepalived: VRRP advert every {g('advert_int')} s, the backup takes over after 3 "
            f"missed adverts + skew; chk_haproxy every 1 s, fall 2 ({g('vrrp_check')} s)",
        "etcd_election":
            f"etcd election timeout {g('etcd_election')} s: a follower campaigns after a "
            f"random {g('etcd_election')}-{g('etcd_election_max')} s without a heartbeat "
            "(pre-vote first)",
        "etcd_keepalive":
            "kube-apiserver's etcd client (gRPC): keepalive 30 s idle + 10 s timeout, "
            "TCP_USER_TIMEOUT 10 s: a dead member's connection dies ~10 s after the first "
            "unanswered request, a frozen one's after ~40 s",
        "etcd_refused":
            "kube-apiserver's etcd client moves to the next --etcd-servers member when one "
            "refuses",
        "etcd_quorum": "etcd needs a majority of its members to commit anything",
        "nginx_connect_timeout":
            f"nginx: proxy_connect_timeout {g('nginx_connect_timeout')} s, then the next "
            f"server; the failed one is tried again every fail_timeout "
            f"{g('nginx_fail_timeout')} s (passive checks only)",
        "nginx_refused": "nginx: a refused connection goes to the next server at once",
        "nginx_frozen":
            "nginx has passive checks only and proxy_timeout 10 min: a server that accepts "
            "TCP and never answers is never taken out",
        "no_failover":
            "nothing fails over for this client: it has one server, or is itself the target; "
            "it fails until the restore",
        "kubelet_renew": "the kubelet renews its node Lease every 10 s",
        "kubelet_retry":
            "a Lease renewal that meets a failing server waits up to 10 s; the kubelet then "
            "closes its connections and dials again: a gap of at most 10 + 10 s",
        "node_monitor_grace":
            "kube-controller-manager marks a node NotReady when it has not heard from it for "
            "node-monitor-grace-period 40 s, checking every 5 s",
        "leader_election":
            f"kube-controller-manager and kube-scheduler leader election: lease "
            f"{g('leader_lease', '15')} s, retry every {g('leader_retry', '2')} s: a standby "
            f"takes over ~{g('leader_takeover', '17')} s after the holder stopped renewing",
    }.get(mid, mid)


NAMES = {
    "haproxy_check": "HAProxy health check", "haproxy_rise": "HAProxy rise",
    "haproxy_redispatch": "HAProxy redispatch", "vrrp": "keepalived VRRP takeover",
    "etcd_election": "etcd leader election", "etcd_keepalive": "etcd client keepalive",
    "etcd_refused": "etcd client failover", "etcd_quorum": "etcd quorum",
    "nginx_connect_timeout": "nginx connect timeout", "nginx_refused": "nginx next server",
    "nginx_frozen": "nginx passive checks", "no_failover": "no failover (until restore)",
    "kubelet_renew": "kubelet Lease renewal", "kubelet_retry": "kubelet heartbeat retry",
    "node_monitor_grace": "node-monitor-grace-period", "leader_election": "leader election",
}


def _rel(journal: dict, t: float) -> float:
    return round(t - (journal.get("times", {}).get("inject_start")
                      or journal.get("times", {}).get("injected") or t), 1)


def _fault_seconds(journal: dict) -> float | None:
    start, end = fault_window(journal)
    return None if start is None or end is None else round(end - start, 1)


def _lease_takeover(journal: dict) -> tuple[float | None, str]:
    """The first lease that changed hands after the injection, away from a target."""
    targets = set(journal.get("targets", []))
    start, _ = fault_window(journal)
    before = None
    for t, holders in journal.get("leases", []):
        if before is not None and start is not None and t >= start:
            for lease, h in holders.items():
                old = (before.get(lease) or "").rsplit("_", 1)[0]
                new = (h or "").rsplit("_", 1)[0]
                if old in targets and new and new != old:
                    return round(t - start, 1), f"{lease}: {old} -> {new}"
        before = holders
    return None, ""


def _slow_answers(journal: dict, key: str) -> tuple[float | None, str]:
    """nginx's connect timeout shows as OK answers about that much slower than steady."""
    start, end = fault_window(journal)
    rows = journal.get("probes", {}).get(key, [])
    if start is None or end is None:
        return None, ""
    steady = sorted(p.get("lat", 0.0) for p in rows if p["ok"] and p["t"] < start)
    inside = [p.get("lat", 0.0) for p in rows if p["ok"] and in_window(p, start, end)]
    if not steady or not inside:
        return None, ""
    base = steady[len(steady) // 2]
    extra = round(max(inside) - base, 1)
    return extra, (f"slowest OK answer on {key} {max(inside):.1f} s (steady {base:.2f} s): "
                   f"{extra:g} s extra")


def _measure(mid: str, journal: dict, v: dict, key: str | None) -> tuple[float | None, str]:
    """(seconds after injection the mechanism acted, or what it cost; evidence)."""
    targets = set(journal.get("targets", []))
    path = v.get("paths", {}).get(key or "", {})
    lane = journal.get("nodes", {}).get(key or "", {})
    if mid == "haproxy_check":
        hits = {k: s for k, s in (v.get("haproxy_down_after") or {}).items()
                if k.split("/")[-1] in targets}
        if hits:
            k = min(hits, key=hits.get)
            return hits[k], f"HAProxy marked {k} DOWN at +{hits[k]:g} s"
        return None, "HAProxy never marked a target DOWN during the fault"
    if mid == "haproxy_rise":
        return _haproxy_back_up(journal)
    if mid == "vrrp":
        s = v.get("vip_moved_after")
        return (s, f"the VIP moved at +{s:g} s") if s is not None else (None, "the VIP did "
                                                                              "not move")
    if mid == "etcd_election":
        s = v.get("etcd_elected_after")
        return ((s, f"etcd had a new leader at +{s:g} s") if s is not None
                else (None, "no new etcd leader seen during the fault"))
    if mid == "leader_election":
        return _lease_takeover(journal)
    if mid in ("kubelet_renew", "kubelet_retry"):
        gap = lane.get("max_heartbeat_gap")
        return ((gap, f"longest gap between {key}'s Lease renewals {gap:g} s")
                if gap is not None else (None, "no Lease renewal seen"))
    if mid == "node_monitor_grace":
        down = [tr["t"] for tr in lane.get("ready_transitions", []) if not tr["ready"]]
        return ((down[0], f"{key} NotReady at +{down[0]:g} s") if down
                else (None, f"{key} stayed Ready"))
    if mid == "nginx_connect_timeout":
        return _slow_answers(journal, key or "")
    if not path:
        return None, ""
    if mid == "no_failover":
        # a probe still in flight at the restore ends after it: the fault is the bound
        fault = _fault_seconds(journal) or 0.0
        run = min(path.get("longest_streak") or 0.0, fault) if fault else \
            (path.get("longest_streak") or 0.0)
        return (round(run, 1),
                f"{key} failed {path.get('failures', 0)} of {path.get('probes', 0)} probes, "
                f"longest run {path.get('longest_streak', 0):g} s ({path.get('measured')})")
    # the errors of the path end when the mechanism has acted
    stop = path.get("errors_stop_after")
    if path.get("measured") == "up" or stop is None:
        return 0.0, f"{key}: no errors that count ({path.get('why', '')})"
    return stop, f"{key}: errors from +{path['first_failure']:g} s to +{stop:g} s"


def _haproxy_back_up(journal: dict) -> tuple[float | None, str]:
    """When every server HAProxy took DOWN for a reason other than the fault (etcd had no
    leader) was UP again."""
    start, end = fault_window(journal)
    targets = set(journal.get("targets", []))
    down, back = set(), None
    for t, lb, server, status, _check in journal.get("haproxy", []):
        if start is None or t < start or server in targets:
            continue
        name = f"{lb}/{server}"
        if str(status).startswith("DOWN"):
            down.add(name)
        elif str(status).startswith("UP") and name in down:
            down.discard(name)
            if not down:
                back = t
    if back is None:
        return None, "HAProxy took no other server DOWN"
    return _rel(journal, back), f"every server UP again at +{_rel(journal, back):g} s"


def _acted(mid: str, journal: dict) -> bool:
    """Whether the mechanism had anything to do in this drill. The expectation names
    leader election when a control plane is hit; it acts only if that node held a lease
    when the drill began."""
    if mid != "leader_election":
        return True
    holders = (journal.get("context") or {}).get("lease_holders") or {}
    return not holders or any(h in journal.get("targets", []) for h in holders.values())


EVENTS = ("haproxy_check", "vrrp", "etcd_election", "node_monitor_grace", "leader_election")


def _agrees(mid: str, predicted: float | None, measured: float | None,
            fault: float | None, margin: float = MARGIN) -> bool | None:
    """Measured no later than predicted (+ the lab's margin: larger on emulated VMs). An
    event that should have happened while the fault was still on and never did is late
    too."""
    if predicted is None:
        return None
    if measured is None:
        if mid in EVENTS and fault is not None and fault >= predicted + margin:
            return False
        return None
    if mid == "no_failover":      # down for the whole fault, as predicted
        return measured >= 0.8 * predicted
    return measured <= predicted + margin


def split(journal: dict, v: dict) -> dict:
    """{"paths": {key: [row]}, "nodes": {node: [row]}, "mechanisms": [summary]}, each row
    {"id", "name", "predicted", "measured", "evidence", "agree"}."""
    tm = journal.get("timing", {})
    fault = _fault_seconds(journal)
    out: dict = {"paths": {}, "nodes": {}, "mechanisms": []}
    seen: dict[str, dict] = {}

    def rows(owner: str, mechs, kind: str) -> list[dict]:
        got = []
        for m in mechs or ():
            mid, pred = m["id"], m.get("predicted")
            if not _acted(mid, journal):
                continue
            if mid == "no_failover" and pred is None:
                pred = fault
            meas, evidence = _measure(mid, journal, v, owner)
            row = {"id": mid, "name": NAMES.get(mid, mid), "predicted": pred,
                   "measured": meas, "evidence": evidence, "agree": _agrees(mid, pred, meas, fault,
                                                     tm.get("margin", MARGIN))}
            got.append(row)
            s = seen.setdefault(mid, {"id": mid, "name": NAMES.get(mid, mid),
                                      "setting": _setting(mid, tm), "rows": []})
            s["rows"].append({**row, kind: owner})
        return got

    for key, e in journal.get("expectations", {}).items():
        if key in v.get("paths", {}):
            out["paths"][key] = rows(key, e.get("mechanisms"), "path")
    for node, e in journal.get("node_expectations", {}).items():
        if node in journal.get("nodes", {}):
            out["nodes"][node] = rows(node, e.get("mechanisms"), "node")
    for mid, s in seen.items():
        r = s["rows"]
        preds = [x["predicted"] for x in r if x["predicted"] is not None]
        meas = [x["measured"] for x in r if x["measured"] is not None]
        judged = [x["agree"] for x in r if x["agree"] is not None]
        out["mechanisms"].append({
            "id": mid, "name": s["name"], "setting": s["setting"],
            "predicted": [min(preds), max(preds)] if preds else None,
            "measured": [min(meas), max(meas)] if meas else None,
            "agree": all(judged) if judged else None,
            "late": [x.get("path") or x.get("node") for x in r if x["agree"] is False],
            "applies_to": [x.get("path") or x.get("node") for x in r]})
    return out


def _s(x) -> str:
    """Seconds, or a [low, high] range of them."""
    if x is None:
        return "-"
    if isinstance(x, (list, tuple)):
        lo, hi = x
        return _s(lo) if round(lo, 1) == round(hi, 1) else f"{lo:.1f}-{hi:.1f} s"
    return f"{x:.1f} s"


def path_words(rows: list[dict]) -> str:
    """'etcd client keepalive: predicted 10 s, measured 10.7 s; ...' for one path."""
    return "; ".join(f"{r['name']}: predicted {_s(r['predicted'])}, measured "
                     f"{_s(r['measured'])}" + (" (LATE)" if r["agree"] is False else "")
                     for r in rows if r["id"] not in ("kubelet_renew",))


def lines(journal: dict, v: dict) -> list[str]:
    """The terminal report's section: each mechanism once, with its setting, then every
    path's error window as the mechanisms that bound it."""
    sp = v.get("mechanisms") or {}
    if not sp.get("mechanisms"):
        return []
    out = ["", "Why the errors lasted as long as they did (mechanism: predicted / measured "
               "seconds after injection; nginx connect timeout: what one request costs):"]
    for m in sp["mechanisms"]:
        verdict = {True: "as predicted", False: "LATER than predicted on "
                   + ", ".join(m["late"]), None: "not measured"}[m["agree"]]
        out.append(f"  {m['name']}: predicted {_s(m['predicted'])} / measured "
                   f"{_s(m['measured'])}, {verdict}")
        out.append(f"      {m['setting']}")
    for key, rows in sp.get("paths", {}).items():
        p = v.get("paths", {}).get(key, {})
        if not p.get("failures") or not rows:
            continue
        out.append(f"  {key}: errors +{p['first_failure']:.1f} .. +{p['errors_stop_after']:.1f}"
                   f" s = {path_words(rows)}")
    for node, rows in sp.get("nodes", {}).items():
        words = path_words(rows)
        if words:
            out.append(f"  node {node}: {words}")
    return out
