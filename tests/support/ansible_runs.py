"""Run the small test playbooks of tests/data/ansible for real and capture output.

Used by the tests (live runs, marked ``ssh``) and to regenerate the stored
captures the parser tests read::

    PYTHONPATH=. python3 -m tests.support.ansible_runs      # rewrites tests/data/ansible/*.out

``fail-profile_tasks.out`` is captured too when ANSIBLE_COLLECTIONS_PATH points
at a tree holding ansible.posix (kubespray's ansible.cfg enables its
profile_tasks callback), e.g. from ``pip install --no-deps --target /tmp/a10
ansible==10.7.0`` and ``ANSIBLE_COLLECTIONS_PATH=/tmp/a10``.

Every process started here is stopped by PID (its process group) in finally.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from lab.deploy.playbook import playbook_command

DATA = Path(__file__).resolve().parent.parent / "data" / "ansible"
LOCAL_INVENTORY = DATA / "hosts_local.ini"


def live_pids(pids) -> list[int]:
    """Those of ``pids`` still running (zombies count as gone)."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(pid)
        except OSError:
            pass
    return out


def group_members(pgid: int) -> list[int]:
    """Running processes whose process group is ``pgid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                out.append(int(entry))
    return out


def group_left(pgid: int, timeout: float = 5.0) -> list[int]:
    """Members of the group still running after waiting up to `timeout` s for them to exit."""
    import time
    deadline = time.monotonic() + timeout
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return group_members(pgid)


def ssh_inventory(path: Path, port: int, key_path: str, user: str, dead_port: int) -> Path:
    """Inventory with one host over the test sshd and one unreachable host."""
    common = (
        f"ansible_host=127.0.0.1 ansible_user={user} ansible_ssh_private_key_file={key_path} "
        # no ControlPersist: no ssh master process may outlive the test
        "ansible_ssh_args='-o ControlMaster=no -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no' "
        "ansible_ssh_timeout=5 ansible_python_interpreter=" + sys.executable
    )
    path.write_text(
        "[lab]\n"
        f"lb ansible_port={port} {common}\n"
        f"ghost ansible_port={dead_port} {common}\n"
    )
    return path


def run_capture(
    playbook: str,
    inventory: Path,
    workdir: Path,
    interrupt_after: Optional[str] = None,
    timeout: float = 120,
    env: Optional[dict] = None,
) -> tuple[str, int, int]:
    """Run ``playbook``; returns (output, exit code, pid).

    With ``interrupt_after``, SIGINT goes to ansible's process group once a
    line starting with that text has appeared (plus a short pause).
    """
    cmd = playbook_command(DATA / playbook, inventory, {"workdir": str(workdir)}, forks=5,
                           fact_cache=str(workdir / "facts"))
    proc = subprocess.Popen(list(cmd.argv), env={**cmd.local_env(), **(env or {})}, cwd=str(workdir), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    out = []
    deadline = time.monotonic() + timeout
    try:
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            out.append(line)
            if interrupt_after and line.startswith(interrupt_after):
                time.sleep(1.0)  # let the slow task really start on every host
                os.killpg(proc.pid, signal.SIGINT)
                interrupt_after = None
            if time.monotonic() > deadline:
                raise TimeoutError(f"{playbook} ran longer than {timeout}s")
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        proc.stdout.close()
    return "".join(out), rc, proc.pid


def capture_all(dest: Path = DATA) -> None:
    import tempfile

    from tests.support.sshd import _kill, descendants, free_port, start_sshd

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, playbook, interrupt in (
            ("success", "success.yml", None),
            ("fail", "fail.yml", None),
            ("interrupt", "interrupt.yml", "TASK [Slow task]"),
        ):
            work = tmp / name
            work.mkdir()
            text, rc, _ = run_capture(playbook, LOCAL_INVENTORY, work, interrupt_after=interrupt)
            (dest / f"{name}.out").write_text(text)
            print(f"{name}: exit {rc}, {len(text.splitlines())} lines")
        collections = os.environ.get("ANSIBLE_COLLECTIONS_PATH")
        if collections and list(Path(collections).glob("ansible_collections/ansible/posix/plugins/callback/profile_tasks.py")):
            work = tmp / "profile"
            work.mkdir()
            # like kubespray's ansible.cfg: profile_tasks adds timing lines and a summary
            text, rc, _ = run_capture("fail.yml", LOCAL_INVENTORY, work,
                                      env={"ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks"})
            (dest / "fail-profile_tasks.out").write_text(text)
            print(f"fail-profile_tasks: exit {rc}, {len(text.splitlines())} lines")
        proc, server = start_sshd(tmp / "sshd")
        try:
            work = tmp / "ssh"
            work.mkdir()
            inv = ssh_inventory(work / "hosts.ini", server.port, server.key_path, server.user, free_port())
            text, rc, _ = run_capture("ssh.yml", inv, work)
            (dest / "ssh.out").write_text(text)
            print(f"ssh: exit {rc}, {len(text.splitlines())} lines")
        finally:
            leftovers = descendants(proc.pid)
            _kill(proc.pid)
            for pid in leftovers:
                _kill(pid, timeout=1.0)
        list_text = subprocess.run(
            list(playbook_command(DATA / "success.yml", LOCAL_INVENTORY, {"workdir": "/tmp"},
                                  extra_args=["--list-tasks"]).argv),
            capture_output=True, text=True, check=True,
        ).stdout
        (dest / "success.list-tasks.out").write_text(list_text)


if __name__ == "__main__":
    capture_all()
