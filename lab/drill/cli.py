"""`halab drill ...`: one verb per fault, plus plan, restore, report, list and run."""
from __future__ import annotations

import sys

import click

from ..commands import lab_options, open_lab
from ..errors import HalabError
from . import faults as faultlib

EXIT_DISAGREE = 1      # measured behaviour differs from the expectation
EXIT_REFUSED = 2       # refused (quorum, Case 1 stop-lb, bad target)
EXIT_UNHEALTHY = 3     # the lab was not healthy before, or is not after


def _settings(duration, probe_interval, probe_timeout, recovery_timeout, warmup,
              probe_path="/api/v1/namespaces/default"):
    from .engine import Settings
    return Settings(duration=duration, probe_interval=probe_interval,
                    probe_timeout=probe_timeout, recovery_timeout=recovery_timeout,
                    warmup=warmup, probe_path=probe_path)


def drill_options(fn):
    for opt in reversed([
        click.option("--duration", type=click.FloatRange(1, 3600), default=None,
                     help="Seconds the fault stays injected (default: long enough for the "
                          "slowest expected failover, at least 15)."),
        click.option("--probe-path", default="/api/v1/namespaces/default", show_default=True,
                     help="What read probes GET (e.g. /readyz)."),
        click.option("--probe-interval", type=click.FloatRange(0.05, 5), default=None,
                     help="Seconds between probes of one access path (default: 0.2 on the "
                          "local provider, 1 on emulated VMs: every probe is a TLS handshake, costly "
                          "for an emulated VM)."),
        click.option("--probe-timeout", type=click.FloatRange(0.1, 30), default=None,
                     help="A probe slower than this counts as failed (default: 1 s on the "
                          "local provider and on VMs with hardware virtualization, 15 s on "
                          "emulated VMs, whose TLS handshakes alone take a second when busy)."),
        click.option("--recovery-timeout", type=click.FloatRange(5, 1800), default=None,
                     help="Max seconds to wait for every path after restore (default: 60 on "
                          "the local provider, 600 on VMs, where a killed node boots again)."),
        click.option("--warmup", type=click.FloatRange(0.5, 60), default=2.0, show_default=True,
                     help="Seconds of probing before the fault."),
        click.option("--allow-quorum-loss", is_flag=True,
                     help="Allow a fault that loses etcd quorum or the last API server."),
        click.option("--quiet", "-q", is_flag=True, help="No live probe lines."),
        lab_options,
    ]):
        fn = opt(fn)
    return fn


def run_drill(lab, fault, targets, duration, probe_interval, probe_timeout, recovery_timeout,
              warmup, allow_quorum_loss, quiet, probe_path="/api/v1/namespaces/default") -> int:
    from . import report
    from .engine import Drill
    s, topo, prov = open_lab(lab)
    drill = Drill(lab, s, topo, prov, fault, list(targets),
                  _settings(duration, probe_interval, probe_timeout, recovery_timeout, warmup,
                            probe_path),
                  allow_quorum_loss=allow_quorum_loss, echo=click.echo, live=not quiet)
    try:
        journal = drill.run()
    except KeyboardInterrupt:
        if drill.journal.get("id"):
            click.echo(f"halab: drill interrupted; the fault was restored. Journal: "
                       f"{report.paths_of(lab, drill.journal)[0]}", err=True)
        raise
    click.echo()
    click.echo(report.terminal(journal))
    html = report.write_html(lab, journal)
    click.echo(f"\njournal: {report.paths_of(lab, journal)[0]}\nreport:  {html}")
    return exit_code(journal)


def exit_code(journal: dict) -> int:
    v = journal.get("verdict", {})
    if v.get("healthy_after") is False:
        return EXIT_UNHEALTHY
    return 0 if v.get("ok") else EXIT_DISAGREE


def _fault_command(group, name: str):
    f = faultlib.FAULTS[name]
    target_help = "[LB]" if name == "stop-lb" else "TARGET..."

    @group.command(name, help=f"{f.summary[0].upper() + f.summary[1:]}; then {f.restore}.\n\n"
                   f"Probes every access path before, during and after, and compares what "
                   f"happened with `halab drill plan {name}`."
                   + ("" if name == "stop-lb" else
                      "\n\nTARGET is a node, or etcd-leader / etcd-follower: the etcd member "
                      "that has that role when the drill starts (a leader's death stops every "
                      "commit until the others elect a new one; a follower's does not)."),
                   short_help=f.summary.split(":")[0].split("(")[0].strip()[:60])
    @click.argument("targets", nargs=-1, required=name != "stop-lb", metavar=target_help)
    @drill_options
    def cmd(lab, targets, **kw):
        from ..cli import handle_errors
        sys.exit(handle_errors(run_drill)(lab, name, targets, **kw))
    return cmd


def register(main: click.Group) -> None:
    @main.group("drill")
    def drill():
        """Failover drills: inject a fault, probe every access path, measure, explain, restore.

        \b
        halab drill plan [FAULT [TARGET]]   what should happen, path by path, and why
        halab drill kill k8s-node1          power a control plane off, measure, restore
        halab drill stop-lb                 stop HAProxy (on the VIP holder in case3-ha)
        halab drill run                     the scenario's `drills:` one after another
        halab drill report [ID]             summary + HTML report of a drill (default: latest)
        halab drill restore                 undo faults a killed halab left injected
        """

    for name in faultlib.FAULTS:
        _fault_command(drill, name)

    @drill.command("plan")
    @click.argument("fault", required=False, type=click.Choice(list(faultlib.FAULTS)))
    @click.argument("targets", nargs=-1, metavar="[TARGET...]")
    @click.option("--scenario", "scenario_ref", default=None, metavar="SCENARIO",
                  help="Plan for a scenario instead of an existing lab.")
    @click.option("--labs-dir", default=None, envvar="HALAB_LABS_DIR")
    @click.option("--lab", "lab_name", default=None, metavar="NAME")
    def plan_cmd(fault, targets, scenario_ref, labs_dir, lab_name):
        """Print what every access path should do under a fault, and why (before a drill)."""
        from ..cli import handle_errors
        from . import plan as planlib
        sys.exit(handle_errors(planlib.plan_command)(fault, list(targets), scenario_ref,
                                                     labs_dir, lab_name, click.echo))

    @drill.command("restore")
    @click.argument("nodes", nargs=-1, metavar="[NODE...]")
    @click.option("--all", "all_", is_flag=True, help="Every injected fault (the default).")
    @click.option("--no-wait", is_flag=True, help="Do not wait for every access path.")
    @click.option("--force", is_flag=True, help="Also while a drill is running.")
    @lab_options
    def restore_cmd(lab, nodes, all_, no_wait, force):
        """Undo injected faults (also after halab was killed mid-drill), then wait until ready."""
        from ..cli import handle_errors
        sys.exit(handle_errors(restore)(lab, [] if all_ else list(nodes), not no_wait, force))

    @drill.command("report")
    @click.argument("drill_id", required=False, metavar="[ID]")
    @click.option("--no-html", is_flag=True, help="Only the terminal summary.")
    @lab_options
    def report_cmd(lab, drill_id, no_html):
        """Summary per access path and an HTML report (default: the latest drill)."""
        from ..cli import handle_errors

        def run():
            from . import journal as jlib, report
            j = jlib.load(lab, drill_id)
            click.echo(report.terminal(j))
            if not no_html:
                click.echo(f"\nreport: {report.write_html(lab, j)}")
            return exit_code(j) if j.get("kind") != "runbook" else (
                0 if j.get("verdict", {}).get("ok") else EXIT_DISAGREE)
        sys.exit(handle_errors(run)())

    @drill.command("list")
    @lab_options
    def list_cmd(lab):
        """Every drill of the lab: id, fault, verdict."""
        from ..cli import handle_errors

        def run():
            from . import report
            click.echo(report.listing(lab))
            return 0
        sys.exit(handle_errors(run)())

    @drill.command("run")
    @click.option("--duration", type=click.FloatRange(1, 3600), default=None,
                  help="Seconds each fault stays injected (default: auto per step).")
    # None: the provider's fitted values (a VM boots in minutes; emulated VMs probe slower)
    @click.option("--probe-interval", type=click.FloatRange(0.05, 5), default=None,
                  help="Seconds between probes of one path (default: the provider's).")
    @click.option("--probe-timeout", type=click.FloatRange(0.1, 30), default=None,
                  help="A probe slower than this failed (default: the provider's).")
    @click.option("--recovery-timeout", type=click.FloatRange(5, 1800), default=None,
                  help="Max seconds each step waits after its restore (default: the "
                       "provider's: 60 locally, 600 on VMs).")
    @click.option("--warmup", type=click.FloatRange(0.5, 60), default=2.0, show_default=True)
    @click.option("--pause", type=click.FloatRange(0, 3600), default=0.0,
                  help="Seconds between steps (time to discuss in a workshop).")
    @click.option("--quiet", "-q", is_flag=True)
    @lab_options
    def run_cmd(lab, duration, probe_interval, probe_timeout, recovery_timeout, warmup, pause,
                quiet):
        """Play the scenario's `drills:` in order, one combined report (workshop mode)."""
        from ..cli import handle_errors
        from . import runbook
        settings = _settings(duration, probe_interval, probe_timeout, recovery_timeout, warmup)
        sys.exit(handle_errors(runbook.run)(lab, settings, pause, quiet, click.echo))


def restore(lab, nodes: list[str], wait: bool = True, force: bool = False) -> int:
    from .engine import drill_running
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
    from ..verify import wait_ready
    s, topo, prov = open_lab(lab)
    injected = lab.record().faults
    if not injected:
        click.echo(f"lab {lab.name}: no fault is injected; nothing to restore")
        return 0
    done = faultlib.restore_all(lab, topo, prov, nodes or None,
                                progress=lambda m: click.echo(f"  {m}"))
    _mark_journals(lab, done)
    click.echo(f"restored {len(done)} fault(s): {', '.join(f'{f} {n}' for n, f in done)}")
    if wait:
        click.echo("waiting for every access path and both leases ...")
        wait_ready(lab, topo, prov, timeout=120, progress=lambda m: click.echo(f"  {m}"))
        click.echo(f"lab {lab.name} is ready again; `halab verify` to check everything")
    return 0


def _mark_journals(lab, done) -> None:
    """A drill whose halab died keeps status `running`: note who restored its faults."""
    import time
    from . import journal as jlib
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
