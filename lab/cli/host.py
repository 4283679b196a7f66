"""Host verbs: doctor (is this machine ready for a scenario?) and fetch-k8s."""
from __future__ import annotations

import sys

import click

from lab.cli.output import PROVIDERS, load_scenario
from lab.host import doctor, k8sbin


def register(main: click.Group) -> None:
    @main.command("doctor")
    @click.argument("scenario_ref", metavar="[SCENARIO]", required=False)
    @click.option("--provider", type=PROVIDERS, default=None,
                  help="Check for this provider instead of the scenario's.")
    def doctor_cmd(scenario_ref, provider):
        """Is this host ready for the scenario? OK / WARN / FAIL with a fix for each."""
        s = load_scenario(scenario_ref or "case2", provider)
        sys.exit(doctor.doctor_verb(s, echo=click.echo))

    @main.command("fetch-k8s")
    @click.argument("version")
    @click.option("--dest", default=None, metavar="DIR", help="Folder (default: halab's cache).")
    def fetch_k8s_cmd(version, dest):
        """Download official Kubernetes server binaries (checksums verified) into the cache."""
        target = k8sbin.fetch_k8s(version, dest)
        click.echo(f"installed Kubernetes {version} binaries into {target}")
