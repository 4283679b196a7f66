"""The only module that runs `vagrant` (through python-vagrant), plus pure output parsing."""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import vagrant as pyvagrant

from lab.errors import HalabError

# "==> k8s-node1: Booting VM..." / "    k8s-node1: [halab] k8s-node1: swap off"
_LINE = re.compile(r"^(?:==> |    )(?P<vm>[A-Za-z0-9._-]+): (?P<msg>.*)$")


@dataclass
class VMProgress:
    name: str
    state: str = "waiting"
    step: str = ""
    started: float | None = None
    finished: float | None = None

    def elapsed(self, now: float | None = None) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or now or time.monotonic()) - self.started


class ProgressTracker:
    """Turns `vagrant up` output into per-VM state and current step (pure, fed line by line)."""

    STATES = (("Importing base box", "importing box"), ("Cloning VM", "cloning"),
              ("Creating image", "creating disk"), ("Creating domain", "creating"),
              ("Booting VM", "booting"), ("Starting domain", "booting"),
              ("Waiting for domain to get an IP", "waiting for IP"),
              ("Waiting for machine to boot", "waiting for SSH"),
              ("Machine booted and ready", "booted"), ("Setting hostname", "configuring"),
              ("Configuring and enabling network", "configuring"),
              ("Running provisioner", "provisioning"),
              ("Machine already provisioned", "running"),
              ("Machine already running", "running"), ("already running", "running"))

    def __init__(self, names):
        self.vms = {n: VMProgress(n) for n in names}

    def feed(self, line: str, now: float | None = None) -> VMProgress | None:
        m = _LINE.match(line.rstrip("\n"))
        if not m or m.group("vm") not in self.vms:
            return None
        vm = self.vms[m.group("vm")]
        now = now if now is not None else time.monotonic()
        if vm.started is None:
            vm.started = now
        msg = m.group("msg").strip()
        if msg.startswith("-- "):  # vagrant-libvirt's domain parameter dump
            return vm
        for needle, state in self.STATES:
            if needle in msg:
                vm.state = state
                break
        if "[halab]" in msg:
            vm.step = msg.split("[halab]", 1)[1].split(":", 1)[-1].strip()
            vm.state = "provisioning"
        elif line.startswith("==>"):
            vm.step = msg
        return vm

    def finish(self, now: float | None = None) -> None:
        now = now if now is not None else time.monotonic()
        for vm in self.vms.values():
            if vm.state not in ("waiting",):
                vm.state = "running" if vm.state != "failed" else vm.state
                vm.finished = vm.finished or now


def parse_status(text: str) -> dict[str, str]:
    """`vagrant status --machine-readable` -> {machine: state}."""
    out = {}
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) >= 4 and parts[2] == "state":
            out[parts[1]] = parts[3]
    return out


class Vagrant:
    """A lab's Vagrant environment (its folder holds the Vagrantfile)."""

    def __init__(self, root: Path, provider: str, log_dir: Path):
        self.root = Path(root)
        self.provider = provider
        self.log_dir = Path(log_dir)
        self.env = {**os.environ, "VAGRANT_DEFAULT_PROVIDER": provider,
                    "VAGRANT_CHECKPOINT_DISABLE": "1"}

    @contextmanager
    def _log(self, name: str):
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"vagrant-{name}.log", "a") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            f.flush()
            yield f

    def _v(self, log):
        cm = lambda: _nullclose(log)  # noqa: E731
        return pyvagrant.Vagrant(root=str(self.root), env=self.env, out_cm=cm, err_cm=cm,
                                 quiet_stdout=False, quiet_stderr=False)

    def status(self) -> dict[str, str]:
        try:
            cp = subprocess.run(["vagrant", "status", "--machine-readable"], cwd=self.root,
                                env=self.env, capture_output=True, text=True, timeout=120)
        except FileNotFoundError as exc:
            raise HalabError("vagrant is not installed", hint="run `halab doctor`") from exc
        if cp.returncode != 0:
            raise HalabError(f"vagrant status failed: {_tail(cp.stderr)}",
                             hint=f"run `vagrant status` in {self.root} to see why")
        return parse_status(cp.stdout)

    def up(self, names: list[str], on_line, timeout: float = 1800, parallel: bool = True) -> None:
        """`vagrant up` streamed line by line to `on_line`; killed after `timeout` seconds."""
        with self._log("up") as log:
            v = self._v(log)
            args = {"provider": self.provider, "stream_output": True}
            batches = [None] if parallel else names
            for vm in batches:
                self._stream(v.up(vm_name=vm, **args), log, on_line, timeout,
                             what=f"vagrant up {vm or ''}".strip())

    def _stream(self, lines, log, on_line, timeout, what):
        timer = threading.Timer(timeout, _kill_vagrant_children)
        timer.start()
        try:
            for line in lines:
                log.write(line)
                log.flush()
                on_line(line)
        except subprocess.CalledProcessError as exc:
            raise HalabError(f"{what} failed (exit {exc.returncode})",
                             hint=f"see {log.name}; `halab up` again continues where it stopped")
        finally:
            fired = not timer.is_alive() and timer.finished.is_set()
            timer.cancel()
        if fired:
            raise HalabError(f"{what} did not finish within {timeout:.0f} s (vagrant-libvirt "
                             "waits for an IP address without a limit)",
                             hint=f"see {log.name}; check the VM console, then `halab up` again")

    def run(self, args: list[str], name: str, timeout: float = 600) -> str:
        with self._log(name) as log:
            try:
                cp = subprocess.run(["vagrant", *args], cwd=self.root, env=self.env,
                                    stdout=subprocess.PIPE, stderr=log, text=True,
                                    timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                raise HalabError(f"vagrant {' '.join(args)} timed out after {timeout:.0f} s",
                                 hint=f"see {log.name}") from exc
            log.write(cp.stdout)
        if cp.returncode != 0:
            raise HalabError(f"vagrant {' '.join(args)} failed", hint=f"see {log.name}")
        return cp.stdout

    def ssh_config(self, name: str) -> str:
        return self.run(["ssh-config", name], "ssh-config", timeout=120)

    def halt(self, name: str | None = None) -> None:
        self.run(["halt", *([name] if name else [])], "halt")

    def provision(self, name: str | None = None, on_line=print) -> None:
        with self._log("provision") as log:
            self._stream(self._v(log)._stream_vagrant_command(
                ["provision", name] if name else ["provision"]), log, on_line, 1800,
                "vagrant provision")

    def destroy(self) -> None:
        self.run(["destroy", "-f"], "destroy")
        self.run(["global-status", "--prune"], "global-status")


class _nullclose:
    """Hand python-vagrant our open log file without letting it close it."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self.f

    def __exit__(self, *exc):
        return False


def _kill_vagrant_children() -> None:
    """Timeout: stop every `vagrant` process we started (the Ruby process and its helpers)."""
    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(fields[1]) == me and "vagrant" in cmd:
            try:
                os.kill(int(stat.parent.name), 15)
            except ProcessLookupError:
                pass


def _tail(text: str) -> str:
    lines = [l for l in (text or "").splitlines() if l.strip()]
    return lines[-1] if lines else "no output"
