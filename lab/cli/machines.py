"""Machine verbs: ssh, halt, provision."""
from __future__ import annotations

import os

import click

from lab.app import lab as app
from lab.cli.output import lab_options


def register(main: click.Group) -> None:
    @main.command("ssh", context_settings={"ignore_unknown_options": True,
                                           "allow_interspersed_args": False})
    @click.argument("node")
    @click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- CMD...]")
    @lab_options
    def ssh_cmd(lab, node, command):
        """Open a shell on NODE, or run `-- CMD` there.

        One CMD argument is a shell command line (`-- 'journalctl | tail'`); several
        are a command and its arguments, passed as they are (`-- sudo sh -c "a; b"`).
        """
        command = list(command)
        if command and command[0] == "--":
            command = command[1:]
        argv = app.shell_argv(lab, node, command)
        os.chdir(lab.path)          # vagrant finds the lab's Vagrantfile there
        os.execvp(argv[0], argv)

    @main.command("halt")
    @click.argument("node", required=False)
    @lab_options
    def halt_cmd(lab, node):
        """Shut VMs down gracefully (all, or NODE); `halab up` starts them again."""
        app.halt(lab, node)

    @main.command("provision")
    @click.argument("node", required=False)
    @lab_options
    def provision_cmd(lab, node):
        """Run the provisioning scripts again (all VMs, or NODE); they are idempotent."""
        app.provision(lab, node)
