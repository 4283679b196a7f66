"""`halab drill run`: a scenario's `drills:` played in order (workshop mode).

Each step is a full drill (steady state, probes, inject, restore, recovery,
verdict, its own journal); between steps the next drill's steady-state check
waits for the lab to be healthy again. One combined journal (`kind: runbook`)
and one HTML report hold every step.
"""
from __future__ import annotations

import time
from dataclasses import replace

from lab.errors import HalabError
from lab.drill import faults as faultlib, journal as jlib, report

RUNBOOK_STEADY_WAIT = 90.0   # after a restore, HAProxy `rise` and lease elections take a while


def steps_of(scenario, topo) -> list[tuple[str, list[str]]]:
    """The scenario's `drills:` as (fault, targets); every problem at once."""
    steps, problems = [], []
    for i, raw in enumerate(scenario.drills):
        where = f"{scenario.source}: drills[{i}]"
        if not isinstance(raw, dict) or "fault" not in raw:
            problems.append(f"{where} = {raw!r}: needs `fault:` (and `target:`), "
                            "e.g. {fault: kill, target: k8s-node1}")
            continue
        unknown = set(raw) - {"fault", "target", "targets"}
        if unknown:
            problems.append(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                            "use fault and target")
        fault = raw["fault"]
        if fault not in faultlib.FAULTS:
            problems.append(f"{where}.fault = {fault!r}: not a fault; choose one of "
                            f"{', '.join(faultlib.FAULTS)}")
            continue
        targets = raw.get("targets", raw.get("target"))
        targets = [] if targets is None else [targets] if isinstance(targets, str) \
            else list(targets)
        try:
            # who leads etcd is known only when the step runs: any member stands in here
            faultlib.resolve_targets(topo, fault, targets, vip_holder=topo.load_balancers[0].name
                                     if topo.load_balancers else None,
                                     etcd_leader=topo.etcd_members[0].name
                                     if topo.etcd_members else None)
        except HalabError as exc:
            problems.append(f"{where}: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
            continue
        steps.append((fault, targets))
    if problems:
        raise HalabError("the scenario's drills cannot run:\n  " + "\n  ".join(problems), code=2,
                         hint="fix `drills:` in the scenario file")
    if not steps:
        raise HalabError(f"scenario {scenario.name} lists no drills",
                         hint="add e.g. `drills: [{fault: kill, target: k8s-node1}]`, or run "
                              "one with `halab drill kill k8s-node1`")
    return steps


def run(lab, s, topo, prov, settings, pause: float, quiet: bool, echo,
        on_drill=lambda drill: None, on_done=lambda rb: None) -> int:
    """Every step in turn on an opened lab (the caller holds its lock). `on_drill` gets
    each Drill before it runs and `on_done` the finished runbook (the live view)."""
    from lab.drill.engine import Drill
    steps = steps_of(s, topo)
    t0 = time.time()
    rb = {"kind": "runbook", "version": jlib.VERSION,
          "id": time.strftime("%Y%m%d-%H%M%S", time.localtime(t0)) + "-runbook",
          "lab": lab.name, "scenario": s.name, "case": topo.case, "started": t0,
          "steps": [], "journals": [], "verdict": {}}
    echo(f"halab: runbook of {s.name}: {len(steps)} drills on lab {lab.name} (Case {topo.case})")
    for i, (fault, targets) in enumerate(steps, 1):
        echo(f"\n=== step {i}/{len(steps)}: {fault} {' '.join(targets)}".rstrip())
        step = {"step": i, "fault": fault, "targets": targets, "id": None}
        rb["steps"].append(step)
        drill = Drill(lab, s, topo, prov, fault, targets,
                      replace(settings, steady_wait=max(settings.steady_wait,
                                                        RUNBOOK_STEADY_WAIT)),
                      echo=echo, live=not quiet, runbook=rb["id"])
        on_drill(drill)
        try:
            j = drill.run()
        except KeyboardInterrupt:
            step["result"] = "interrupted (restored)"
            step["id"] = drill.journal.get("id")
            _finish(lab, rb, echo)
            on_done(rb)
            raise
        except HalabError as exc:
            step["result"] = f"not run: {exc.message}"
            step["ok"] = False
            echo(f"  step {i} not run: {exc.message}")
            if exc.code == 3:  # the lab is unhealthy: later steps would measure nothing
                echo("  stopping the runbook: the lab is not healthy")
                break
            continue
        step["targets"] = j["targets"]
        step["id"] = j["id"]
        v = j.get("verdict", {})
        step["ok"] = bool(v.get("ok"))
        step["result"] = "as expected" if step["ok"] else "differs: " + "; ".join(
            v.get("reasons", []))
        rb["journals"].append(j)
        echo("")
        echo(report.terminal(j))
        report.write_html(lab, j)
        if pause and i < len(steps):
            echo(f"\n  pause {pause:g} s (discuss the step)")
            time.sleep(pause)
    rc = _finish(lab, rb, echo)
    on_done(rb)
    return rc


def _finish(lab, rb: dict, echo) -> int:
    bad = [f"step {st['step']} {st['fault']} {' '.join(st['targets'])}: {st.get('result')}"
           for st in rb["steps"] if not st.get("ok")]
    rb["verdict"] = {"ok": not bad, "reasons": bad}
    rb["finished"] = time.time()
    path = jlib.save(lab, rb)
    html = report.write_html(lab, rb)
    echo("")
    rows = [f"  {st['step']}. {st['fault']} {' '.join(st['targets'])}: {st.get('result')}"
            for st in rb["steps"]]
    echo("Runbook summary:\n" + "\n".join(rows))
    echo(f"\nRUNBOOK: {'every step as expected' if not bad else f'{len(bad)} step(s) differ'}")
    echo(f"journal: {path}\nreport:  {html}")
    return 0 if not bad else 1
