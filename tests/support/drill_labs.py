"""Helpers for the drill integration tests (test_drill_case*.py); holds no tests itself.

Each Case module brings one local lab up (module-scoped fixture) under a unique
name (`dt<pid>-<case>`, scenario file `extends: <case>`), so its namespaces
(`halab-dt...`) never collide with other labs on the machine. Everything that
talks to lab addresses runs inside the lab's namespaces (halab does it). The
fixture destroys the lab in `finally` and kills what is left in its namespaces
by PID.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.providers.local import netns
from tests.support import netns_sweep


def _halab_exe() -> list[str]:
    exe = Path(sys.executable).parent / "halab"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("halab")
    return [found] if found else [sys.executable, "-m", "lab.cli"]


HALAB = _halab_exe()


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for prog in ("ip", "unshare", "etcd", "haproxy", "nginx", "keepalived"):
        if shutil.which(prog) is None:
            return f"{prog} is not installed"
    try:
        from lab.host.k8sbin import find_k8s_binaries
        find_k8s_binaries(check_version=False)
    except Exception as exc:  # noqa: BLE001
        return f"no Kubernetes binaries: {exc}"
    return None


def marks():
    reason = skip_reason()
    base = [pytest.mark.drill, pytest.mark.local]
    return base + [pytest.mark.skip(reason=reason)] if reason else base


class DrillLab:
    def __init__(self, case: str, folder: Path, extra_yaml: str = ""):
        self.case = case
        self.name = f"dt{os.getpid() % 100000}-{case.replace('case', 'c').replace('-', '')}"
        self.folder = folder
        self.scenario = folder / f"{self.name}.yaml"
        self.scenario.write_text(f"extends: {case}\nname: {self.name}\n{extra_yaml}")
        self.path = folder / ".halab" / self.name

    def halab(self, *args, timeout: float = 600, check: bool = True,
              lab: bool = True) -> subprocess.CompletedProcess:
        argv = HALAB + list(args) + (["--lab", self.name] if lab else [])
        cp = subprocess.run(argv, cwd=self.folder, capture_output=True, text=True,
                            timeout=timeout,
                            env={k: v for k, v in os.environ.items() if k != "HALAB_LABS_DIR"})
        if check and cp.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {cp.returncode}:\n{cp.stdout}\n"
                                 f"{cp.stderr}")
        return cp

    def drill(self, fault: str, *targets: str, duration: float | None = None,
              extra: tuple = (), expect_rc: tuple = (0, 1)) -> tuple[subprocess.CompletedProcess,
                                                                      dict]:
        """Run one drill; returns (process, journal). Exit 0 = as expected, 1 = differs."""
        before = set(self.journal_ids())
        args = ["drill", fault, *targets, "-q", *extra]
        if duration is not None:
            args += ["--duration", str(duration)]
        cp = self.halab(*args, check=False)
        assert cp.returncode in expect_rc, f"exit {cp.returncode}\n{cp.stdout}\n{cp.stderr}"
        new = sorted(set(self.journal_ids()) - before)
        assert new, f"no journal written\n{cp.stdout}\n{cp.stderr}"
        return cp, self.journal(new[-1])

    def journal_ids(self) -> list[str]:
        d = self.path / "drills"
        return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []

    def journal(self, drill_id: str) -> dict:
        return json.loads((self.path / "drills" / f"{drill_id}.json").read_text())

    def record(self):
        """The lab's record, as halab reads it."""
        from lab.state import Lab
        return Lab(self.path).record()

    def verify(self) -> subprocess.CompletedProcess:
        return self.halab("verify", check=False, timeout=120)

    def vip_holders(self) -> list[str]:
        """Load balancers whose namespace has the VIP (reads addresses, sends nothing)."""
        from lab.model import scenario
        from lab.model.topology import Topology
        topo = Topology.of(scenario.load(str(self.scenario)))
        vip = f" {topo.lb_address}/"
        return [lb.name for lb in topo.load_balancers
                if vip in subprocess.run(["ip", "-n", netns.ns_name(self.name, lb.name), "-o",
                                          "-4", "addr", "show"], capture_output=True,
                                         text=True).stdout]

    def kill_leftovers(self) -> None:
        """Processes still in the lab's namespaces (by PID), then the namespaces."""
        netns_sweep.sweep(self.name)


def lab_fixture(case: str, tmp_path_factory, extra_yaml: str = ""):
    """Generator body for a module-scoped fixture: one running lab of `case`."""
    folder = tmp_path_factory.mktemp(f"drill-{case}")
    lab = DrillLab(case, folder, extra_yaml)
    try:
        lab.halab("up", str(lab.scenario), "--provider", "local", lab=False, timeout=300)
        yield lab
    finally:
        try:
            keep_evidence(lab)
            lab.halab("drill", "restore", "--no-wait", check=False, timeout=120)
            lab.halab("destroy", "--force", check=False, timeout=180)
        finally:
            lab.kill_leftovers()


ARTIFACTS = Path(os.environ.get("HALAB_ARTIFACTS", "/tmp/halab-artifacts"))


def keep_evidence(lab: "DrillLab") -> None:
    """Before the lab is destroyed: if a drill in it did not go as expected, keep its
    journals and the nodes' logs (etcd, API servers, ...) in $HALAB_ARTIFACTS/<lab>, which
    .ci/run lists, so a failure seen once in CI can still be read afterwards."""
    try:
        bad = [i for i in lab.journal_ids()
               if not lab.journal(i).get("verdict", {}).get("ok", False)]
        if not bad:
            return
        dest = ARTIFACTS / lab.name
        dest.mkdir(parents=True, exist_ok=True)
        for i in bad:
            shutil.copy2(lab.path / "drills" / f"{i}.json", dest / f"{i}.json")
        if (lab.path / "logs").is_dir():
            shutil.copytree(lab.path / "logs", dest / "logs", dirs_exist_ok=True)
        print(f"\nevidence of {len(bad)} drill(s) that differed: {dest}")
    except (OSError, ValueError) as exc:   # evidence is a courtesy, never a failure
        print(f"\ncould not keep the evidence of lab {lab.name}: {exc}")


def path(journal: dict, key: str) -> dict:
    return journal["verdict"]["paths"][key]


def workers(journal: dict) -> list[str]:
    return [k for k in journal["verdict"]["paths"] if k.startswith("worker:")]


def node_lanes(journal: dict) -> dict:
    """The drill's nodes section; every lab with kubemark beside its binaries has nodes
    (CI builds it: tools/build-k8s.sh), so an empty one there is a failure."""
    lanes = journal.get("nodes", {})
    assert lanes, "the drill measured no node (no kubemark beside the Kubernetes binaries?)"
    return lanes


def went_not_ready(lane: dict) -> list[float]:
    return [tr["t"] for tr in lane["ready_transitions"] if not tr["ready"]]


def healthy_after(journal: dict) -> bool:
    return journal["verdict"]["healthy_after"] is True


def explain(journal: dict) -> str:
    """What to print when an assertion fails: the verdict per path."""
    lines = [f"{journal['id']}: {journal.get('status')}"]
    for k, p in journal.get("verdict", {}).get("paths", {}).items():
        lines.append(f"  {k}: expected {p['expected']}, measured {p['measured']} "
                     f"({p['failures']}/{p['probes']}, stop {p['errors_stop_after']}) "
                     f"{p['verdict']}")
    lines += [f"  reason: {r}" for r in journal.get("verdict", {}).get("reasons", [])]
    return "\n".join(lines)


def wait_for(cond, timeout: float, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step)
    return cond()


def live_drill(lab: "DrillLab", fault: str, *targets: str, duration: float,
               shot: str) -> tuple[subprocess.CompletedProcess, dict, object]:
    """The drill with `--live`, watched by a real browser (tests/support/browser.py) when
    one is installed (CI requires it: HALAB_REQUIRE_BROWSER=1). Returns (process,
    journal, watcher or None); the watcher's screenshot goes to $HALAB_ARTIFACTS/<shot>."""
    from tests.support import browser
    why = browser.available()
    if why and browser.REQUIRED:
        raise AssertionError(f"HALAB_REQUIRE_BROWSER=1 but {why}")
    port = browser.free_port()
    extra = ("--live", "--port", str(port), "--linger", "3")
    watcher = None
    if why is None:
        watcher = browser.LiveWatcher(f"http://127.0.0.1:{port}/", ARTIFACTS / shot)
        watcher.start()
    cp, j = lab.drill(fault, *targets, duration=duration, extra=extra)
    assert f"live view: http://127.0.0.1:{port}/" in cp.stdout, cp.stdout[:2000]
    if watcher is not None:
        watcher.done.wait(120)
        assert watcher.error is None, repr(watcher.error)
        assert watcher.samples, "the browser saw nothing"
    return cp, j, watcher


def assert_local_only(watcher, port: int | None = None) -> None:
    """Every request the page made went to the live view on 127.0.0.1."""
    assert watcher.requests, "no request recorded"
    bad = [u for u in watcher.requests if not u.startswith("http://127.0.0.1:")
           or (port and not u.startswith(f"http://127.0.0.1:{port}/"))]
    assert not bad, (f"{len(bad)} of {len(watcher.requests)} requests left 127.0.0.1: "
                     + ", ".join(u[:80] for u in bad[:5]))
    assert not [c for c in watcher.console if "SEVERE" in c or "Error" in c], watcher.console
