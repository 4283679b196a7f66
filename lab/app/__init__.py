"""The application: what each verb does, with no command-line parsing in here.

The CLI (`lab.cli`) gathers a verb's arguments and calls one function of this
package; these functions open the lab from its record, take its lock when they
change it, and drive deploy, drills and providers.
"""
from __future__ import annotations

import sys
import time


def echo(message: str = "", err: bool = False) -> None:
    """One line of the verb's output (stdout, or stderr for warnings and errors)."""
    stream = sys.stderr if err else sys.stdout
    stream.write(f"{message}\n")
    stream.flush()


def echo_step(msg: str) -> None:
    """A progress line of long work, with the wall-clock time."""
    echo(f"  {time.strftime('%H:%M:%S')} {msg}")


def print_warnings(warnings) -> None:
    for w in warnings:
        echo(f"  warning: {w.line()}", err=True)
