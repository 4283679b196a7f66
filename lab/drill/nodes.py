"""Pure: what the cluster's own clients lived through during a drill.

The drill keeps long-lived watches open (`lab.drill.prober --mode watch`): on every
access path one on the nodes' Leases, the way a kubelet's or kube-proxy's informer
holds its connection, and through a control plane the fault does not touch one on
the Nodes. From their records (`journal["watches"]`) this module makes:

- `nodes`: per node, the Lease renewals its kubelet made (every 10 s when all is well)
  and the longest gap between two of them around the fault, its Ready transitions
  and taints, and the pods evicted from it (their deletion began after the injection:
  the node controller deletes a pod once its node's `unreachable`/`not-ready` taint
  outlasts the pod's toleration, 300 s by default), with times in seconds since the
  injection;
- `long_lived`: per access path, how long its watch went without a byte while the
  fault was on, and when the connection broke and came back.

A renewal is dated by the kubelet that made it (`renewTime`), so a gap is what the
kubelet did, whichever watch delivered it, even one that reconnected later: a watch
resumed from its last resourceVersion replays what it missed.
"""
from __future__ import annotations

NODES_WATCH = "nodes"          # the watch on the Nodes, through an untouched control plane
PODS_WATCH = "pods"            # the watch on the pods bound to nodes, the same way
WATCH_PREFIX = "watch:"        # the Lease watch of one access path: "watch:<path key>"
RENEW_EVERY = 10.0             # a kubelet renews its Lease every 10 s (1.20 and later)


def _window(journal: dict) -> tuple[float | None, float | None, float | None]:
    t = journal.get("times", {})
    inj = t.get("inject_start") or t.get("injected")
    end = t.get("probes_stopped") or t.get("finished")
    start = t.get("probes_started") or t.get("warmup_start") or inj
    return start, inj, end


def _rel(t: float, inj: float) -> float:
    return round(t - inj, 1)


def renewals(journal: dict) -> dict[str, list[float]]:
    """Every Lease renewal any watch saw, per node, in time order (kubelet's clock)."""
    out: dict[str, set] = {}
    for key, recs in journal.get("watches", {}).items():
        for r in recs:
            if r.get("kind") == "lease" and r.get("node") and r.get("renew"):
                out.setdefault(r["node"], set()).add(r["renew"])
    return {n: sorted(v) for n, v in out.items()}


def _no_renewals() -> dict:
    """The lane of a node that no watch saw renewing (only its Node or its pods)."""
    return {"renewals": 0, "max_heartbeat_gap": None, "gap_from": None,
            "ready_transitions": [], "taints": []}


def node_lanes(journal: dict) -> dict[str, dict]:
    """The journal's `nodes` section (see the module's docstring)."""
    start, inj, end = _window(journal)
    if inj is None or end is None:
        return {}
    lanes: dict[str, dict] = {}
    for node, times in renewals(journal).items():
        seen = [t for t in times if start is None or t >= start - RENEW_EVERY]
        seen = [t for t in seen if t <= end]
        # the gap that was still open when the probes stopped counts too
        points = seen + [end]
        gaps = [(b - a, a) for a, b in zip(points, points[1:])]
        gap, at = max(gaps, default=(0.0, inj))
        inside = [t for t in seen if inj <= t <= end]
        lanes[node] = {"renewals": len(inside), "max_heartbeat_gap": round(gap, 1),
                       "gap_from": _rel(at, inj), "ready_transitions": [], "taints": []}
    state: dict[str, bool] = {}
    for r in journal.get("watches", {}).get(NODES_WATCH, []):
        if r.get("kind") != "node" or not r.get("node"):
            continue
        lane = lanes.setdefault(r["node"], _no_renewals())
        if state.get(r["node"]) != r["ready"]:
            if r["node"] in state:     # the first record is the state before: no transition
                lane["ready_transitions"].append({"t": _rel(r["t"], inj), "ready": r["ready"],
                                                  "reason": r.get("reason", "")})
            state[r["node"]] = r["ready"]
        for taint in r.get("taints", []):
            if taint not in lane["taints"]:
                lane["taints"].append(taint)
    for node, ready in state.items():
        lanes[node]["ready_at_end"] = ready
    for node, evicted in evictions(journal).items():
        lanes.setdefault(node, _no_renewals())["evictions"] = evicted
    return dict(sorted(lanes.items()))


def evictions(journal: dict) -> dict[str, list[dict]]:
    """Per node, the pods whose deletion began during the drill (after the injection, up
    to the end of the probes): [{"t", "pod"}], in time order. A pod already being
    deleted when the watch first listed it is not counted."""
    _, inj, end = _window(journal)
    if inj is None or end is None:
        return {}
    out: dict[str, list[dict]] = {}
    deleting: dict[str, bool] = {}
    for r in journal.get("watches", {}).get(PODS_WATCH, []):
        if r.get("kind") != "pod" or not r.get("pod"):
            continue
        was = deleting.get(r["pod"])
        deleting[r["pod"]] = bool(r.get("deleting"))
        if r.get("deleting") and was is False and inj <= r["t"] <= end:
            out.setdefault(r["node"], []).append({"t": _rel(r["t"], inj), "pod": r["pod"]})
    return dict(sorted(out.items()))


def eviction_text(lane: dict) -> str:
    """"2 pod(s) evicted from +41.8 s (ns/a, ns/b)" for a node lane; "" without any."""
    gone = lane.get("evictions", [])
    if not gone:
        return ""
    return (f"{len(gone)} pod(s) evicted from {gone[0]['t']:+.1f} s "
            f"({', '.join(e['pod'] for e in gone[:3])}{', ...' if len(gone) > 3 else ''})")


def long_lived(journal: dict) -> dict[str, dict]:
    """Per access path: the watch's longest silence during the fault (no renewal or node
    change delivered), when it broke and when it was open again (s since the injection)."""
    start, inj, end = _window(journal)
    if inj is None or end is None:
        return {}
    out = {}
    for key, recs in journal.get("watches", {}).items():
        if not key.startswith(WATCH_PREFIX):
            continue
        # what it carried: renewals and node changes (a reconnect that brings nothing
        # is no news to an informer)
        times = sorted(r["t"] for r in recs if inj <= r["t"] <= end and r.get("kind") != "conn")
        points = [inj] + times + [end]
        gap, at = max(((b - a, a) for a, b in zip(points, points[1:])), default=(0.0, inj))
        breaks = [_rel(r["t"], inj) for r in recs
                  if r.get("kind") == "conn" and r.get("state") == "broken"
                  and inj <= r["t"] <= end]
        reopened = [_rel(r["t"], inj) for r in recs
                    if r.get("kind") == "conn" and r.get("state") == "open" and r["t"] > inj]
        errs = sorted({r.get("err", "") for r in recs if r.get("state") == "broken"
                       and inj <= r["t"] <= end})
        out[key[len(WATCH_PREFIX):]] = {"longest_silence": round(gap, 1),
                                        "silence_from": _rel(at, inj), "breaks": breaks,
                                        "reopened": reopened[:1], "errors": errs}
    return out


def lines(journal: dict) -> list[str]:
    """The terminal report's lines about the nodes and the long-lived watches."""
    out = []
    for node, lane in journal.get("nodes", {}).items():
        words = []
        if lane.get("max_heartbeat_gap") is not None:
            words.append(f"{lane['renewals']} Lease renewals, longest gap "
                         f"{lane['max_heartbeat_gap']:.1f} s (from {lane['gap_from']:+.1f} s)")
        for tr in lane.get("ready_transitions", []):
            words.append(f"{'Ready' if tr['ready'] else 'NotReady'} at {tr['t']:+.1f} s")
        if not lane.get("ready_transitions") and "ready_at_end" in lane:
            words.append("Ready throughout" if lane["ready_at_end"] else "NotReady throughout")
        if lane.get("evictions"):
            words.append(eviction_text(lane))
        exp = journal.get("node_expectations", {}).get(node)
        if exp:
            words.append(f"expected: heartbeats {exp['heartbeats']}, "
                         + {True: "NotReady", False: "Ready", None: "Ready or not"}[
                             exp.get("not_ready")])
        judged = journal.get("verdict", {}).get("nodes", {}).get(node)
        if judged and not judged["agree"]:
            words.append("DIFFERS")
        out.append(f"node {node}: " + ", ".join(words))
    for path, w in journal.get("long_lived", {}).items():
        text = (f"watch through {path}: longest silence {w['longest_silence']:.1f} s "
                f"(from {w['silence_from']:+.1f} s)")
        if w["breaks"]:
            text += (f"; broke at {', '.join(f'{b:+.1f} s' for b in w['breaks'][:3])}"
                     f" ({'; '.join(w['errors'])[:80]})")
            if w["reopened"]:
                text += f", open again at {w['reopened'][0]:+.1f} s"
        out.append(text)
    return out
