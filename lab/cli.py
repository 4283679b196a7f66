"""The `halab` command: each verb gathers its arguments and calls one function."""
from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import click

from . import hostinfo
from .errors import HalabError, ScenarioError
from .table import table

DEBUG = False


def handle_errors(fn):
    """HalabError -> one line on stderr and its exit code; traceback only with --debug."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ScenarioError as exc:
            _print_warnings(exc.warnings)
            n = len(exc.problems)
            click.echo(f"halab: {n} problem{'s' if n != 1 else ''} in the scenario "
                       "(nothing was written):", err=True)
            for p in exc.problems:
                click.echo(f"  error: {p.line()}", err=True)
            if DEBUG:
                traceback.print_exc()
            sys.exit(exc.code)
        except HalabError as exc:
            click.echo(f"halab: error: {exc.message}", err=True)
            if exc.hint:
                click.echo(f"halab: fix: {exc.hint}", err=True)
            if DEBUG:
                traceback.print_exc()
            sys.exit(exc.code)
        except KeyboardInterrupt:
            click.echo("halab: interrupted", err=True)
            click.echo("halab: fix: `halab status` shows what is there; the same command "
                       "again continues where it stopped; `halab destroy` removes the lab",
                       err=True)
            sys.exit(130)
    return wrapper


def _print_warnings(warnings):
    for w in warnings:
        click.echo(f"  warning: {w.line()}", err=True)


def load_scenario(ref: str, provider: str | None = None, quiet: bool = False):
    from . import scenario
    s = scenario.load(ref, provider=provider)
    if not quiet:
        _print_warnings(s.warnings)
    return s


class _Halab(click.Group):
    """The command group: every verb's errors end here as one line and its fix, also
    those raised before the verb's own body runs (no lab in this folder, ...)."""

    def invoke(self, ctx):
        return handle_errors(super().invoke)(ctx)


@click.group(cls=_Halab, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="halab")
def main(debug):
    """halab: Kubernetes HA labs on VMs, and failover drills that prove them.

    \b
    halab up case2                 VMs up, kubespray deploys the cluster for Case 2
    halab drill kill k8s-node1     power a control plane off; prove kubectl keeps working
    halab destroy                  nothing left behind
    """
    global DEBUG
    DEBUG = debug or os.environ.get("HALAB_DEBUG") == "1"


# ------------------------------------------------------------------ scenarios

@main.command("scenarios")
@handle_errors
def scenarios_cmd():
    """List the bundled scenarios: name, then a short description."""
    from . import scenario
    import yaml
    for name, path in scenario.bundled_scenarios().items():
        data = yaml.safe_load(path.read_text()) or {}
        desc = data.get("description", "")
        click.echo(f"{name:<10} {desc}".rstrip())


@main.command("validate")
@click.argument("scenario_ref", metavar="SCENARIO")
@click.option("--provider", type=click.Choice(["virtualbox", "libvirt", "local"]), default=None,
              help="Validate as if the scenario used this provider.")
@handle_errors
def validate_cmd(scenario_ref, provider):
    """Check a scenario (bundled name or YAML file); every problem at once."""
    s = load_scenario(scenario_ref, provider)
    warn = f" ({len(s.warnings)} warning{'s' if len(s.warnings) != 1 else ''})" if s.warnings else ""
    click.echo(f"{s.source}: OK: lab {s.name}, Case {s.case}, provider {s.provider}{warn}")


@main.command("show")
@click.argument("scenario_ref", metavar="SCENARIO")
@click.option("--provider", type=click.Choice(["virtualbox", "libvirt", "local"]), default=None)
@handle_errors
def show_cmd(scenario_ref, provider):
    """Nodes, roles, addresses, sizes and the access path of each kind of client."""
    from .topology import ROLE_LABEL, Topology
    s = load_scenario(scenario_ref, provider)
    topo = Topology.of(s)
    click.echo(f"Lab {s.name}: Case {s.case}, provider {s.provider}, deployer {s.deployer}, "
               f"subnet {s.network.subnet}")
    if s.description:
        click.echo(s.description)
    click.echo()
    rows = [[n.name, ROLE_LABEL[n.role], n.ip, n.cpus, f"{n.memory} MiB"] for n in topo.nodes]
    click.echo(table(["NODE", "ROLE", "ADDRESS", "vCPU", "RAM"], rows))
    host_mem = hostinfo.memory_mib()
    total = topo.total_memory()
    verdict = "fits" if total <= host_mem * 0.8 else \
        "tight (leave the host some room)" if total <= host_mem else "does NOT fit"
    click.echo(f"\nTotal: {topo.total_cpus()} vCPU, {total} MiB RAM; this host has "
               f"{hostinfo.cpus()} CPUs and {host_mem} MiB: {verdict}")
    if topo.lb_address is not None:
        click.echo(f"API load balancer: {topo.lb_address}:6443 ({topo.lb_name})")
    click.echo("\nAccess paths in this Case:")
    click.echo(table(["CLIENT", "ENDPOINT", "VIA"], [list(r) for r in topo.client_kinds()]))


@main.command("render")
@click.argument("scenario_ref", metavar="SCENARIO")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the rendered lab into (created; must be new or empty).")
@click.option("--provider", type=click.Choice(["virtualbox", "libvirt", "local"]), default=None)
@click.option("--force", is_flag=True, help="Replace DIR if it already has files.")
@handle_errors
def render_cmd(scenario_ref, out_dir, provider, force):
    """Write the whole rendered lab (Vagrantfile, scripts, configs, inventory) into DIR."""
    from . import render
    s = load_scenario(scenario_ref, provider)
    secrets = render.LabSecrets.generate(comment=f"halab-{s.name}")
    files = render.render(s, secrets)
    write_tree_atomically(out_dir, lambda tmp: render.write(files, secrets, tmp), force)
    click.echo(f"wrote {len(files) + 2} files for lab {s.name} into {out_dir}")


def write_tree_atomically(dest: Path, fill, force: bool = False) -> None:
    """Build a folder next to `dest` and move it in place: on error `dest` is untouched."""
    dest = dest.expanduser()
    if dest.exists() and not dest.is_dir():
        raise HalabError(f"{dest} exists and is not a folder", hint="choose another --out")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise HalabError(f"{dest} already has files", hint="choose a new folder or add --force")
    parent = dest.resolve().parent
    if not parent.is_dir():
        raise HalabError(f"{parent} does not exist", hint=f"create it first: mkdir -p {parent}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=parent))
    try:
        fill(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _register_commands():
    """Verbs that live in their own modules (lab lifecycle, machines, deploy, drills)."""
    from . import commands, deploy_cli, vmcommands
    from .drill import cli as drill_cli
    for mod in (commands, vmcommands, deploy_cli, drill_cli):
        mod.register(main)


_register_commands()


if __name__ == "__main__":
    main()
