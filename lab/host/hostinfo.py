"""Facts about the host machine (read-only)."""
from __future__ import annotations

import os


def memory_mib() -> int:
    """Total RAM of the host in MiB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)


def cpus() -> int:
    return os.cpu_count() or 1
