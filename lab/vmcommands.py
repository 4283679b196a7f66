"""Machine verbs: doctor, ssh, halt, provision."""
from __future__ import annotations

import os
import shlex
import sys

import click

from .commands import PROVIDERS, lab_options, open_lab


def remote_command(command: list[str]) -> list[str]:
    """`halab ssh NODE -- CMD` on a VM: one argument is a shell command line, as with
    ssh; several are an argv, quoted for the VM's shell (ssh joins its arguments with
    spaces, so `sudo sh -c "a; b"` would otherwise run `sh -c a` and then `b`)."""
    return [shlex.join(command)] if len(command) > 1 else command


def local_command(command: list[str]) -> list[str]:
    """The same on a local lab's node: one argument goes through sh, several are exec'd."""
    return ["sh", "-c", command[0]] if len(command) == 1 else command


def register(main: click.Group) -> None:
    from .cli import handle_errors, load_scenario

    @main.command("doctor")
    @click.argument("scenario_ref", metavar="[SCENARIO]", required=False)
    @click.option("--provider", type=PROVIDERS, default=None)
    @handle_errors
    def doctor_cmd(scenario_ref, provider):
        """Is this host ready for the scenario? OK / WARN / FAIL with a fix for each."""
        from .doctor import run_doctor
        s = load_scenario(scenario_ref or "case2", provider)
        if s.provider == "local":
            from .providers.local import missing_programs, require_root
            from .topology import Topology
            require_root()
            missing = missing_programs(Topology.of(s))
            for prog, pkg in missing:
                click.echo(f"  FAIL {prog}: not installed -> fix: apt-get install {pkg}")
            from .k8sbin import find_k8s_binaries
            try:
                k = find_k8s_binaries()
                click.echo(f"  OK   Kubernetes binaries: {k.version} in {k.directory}")
            except Exception as exc:  # noqa: BLE001 - shown as a finding
                click.echo(f"  FAIL Kubernetes binaries: {exc}")
                missing.append(("k8s", ""))
            sys.exit(1 if missing else 0)
        click.echo(f"halab doctor: scenario {s.name} ({s.provider})")
        findings = run_doctor(s, echo=click.echo)
        sys.exit(1 if any(f.level == "FAIL" for f in findings) else 0)

    @main.command("ssh", context_settings={"ignore_unknown_options": True,
                                           "allow_interspersed_args": False})
    @click.argument("node")
    @click.argument("command", nargs=-1, type=click.UNPROCESSED)
    @lab_options
    @handle_errors
    def ssh_cmd(lab, node, command):
        """Open a shell on NODE, or run `-- CMD` there.

        One CMD argument is a shell command line (`-- 'journalctl | tail'`); several
        are a command and its arguments, passed as they are (`-- sudo sh -c "a; b"`).
        """
        s, topo, prov = open_lab(lab)
        names = [n.name for n in topo.nodes]
        if node not in names:
            from .errors import HalabError
            raise HalabError(f"lab {lab.name} has no node {node!r}", hint=f"nodes: {', '.join(names)}")
        command = list(command)
        if command and command[0] == "--":
            command = command[1:]
        if s.provider == "local":
            from . import netns
            argv = netns.exec_prefix(prov.ns(node)) + (local_command(command) or
                                                       [os.environ.get("SHELL", "bash")])
        else:
            argv = prov.ssh_argv(node, remote_command(command))
            os.chdir(lab.path)
        os.execvp(argv[0], argv)

    @main.command("halt")
    @click.argument("node", required=False)
    @lab_options
    @handle_errors
    def halt_cmd(lab, node):
        """Shut VMs down gracefully (all, or NODE); `halab up` starts them again."""
        s, topo, prov = open_lab(lab)
        with lab.lock("halt"):
            if s.provider == "local":
                targets = [node] if node else [n.name for n in topo.nodes]
                for t in targets:
                    prov.sup.stop_all(t)
                click.echo(f"stopped the processes of {', '.join(targets)}; `halab up` starts them")
                return
            prov.halt(node)
            lab.event("halt", node=node)
        click.echo(f"halted {node or 'every VM'}; `halab up` brings it back")

    @main.command("provision")
    @click.argument("node", required=False)
    @lab_options
    @handle_errors
    def provision_cmd(lab, node):
        """Run the provisioning scripts again (all VMs, or NODE); they are idempotent."""
        s, topo, prov = open_lab(lab)
        if s.provider == "local":
            click.echo("the local provider has no provisioning scripts; `halab up` re-applies")
            return
        with lab.lock("provision"):
            prov.provision(node, progress=click.echo)
            lab.event("provision", node=node)
