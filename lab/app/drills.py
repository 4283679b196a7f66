"""Drills as verbs: one fault, the runbook, restore and the plan, on an opened lab."""
from __future__ import annotations

import time

from lab.app import echo
from lab.app.lab import open_lab
from lab.drill import faults as faultlib
from lab.drill import journal as jlib
from lab.drill import plan as planlib
from lab.drill import report, runbook
from lab.drill.engine import Drill, Settings, drill_running
from lab.errors import HalabError
from lab.state import Lab, find_lab, labs_root

EXIT_DISAGREE = 1      # measured behaviour differs from the expectation
EXIT_REFUSED = 2       # refused (quorum, Case 1 stop-lb, bad target)
EXIT_UNHEALTHY = 3     # the lab was not healthy before, or is not after


def settings_of(duration, probe_interval, probe_timeout, recovery_timeout, warmup,
              probe_path="/api/v1/namespaces/default") -> Settings:
    """Drill settings from the command line; None leaves the provider's fitted value."""
    return Settings(duration=duration, probe_interval=probe_interval,
                    probe_timeout=probe_timeout, recovery_timeout=recovery_timeout,
                    warmup=warmup, probe_path=probe_path)


def run_drill(lab, fault, targets, duration, probe_interval, probe_timeout, recovery_timeout,
              warmup, allow_quorum_loss, quiet, probe_path="/api/v1/namespaces/default") -> int:
    s, topo, prov = open_lab(lab)
    drill = Drill(lab, s, topo, prov, fault, list(targets),
                  settings_of(duration, probe_interval, probe_timeout, recovery_timeout, warmup,
                            probe_path),
                  allow_quorum_loss=allow_quorum_loss, echo=echo, live=not quiet)
    try:
        journal = drill.run()
    except KeyboardInterrupt:
        if drill.journal.get("id"):
            echo(f"halab: drill interrupted; the fault was restored. Journal: "
                       f"{report.paths_of(lab, drill.journal)[0]}", err=True)
        raise
    echo()
    echo(report.terminal(journal))
    html = report.write_html(lab, journal)
    echo(f"\njournal: {report.paths_of(lab, journal)[0]}\nreport:  {html}")
    return exit_code(journal)


def exit_code(journal: dict) -> int:
    v = journal.get("verdict", {})
    if v.get("healthy_after") is False:
        return EXIT_UNHEALTHY
    return 0 if v.get("ok") else EXIT_DISAGREE


def restore(lab, nodes: list[str], wait: bool = True, force: bool = False) -> int:
    running = drill_running(lab)
    if running and not force:
        raise HalabError(f"a drill is running on lab {lab.name} (halab pid {running}); it "
                         "restores its fault itself when it ends",
                         code=2, hint="Ctrl-C it (it restores, then exits), or add --force")
    if force:
        return _restore(lab, nodes, wait)
    with lab.lock("drill restore"):
        return _restore(lab, nodes, wait)


def _restore(lab, nodes: list[str], wait: bool) -> int:
    from lab.deploy.verify import wait_ready
    s, topo, prov = open_lab(lab)
    injected = lab.record().faults
    if not injected:
        echo(f"lab {lab.name}: no fault is injected; nothing to restore")
        return 0
    done = faultlib.restore_all(lab, topo, prov, nodes or None,
                                progress=lambda m: echo(f"  {m}"))
    _mark_journals(lab, done)
    echo(f"restored {len(done)} fault(s): {', '.join(f'{f} {n}' for n, f in done)}")
    if wait:
        echo("waiting for every access path and both leases ...")
        wait_ready(lab, topo, prov, timeout=120, progress=lambda m: echo(f"  {m}"))
        echo(f"lab {lab.name} is ready again; `halab verify` to check everything")
    return 0


def _mark_journals(lab, done) -> None:
    """A drill whose halab died keeps status `running`: note who restored its faults."""
    for drill_id in jlib.all_ids(lab)[-5:]:
        try:
            j = jlib.load_file(jlib.path_of(lab, drill_id))
        except HalabError:
            continue
        if j.get("status") in ("running", "starting") and any(n in j.get("targets", [])
                                                              for n, _ in done):
            j["status"] = "aborted"
            j["errors"] = j.get("errors", []) + [
                f"halab stopped mid-drill; `halab drill restore` undid the fault at "
                f"{time.strftime('%H:%M:%S')}"]
            j.setdefault("times", {})["restored"] = round(time.time(), 3)
            jlib.save(lab, j)


def run_runbook(lab: Lab, settings: Settings, pause: float, quiet: bool) -> int:
    """`halab drill run`: the scenario's `drills:` in order, under one hold of the lab."""
    with lab.lock("drill run"):
        s, topo, prov = open_lab(lab)
        return runbook.run(lab, s, topo, prov, settings, pause, quiet, echo)


def report_verb(lab: Lab, drill_id: str | None, html: bool) -> int:
    j = jlib.load(lab, drill_id)
    echo(report.terminal(j))
    if html:
        echo(f"\nreport: {report.write_html(lab, j)}")
    if j.get("kind") == "runbook":
        return 0 if j.get("verdict", {}).get("ok") else EXIT_DISAGREE
    return exit_code(j)


def plan_verb(fault, targets, scenario_ref, labs_dir, lab_name, provider=None) -> int:
    """`halab drill plan`: for a scenario (no lab needed), or for a lab with what runs now."""
    from lab.model import scenario as scenariolib
    from lab.model.topology import Topology
    if scenario_ref:
        topo = Topology.of(scenariolib.load(scenario_ref, provider=provider))
        return planlib.print_plan(f"scenario {topo.name}", topo, fault, targets, None, echo)
    lab = find_lab(lab_name, labs_root(labs_dir))
    s, topo, prov = open_lab(lab)
    ctx = planlib.live_context(lab, topo, prov)
    return planlib.print_plan(f"lab {lab.name}", topo, fault, targets, ctx, echo)
