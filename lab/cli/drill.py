"""`halab drill ...`: one verb per fault, plus plan, restore, report, list and run."""
from __future__ import annotations

import sys

import click

from lab.app import drills as app
from lab.cli.output import PROVIDERS, Verbs, lab_options
from lab.drill import faults as faultlib
from lab.errors import HalabError

def live_options(flag: str = "--live", help_text: str = ""):
    """The live view's options: serve the drill page while it runs (or a finished one)."""
    def deco(fn):
        for opt in reversed([
            click.option(flag, "live", is_flag=True, help=help_text),
            click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
                         metavar="PORT",
                         help="Port of the live view (0: a free one, printed at the start)."),
            click.option("--bind", default="127.0.0.1", show_default=True, metavar="ADDRESS",
                         help="Address the live view listens on; anything but loopback lets "
                              "other machines watch (read-only)."),
            click.option("--open", "open_browser", is_flag=True,
                         help="Open the live view in the default browser."),
            click.option("--linger", type=click.FloatRange(0, 86400), default=None,
                         metavar="SECONDS",
                         help="Keep serving the page this long after the end (default: until "
                              "Enter or Ctrl-C on a terminal, 5 s otherwise)."),
        ]):
            fn = opt(fn)
        return fn
    return deco


LIVE_HELP = ("Show the drill live in a browser: every access path, node, HAProxy backend, "
             "lease holder and the etcd leader as lanes, with what the Case predicts.")


def drill_options(fn):
    for opt in reversed([
        click.option("--duration", type=click.FloatRange(1, 3600), metavar="SECONDS", default=None,
                     help="Seconds the fault stays injected (default: long enough for the "
                          "slowest expected failover, at least 15)."),
        click.option("--probe-path", default="/api/v1/namespaces/default", show_default=True,
                     metavar="PATH",
                     help="What read probes GET (e.g. /readyz)."),
        click.option("--probe-interval", type=click.FloatRange(0.05, 5), metavar="SECONDS", default=None,
                     help="Seconds between probes of one access path (default: 0.2 on the "
                          "local provider, 1 on emulated VMs: every probe is a TLS handshake, costly "
                          "for an emulated VM)."),
        click.option("--probe-timeout", type=click.FloatRange(0.1, 30), metavar="SECONDS", default=None,
                     help="A probe slower than this counts as failed (default: 1 s on the "
                          "local provider and on VMs with hardware virtualization, 15 s on "
                          "emulated VMs, whose TLS handshakes alone take a second when busy)."),
        click.option("--recovery-timeout", type=click.FloatRange(5, 1800), metavar="SECONDS", default=None,
                     help="Max seconds to wait for every path after restore (default: 60 on "
                          "the local provider, 600 on VMs, where a killed node boots again)."),
        click.option("--warmup", type=click.FloatRange(0.5, 60), metavar="SECONDS", default=2.0,
                     show_default=True,
                     help="Seconds of probing before the fault."),
        click.option("--allow-quorum-loss", is_flag=True,
                     help="Allow a fault that loses etcd quorum or the last API server."),
        click.option("--quiet", "-q", is_flag=True, help="No live probe lines."),
        live_options("--live", LIVE_HELP),
        lab_options,
    ]):
        fn = opt(fn)
    return fn


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
    def cmd(lab, targets, live, port, bind, open_browser, linger, **kw):
        web = app.LiveOptions(live, port, bind, open_browser, linger)
        sys.exit(app.run_drill(lab, name, targets, web=web, **kw))
    return cmd


def register(main: click.Group) -> None:
    @main.group("drill", cls=Verbs)
    def drill():
        """Failover drills: inject a fault, probe every access path, measure, explain, restore.

        \b
        halab drill plan [FAULT [TARGET]]   what should happen, path by path, and why
        halab drill kill k8s-node1          power a control plane off, measure, restore
        halab drill stop-lb                 stop HAProxy (on the VIP holder in case3-ha)
        halab drill run                     the scenario's `drills:` one after another
        halab drill report [ID]             summary + HTML report of a drill (default: latest)
        halab drill kill k8s-node1 --live   the same, drawn live in a browser (projector)
        halab drill restore                 undo faults a killed halab left injected
        """

    for name in faultlib.FAULTS:
        _fault_command(drill, name)

    @drill.command("plan")
    @click.argument("args", nargs=-1, metavar="[SCENARIO] [FAULT [TARGET...]]")
    @click.option("--scenario", "scenario_opt", default=None, hidden=True, metavar="SCENARIO",
                  help="The scenario (older spelling of the positional SCENARIO).")
    @click.option("--provider", type=PROVIDERS, default=None,
                  help="Plan a scenario as if it used this provider (wording and timings).")
    @click.option("--labs-dir", default=None, metavar="DIR", envvar="HALAB_LABS_DIR",
                  help="Folder holding labs (default ./.halab).")
    @click.option("--lab", "lab_name", default=None, metavar="NAME",
                  help="Plan for this lab (default: the only one here).")
    def plan_cmd(args, scenario_opt, provider, labs_dir, lab_name):
        """What every access path should do under a fault, and why (before a drill).

        \b
        halab drill plan case2                  a scenario: every fault, no lab needed
        halab drill plan kill k8s-node1         the lab here, with its etcd leader now
        halab drill plan case3 stop-lb          one fault of a scenario
        """
        args = list(args)
        scenario_ref = scenario_opt
        if args and args[0] not in faultlib.FAULTS and scenario_ref is None:
            scenario_ref = args.pop(0)
        fault = args.pop(0) if args else None
        if fault is not None and fault not in faultlib.FAULTS:
            raise HalabError(f"{fault!r} is not a fault", code=2,
                             hint=f"choose one of {', '.join(faultlib.FAULTS)}")
        sys.exit(app.plan_verb(fault, args, scenario_ref, labs_dir, lab_name, provider))

    @drill.command("restore")
    @click.argument("nodes", nargs=-1, metavar="[NODE...]")
    @click.option("--all", "all_", is_flag=True, help="Every injected fault (the default).")
    @click.option("--no-wait", is_flag=True, help="Do not wait for every access path.")
    @click.option("--force", is_flag=True, help="Also while a drill is running.")
    @lab_options
    def restore_cmd(lab, nodes, all_, no_wait, force):
        """Undo injected faults (also after halab was killed mid-drill), then wait until ready."""
        sys.exit(app.restore(lab, [] if all_ else list(nodes), not no_wait, force))

    @drill.command("report")
    @click.argument("drill_id", required=False, metavar="[ID]")
    @click.option("--no-html", is_flag=True, help="Only the terminal summary.")
    @live_options("--serve", "Replay the drill from its journal in the live view's page.")
    @lab_options
    def report_cmd(lab, drill_id, no_html, live, port, bind, open_browser, linger):
        """Summary per access path and an HTML report (default: the latest drill).

        \b
        halab drill report                      the latest drill
        halab drill report 20261204-1012 --serve --open   replay it in the browser
        """
        web = app.LiveOptions(live, port, bind, open_browser, linger)
        sys.exit(app.report_verb(lab, drill_id, html=not no_html, web=web))

    @drill.command("list")
    @lab_options
    def list_cmd(lab):
        """Every drill of the lab: id, fault, verdict."""
        from lab.drill import report
        click.echo(report.listing(lab))

    @drill.command("run")
    @click.option("--duration", type=click.FloatRange(1, 3600), metavar="SECONDS", default=None,
                  help="Seconds each fault stays injected (default: auto per step).")
    # None: the provider's fitted values (a VM boots in minutes; emulated VMs probe slower)
    @click.option("--probe-interval", type=click.FloatRange(0.05, 5), metavar="SECONDS", default=None,
                  help="Seconds between probes of one path (default: the provider's).")
    @click.option("--probe-timeout", type=click.FloatRange(0.1, 30), metavar="SECONDS", default=None,
                  help="A probe slower than this failed (default: the provider's).")
    @click.option("--recovery-timeout", type=click.FloatRange(5, 1800), metavar="SECONDS", default=None,
                  help="Max seconds each step waits after its restore (default: the "
                       "provider's: 60 locally, 600 on VMs).")
    @click.option("--warmup", type=click.FloatRange(0.5, 60), metavar="SECONDS", default=2.0,
                  show_default=True, help="Seconds of probing before each fault.")
    @click.option("--pause", type=click.FloatRange(0, 3600), metavar="SECONDS", default=0.0,
                  help="Seconds between steps (time to discuss in a workshop).")
    @click.option("--quiet", "-q", is_flag=True, help="No live probe lines.")
    @live_options("--live", LIVE_HELP)
    @lab_options
    def run_cmd(lab, duration, probe_interval, probe_timeout, recovery_timeout, warmup, pause,
                quiet, live, port, bind, open_browser, linger):
        """Play the scenario's `drills:` in order, one combined report (workshop mode)."""
        settings = app.settings_of(duration, probe_interval, probe_timeout, recovery_timeout, warmup)
        web = app.LiveOptions(live, port, bind, open_browser, linger)
        sys.exit(app.run_runbook(lab, settings, pause, quiet, web=web))


