"""The CLI's one error boundary and its shared options: every verb's errors end here
as one line and its fix; a traceback only with --debug."""
from __future__ import annotations

import functools
import sys
import traceback

import click

from lab.app import print_warnings
from lab.errors import HalabError, ScenarioError
from lab.state import find_lab, labs_root

PROVIDERS = click.Choice(["virtualbox", "libvirt", "local"])

DEBUG = False


def handle_errors(fn):
    """HalabError -> one line on stderr and its exit code; traceback only with --debug."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ScenarioError as exc:
            print_warnings(exc.warnings)
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


def load_scenario(ref: str, provider: str | None = None, quiet: bool = False):
    from lab.model import scenario
    s = scenario.load(ref, provider=provider)
    if not quiet:
        print_warnings(s.warnings)
    return s




def lab_options(fn):
    """--lab NAME and --labs-dir DIR for verbs that act on an existing lab; the lab is
    found inside the verb, so "no lab here" meets the error boundary like any error."""
    @click.option("--lab", "lab_name", default=None, metavar="NAME",
                  help="Which lab (default: the only one under the labs folder).")
    @click.option("--labs-dir", default=None, metavar="DIR", envvar="HALAB_LABS_DIR",
                  help="Folder holding labs (default ./.halab).")
    @functools.wraps(fn)
    def wrapper(*args, lab_name=None, labs_dir=None, **kwargs):
        lab = find_lab(lab_name, labs_root(labs_dir))
        return fn(*args, lab=lab, **kwargs)
    return wrapper


def set_debug(on: bool) -> None:
    global DEBUG
    DEBUG = on


class Verbs(click.Group):
    """A group whose command list shows each verb's whole first sentence (click cuts
    them to the terminal's width, mid-word, which reads as broken help)."""

    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=200)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
