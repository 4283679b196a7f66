"""A lab's directory: rendered files, keys, logs and a state file updated after every change.

Like Vagrant's per-directory state, labs live in `./.halab/<lab>/` under the current
directory (override with `--labs-dir` or `HALAB_LABS_DIR`).
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import HalabError

STATE_FILE = "state.json"


def labs_root(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get("HALAB_LABS_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return (Path.cwd() / ".halab").resolve()


class Lab:
    """One lab directory and its state."""

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

    def lab_json(self) -> dict:
        try:
            return json.loads((self.path / "lab.json").read_text())
        except (OSError, ValueError) as exc:
            raise HalabError(f"{self.path}/lab.json is missing or damaged",
                             hint="run `halab up` again to re-render the lab") from exc

    # ------------------------------------------------------------ state
    def state(self) -> dict:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise HalabError(f"{self.state_path} is damaged ({exc})",
                             hint="fix or delete it, then run `halab status`") from exc

    def save(self, state: dict) -> None:
        """Write the state atomically (a crash never leaves half a file)."""
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.state_path)

    def update(self, **changes) -> dict:
        state = self.state()
        state.update(changes)
        state["updated_at"] = time.time()
        self.save(state)
        return state

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
