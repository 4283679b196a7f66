"""`halab drill plan`: the expectations, printed before a drill so a class can predict first."""
from __future__ import annotations

import shutil
import textwrap
from dataclasses import replace

from lab.errors import HalabError
from lab.model.topology import Topology
from lab.drill import expect, faults as faultlib, mechanisms


def representative(topo: Topology, fault: str) -> list[str]:
    """The target a plan shows when none is given: the first control plane, or the LB."""
    if fault == "stop-lb":
        return [topo.load_balancers[0].name] if topo.load_balancers else []
    if fault == "stop-etcd":
        return [topo.etcd_members[0].name]
    return [topo.control_planes[0].name]


def plan_cases(topo: Topology, fault: str | None, targets: list[str]) -> list[tuple[str, list]]:
    if fault:
        return [(fault, targets or representative(topo, fault))]
    cases = [(f, representative(topo, f)) for f in faultlib.FAULTS]
    if topo.etcd_members:
        # which member leads etcd decides what a kill does: plan both kinds
        cases[0:1] = [("kill", ["etcd-leader"]), ("kill", ["etcd-follower"])]
    if topo.load_balancers:
        cases.append(("kill", [topo.load_balancers[0].name]))
    if topo.workers:
        cases.append(("kill", [topo.workers[0].name]))
    return cases


def _width() -> int:
    return max(60, min(100, shutil.get_terminal_size((100, 24)).columns))


def _wrap(text: str, width: int, first: str, rest: str) -> str:
    return textwrap.fill(text, width, initial_indent=first, subsequent_indent=rest)


def render_plan(topo: Topology, fault: str, targets: list[str], ctx: expect.Context,
                width: int | None = None) -> str:
    """One fault: what it does, each cause once (numbered), then every path's category
    and which causes make it, then what happens after the restore."""
    width = width or _width()
    summary, restore = faultlib.described(fault, topo.scenario.provider)
    head = f"halab drill {fault} {' '.join(targets)}".rstrip()
    lines = [head, "-" * len(head), _wrap(f"{summary}; restore: {restore}.", width, "", "  ")]
    if any(t in faultlib.ETCD_ROLES for t in targets) and ctx.etcd_leader is None:
        # no lab to ask: plan it as if the first member led (the roles are what matter)
        ctx = replace(ctx, etcd_leader=topo.etcd_members[0].name)
        lines.append(f"(no running lab to ask who leads etcd: planned as if "
                     f"{ctx.etcd_leader} did)")
    try:
        targets = faultlib.resolve_targets(topo, fault, targets, ctx.vip_holder,
                                           etcd_leader=ctx.etcd_leader)
    except HalabError as exc:
        lines.append(f"refused: {exc.message}")
        return "\n".join(lines)
    roles = expect.etcd_roles(topo, targets, ctx)
    if roles:
        lines.append("target: " + ", ".join(f"{t} is {expect.ROLE_WORDS[r]}"
                                            for t, r in roles.items()))
    why = faultlib.refusals(topo, fault, targets, {})
    if why:
        lines.append(_wrap("refused unless --allow-quorum-loss: " + "; ".join(why), width,
                           "", "  "))
    table = expect.plan_table(topo, fault, targets, ctx)
    causes: list[str] = []
    for _, e in table:
        for c in e.causes or (e.reason,):
            if c not in causes:
                causes.append(c)
    lines.append("Causes:")
    for n, c in enumerate(causes, 1):
        lines.append(_wrap(c, width, f"  [{n}] ", " " * 6))
    lines.append("Paths:")
    key_w = max(len(k) for k, _ in table)
    for key, e in table:
        word = e.expect.upper() + (f" <{e.within:g}s" if e.within else "")
        refs = " ".join(f"[{causes.index(c) + 1}]" for c in (e.causes or (e.reason,)))
        acts = ", ".join(f"{mechanisms.NAMES.get(m['id'], m['id'])} "
                         + (f"~{m['predicted']:g}s" if m["predicted"] is not None
                            else "whole fault")
                         for m in e.mechanisms if m["id"] != "no_failover")
        head = f"  {key:<{key_w}}  {word:<12} {refs:<10} "
        lines.append(_wrap(acts, width, head, " " * len(head)) if acts else head.rstrip())
    after: dict[str, list[str]] = {}
    for key, e in table:
        if e.after_restore:
            after.setdefault(e.after_restore, []).append(key)
    if after:
        lines.append("After the restore:")
        for text, keys in after.items():
            lines.append(_wrap(f"{', '.join(keys)}: {text}", width, "  - ", "    "))
    lines += _node_plan(topo, fault, targets, dict(table), width)
    return "\n".join(lines)


NODE_PLAN_DURATION = 60.0   # longer than node-monitor-grace-period: the nodes' plan is for this


def _node_plan(topo: Topology, fault: str, targets: list[str], paths: dict,
               width: int) -> list[str]:
    """What each node's kubelet lives through if the fault lasts 60 s."""
    nodes = [n.name for n in (*topo.control_planes, *topo.workers)]
    if not nodes:
        return []
    exps = expect.node_expectations(topo, fault, targets, paths, NODE_PLAN_DURATION, nodes)
    lines = [f"Nodes, if the fault lasts {NODE_PLAN_DURATION:g} s (--duration "
             f"{NODE_PLAN_DURATION:g}; node-monitor-grace-period is "
             f"{expect.NODE_MONITOR_GRACE:g} s):"]
    groups: dict[str, list[str]] = {}
    for name, e in exps.items():   # nodes alike are told once
        ready = {True: f"NotReady by +{e.within:g}s" if e.within else "NotReady",
                 False: "stays Ready", None: "Ready or not (timing)"}[e.not_ready]
        text = f"heartbeats {e.heartbeats}, {ready}: " + e.reason.replace(
            f"{name}'s kubelet", "its kubelet").replace(f"worker:{name}", "its worker: path"
                                                         ).replace(name, "the node")
        groups.setdefault(text, []).append(name)
    for text, names in groups.items():
        lines.append(_wrap(f"{', '.join(names)}: {text}", width, "  - ", "    "))
    return lines


def matrix(topo: Topology, cases: list[tuple[str, list]], ctx: expect.Context) -> str:
    """Faults x paths, one word per cell: the prediction sheet of a class (one row per
    fault, so it fits a terminal)."""
    from lab.table import table
    keys = [p.key for p in topo.access_paths()] + ["write"]
    rows = []
    for f, t in cases:
        words = " ".join(t)
        c = ctx
        if any(w in faultlib.ETCD_ROLES for w in t) and c.etcd_leader is None:
            c = replace(c, etcd_leader=topo.etcd_members[0].name)   # the role is what counts
        try:
            t = faultlib.resolve_targets(topo, f, t, c.vip_holder, etcd_leader=c.etcd_leader)
        except HalabError:
            continue
        exps = expect.expectations(topo, f, t, c)
        cells = [exps[k].expect.upper() + (f"<{exps[k].within:g}s" if exps[k].within else "")
                 if k in exps else "" for k in keys]
        rows.append([f"{f.replace('stop-apiserver', 'stop-api')} {words}"] + cells)
    headers = ["FAULT"] + [_short_key(topo, k) for k in keys]
    legend = ("direct: kubectl straight to that control plane; worker: that worker's own path "
              "(its kubelet and kube-proxy); write: a ConfigMap created and deleted")
    return table(headers, rows) + "\n" + _wrap(legend, _width(), "", "")


def _short_key(topo: Topology, key: str) -> str:
    """`direct:k8s-node1` -> `direct1`: the node's number when names follow the prefix."""
    if ":" not in key:
        return key
    kind, node = key.split(":", 1)
    prefix = topo.scenario.node_prefix
    if node.startswith(prefix) and node[len(prefix):].isdigit():
        return f"{kind}{node[len(prefix):]}"
    return f"{kind}:{node}"


def print_plan(source: str, topo: Topology, fault, targets, ctx, echo) -> int:
    """The plan: a table of every fault when none is given, then why, fault by fault.
    Exit code 2 when the fault asked for would be refused."""
    ctx = ctx or expect.Context()
    known = []
    if ctx.etcd_leader:
        known.append(f"etcd leader {ctx.etcd_leader}")
    if ctx.vip_holder:
        known.append(f"VIP on {ctx.vip_holder}")
    echo(f"Expectations for {source} (Case {topo.case})"
         + (f"; now: {', '.join(known)}" if known else "") + ".")
    echo(_wrap("Categories: UP no failed probe | BLIP failures that stop by themselves within "
               "the bound | DEGRADED failures now and then for the whole fault | DOWN fails "
               "until restored.", _width(), "", "  ") + "\n")
    cases = plan_cases(topo, fault, targets)
    if len(cases) > 1:
        echo(matrix(topo, cases, ctx))
        echo("\nWhy, fault by fault:\n")
    for f, t in cases:
        echo(render_plan(topo, f, t, ctx))
        echo("")
    return 2 if fault is not None and _refused(topo, fault, list(targets), ctx) else 0


def _refused(topo: Topology, fault: str, targets: list[str], ctx: expect.Context) -> bool:
    """Would `halab drill FAULT TARGET...` refuse to run (bad target, quorum, last API)?"""
    leader = ctx.etcd_leader or (topo.etcd_members[0].name if topo.etcd_members else None)
    try:
        nodes = faultlib.resolve_targets(topo, fault, targets, ctx.vip_holder, etcd_leader=leader)
    except HalabError:
        return True
    return bool(faultlib.refusals(topo, fault, nodes, {}))


def live_context(lab, topo, prov) -> expect.Context:
    """The etcd leader and VIP holder right now, when the lab runs (else unknown)."""
    if lab.record().deploy.get("state") != "deployed":
        return expect.Context()
    from lab.drill.engine import one_shot_etcd, vip_holders
    try:
        leader = one_shot_etcd(lab, topo, prov)["leader"]
        holders = vip_holders(topo, prov)
    except Exception:  # noqa: BLE001 - a plan must print even for a broken lab
        return expect.Context()
    return expect.Context(etcd_leader=leader, vip_holder=holders[0] if len(holders) == 1
                          else None)
