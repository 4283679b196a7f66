"""Processes of the local provider: started in a node's namespace, tracked by PID file.

Every service runs under a small restart loop, the way kubelet restarts a static
pod and systemd a unit with Restart=always: a kube-controller-manager that loses
its lease exits, and must come back by itself. The loop and the program share a
process group, so a signal to the group (stop, freeze, power-off) reaches both.
A PID file holds "PID STARTTIME" (field 22 of /proc/PID/stat) so a recycled PID
is never mistaken for ours, also after halab itself was killed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from lab.model.services import ServiceSpec
from lab.state import write_atomically
from lab.providers.local.netns import exec_prefix


def _starttime(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie is dead
        return None
    return fields[19]


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


class Supervisor:
    """Starts and signals a lab's processes; `run_dir/<node>/<name>.pid`, logs in `log_dir`."""

    def __init__(self, run_dir: Path, log_dir: Path, ns_of):
        self.run_dir = Path(run_dir)
        self.log_dir = Path(log_dir)
        self.ns_of = ns_of  # node name -> namespace name

    def pidfile(self, node: str, name: str) -> Path:
        return self.run_dir / node / f"{name}.pid"

    def log(self, node: str, name: str) -> Path:
        return self.log_dir / node / f"{name}.log"

    def pid(self, node: str, name: str) -> int | None:
        """The PID if that process is alive (stopped counts as alive)."""
        try:
            pid_s, start = self.pidfile(node, name).read_text().split()
        except (OSError, ValueError):
            return None
        pid = int(pid_s)
        return pid if _starttime(pid) == start else None

    def state(self, node: str, name: str) -> str:
        pid = self.pid(node, name)
        if pid is None:
            return "stopped"
        if _state(pid) == "T":
            return "frozen"
        # between two runs the loop's only child is its `sleep 1` back-off
        kids = [c for c in _children(pid) if _cmdline(c) != ["sleep", "1"]]
        return "running" if kids else "restarting"

    def services(self, node: str | None = None) -> list[tuple[str, str]]:
        """(node, name) of every PID file, also of dead processes."""
        out = []
        if not self.run_dir.is_dir():
            return out
        for d in sorted(self.run_dir.iterdir()):
            if d.is_dir() and (node is None or d.name == node):
                out += [(d.name, p.stem) for p in sorted(d.glob("*.pid"))]
        return out

    def start(self, spec: ServiceSpec) -> int:
        """Start `spec` unless it already runs; returns its PID."""
        running = self.pid(spec.node, spec.name)
        if running is not None:
            return running
        for path, content in spec.files.items():
            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True)
            secret = p.suffix == ".key" or "kubeconfig" in p.name or p.name == "keepalived.conf"
            write_atomically(p, content, mode=0o600 if secret else 0o644)
        log = self.log(spec.node, spec.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        self.pidfile(spec.node, spec.name).parent.mkdir(parents=True, exist_ok=True)
        # own UTS namespace so the node's name is the hostname (lease holders show it)
        unshare, loop, env = ["unshare", "--uts"], RESTART_LOOP, {**os.environ, **spec.env}
        if spec.private_tmp:
            # every node shares this machine's files: a program that keeps fixed paths
            # in /tmp gets the node's own folder there, in a mount namespace of its own
            Path(spec.private_tmp).mkdir(parents=True, exist_ok=True, mode=0o700)
            unshare += ["--mount", "--propagation", "private"]
            loop = PRIVATE_TMP + RESTART_LOOP
            env["HALAB_PRIVATE_TMP"] = str(Path(spec.private_tmp).resolve())
            # the folder of its files stays where it is, also when the lab lies in /tmp
            env["HALAB_KEEP"] = os.path.commonpath(
                [str(Path(f).parent.resolve()) for f in spec.files] or ["/"])
        argv = exec_prefix(self.ns_of(spec.node)) + [
            *unshare, "--", "sh", "-c", loop, spec.node, *spec.argv]
        with open(log, "ab") as out:
            out.write(f"--- halab start {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                      f"{' '.join(spec.argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env=env, close_fds=True,
                                    cwd=spec.cwd or None)
        start = None
        for _ in range(50):
            start = _starttime(proc.pid)
            if start is not None:
                break
            time.sleep(0.01)
        tmp = self.pidfile(spec.node, spec.name).with_suffix(".tmp")
        tmp.write_text(f"{proc.pid} {start or 0}\n")
        os.replace(tmp, self.pidfile(spec.node, spec.name))
        return proc.pid

    def signal(self, node: str, name: str, sig: int) -> bool:
        """Signal the service's whole process group (restart loop and program)."""
        pid = self.pid(node, name)
        if pid is None:
            return False
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return False
        return True

    def restarts(self, node: str, name: str) -> int:
        """How often the program exited since the service was last started."""
        try:
            text = self.log(node, name).read_text(errors="replace")
        except OSError:
            return 0
        return text.rsplit("--- halab start", 1)[-1].count(RESTART_MARK)

    def stop(self, node: str, name: str, timeout: float = 5.0, hard: bool = False) -> None:
        """SIGTERM (or SIGKILL when `hard`), then SIGKILL after `timeout`; waits for the end."""
        pid = self.pid(node, name)
        if pid is not None:
            try:
                if hard:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.killpg(pid, signal.SIGTERM)
                    os.killpg(pid, signal.SIGCONT)  # a frozen process cannot act on SIGTERM
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while self.pid(node, name) is not None or _group_alive(pid):
                _reap(pid)
                if time.monotonic() > deadline:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    deadline = time.monotonic() + timeout
                time.sleep(0.02)
        self.pidfile(node, name).unlink(missing_ok=True)

    def stop_all(self, node: str | None = None, hard: bool = False) -> None:
        for n, name in self.services(node):
            self.stop(n, name, hard=hard)

    def signal_all(self, node: str, sig: int) -> list[str]:
        return [name for n, name in self.services(node) if self.signal(n, name, sig)]


RESTART_MARK = "halab: program exited"
# $0 is the node name (the hostname), "$@" the program; 1 s between restarts like kubelet's
# first back-off step.
RESTART_LOOP = ('hostname "$0"; while :; do "$@"; rc=$?; '
                f'echo "{RESTART_MARK} with status $rc; restarting in 1 s" >&2; sleep 1; done')


# The service's own folder goes over /tmp. A folder of the host's /tmp that the program
# reads (its files: a lab made in /tmp) is bound first, inside the private folder at the
# same path, and comes along (--rbind).
PRIVATE_TMP = ('case "$HALAB_KEEP" in /tmp/*) keep="$HALAB_PRIVATE_TMP${HALAB_KEEP#/tmp}"; '
               'mkdir -p "$keep" && mount --bind "$HALAB_KEEP" "$keep" || exit 1;; esac; '
               'mount --rbind "$HALAB_PRIVATE_TMP" /tmp || exit 1; ')


def _group_alive(pgid: int) -> bool:
    """Any live (non-zombie) process left in the process group?"""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
