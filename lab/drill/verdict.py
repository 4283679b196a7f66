"""Pure: what the probes measured on each path, and whether it matches the expectation.

Works on a journal dict only (probes, times, expectations), so it is tested on
synthetic journals and a report can be re-judged later.
"""
from __future__ import annotations

from lab.drill import mechanisms
from lab.drill.expect import SEVERITY
from lab.drill.window import fault_window as _window, in_window  # noqa: F401

ISOLATED_TOLERATED = 1   # `up` tolerates one isolated failed probe (a scheduling hiccup)


def streaks(probes: list[dict]) -> list[tuple[float, float, int]]:
    """Runs of consecutive failed probes: (first start, last end, count)."""
    out, cur = [], None
    for p in sorted(probes, key=lambda r: r["t"]):
        if not p["ok"]:
            end = p["t"] + p.get("lat", 0.0)
            cur = [p["t"], end, 1] if cur is None else [cur[0], max(cur[1], end), cur[2] + 1]
        elif cur is not None:
            out.append(tuple(cur))
            cur = None
    if cur is not None:
        out.append(tuple(cur))
    return out


def _merge(intervals) -> list[tuple[float, float]]:
    """Overlapping intervals joined, in order."""
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


STALL = 0.25   # the canary (a loopback server) this late or slow: the host is starved


def host_stalls(canary: list[dict], threshold: float = STALL) -> list[tuple[float, float]]:
    """Intervals in which the canary probe, which needs nothing from the lab, was late/slow."""
    slow = [(p["t"] - p.get("lag", 0.0), p["t"] + p.get("lat", 0.0)) for p in canary
             if not p["ok"] or p.get("lag", 0.0) > threshold or p.get("lat", 0.0) > threshold]
    return _merge(slow)


def during(p: dict, stalls, slack: float = 0.1) -> bool:
    """The probe [start, end] overlaps one of the intervals."""
    a, b = p["t"] - slack, p["t"] + p.get("lat", 0.0) + slack
    return any(a < sb and sa < b for sa, sb in stalls)


def excused(p: dict, stalls: list[tuple[float, float]], slack: float = 0.1) -> bool:
    """A timeout that overlaps a host stall says nothing about the lab."""
    return not p["ok"] and p.get("err") == "timeout" and during(p, stalls, slack)


def seconds_inside(intervals, start: float, end: float) -> float:
    return round(sum(min(b, end) - max(a, start) for a, b in intervals
                     if b > start and a < end), 2)


SLOW_ANSWER = 2.0  # a direct probe this slow (and 4x its steady latency): that API server stalled




def _intersect(xs, ys) -> list[tuple[float, float]]:
    return [(max(a, c), min(b, d)) for a, b in xs for c, d in ys if max(a, c) < min(b, d)]


def lab_stalls(journal: dict, start: float, end: float) -> tuple[list[tuple[float, float]], dict]:
    """Intervals in which every control plane the fault leaves alone answered its direct
    probe very late (or not at all): the lab stalled on its own (an emulated VM starved of
    CPU, a host hiccup), and a path expected up that failed then says nothing about the
    fault. Returns (intervals, {direct path: its slowest answer in a stall})."""
    exps, probes = journal.get("expectations", {}), journal.get("probes", {})
    refs = [k for k, e in exps.items() if k.startswith("direct:") and e.get("expect") == "up"]
    common, slowest = None, {}
    for key in refs:
        rows = probes.get(key, [])
        steady = sorted(p.get("lat", 0.0) for p in rows if p["ok"] and p["t"] < start)
        limit = max(SLOW_ANSWER, 4 * steady[len(steady) // 2]) if steady else SLOW_ANSWER
        slow = [p for p in rows if p.get("lat", 0.0) >= limit and in_window(p, start, end)
                and (p["ok"] or p.get("err") == "timeout")]
        if not slow:
            return [], {}
        slowest[key] = round(max(p["lat"] for p in slow), 2)
        mine = _merge([(p["t"], p["t"] + p["lat"]) for p in slow])
        common = mine if common is None else _intersect(common, mine)
    return common or [], slowest


def classify(probes: list[dict], start: float, end: float, probe_interval: float = 0.2,
             stalls: list[tuple[float, float]] = (),
             lab_stalled: list[tuple[float, float]] = ()) -> dict:
    """Measure one path over the fault window [start, end). Timeouts in a host stall, and
    any failure while the lab itself stalled (`lab_stalled`), are left out and counted."""
    inside = sorted((p for p in probes if in_window(p, start, end)), key=lambda r: r["t"])
    n_excused = sum(1 for p in inside if excused(p, stalls))
    inside = [p for p in inside if not excused(p, stalls)]
    n_lab = sum(1 for p in inside if not p["ok"] and during(p, lab_stalled))
    inside = [p for p in inside if p["ok"] or not during(p, lab_stalled)]
    fails = [p for p in inside if not p["ok"]]
    res = {"probes": len(inside), "failures": len(fails), "excused": n_excused,
           "excused_lab": n_lab,
           "first_failure": None,
           "last_failure": None, "error_window": 0.0, "errors_stop_after": None,
           "longest_streak": 0.0, "max_latency": max((p.get("lat", 0) for p in inside),
                                                       default=0.0)}
    if not inside:
        res["measured"] = "unknown"
        res["why"] = "no probe results inside the fault window"
        return res
    runs = streaks(inside)
    res["longest_streak"] = round(max((r[1] - r[0] for r in runs), default=0.0), 2)
    if not fails:
        res["measured"] = "up"
        res["why"] = f"all {len(inside)} probes OK"
        return _note_excused(res)
    first, last = fails[0], fails[-1]
    res["first_failure"] = round(first["t"] - start, 2)
    res["last_failure"] = round(last["t"] - start, 2)
    res["error_window"] = round(last["t"] + last.get("lat", 0) - first["t"], 2)
    res["errors_stop_after"] = round(last["t"] - start, 2)
    errors = {}
    for p in fails:
        errors[p.get("err", "?")] = errors.get(p.get("err", "?"), 0) + 1
    res["errors"] = dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5])
    if len(fails) <= ISOLATED_TOLERATED and all(r[2] == 1 for r in runs):
        res["measured"] = "up"
        res["why"] = f"{len(fails)} isolated failure of {len(inside)} probes (tolerated)"
        return _note_excused(res)
    after_first = [p for p in inside if p["t"] >= first["t"]]
    fail_share = sum(1 for p in after_first if not p["ok"]) / len(after_first)
    duration = end - start
    tail = min(3.0, 0.25 * duration)
    ended_ok = all(p["ok"] for p in inside if p["t"] >= end - tail) and \
        any(p["t"] >= end - tail for p in inside)
    if ended_ok:
        res["measured"] = "blip"
        res["why"] = (f"{len(fails)} of {len(inside)} probes failed between "
                      f"+{res['first_failure']:g} s and +{res['last_failure']:g} s, then all OK")
    elif fail_share >= 0.9:
        res["measured"] = "down"
        res["why"] = (f"{len(fails)} of {len(inside)} probes failed, from "
                      f"+{res['first_failure']:g} s to the restore")
    else:
        res["measured"] = "degraded"
        res["why"] = (f"{len(fails)} of {len(inside)} probes failed, spread over the fault "
                      f"(+{res['first_failure']:g} s .. +{res['last_failure']:g} s), "
                      f"{100 * (1 - fail_share):.0f} % OK")
    return _note_excused(res)


def _note_excused(res: dict) -> dict:
    if res.get("excused"):
        res["why"] += (f"; {res['excused']} timeout(s) during host stalls not counted (the "
                       "canary, which needs nothing from the lab, was slow too)")
    if res.get("excused_lab"):
        res["why"] += (f"; {res['excused_lab']} failure(s) while the lab stalled not counted "
                       "(every control plane the fault leaves alone answered late then)")
    return res


def recovery(probes: list[dict], restored: float | None) -> dict:
    """After the restore: failures, and when the path became (and stayed) OK."""
    if restored is None:
        return {"failures": 0, "recovered_after": None}
    after = sorted((p for p in probes if p["t"] >= restored), key=lambda r: r["t"])
    fails = [p for p in after if not p["ok"]]
    if not after:
        return {"failures": 0, "recovered_after": None}
    if not fails:
        return {"failures": 0, "recovered_after": 0.0}
    last = fails[-1]
    later_ok = [p for p in after if p["t"] > last["t"] and p["ok"]]
    return {"failures": len(fails),
            "recovered_after": round(later_ok[0]["t"] - restored, 2) if later_ok else None}


def agree(expected: dict, measured: dict) -> tuple[bool, str]:
    """Does the measurement match the expectation? (ok, reason in plain words)."""
    exp, got = expected["expect"], measured["measured"]
    if got == "unknown":
        return False, "no measurement (no probe ran during the fault)"
    if got != exp and got in (expected.get("accept") or ()):
        return True, f"measured {got}, which the expectation accepts"
    if exp in ("up", "down"):
        if got == exp:
            return True, f"{exp} as expected"
        return False, f"expected {exp}, measured {got}: {measured['why']}"
    if SEVERITY[got] > SEVERITY[exp]:
        return False, f"expected at most {exp}, measured {got}: {measured['why']}"
    within = expected.get("within")
    if exp == "blip" and got == "blip" and within is not None \
            and measured["errors_stop_after"] > within:
        return False, (f"expected the errors to stop within {within:g} s, the last failed "
                       f"probe started +{measured['errors_stop_after']:g} s after injection")
    if got == exp:
        extra = (f" (errors stopped +{measured['errors_stop_after']:g} s after injection, "
                 f"bound {within:g} s)" if exp == "blip" and within else "")
        return True, f"{exp} as expected{extra}"
    return True, f"measured {got}, milder than the {exp} allowed"


def judge(journal: dict) -> dict:
    """Per path: measurement, recovery and agreement; overall ok and reasons."""
    start, end = _window(journal)
    restored = journal.get("times", {}).get("restored")
    interval = journal.get("settings", {}).get("probe_interval", 0.2)
    exps = journal.get("expectations", {})
    probes = journal.get("probes", {})
    paths, reasons = {}, []
    stalls = host_stalls(probes.get("canary", []))
    if start is None or end is None:
        return {"ok": False, "paths": {}, "reasons": ["the fault was never injected"],
                "healthy_after": _healthy(journal)}
    stalled_lab, slowest = lab_stalls(journal, start, end)
    for key, exp in exps.items():
        # a path expected up that goes through the control planes (not to one of them) fails
        # when they all stall; a direct path is the witness and is never excused
        excusable = exp["expect"] == "up" and not key.startswith("direct:")
        m = classify(probes.get(key, []), start, end, interval, stalls,
                     stalled_lab if excusable else ())
        r = recovery(probes.get(key, []), restored)
        ok, why = agree(exp, m)
        if r["recovered_after"] is None and r["failures"]:
            ok, why = False, why + "; did not recover after the restore"
        paths[key] = {**m, "expected": exp["expect"], "within": exp.get("within"),
                      "agree": ok, "verdict": why, "recovery": r}
        if not ok:
            reasons.append(f"{key}: {why}")
    healthy = _healthy(journal)
    if healthy is False:
        reasons.append("the lab is not healthy after the restore: "
                       + "; ".join(journal.get("after", {}).get("problems", [])))
    status = journal.get("status")
    if status not in ("completed", None):
        reasons.append(f"the drill did not complete ({status})")
    for e in journal.get("errors", []):
        if "restore failed" in e or "not every path recovered" in e:
            reasons.append(e)
    node_verdicts = judge_nodes(journal)
    reasons += [f"node {n}: {v['verdict']}" for n, v in node_verdicts.items() if not v["agree"]]
    out = {"ok": not reasons, "paths": paths, "reasons": reasons, "healthy_after": healthy,
            "nodes": node_verdicts,
            "host_stall_seconds": seconds_inside(stalls, start, end),
            "lab_stall_seconds": seconds_inside(stalled_lab, start, end),
            "lab_stall_slowest": slowest if stalled_lab else {},
            "lab_stall_excused": sum(p["excused_lab"] for p in paths.values()),
            "haproxy_down_after": haproxy_detection(journal),
            "vip_moved_after": vip_move(journal),
            "etcd_elected_after": etcd_election(journal)}
    out["mechanisms"] = mechanisms.split(journal, out)
    return out


def judge_nodes(journal: dict) -> dict[str, dict]:
    """Per node: did the node controller do what the expectation says (NotReady or not)?
    The heartbeat prediction is told beside the measurement, not judged: how many
    renewals a paused path costs depends on where in its 10 s cycle the kubelet was."""
    out = {}
    lanes = journal.get("nodes", {})
    for node, e in journal.get("node_expectations", {}).items():
        lane = lanes.get(node)
        if lane is None:
            continue
        down = [tr["t"] for tr in lane.get("ready_transitions", []) if not tr["ready"]]
        gap = lane.get("max_heartbeat_gap")
        measured = (f"longest heartbeat gap {gap:.1f} s" if gap is not None else
                    "no heartbeat seen") + (f", NotReady at +{down[0]:.1f} s" if down
                                            else ", stayed Ready")
        agree, why = True, f"as expected ({e['heartbeats']}): {measured}"
        if e.get("not_ready") is True and not down:
            agree, why = False, (f"expected NotReady by +{e['within']:g} s, but it {measured}")
        elif e.get("not_ready") is False and down:
            agree, why = False, f"expected to stay Ready, but {measured}"
        out[node] = {"agree": agree, "verdict": why, "expected": e["heartbeats"],
                     "not_ready": e.get("not_ready")}
    return out


def _healthy(journal: dict):
    after = journal.get("after")
    return None if after is None else bool(after.get("ok"))


def haproxy_detection(journal: dict) -> dict:
    """Per LB/server: seconds from injection until HAProxy marked a target DOWN."""
    start, _ = _window(journal)
    out = {}
    if start is None:
        return out
    for t, lb, server, status, _check in journal.get("haproxy", []):
        if t >= start and str(status).startswith("DOWN") and f"{lb}/{server}" not in out:
            out[f"{lb}/{server}"] = round(t - start, 2)
    return out


def etcd_election(journal: dict) -> float | None:
    """Seconds from injection until etcd had a new leader, when the fault hit the leader."""
    start, end = _window(journal)
    old = (journal.get("context") or {}).get("etcd_leader")
    if start is None or not old or old not in journal.get("targets", []):
        return None
    for t, leader, _down in journal.get("etcd", []):
        if t >= start and leader not in (None, "?", old) and t <= (end or t):
            return round(t - start, 2)
    return None


def vip_move(journal: dict) -> float | None:
    start, end = _window(journal)
    if start is None:
        return None
    before = None
    for t, holders in journal.get("vip", []):
        if t < start:
            before = holders
        elif t <= (end or t) and before and [h for h in holders if h not in before]:
            # a new holder (a killed master keeps the address on its dead link)
            return round(t - start, 2)
    return None
