"""`halab drill plan`: the expectations, printed before a drill so a class can predict first."""
from __future__ import annotations

import textwrap
from dataclasses import replace

from lab.errors import HalabError
from lab.model.topology import Topology
from lab.drill import expect, faults as faultlib


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


def render_plan(topo: Topology, fault: str, targets: list[str], ctx: expect.Context,
                width: int = 100) -> str:
    summary, restore = faultlib.described(fault, topo.scenario.provider)
    head = f"halab drill {fault} {' '.join(targets)}".rstrip()
    lines = [head, "-" * len(head), textwrap.fill(f"{summary}; restore: {restore}.",
                                                  width, subsequent_indent="  ")]
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
        lines.append(textwrap.fill("refused unless --allow-quorum-loss: " + "; ".join(why),
                                   width, subsequent_indent="  "))
    for key, e in expect.plan_table(topo, fault, targets, ctx):
        bound = f" (errors stop within {e.within:g} s)" if e.within else ""
        lines.append(f"  {key:<18} {e.expect.upper()}{bound}")
        lines.append(textwrap.fill(e.reason, width, initial_indent=" " * 21,
                                   subsequent_indent=" " * 21))
        if e.after_restore:
            lines.append(textwrap.fill("after restore: " + e.after_restore, width,
                                       initial_indent=" " * 21, subsequent_indent=" " * 21))
    return "\n".join(lines)


def matrix(topo: Topology, cases: list[tuple[str, list]], ctx: expect.Context) -> str:
    """Paths x faults, one word per cell: the prediction sheet of a class."""
    from lab.table import table
    cols, cells = [], {}
    for f, t in cases:
        words = " ".join(t)
        c = ctx
        if any(w in faultlib.ETCD_ROLES for w in t) and c.etcd_leader is None:
            c = replace(c, etcd_leader=topo.etcd_members[0].name)   # the role is what counts
        try:
            t = faultlib.resolve_targets(topo, f, t, c.vip_holder, etcd_leader=c.etcd_leader)
        except HalabError:
            continue
        name = f"{f} {words}"
        cols.append(name)
        for key, e in expect.expectations(topo, f, t, c).items():
            cells[(key, name)] = e.expect.upper() + (f"<{e.within:g}s" if e.within else "")
    keys = [p.key for p in topo.access_paths()] + ["write"]
    rows = [[k] + [cells.get((k, c), "") for c in cols] for k in keys]
    return table(["PATH"] + [c.replace("stop-apiserver", "stop-api") for c in cols], rows)


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
    echo("Categories: UP no failed probe | BLIP failures that stop by themselves within the "
         "bound | DEGRADED failures now and then for the whole fault | DOWN fails until "
         "restored.\n")
    cases = plan_cases(topo, fault, targets)
    if len(cases) > 1:
        echo(matrix(topo, cases, ctx))
        echo("\nWhy, path by path:\n")
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
