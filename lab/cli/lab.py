"""Lab verbs: up, status, verify, destroy, kubectl, kubeconfig."""
from __future__ import annotations

import sys

import click

from lab.app import lab as app
from lab.cli.output import PROVIDERS, lab_options
from lab.errors import HalabError


def register(main: click.Group) -> None:
    @main.command("up")
    @click.argument("scenario_ref", metavar="SCENARIO")
    @click.option("--provider", type=PROVIDERS, default=None,
                  help="Override the scenario's provider (local = network namespaces).")
    @click.option("--no-deploy", is_flag=True, help="Only bring the machines up.")
    @click.option("--skip-doctor", is_flag=True, help="Do not run `halab doctor` first.")
    @click.option("--k8s-bin-dir", default=None, envvar="HALAB_K8S_BIN_DIR", metavar="DIR",
                  help="Folder with kube-apiserver, kube-controller-manager, kube-scheduler.")
    @click.option("--labs-dir", default=None, envvar="HALAB_LABS_DIR", metavar="DIR",
                  help="Folder holding labs (default ./.halab).")
    def up_cmd(scenario_ref, provider, no_deploy, skip_doctor, k8s_bin_dir, labs_dir):
        """Create (or continue) a lab: render, machines up, deploy, summary."""
        app.up(scenario_ref, provider, not no_deploy, labs_dir, k8s_bin_dir,
                          doctor=not skip_doctor)

    @main.command("status")
    @lab_options
    def status_cmd(lab):
        """Per node state, addresses, services and a one-word lab health."""
        sys.exit(app.status(lab))

    @main.command("verify")
    @click.option("--no-write", is_flag=True, help="Skip the ConfigMap write check.")
    @click.option("--wait", type=click.FloatRange(min=0), default=0, metavar="SECONDS",
                  show_default=True,
                  help="Check again every 10 s until every check passes or SECONDS pass.")
    @lab_options
    def verify_cmd(lab, no_write, wait):
        """Check every access path, HAProxy backends, leases and a write."""
        sys.exit(app.verify(lab, write=not no_write, wait=wait))

    @main.command("destroy")
    @click.option("--force", "-f", is_flag=True, help="Do not ask first.")
    @lab_options
    def destroy_cmd(lab, force):
        """Remove the lab: machines, processes, namespaces, kubeconfig entries, lab folder."""
        confirm = None if force or not sys.stdin.isatty() else \
            (lambda question: click.confirm(question, default=False))
        app.destroy(lab, confirm)

    @main.command("kubectl", context_settings={"ignore_unknown_options": True,
                                               "allow_interspersed_args": False})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    @lab_options
    def kubectl_cmd(lab, args):
        """Run kubectl against the lab (for the local provider, from the client namespace)."""
        sys.exit(app.kubectl(lab, list(args)))

    @main.command("kubeconfig")
    @click.option("--merge", is_flag=True, help="Merge the lab's contexts into ~/.kube/config.")
    @lab_options
    def kubeconfig_cmd(lab, merge):
        """Print the lab kubeconfig's path, or merge it into your kubeconfig."""

        if merge:
            app.merge_kubeconfig(lab)
        elif not lab.kubeconfig.exists():
            raise HalabError(f"lab {lab.name} has no kubeconfig yet", hint="run `halab deploy`")
        else:
            click.echo(str(lab.kubeconfig))
