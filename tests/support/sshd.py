"""A real OpenSSH server on 127.0.0.1 for tests.

Import the fixture explicitly in a test module::

    from tests.support.sshd import sshd_server  # noqa: F401

``sshd_server`` yields an :class:`SshdServer` (a tuple ``(host, port, user,
key_path)`` with a few extras: ``pid``, ``tmp``, ``stop()``).  sshd is always
stopped by PID in ``finally``, even when the test fails.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

import pytest

SSHD = "/usr/sbin/sshd"
HOST = "127.0.0.1"


class SshdServer(NamedTuple):
    host: str
    port: int
    user: str
    key_path: str
    pid: int
    tmp: str

    def stop(self) -> None:
        """Stop the listening sshd (not its sessions) by PID."""
        _kill(self.pid)

    def session_pids(self) -> list[int]:
        """PIDs of the per-connection sshd processes (and their children)."""
        return descendants(self.pid)

    def kill_sessions(self) -> list[int]:
        """SIGKILL every per-connection process: clients see a dropped connection."""
        pids = self.session_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids


def ensure_sshd(wait_lock_s: float = 300.0) -> None:
    """Install openssh-server when /usr/sbin/sshd is missing.

    Another process may hold the apt/dpkg lock for a while: retry until
    ``wait_lock_s`` has passed.
    """
    if os.path.exists(SSHD) and shutil.which("ssh-keygen"):
        return
    if os.geteuid() != 0:
        pytest.skip("sshd missing and not root: cannot apt-get install openssh-server")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    deadline = time.monotonic() + wait_lock_s
    updated = False
    while True:
        if not updated:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=300)
            updated = True
        proc = subprocess.run(
            ["apt-get", "install", "-y", "-o", "DPkg::Lock::Timeout=60", "openssh-server", "openssh-client"],
            env=env, capture_output=True, text=True, timeout=600,
        )
        if proc.returncode == 0 and os.path.exists(SSHD):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"apt-get install openssh-server failed: {proc.stderr[-2000:]}")
        time.sleep(10)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _keygen(path: Path, kind: str = "ed25519") -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "halab-test", "-f", str(path)],
        check=True, capture_output=True,
    )


def descendants(pid: int) -> list[int]:
    """All descendant PIDs of ``pid`` (read from /proc), children first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill(pid: int, timeout: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    return
            except ChildProcessError:  # not our child: poll for existence
                if not _alive(pid):
                    return
            time.sleep(0.05)


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited early with code {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5) as s:
                s.settimeout(2)
                if s.recv(4).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on {HOST}:{port} within {timeout}s")


def start_sshd(tmp: Path) -> tuple[subprocess.Popen, SshdServer]:
    """Start sshd with everything under ``tmp``; caller must stop it."""
    ensure_sshd()
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
    tmp.mkdir(parents=True, exist_ok=True)
    os.chmod(tmp, 0o700)
    host_key = tmp / "ssh_host_ed25519_key"
    _keygen(host_key)
    client_key = tmp / "id_ed25519"
    _keygen(client_key)
    auth_keys = tmp / "authorized_keys"
    auth_keys.write_text((tmp / "id_ed25519.pub").read_text())
    os.chmod(auth_keys, 0o600)
    user = getpass.getuser()
    port = free_port()
    config = tmp / "sshd_config"
    config.write_text(
        "\n".join([
            f"ListenAddress {HOST}",
            f"Port {port}",
            f"HostKey {host_key}",
            f"PidFile {tmp / 'sshd.pid'}",
            f"AuthorizedKeysFile {auth_keys}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PrintMotd no",
            "LogLevel VERBOSE",
            "MaxStartups 50",
            "MaxSessions 50",
            "Subsystem sftp internal-sftp",
            "",
        ])
    )
    log = open(tmp / "sshd.log", "wb")
    try:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    finally:
        log.close()
    server = SshdServer(HOST, port, user, str(client_key), proc.pid, str(tmp))
    try:
        _wait_listening(port, proc)
    except Exception:
        _kill(proc.pid)
        raise RuntimeError(f"{(tmp / 'sshd.log').read_text(errors='replace')[-2000:]}") from None
    return proc, server


@pytest.fixture
def sshd_server(tmp_path):
    proc = None
    try:
        proc, server = start_sshd(tmp_path / "sshd")
        yield server
    finally:
        if proc is not None:
            leftovers = descendants(proc.pid)
            _kill(proc.pid)
            proc.poll()
            for pid in leftovers:  # sessions outlive the listener: stop them too
                _kill(pid, timeout=1.0)
