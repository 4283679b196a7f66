"""Drills as verbs: one fault, the runbook, restore and the plan, on an opened lab."""
from __future__ import annotations

import ipaddress
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

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


@dataclass(frozen=True)
class LiveOptions:
    """`--live` / `--serve` and how: the page's address, whether to open a browser, and
    how long to keep serving after the end (None: until Enter on a terminal)."""

    live: bool = False
    port: int = 0
    bind: str = "127.0.0.1"
    open_browser: bool = False
    linger: float | None = None


@contextmanager
def live_view(web: LiveOptions | None, title: str, replay: bool = False):
    """A started live view (or None), closed after its linger time. A replay (`report
    --serve`) is served until Enter or Ctrl-C, also without a terminal (then until
    halab is stopped), unless --linger says how long."""
    if web is None or not web.live:
        yield None
        return
    from lab.drill.live import LiveView
    lv = LiveView(web.bind, web.port, title).start(web.open_browser)
    loopback = ipaddress.ip_address(web.bind).is_loopback
    echo(f"live view: {lv.url}" + ("" if loopback else
                                    "  (read-only, reachable from the network)"))
    try:
        yield lv
    except BaseException:
        lv.close()       # refused, failed or interrupted: nothing more to show
        raise
    try:
        _linger(lv, web.linger, replay)
    finally:
        lv.close()


def _linger(lv, linger: float | None, replay: bool = False) -> None:
    try:
        if linger is None and replay and not sys.stdin.isatty():
            echo(f"live view: serving the replay on {lv.url} until halab is stopped")
            threading.Event().wait()
        elif linger is None and sys.stdin.isatty():
            echo(f"live view: the verdict is on {lv.url}; press Enter (or Ctrl-C) to stop "
                 "serving it")
            sys.stdin.readline()
        elif linger is None:
            lv.wait_delivered(5.0)
        else:
            lv.wait_delivered(min(5.0, linger))
            time.sleep(linger)
    except KeyboardInterrupt:
        pass


def run_drill(lab, fault, targets, duration, probe_interval, probe_timeout, recovery_timeout,
              warmup, allow_quorum_loss, quiet, probe_path="/api/v1/namespaces/default",
              web: LiveOptions | None = None) -> int:
    s, topo, prov = open_lab(lab)
    drill = Drill(lab, s, topo, prov, fault, list(targets),
                  settings_of(duration, probe_interval, probe_timeout, recovery_timeout, warmup,
                            probe_path),
                  allow_quorum_loss=allow_quorum_loss, echo=echo, live=not quiet)
    with live_view(web, f"halab drill {fault} {' '.join(targets)} - lab {lab.name}") as lv:
        from lab.drill.live import Publisher
        pub = Publisher(lv, drill.view_snapshot).start() if lv else None
        try:
            journal = drill.run()
        except KeyboardInterrupt:
            if pub and drill.journal.get("id"):
                pub.finish(drill.journal)
            if drill.journal.get("id"):
                echo(f"halab: drill interrupted; the fault was restored. Journal: "
                     f"{report.paths_of(lab, drill.journal)[0]}", err=True)
            raise
        except BaseException:
            if pub:
                pub.stop.set()
            raise
        if pub:
            pub.finish(journal)
        _print_result(lab, journal)
    return exit_code(journal)


def _print_result(lab, journal: dict) -> None:
    echo()
    echo(report.terminal(journal))
    html = report.write_html(lab, journal)
    echo(f"\njournal: {report.paths_of(lab, journal)[0]}\nreport:  {html}")


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


def run_runbook(lab: Lab, settings: Settings, pause: float, quiet: bool,
                web: LiveOptions | None = None) -> int:
    """`halab drill run`: the scenario's `drills:` in order, under one hold of the lab.
    The live view shows the step that runs, then the runbook's summary."""
    with lab.lock("drill run"):
        s, topo, prov = open_lab(lab)
        with live_view(web, f"halab drill run - lab {lab.name}") as lv:
            if lv is None:
                return runbook.run(lab, s, topo, prov, settings, pause, quiet, echo)
            from lab.drill.live import Publisher
            current: list = []
            pub = Publisher(lv, lambda: current[-1].view_snapshot() if current else {}).start()
            try:
                return runbook.run(lab, s, topo, prov, settings, pause, quiet, echo,
                                   on_drill=current.append,
                                   on_done=lambda rb: pub.finish(rb))
            finally:
                pub.stop.set()


def report_verb(lab: Lab, drill_id: str | None, html: bool,
                web: LiveOptions | None = None) -> int:
    j = jlib.load(lab, drill_id)
    echo(report.terminal(j))
    if html:
        echo(f"\nreport: {report.write_html(lab, j)}")
    if web is not None and web.live:
        from lab.drill import view
        with live_view(web, f"halab drill {j['id']} - lab {lab.name}", replay=True) as lv:
            if j.get("kind") != "runbook":
                j = {**j, "verdict": report.verdict_of(j)}
            lv.publish(view.model(j), final=True)
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
