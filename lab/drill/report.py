"""Reports rendered from a journal only: a terminal summary and a self-contained HTML page.

The HTML has no external assets (inline CSS and SVG): one timeline per access
path (a tick per probe, green OK / red failed), fault and restore markers, the
expected error bound, and HAProxy backend / VIP / lease / etcd-leader changes.
"""
from __future__ import annotations

import html
import json
import time
from pathlib import Path

from lab.table import table
from lab.drill import mechanisms, journal as jlib, nodes as nodelib, verdict as verdictlib
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
                     f"again {_fmt(rec - res if rec and res else None)} after restore")
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

COLORS = {"ok": "#2e9d4f", "fail": "#d33a2c", "fault": "#f6d7d3", "restore": "#1f6fd1",
          "bound": "#e69500", "grid": "#ddd", "text": "#222", "muted": "#777"}
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#222;margin:24px;
max-width:1180px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
.muted{color:#777}.ok{color:#2e7d32;font-weight:600}.bad{color:#c62828;font-weight:600}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 8px;border-bottom:1px solid #e5e5e5;
text-align:left;vertical-align:top}th{background:#f6f6f6}
.reason{font-size:12px;color:#555;max-width:760px}
svg{display:block;margin:4px 0 12px}code{background:#f3f3f3;padding:0 3px}
"""


def _svg_timeline(journal: dict, key: str, width: int = 1100, h: int = 34) -> str:
    t = journal.get("times", {})
    probes = journal.get("probes", {}).get(key, [])
    start = t.get("probes_started") or (probes[0]["t"] if probes else 0)
    end = t.get("probes_stopped") or (probes[-1]["t"] + 1 if probes else start + 1)
    span = max(end - start, 1.0)
    left, right = 6, width - 6
    x = lambda tt: left + (tt - start) / span * (right - left)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h + 16}" '
             f'role="img" aria-label="timeline of {html.escape(key)}">']
    inj = t.get("inject_start") or t.get("injected")
    rs = t.get("restore_start")
    if inj:
        parts.append(f'<rect x="{x(inj):.1f}" y="0" width="{max(1, x(rs or end) - x(inj)):.1f}" '
                     f'height="{h}" fill="{COLORS["fault"]}"><title>fault active</title></rect>')
        exp = journal.get("expectations", {}).get(key, {})
        if exp.get("within"):
            bx = x(inj + exp["within"])
            parts.append(f'<line x1="{bx:.1f}" x2="{bx:.1f}" y1="0" y2="{h}" '
                         f'stroke="{COLORS["bound"]}" stroke-dasharray="3,2">'
                         f'<title>expected: errors stop by +{exp["within"]:g} s</title></line>')
    for p in probes:
        px = x(p["t"])
        color = COLORS["ok"] if p["ok"] else COLORS["fail"]
        top = 8 if p["ok"] else 4
        tip = (f'{_rel(journal, p["t"])} {"OK" if p["ok"] else "FAILED: " + p.get("err", "")}'
               f' ({p.get("lat", 0) * 1000:.0f} ms)')
        parts.append(f'<rect x="{px:.1f}" y="{top}" width="2" height="{h - 2 * top}" '
                     f'fill="{color}"><title>{html.escape(tip)}</title></rect>')
    for name, color in (("inject_start", COLORS["fail"]), ("restored", COLORS["restore"]),
                        ("recovered", COLORS["ok"])):
        if t.get(name):
            lx = x(t[name])
            parts.append(f'<line x1="{lx:.1f}" x2="{lx:.1f}" y1="0" y2="{h}" stroke="{color}" '
                         f'stroke-width="2"><title>{name} {_rel(journal, t[name])}</title></line>')
    # a time axis every 5 s, relative to the injection
    t0 = inj or start
    k = int((start - t0) // 5) * 5
    while t0 + k <= end:
        if t0 + k >= start:
            ax = x(t0 + k)
            parts.append(f'<line x1="{ax:.1f}" x2="{ax:.1f}" y1="{h}" y2="{h + 4}" '
                         f'stroke="{COLORS["muted"]}"/><text x="{ax:.1f}" y="{h + 14}" '
                         f'font-size="10" text-anchor="middle" fill="{COLORS["muted"]}">'
                         f'{k:+d}s</text>')
        k += 5
    parts.append("</svg>")
    return "".join(parts)


def _svg_states(journal: dict, rows: list[tuple[str, list[tuple[float, str]]]],
                width: int = 1100) -> str:
    """Step lanes for HAProxy servers / VIP / leases: a colored bar per state."""
    t = journal.get("times", {})
    start, end = t.get("probes_started"), t.get("probes_stopped")
    if not rows or not start or not end:
        return ""
    span = max(end - start, 1.0)
    lane, label_w = 18, 170
    def x(tt: float) -> float:
        return label_w + (min(max(tt, start), end) - start) / span * (width - label_w - 6)
    palette = {}
    colors = ["#2e9d4f", "#d33a2c", "#e69500", "#1f6fd1", "#8e44ad", "#16a085", "#7f8c8d"]

    def color(state: str) -> str:
        s = state.upper()
        if s.startswith("UP"):
            return "#2e9d4f"
        if s.startswith("DOWN") or s in ("NO HAPROXY", "NONE", "NOBODY"):
            return "#d33a2c"
        if s.startswith("MAINT") or s.startswith("NOLB"):
            return "#e69500"
        palette.setdefault(state, colors[3 + len(palette) % 4])
        return palette[state]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{lane * len(rows) + 4}">']
    for i, (label, changes) in enumerate(rows):
        y = i * lane + 2
        out.append(f'<text x="0" y="{y + 12}" font-size="11" fill="#222">'
                   f'{html.escape(label)}</text>')
        for j, (ct, state) in enumerate(changes):
            nt = changes[j + 1][0] if j + 1 < len(changes) else end
            if nt < start:
                continue
            out.append(f'<rect x="{x(ct):.1f}" y="{y}" width="{max(1, x(nt) - x(ct)):.1f}" '
                       f'height="{lane - 4}" fill="{color(state)}" opacity="0.85">'
                       f'<title>{html.escape(label)}: {html.escape(state)} from '
                       f'{_rel(journal, ct)}</title></rect>')
            if x(nt) - x(ct) > 40:
                out.append(f'<text x="{x(ct) + 3:.1f}" y="{y + 11}" font-size="10" '
                           f'fill="#fff">{html.escape(state[:18])}</text>')
        for name in ("inject_start", "restored"):
            if t.get(name):
                out.append(f'<line x1="{x(t[name]):.1f}" x2="{x(t[name]):.1f}" y1="{y}" '
                           f'y2="{y + lane - 4}" stroke="#000" stroke-width="1"/>')
    out.append("</svg>")
    return "".join(out)


def _state_rows(journal: dict) -> list[tuple[str, list[tuple[float, str]]]]:
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
            out.append((lease.replace("kube-", ""), changes))
    if journal.get("etcd"):
        out.append(("etcd leader", [(t, leader or "none") for t, leader, _ in journal["etcd"]]))
    return out


def _node_rows(journal: dict) -> list[tuple[str, list[tuple[float, str]]]]:
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
    for node in sorted(set(beats) | set(ready)):
        changes = []
        times = beats.get(node, [])
        for a, b in zip(times, times[1:] + [None]):
            changes.append((a, "UP beats"))
            late = (b if b is not None else journal.get("times", {}).get("probes_stopped", a))
            if late - a > nodelib.RENEW_EVERY * 1.5:
                changes.append((a + nodelib.RENEW_EVERY, "DOWN no heartbeat"))
        if changes:
            rows.append((f"{node} heartbeats", changes))
        if ready.get(node):
            rows.append((f"{node} Ready", ready[node]))
    return rows


def html_report(journal: dict) -> str:
    if journal.get("kind") == "runbook":
        return runbook_html(journal)
    return _page(f"halab drill {journal['id']}", _drill_section(journal, top=True))


def _drill_section(journal: dict, top: bool = False) -> str:
    e = html.escape
    v = verdict_of(journal)
    t = journal.get("times", {})
    h = "h1" if top else "h2"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t.get("started", 0)))
    out = [f"<{h}>{e(journal['fault'])} {e(target_words(journal))} &mdash; lab "
           f"{e(journal['lab'])}, Case {journal['case']}</{h}>",
           f'<div class="muted">drill {e(journal["id"])}, {when}, provider '
           f'{e(str(journal.get("provider")))}, status {e(str(journal.get("status")))}</div>',
           f"<p>{e(journal.get('fault_summary', ''))}. Restore: "
           f"{e(journal.get('restore_summary', ''))}.</p>"]
    ok = v.get("ok")
    out.append(f'<p class="{"ok" if ok else "bad"}">Verdict: '
               + ("every access path behaved as expected" if ok else "differs from the "
                  "expectation") + "</p>")
    if not ok:
        out.append("<ul>" + "".join(f"<li>{e(r)}</li>" for r in v.get("reasons", [])) + "</ul>")
    s = journal.get("settings", {})
    inj = t.get("inject_start")
    facts = []
    if inj:
        facts.append(f"fault active {(t.get('restore_start') or inj) - inj:.1f} s")
    if t.get("recovered") and t.get("restored"):
        facts.append(f"every path OK {t['recovered'] - t['restored']:.1f} s after restore")
    facts.append(f"{1 / s.get('probe_interval', 0.2):g} probes/s per path, timeout "
                 f"{s.get('probe_timeout', 1):g} s")
    for k, sec in sorted((v.get("haproxy_down_after") or {}).items()):
        if k.split("/")[-1] in journal.get("targets", []):
            facts.append(f"HAProxy marked {k} DOWN after {sec:.1f} s")
    if v.get("vip_moved_after") is not None:
        facts.append(f"VIP moved after {v['vip_moved_after']:.1f} s")
    if v.get("lab_stall_seconds"):
        facts.append(f"the lab stalled on its own for {v['lab_stall_seconds']:.1f} s (every "
                     f"control plane the fault leaves alone answered late); "
                     f"{v.get('lab_stall_excused', 0)} failure(s) "
                     "then not counted")
    out.append("<p>" + " &middot; ".join(e(f) for f in facts) + "</p>")
    out.append("<table><tr><th>path</th><th>expected</th><th>measured</th><th>failed</th>"
               "<th>error window</th><th>longest stall</th><th>after restore</th>"
               "<th>verdict</th></tr>")
    exps = journal.get("expectations", {})
    for key, p in v.get("paths", {}).items():
        rec = p.get("recovery", {})
        reason = exps.get(key, {}).get("reason", "")
        out.append(
            f"<tr><td><b>{e(key)}</b></td><td>{e(p['expected'])}"
            + (f" (&lt;{p['within']:g} s)" if p.get("within") else "") + "</td>"
            f"<td>{e(p['measured'])}</td><td>{p['failures']}/{p['probes']}</td>"
            f"<td>{_fmt(p['error_window']) if p['failures'] else '-'}</td>"
            f"<td>{_fmt(p['longest_streak']) if p['failures'] else '-'}</td>"
            f"<td>{rec.get('failures', 0)} failed, OK at {_fmt(rec.get('recovered_after'))}</td>"
            f'<td class="{"ok" if p["agree"] else "bad"}">{e(p["verdict"])}</td></tr>'
            f'<tr><td></td><td colspan="7" class="reason">why: {e(reason)}</td></tr>')
    out.append("</table>")
    out.append('<h3>Timelines</h3><div class="muted">green: probe OK, red: failed; pink: '
               'fault active; red line: injected, blue: restored, green: recovered; dashed '
               'orange: the expected end of errors. Hover for details.</div>')
    for key in v.get("paths", {}):
        out.append(f"<div><b>{e(key)}</b></div>" + _svg_timeline(journal, key))
    if journal.get("probes", {}).get("canary"):
        out.append("<div><b>host canary</b> <span class=\"muted\">(a loopback server of the "
                   "probe worker itself: when it is slow, the host was starved, and timeouts "
                   "at that moment are not counted against the lab)</span></div>"
                   + _svg_timeline(journal, "canary"))
    rows = _state_rows(journal)
    if rows:
        out.append("<h3>Load balancer, VIP, leases, etcd leader</h3>" + _svg_states(journal,
                                                                                      rows))
    rows = _node_rows(journal)
    if rows:
        out.append("<h3>Nodes: what their kubelets lived through</h3><div class=\"muted\">"
                   "per node: its kubelet's Lease renewals (UP while it renews every 10 s, "
                   "DOWN from 10 s after a renewal that was not followed by the next) and its "
                   "Ready condition as the node controller set it</div>"
                   + _svg_states(journal, rows))
    out.append(_mechanism_table(journal, v))
    watch_notes = nodelib.lines(journal)
    if watch_notes:
        out.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in watch_notes) + "</ul>")
    notes = lease_changes(journal) + etcd_changes(journal)
    if notes:
        out.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    if journal.get("errors"):
        out.append("<h3>Errors</h3><ul>" + "".join(f"<li>{e(x)}</li>" for x in journal["errors"])
                   + "</ul>")
    return "\n".join(out)


def _mechanism_table(journal: dict, v: dict) -> str:
    """Each mechanism once (its setting, predicted and measured), then each path's and
    node's error window as the mechanisms that shaped it."""
    e = html.escape
    sp = v.get("mechanisms") or {}
    if not sp.get("mechanisms"):
        return ""
    out = ['<h3>Why the errors lasted as long as they did</h3><div class="muted">each '
           "mechanism with the lab's own settings: when it should act (seconds after "
           "injection) and when it did</div>",
           "<table><tr><th>mechanism</th><th>predicted</th><th>measured</th><th></th>"
           "<th>lab setting</th></tr>"]
    for m in sp["mechanisms"]:
        state = {True: ("ok", "as predicted"), False: ("bad", "later than predicted on "
                                                       + ", ".join(m["late"])),
                 None: ("muted", "not measured")}[m["agree"]]
        out.append(f"<tr><td><b>{e(m['name'])}</b></td><td>{e(mechanisms._s(m['predicted']))}"
                   f"</td><td>{e(mechanisms._s(m['measured']))}</td>"
                   f'<td class="{state[0]}">{e(state[1])}</td><td class="reason">'
                   f"{e(m['setting'])}</td></tr>")
    out.append("</table><ul>")
    for kind in ("paths", "nodes"):
        for key, rows in sp.get(kind, {}).items():
            p = v.get("paths", {}).get(key, {}) if kind == "paths" else {}
            if kind == "paths" and not p.get("failures"):
                continue
            words = mechanisms.path_words(rows)
            if words:
                head = (f"{key}: errors +{p['first_failure']:.1f} .. "
                        f"+{p['errors_stop_after']:.1f} s" if kind == "paths" else f"node {key}")
                out.append(f"<li>{e(head)} = {e(words)}</li>")
    out.append("</ul>")
    return "\n".join(out)


def _page(title: str, body: str) -> str:
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>"
            f"<body>\n{body}\n<p class=\"muted\">Rendered by halab from the drill journal; "
            f"no external assets.</p></body></html>\n")


def runbook_html(rb: dict) -> str:
    e = html.escape
    ok = rb.get("verdict", {}).get("ok")
    parts = [f"<h1>Runbook {e(rb['id'])} &mdash; lab {e(rb['lab'])}, Case {rb['case']}</h1>",
             f'<p class="{"ok" if ok else "bad"}">'
             + ("every step as expected" if ok else "some steps differ") + "</p>",
             "<table><tr><th>#</th><th>fault</th><th>target</th><th>result</th></tr>"]
    for st in rb.get("steps", []):
        parts.append(f"<tr><td>{st.get('step')}</td><td>{e(str(st.get('fault')))}</td>"
                     f"<td>{e(' '.join(st.get('targets', [])))}</td>"
                     f"<td>{e(str(st.get('result')))}</td></tr>")
    parts.append("</table>")
    for j in rb.get("journals", []):
        parts.append("<hr>" + _drill_section(j))
    return _page(f"halab runbook {rb['id']}", "\n".join(parts))


def write_html(lab, journal: dict) -> Path:
    path = jlib.drills_dir(lab) / f"{journal['id']}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_report(journal))
    return path


def dumps(journal: dict) -> str:
    return json.dumps(journal, indent=1)
