"""The `halab` command: each verb gathers its arguments and calls one function."""
from __future__ import annotations

import os

import click

from lab.cli import deploy as deploy_verbs
from lab.cli import drill as drill_verbs
from lab.cli import host as host_verbs
from lab.cli import lab as lab_verbs
from lab.cli import machines as machine_verbs
from lab.cli import scenario as scenario_verbs
from lab.cli.output import Verbs, handle_errors, set_debug

class _Halab(Verbs):
    """The command group: every verb's errors end here as one line and its fix, also
    those raised before the verb's own body runs (no lab in this folder, ...)."""

    def invoke(self, ctx):
        return handle_errors(super().invoke)(ctx)


@click.group(cls=_Halab, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="halab")
@click.pass_context
def main(ctx, debug):
    """halab: Kubernetes HA labs on VMs, and failover drills that prove them.

    \b
    halab up case2                 VMs up, kubespray deploys the cluster for Case 2
    halab drill kill k8s-node1     power a control plane off; prove kubectl keeps working
    halab destroy                  nothing left behind
    """
    set_debug(debug or os.environ.get("HALAB_DEBUG") == "1")
    if ctx.invoked_subcommand is None:       # bare `halab`: the help, on stdout, exit 0
        click.echo(ctx.get_help())
        ctx.exit(0)


for _verbs in (scenario_verbs, lab_verbs, machine_verbs, deploy_verbs, host_verbs, drill_verbs):
    _verbs.register(main)


if __name__ == "__main__":
    main()
