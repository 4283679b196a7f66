"""Scenario verbs: scenarios, validate, show, render (nothing here touches a lab)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click

from lab.cli.output import PROVIDERS, load_scenario
from lab.errors import HalabError
from lab.host import hostinfo
from lab.table import table


def register(main: click.Group) -> None:
    # ------------------------------------------------------------------ scenarios

    @main.command("scenarios")
    def scenarios_cmd():
        """List the bundled scenarios: name, then a short description."""
        from lab.model import scenario
        import yaml
        for name, path in scenario.bundled_scenarios().items():
            data = yaml.safe_load(path.read_text()) or {}
            desc = data.get("description", "")
            click.echo(f"{name:<10} {desc}".rstrip())


    @main.command("validate")
    @click.argument("scenario_ref", metavar="SCENARIO")
    @click.option("--provider", type=PROVIDERS, default=None,
                  help="Validate as if the scenario used this provider.")
    def validate_cmd(scenario_ref, provider):
        """Check a scenario (bundled name or YAML file); every problem at once."""
        s = load_scenario(scenario_ref, provider)
        warn = f" ({len(s.warnings)} warning{'s' if len(s.warnings) != 1 else ''})" if s.warnings else ""
        click.echo(f"{s.source}: OK: lab {s.name}, Case {s.case}, provider {s.provider}{warn}")


    @main.command("show")
    @click.argument("scenario_ref", metavar="SCENARIO")
    @click.option("--provider", type=PROVIDERS, default=None,
                  help="As if the scenario used this provider.")
    def show_cmd(scenario_ref, provider):
        """Nodes, roles, addresses, sizes and the access path of each kind of client."""
        from lab.model.topology import Topology
        s = load_scenario(scenario_ref, provider)
        topo = Topology.of(s)
        click.echo(f"Lab {s.name}: Case {s.case}, provider {s.provider}, deployer {s.deployer}, "
                   f"subnet {s.network.subnet}")
        if s.description:
            click.echo(s.description)
        click.echo()
        rows = [[n.name, topo.role_label(n), n.ip, n.cpus, f"{n.memory} MiB"] for n in topo.nodes]
        click.echo(table(["NODE", "ROLE", "ADDRESS", "vCPU", "RAM"], rows))
        host_mem = hostinfo.memory_mib()
        total = topo.total_memory()
        verdict = "fits" if total <= host_mem * 0.8 else \
            "tight (leave the host some room)" if total <= host_mem else "does NOT fit"
        click.echo(f"\nTotal: {topo.total_cpus()} vCPU, {total} MiB RAM; this host has "
                   f"{hostinfo.cpus()} CPUs and {host_mem} MiB: {verdict}")
        if s.provider != "local" and topo.total_cpus() > hostinfo.cpus():
            click.echo(f"CPUs are overcommitted {topo.total_cpus() / hostinfo.cpus():.1f}x: the "
                       f"VMs share {hostinfo.cpus()} CPUs (fine for a lab at rest; deploys and "
                       f"drills run slower, and timings in reports stretch)")
        if topo.lb_address is not None:
            click.echo(f"API load balancer: {topo.lb_address}:6443 ({topo.lb_name})")
        click.echo("\nAccess paths in this Case:")
        click.echo(table(["CLIENT", "ENDPOINT", "VIA"], [list(r) for r in topo.client_kinds()]))


    @main.command("render")
    @click.argument("scenario_ref", metavar="SCENARIO")
    @click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
                  help="Folder to write the rendered lab into (created; must be new or empty).")
    @click.option("--provider", type=PROVIDERS, default=None,
                  help="As if the scenario used this provider.")
    @click.option("--force", is_flag=True,
                  help="Replace DIR if it holds an earlier render (never other files).")
    def render_cmd(scenario_ref, out_dir, provider, force):
        """Write the whole rendered lab (Vagrantfile, scripts, configs, inventory) into DIR."""
        from lab import render
        s = load_scenario(scenario_ref, provider)
        secrets = render.LabSecrets.generate(comment=f"halab-{s.name}")
        files = render.render(s, secrets)
        from lab.host.wheels import wheels_for
        wheels = wheels_for(s, progress=click.echo)   # before anything is written

        def fill(tmp):
            render.write(files, secrets, tmp)
            render.write_kubespray_source(s, tmp)
            render.write_uploads(s, tmp, wheels)
        write_tree_atomically(out_dir, fill, force)
        click.echo(f"wrote {len(files) + 2} files for lab {s.name} into {out_dir}")


RENDER_MARKER = ".halab-render"   # written into every folder `halab render` fills


def write_tree_atomically(dest: Path, fill, force: bool = False) -> None:
    """Build a folder next to `dest` and move it in place: on error `dest` is untouched.

    An existing folder is replaced only when it holds a previous render (its marker
    file) and `force` is given: `--out .` in a folder of notes must never delete them.
    """
    given = dest
    dest = dest.expanduser().resolve()
    cwd = Path.cwd().resolve()
    if dest == cwd or dest in cwd.parents or dest == Path.home().resolve():
        raise HalabError(f"--out {given} is the current folder, one of its parents or your "
                         "home folder", hint="render into a new folder, e.g. --out lab-files")
    if dest.exists() and not dest.is_dir():
        raise HalabError(f"{dest} exists and is not a folder", hint="choose another --out")
    if dest.is_dir() and any(dest.iterdir()):
        if not (dest / RENDER_MARKER).is_file():
            raise HalabError(f"{dest} already has files that halab did not render",
                             hint="choose a new or empty folder (halab replaces only a folder "
                                  "it rendered itself)")
        if not force:
            raise HalabError(f"{dest} holds an earlier render",
                             hint="add --force to replace it, or choose a new folder")
    parent = dest.parent
    if not parent.is_dir():
        raise HalabError(f"{parent} does not exist", hint=f"create it first: mkdir -p {parent}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=parent))
    try:
        fill(tmp)
        (tmp / RENDER_MARKER).write_text("rendered by halab; `halab render --force` may "
                                         "replace this folder\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
