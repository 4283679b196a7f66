"""Session-scoped pytest fixture for real VMs: libvirt + Vagrant in a network namespace.

``vm_testbed`` builds the halab box once (tools/vmtest/build-box.sh, cached
under ``$HALAB_CACHE``), starts the test bed (tools/vmtest/testbed.sh start:
namespace ``halab-vmtest``, virtlogd + libvirtd inside it, a storage pool and a
private ``VAGRANT_HOME`` with the box installed) and always stops it at the end
(every ``halab*`` domain, network and volume destroyed, daemons killed by PID,
namespace deleted), also on failure, Ctrl-C or SIGTERM.

Everything that talks to VM addresses must run inside the namespace: use
``testbed.run([...])``, which wraps the command in ``ip netns exec``.

Use it from a test module with::

    from tests.support.vmtestbed import vm_testbed  # noqa: F401
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools" / "vmtest"
BUILD_BOX = TOOLS / "build-box.sh"
TESTBED = TOOLS / "testbed.sh"
NETNS = os.environ.get("HALAB_NETNS", "halab-vmtest")
CACHE = Path(os.environ.get("HALAB_CACHE") or Path.home() / ".cache" / "halab")

BUILD_BOX_TIMEOUT = 3600  # first build: apt + debootstrap + image (about 6 min idle)
START_TIMEOUT = 600
STOP_TIMEOUT = 600
APT_UNAVAILABLE_RC = 3  # build-box.sh: the host packages cannot be installed


class VMTestbedError(RuntimeError):
    """A command run in the test bed failed or timed out."""


@dataclasses.dataclass
class VMTestbed:
    netns: str
    env: dict[str, str]
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    def run(
        self,
        cmd: Sequence[str],
        cwd: str | os.PathLike[str] | None = None,
        timeout: float = 600,
        *,
        check: bool = True,
        stream: bool = False,
        what: str = "",
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the namespace with ``self.env``.

        On timeout the whole process group is killed and VMTestbedError
        says what was being waited for. ``stream`` echoes output as it comes
        (use with ``pytest -s``) besides returning it.
        """
        env = dict(self.env)
        if extra_env:
            env.update(extra_env)
        full = ["ip", "netns", "exec", self.netns, *cmd]
        return run_cmd(full, cwd=cwd, env=env, timeout=timeout, check=check,
                       stream=stream, what=what or " ".join(cmd))

    def halab(self, args: Sequence[str], cwd, timeout: float = 1800,
              check: bool = True) -> tuple[subprocess.CompletedProcess[str], float]:
        """`halab ARGS` in the namespace, output streamed: (result, seconds it took)."""
        t0 = time.monotonic()
        cp = self.run(["halab", *args], cwd=cwd, timeout=timeout, check=check, stream=True,
                      what=f"halab {' '.join(args)}")
        return cp, time.monotonic() - t0

    def virsh(self, *args: str, timeout: float = 60) -> str:
        return self.run(["virsh", "-q", "-c", self.env["LIBVIRT_DEFAULT_URI"], *args],
                        timeout=timeout).stdout

    def names(self, kind: str) -> list[str]:
        """libvirt object names: kind is domain, network or volume (pool default)."""
        if kind == "domain":
            out = self.virsh("list", "--all", "--name")
        elif kind == "network":
            out = self.virsh("net-list", "--all", "--name")
        elif kind == "volume":
            out = self.virsh("vol-list", "default")
            return [line.split()[0] for line in out.splitlines() if line.strip()]
        else:
            raise ValueError(kind)
        return [line.strip() for line in out.splitlines() if line.strip()]


def run_cmd(
    cmd: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
    stream: bool = False,
    what: str = "",
) -> subprocess.CompletedProcess[str]:
    """subprocess.run with a process-group kill on timeout and optional streaming."""
    proc = subprocess.Popen(
        list(cmd), cwd=cwd, env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace", start_new_session=True,
    )
    chunks: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            chunks.append(line)
            if stream:
                sys.stdout.write(line)
                sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        reader.join(5)
        tail = "".join(chunks)[-3000:]
        raise VMTestbedError(
            f"timed out after {timeout:.0f} s waiting for: {what or ' '.join(cmd)}\n"
            f"--- last output ---\n{tail}") from None
    except BaseException:
        _kill_group(proc)
        raise
    reader.join(30)
    out = "".join(chunks)
    if check and rc != 0:
        raise VMTestbedError(
            f"exit {rc}: {what or ' '.join(cmd)}\n--- output ---\n{out[-5000:]}")
    return subprocess.CompletedProcess(list(cmd), rc, out, "")


def _kill_group(proc: subprocess.Popen[str]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def parse_env(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier() and key.upper() == key:
            env[key] = value
    return env


def _skip_reason() -> str | None:
    if sys.platform != "linux":
        return "VM test bed needs Linux"
    if os.geteuid() != 0:
        return "VM test bed needs root (network namespace, libvirtd, debootstrap)"
    for tool in ("ip", "unshare", "bash", "flock"):
        if shutil.which(tool) is None:
            return f"VM test bed needs '{tool}'"
    return None


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM (CI timeout) into KeyboardInterrupt so teardown still runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def _session_lock() -> Iterator[None]:
    """One test bed user at a time on this machine (the namespace is global)."""
    lock_dir = CACHE / "testbed"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / "session.lock", "w") as fh:
        deadline = time.monotonic() + 1800
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail("VM test bed busy (another session holds "
                                f"{lock_dir / 'session.lock'}) for 30 min")
                time.sleep(5)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _stop(timings: dict[str, float]) -> subprocess.CompletedProcess[str]:
    t0 = time.monotonic()
    res = run_cmd(["bash", str(TESTBED), "stop"], timeout=STOP_TIMEOUT, check=False,
                  what="testbed stop")
    timings["testbed_stop"] = time.monotonic() - t0
    return res


@pytest.fixture(scope="session")
def vm_testbed() -> Iterator[VMTestbed]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    timings: dict[str, float] = {}
    with _sigterm_as_interrupt(), _session_lock():
        t0 = time.monotonic()
        build = run_cmd(["bash", str(BUILD_BOX)], timeout=BUILD_BOX_TIMEOUT, check=False,
                        stream=True, what="build-box.sh")
        timings["build_box"] = time.monotonic() - t0
        if build.returncode == APT_UNAVAILABLE_RC:
            pytest.skip("VM test bed: the host packages (vagrant, vagrant-libvirt, libvirt, "
                        "qemu, debootstrap) cannot be installed:\n" + build.stdout[-1500:])
        if build.returncode != 0:
            pytest.fail(f"build-box.sh failed (exit {build.returncode}):\n{build.stdout[-5000:]}")

        stop_result = None
        try:
            # Clean slate: a crashed earlier run may have left domains behind.
            _stop(timings)
            t0 = time.monotonic()
            start = run_cmd(["bash", str(TESTBED), "start"], timeout=START_TIMEOUT,
                            check=False, what="testbed start")
            timings["testbed_start"] = time.monotonic() - t0
            if start.returncode != 0:
                pytest.fail(f"testbed start failed (exit {start.returncode}):\n"
                            f"{start.stdout[-5000:]}")
            tb_env = parse_env(start.stdout)
            missing = {"VAGRANT_HOME", "LIBVIRT_DEFAULT_URI"} - tb_env.keys()
            if missing:
                pytest.fail(f"testbed start printed no {sorted(missing)}:\n{start.stdout}")
            env = dict(os.environ)
            env.update(tb_env)
            yield VMTestbed(netns=tb_env.get("HALAB_NETNS", NETNS), env=env, timings=timings)
        finally:
            stop_result = _stop(timings)
            print(f"\n[vm_testbed] testbed stop ({timings['testbed_stop']:.1f} s, "
                  f"exit {stop_result.returncode}):\n{stop_result.stdout}")
        if stop_result is not None and stop_result.returncode != 0:
            pytest.fail(f"testbed stop left something behind:\n{stop_result.stdout}")
