"""The drill journal: one JSON file per drill in `<lab>/drills/<id>.json`.

Everything a report shows comes from here (chaostoolkit's journal idea): the
scenario and Case, the fault and its targets, the timestamps of inject, restore
and recovery, every probe result, HAProxy/VIP/lease/etcd-leader changes, the
expectations and the verdict. Reports never look at the lab itself.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from lab.errors import HalabError

VERSION = 1


def drills_dir(lab) -> Path:
    return Path(lab.path) / "drills"


def new_id(fault: str, targets: list[str], now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now or time.time()))
    who = "-".join(targets) if targets else "lab"
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{stamp}-{fault}-{who}")[:120]


def path_of(lab, drill_id: str) -> Path:
    return drills_dir(lab) / f"{drill_id}.json"


def save(lab, journal: dict) -> Path:
    """Atomic write: a crash never leaves half a journal."""
    d = drills_dir(lab)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{journal['id']}.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(journal, separators=(",", ":"), sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def load_file(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise HalabError(f"no drill journal {path}", hint="list them with `halab drill list`") \
            from None
    except ValueError as exc:
        raise HalabError(f"{path} is not a valid journal ({exc})") from exc
    if not isinstance(data, dict) or "id" not in data:
        raise HalabError(f"{path} is not a drill journal")
    return data


def all_ids(lab) -> list[str]:
    """Journal ids, oldest first (ids start with a timestamp)."""
    d = drills_dir(lab)
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.json") if not p.name.startswith("."))


def load(lab, drill_id: str | None = None) -> dict:
    """A journal by id (a unique prefix is enough), or the latest."""
    ids = all_ids(lab)
    if not ids:
        raise HalabError(f"lab {lab.name} has no drills yet",
                         hint="run one, e.g. `halab drill kill k8s-node1`")
    if drill_id is None:
        return load_file(path_of(lab, ids[-1]))
    if drill_id in ids:
        return load_file(path_of(lab, drill_id))
    matches = [i for i in ids if i.startswith(drill_id) or drill_id in i]
    if len(matches) == 1:
        return load_file(path_of(lab, matches[0]))
    if not matches:
        raise HalabError(f"no drill {drill_id!r} in lab {lab.name}",
                         hint="list them with `halab drill list`")
    raise HalabError(f"{drill_id!r} matches {len(matches)} drills: {', '.join(matches[:5])}",
                     hint="give more of the id")
