"""`halab deploy`: (re)deploy Kubernetes on an existing lab, then verify it."""
from __future__ import annotations

import sys

import click

from lab.app import deploy as app
from lab.cli.output import lab_options


def register(main: click.Group) -> None:
    @main.command("deploy")
    @click.option("--reset", is_flag=True,
                  help="Run kubespray reset.yml first (wipes the cluster), then cluster.yml.")
    @click.option("--reset-only", is_flag=True,
                  help="Run kubespray reset.yml alone: wipes the cluster, keeps the machines.")
    @click.option("--limit", default=None, metavar="HOSTS",
                  help="Passed to ansible-playbook --limit (kubespray only).")
    @click.option("--tags", default=None, metavar="TAGS",
                  help="Passed to ansible-playbook --tags (kubespray only).")
    @click.option("--k8s-bin-dir", default=None, metavar="DIR", envvar="HALAB_K8S_BIN_DIR",
                  help="Kubernetes binaries for the static control plane (default: the one "
                       "`halab up` recorded, else halab's cache).")
    @lab_options
    def deploy_cmd(lab, reset, reset_only, limit, tags, k8s_bin_dir):
        """Deploy Kubernetes on the lab (kubespray on admin-lb, or the static control plane),
        write the lab kubeconfig, then verify. Running it again continues a failed deploy."""
        sys.exit(app.run_deploy(lab, reset=reset, limit=limit, tags=tags,
                                k8s_bin_dir=k8s_bin_dir, reset_only=reset_only))
