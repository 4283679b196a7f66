"""Tests' last resort after a failed test: every namespace named like a test lab's.

halab itself never matches by prefix (`destroy` removes what the lab's record lists);
tests give their labs unique names, so a prefix sweep here cannot hit another lab.
"""
from __future__ import annotations

import os
import signal
import subprocess

from lab.providers.local import netns


def lab_namespaces(lab: str) -> list[str]:
    """Namespaces that exist now named like lab `lab`'s (`halab-<lab>-*`, `halab-<lab>.*`)."""
    if not netns.NETNS_RUN.is_dir():
        return []
    prefix = f"halab-{lab}"
    return sorted(p.name for p in netns.NETNS_RUN.iterdir()
                  if p.name.startswith(prefix + "-") or p.name.startswith(prefix + "."))


def sweep(lab: str) -> None:
    """Kill what runs in those namespaces (by PID), then delete them."""
    for ns in lab_namespaces(lab):
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                              text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        netns.delete(ns)
