"""A lab's folder and its record: what `up` built, written after every change.

Like Vagrant's per-directory state, labs live in `./.halab/<lab>/` under the current
directory (override with `--labs-dir` or `HALAB_LABS_DIR`). The record (`state.json`)
holds the resolved scenario the lab was built from and the exact name of everything
halab created for it, so every later verb opens the lab from the record (the YAML may
have been edited or deleted since) and `destroy` removes exactly what is listed.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import HalabError

STATE_FILE = "state.json"
LOCK_FILE = ".lock"              # held by the verb that changes the lab
RECORD_LOCK_FILE = ".record.lock"  # held for one read-modify-write of the record

# what `resources` lists, kind -> what the name is
RESOURCE_KINDS = {
    "namespace": "a network namespace (local provider)",
    "vm": "a Vagrant machine in the lab folder",
    "libvirt_network": "a libvirt network vagrant-libvirt created",
    "libvirt_domain": "a libvirt domain (the VM's name in virsh)",
    "kubeconfig_context": "a context merged into the user's kubeconfig",
}


@dataclass
class Record:
    """The lab's record. Unknown keys of a newer or older halab are kept in `extra`."""

    name: str = ""
    provider: str = ""
    case: int = 0
    deployer: str = ""
    scenario_file: str = ""          # where the scenario came from (messages only)
    scenario: dict = field(default_factory=dict)  # the resolved scenario `up` built
    k8s_bin_dir: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    phase: str = ""                  # rendered, up, deployed
    machines: dict = field(default_factory=dict)
    deploy: dict = field(default_factory=dict)
    verify: dict = field(default_factory=dict)
    faults: dict = field(default_factory=dict)         # node -> fault injected now
    fault_details: dict = field(default_factory=dict)
    kubeconfig_merged: list = field(default_factory=list)
    kubeconfig_merged_into: str | None = None
    kubespray_tasks: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)      # kind -> [exact names]
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict) -> "Record":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names and v is not None}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extra=extra)

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **out}

    def names(self, kind: str) -> list[str]:
        return list(self.resources.get(kind, []))


def labs_root(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get("HALAB_LABS_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return (Path.cwd() / ".halab").resolve()


# locks this process holds: path -> (open file, depth); `up` runs deploy in-process
_HELD: dict[str, list] = {}


class Lab:
    """One lab folder and its record."""

    def __init__(self, path: Path):
        self.path = Path(path)

    # ------------------------------------------------------------ layout
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def state_path(self) -> Path:
        return self.path / STATE_FILE

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def run(self) -> Path:
        return self.path / "run"

    @property
    def kubeconfig(self) -> Path:
        return self.path / "kubeconfig"

    def exists(self) -> bool:
        return self.state_path.is_file()

    # ------------------------------------------------------------ record
    def record(self) -> Record:
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return Record(name=self.name)
        except ValueError as exc:
            raise HalabError(f"{self.state_path} is damaged ({exc})",
                             hint="restore it from a backup, or delete the lab folder after "
                                  "removing its VMs or namespaces by hand") from exc
        if not isinstance(data, dict):
            raise HalabError(f"{self.state_path} is damaged (not a JSON object)",
                             hint="restore it from a backup")
        return Record.from_json(data)

    def save(self, record: Record) -> None:
        """Write the record atomically: a crash never leaves half a file."""
        write_atomically(self.state_path,
                         json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n")

    @contextmanager
    def _record_lock(self):
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / RECORD_LOCK_FILE, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def update(self, **changes) -> Record:
        """Change fields of the record (one read-modify-write, also across processes)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(Record)}
        if unknown:
            raise TypeError(f"not fields of a lab record: {', '.join(sorted(unknown))}")
        with self._record_lock():
            record = self.record()
            for key, value in changes.items():
                setattr(record, key, value)
            record.updated_at = time.time()
            self.save(record)
        return record

    def add_resources(self, kind: str, names) -> None:
        """Record names before they are created: a crash in between still leaves them
        listed, and `destroy` removes them."""
        if kind not in RESOURCE_KINDS:
            raise ValueError(f"unknown resource kind {kind!r}")
        with self._record_lock():
            record = self.record()
            have = record.resources.setdefault(kind, [])
            have.extend(n for n in names if n not in have)
            record.updated_at = time.time()
            self.save(record)

    def drop_resources(self, kind: str, names) -> None:
        with self._record_lock():
            record = self.record()
            gone = set(names)
            record.resources[kind] = [n for n in record.resources.get(kind, []) if n not in gone]
            self.save(record)

    # ------------------------------------------------------------ lock
    @contextmanager
    def lock(self, verb: str):
        """Hold the lab for a verb that changes it; a second one is refused, with who
        holds it. Re-entrant within one process (`up` runs the deploy itself)."""
        self.path.mkdir(parents=True, exist_ok=True)
        key = str((self.path / LOCK_FILE).resolve())
        if key in _HELD:
            _HELD[key][1] += 1
            try:
                yield
            finally:
                _HELD[key][1] -= 1
            return
        f = open(key, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip()
            f.close()
            raise HalabError(f"lab {self.name} is busy: {_describe_holder(holder)}",
                             code=2, hint="wait until it ends (Ctrl-C in its terminal stops "
                                          "it cleanly), then run this again") from None
        try:
            f.seek(0)
            f.truncate()
            f.write(json.dumps({"pid": os.getpid(), "verb": verb, "since": time.time()}))
            f.flush()
            _HELD[key] = [f, 1]
            yield
        finally:
            _HELD.pop(key, None)
            try:
                f.truncate(0)
            except OSError:
                pass
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()

    def holder(self) -> dict | None:
        """Who holds the lab's lock now ({pid, verb, since}), or None."""
        path = self.path / LOCK_FILE
        key = str(path.resolve()) if path.exists() else None
        if key is None:
            return None
        if key in _HELD:
            return {"pid": os.getpid(), "verb": "this process", "since": 0}
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                try:
                    return json.loads(f.read() or "{}") or {"pid": "?"}
                except ValueError:
                    return {"pid": "?"}
            fcntl.flock(f, fcntl.LOCK_UN)
        return None

    # ------------------------------------------------------------ events
    def event(self, what: str, **details) -> None:
        """Append to the lab's event log (what halab did, when)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / "events.jsonl", "a") as f:
            f.write(json.dumps({"t": time.time(), "event": what, **details}) + "\n")

    @contextmanager
    def step(self, name: str):
        """Record a step's start and end (or failure) in the event log."""
        t0 = time.time()
        self.event(f"{name}:start")
        try:
            yield
        except BaseException as exc:
            self.event(f"{name}:failed", error=str(exc) or type(exc).__name__,
                       seconds=round(time.time() - t0, 2))
            raise
        self.event(f"{name}:done", seconds=round(time.time() - t0, 2))


def _describe_holder(text: str) -> str:
    try:
        h = json.loads(text)
        since = time.strftime("%H:%M:%S", time.localtime(h["since"]))
        return f"`halab {h['verb']}` (pid {h['pid']}) has been changing it since {since}"
    except (ValueError, KeyError, TypeError):
        return "another halab is changing it"


def write_atomically(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write through a unique temporary file next to `path`, then rename it in place.

    The temporary name is unpredictable and created exclusively, so it never follows
    a planted symlink; two writers never share it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def all_labs(root: Path) -> list[Lab]:
    if not root.is_dir():
        return []
    return [Lab(p) for p in sorted(root.iterdir()) if (p / STATE_FILE).is_file()]


def find_lab(name: str | None = None, root: Path | None = None) -> Lab:
    """The lab named `name`, or the only lab under `root`."""
    root = root or labs_root()
    labs = all_labs(root)
    if name:
        for lab in labs:
            if lab.name == name:
                return lab
        known = ", ".join(l.name for l in labs) or "none"
        raise HalabError(f"no lab named {name!r} in {root} (labs here: {known})",
                         hint="run halab in the folder where you ran `halab up`, "
                              "or pass --labs-dir")
    if not labs:
        raise HalabError(f"no lab in {root}",
                         hint="create one with `halab up SCENARIO`, or run halab in the "
                              "folder where you created it")
    if len(labs) > 1:
        raise HalabError(f"{len(labs)} labs in {root}: {', '.join(l.name for l in labs)}",
                         hint="choose one with --lab NAME")
    return labs[0]
