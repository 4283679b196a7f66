"""Reports rendered from a journal only: a terminal summary and a self-contained HTML page.

The HTML page is the drill view (lab.drill.view): the live page of `--live` with the
journal's view inlined, so the report and the live view draw the same lanes with the
same code; it loads nothing from elsewhere.
"""
from __future__ import annotations

import json
from pathlib import Path

from lab.table import table
from lab.drill import mechanisms, journal as jlib, nodes as nodelib, verdict as verdictlib
from lab.drill import view as viewlib
from lab.drill.expect import ROLE_WORDS


def paths_of(lab, journal: dict) -> tuple[Path, Path]:
    d = jlib.drills_dir(lab)
    return d / f"{journal['id']}.json", d / f"{journal['id']}.html"


def _rel(journal: dict, t: float | None) -> str:
    t0 = journal.get("times", {}).get("inject_start") or journal.get("times", {}).get("injected")
    if t is None or t0 is None:
        return "-"
    return f"{t - t0:+.1f}s"


def _fmt(v, unit="s") -> str:
    if v is None:
        return "-"
    return f"{v:.1f}{unit}" if isinstance(v, float) else f"{v}{unit}"


def target_words(journal: dict) -> str:
    """`k8s-node1 (the etcd leader)`: a leader's and a follower's kill are different drills."""
    roles = journal.get("etcd_roles") or {}
    return " ".join(t + (f" ({ROLE_WORDS[roles[t]]})" if t in roles else "")
                    for t in journal.get("targets", []))


def verdict_of(journal: dict) -> dict:
    """The stored verdict, or a fresh one (older journals, interrupted drills)."""
    v = journal.get("verdict")
    if not v or not v.get("paths"):
        v = verdictlib.judge(journal)
    return v


# ------------------------------------------------------------------ terminal

def terminal(journal: dict) -> str:
    if journal.get("kind") == "runbook":
        return runbook_terminal(journal)
    v = verdict_of(journal)
    t = journal.get("times", {})
    inj, res = t.get("inject_start"), t.get("restored")
    lines = [f"Drill {journal['id']}: {journal['fault']} {target_words(journal)} "
             f"on lab {journal['lab']} (Case {journal['case']}, {journal.get('provider')}) "
             f"- {journal.get('status')}"]
    if inj:
        dur = (t.get("restore_start") or inj) - inj
        rec = t.get("recovered")
        lines.append(f"fault active {dur:.1f} s; restore took "
                     f"{_fmt((res or inj) - (t.get('restore_start') or inj))}; every path OK "
                     f"again {_fmt(rec - res if rec and res else None)} after restore"
                     + (f"; the nodes it reached Ready and renewing again "
                        f"{_fmt(t['nodes_recovered'] - res)} after restore"
                        if t.get("nodes_recovered") and res else ""))
    rows = []
    for key, p in v.get("paths", {}).items():
        rec = p.get("recovery", {})
        rows.append([key, p["expected"] + (f"<{p['within']:g}s" if p.get("within") else ""),
                     p["measured"], f"{p['failures']}/{p['probes']}",
                     _fmt(p["error_window"]) if p["failures"] else "-",
                     _fmt(p["longest_streak"]) if p["failures"] else "-",
                     f"{rec.get('failures', 0)} / {_fmt(rec.get('recovered_after'))}",
                     "OK" if p["agree"] else "DIFFERS"])
    if rows:
        lines.append("")
        lines.append(table(["PATH", "EXPECTED", "MEASURED", "FAILED", "ERROR WINDOW",
                            "LONGEST STALL", "AFTER RESTORE (fail/ok at)", "VERDICT"], rows))
    det = v.get("haproxy_down_after") or {}
    targets = set(journal.get("targets", []))
    shown = {k: s for k, s in det.items() if k.split("/")[-1] in targets or k.endswith("/*")}
    for k, s in sorted(shown.items()):
        lines.append(f"HAProxy marked {k} DOWN {s:.1f} s after injection")
    for k, s in sorted(det.items()):
        if k not in shown:   # a server the fault left alone failed /readyz (etcd had no leader?)
            lines.append(f"HAProxy marked {k} DOWN {s:.1f} s after injection, although the "
                         "fault left it alone")
    if v.get("etcd_elected_after") is not None:
        lines.append(f"etcd elected a new leader {v['etcd_elected_after']:.1f} s after "
                     "injection")
    if v.get("vip_moved_after") is not None:
        lines.append(f"VIP moved {v['vip_moved_after']:.1f} s after injection")
    for change in lease_changes(journal):
        lines.append(change)
    for change in etcd_changes(journal):
        lines.append(change)
    excused = sum(p.get("excused", 0) for p in v.get("paths", {}).values())
    if v.get("host_stall_seconds") or excused:
        lines.append(f"host stalls during the fault: {v.get('host_stall_seconds', 0):.1f} s "
                     f"(the canary was slow too); {excused} timeout(s) not counted")
    if v.get("lab_stall_seconds"):
        slow = ", ".join(f"{k} answered in {s:.1f} s" for k, s in
                         sorted(v.get("lab_stall_slowest", {}).items()))
        lines.append(f"lab stalled on its own during the fault: {v['lab_stall_seconds']:.1f} s "
                     f"(at worst {slow}; the fault touches none of them); "
                     f"{v.get('lab_stall_excused', 0)} failure(s) of paths through them not "
                     "counted")
    lines += nodelib.lines(journal)
    lines += mechanisms.lines(journal, v)
    if v.get("healthy_after") is not None:
        lines.append("health after restore: " + ("OK (every `halab verify` check passed)"
                                                 if v["healthy_after"] else "NOT healthy: " +
                                                 "; ".join(journal.get("after", {}).get(
                                                     "problems", []))))
    lines.append("")
    if v.get("ok"):
        lines.append("VERDICT: as expected on every path")
    else:
        lines.append("VERDICT: differs from the expectation:")
        lines += [f"  - {r}" for r in v.get("reasons", [])]
    for key, p in v.get("paths", {}).items():
        if not p["agree"]:
            exp = journal.get("expectations", {}).get(key, {})
            lines.append(f"  why {key} was expected {exp.get('expect')}: {exp.get('reason')}")
    for node, n in v.get("nodes", {}).items():
        if not n["agree"]:
            exp = journal.get("node_expectations", {}).get(node, {})
            lines.append(f"  why node {node} was expected so: {exp.get('reason')}")
    return "\n".join(lines)


def lease_changes(journal: dict) -> list[str]:
    out, before = [], None
    for t, holders in journal.get("leases", []):
        nodes = {k: (h or "").rsplit("_", 1)[0] for k, h in holders.items()}
        if before is not None:
            for lease, node in nodes.items():
                if holders.get(lease) != before[1].get(lease):
                    prev = (before[1].get(lease) or "").rsplit("_", 1)[0] or "nobody"
                    out.append(f"lease {lease}: {prev} -> {node or 'nobody'} at "
                               f"{_rel(journal, t)}")
        before = (t, holders)
    return out


def etcd_changes(journal: dict) -> list[str]:
    out, prev = [], None
    for t, leader, down in journal.get("etcd", []):
        if leader == "?":  # no member answered that round: unknown, not a change
            continue
        if prev is not None and leader != prev:
            out.append(f"etcd leader: {prev or 'none'} -> {leader or 'none (election)'} at "
                       f"{_rel(journal, t)}")
        prev = leader
    return out


def listing(lab) -> str:
    rows = []
    for drill_id in jlib.all_ids(lab):
        try:
            j = jlib.load_file(jlib.path_of(lab, drill_id))
        except Exception:  # noqa: BLE001 - a damaged journal is listed as such
            rows.append([drill_id, "?", "?", "damaged"])
            continue
        if j.get("kind") == "runbook":
            ok = j.get("verdict", {}).get("ok")
            rows.append([drill_id, "runbook", f"{len(j.get('steps', []))} steps",
                         "as expected" if ok else "differs"])
            continue
        v = j.get("verdict") or {}
        verdict = ("as expected" if v.get("ok") else "differs") if v else j.get("status", "?")
        rows.append([drill_id, j.get("fault"), " ".join(j.get("targets", [])),
                     f"{verdict} ({j.get('status')})"])
    if not rows:
        return f"lab {lab.name} has no drills yet"
    return table(["ID", "FAULT", "TARGET", "VERDICT"], rows)


def runbook_terminal(rb: dict) -> str:
    lines = [f"Runbook {rb['id']} on lab {rb['lab']} (Case {rb['case']}): "
             f"{len(rb.get('steps', []))} steps"]
    rows = []
    for st in rb.get("steps", []):
        rows.append([st.get("step"), st.get("fault"), " ".join(st.get("targets", [])),
                     st.get("id") or "-", st.get("result")])
    lines.append(table(["#", "FAULT", "TARGET", "DRILL", "RESULT"], rows))
    for j in rb.get("journals", []):
        lines.append("")
        lines.append(terminal(j))
    lines.append("")
    lines.append("RUNBOOK: " + ("every step as expected" if rb.get("verdict", {}).get("ok")
                                else "some steps differ: " + "; ".join(
                                    rb.get("verdict", {}).get("reasons", []))))
    return "\n".join(lines)


# ------------------------------------------------------------------ HTML

def html_report(journal: dict) -> str:
    """The offline report: the drill view's page (lab.drill.view) with the journal's
    view inlined: the same page and the same drawing code as the live view."""
    if journal.get("kind") != "runbook":
        journal = {**journal, "verdict": verdict_of(journal)}
    return viewlib.report_page(journal)


def write_html(lab, journal: dict) -> Path:
    path = jlib.drills_dir(lab) / f"{journal['id']}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_report(journal))
    return path


def dumps(journal: dict) -> str:
    return json.dumps(journal, indent=1)
