"""Pure: when a drill's fault was on, as the verdict and the mechanisms measure it."""
from __future__ import annotations


def fault_window(journal: dict) -> tuple[float | None, float | None]:
    """(start, end) of the fault: from the moment injection began (a power-off pulls the
    cable first, then kills) until the restore began."""
    t = journal.get("times", {})
    start = t.get("inject_start") or t.get("injected")
    end = t.get("restore_start") or t.get("probes_stopped")
    return start, end


def in_window(p: dict, start: float, end: float) -> bool:
    """Probes that ended after the fault began and started before the restore."""
    return p["t"] + p.get("lat", 0.0) >= start and p["t"] < end
