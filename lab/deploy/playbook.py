"""Run ``ansible-playbook`` locally or through a :class:`lab.remote.Remote`.

``playbook_command`` is pure (argv + env + shell string); ``run_playbook``
streams every output line to a log file and to an
:class:`~lab.ansible_progress.AnsibleProgress`, calls a progress callback and
returns a :class:`PlaybookSummary`.  Ctrl-C (KeyboardInterrupt, also when
raised by the progress callback) stops the whole ansible process group and
yields an ``interrupted`` summary with the command to resume.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from lab.deploy.ansible_progress import AnsibleProgress, Failure, RecapRow, render_recap_table
from lab.errors import HalabError

DEFAULT_FACT_CACHE = "/tmp/halab-ansible-facts"
DEFAULT_FORKS = 10
PID_MARKER = "__HALAB_PID__="
EXIT_INTERRUPTED = 99  # ansible-playbook's own code for a user interrupt

ProgressCallback = Callable[[AnsibleProgress, str], None]


@dataclass(frozen=True)
class PlaybookCommand:
    argv: tuple[str, ...]
    env: dict  # variables set on top of the caller's environment
    cwd: Optional[str] = None
    path_prepend: Optional[str] = None  # e.g. a venv's bin dir, put in front of $PATH

    def shell(self, exec_: bool = False) -> str:
        """The command as one POSIX shell string (for SSH or to show the user)."""
        parts = []
        if self.cwd:
            parts += ["cd", shlex.quote(self.cwd), "&&"]
        if exec_:
            parts.append("exec")
        parts.append("env")
        if self.path_prepend:
            parts.append(f'PATH={shlex.quote(self.path_prepend)}:"$PATH"')
        parts += [f"{k}={shlex.quote(str(v))}" for k, v in self.env.items()]
        parts += [shlex.quote(a) for a in self.argv]
        return " ".join(parts)

    def local_env(self, base: Optional[dict] = None) -> dict:
        env = dict(os.environ if base is None else base)
        env.update({k: str(v) for k, v in self.env.items()})
        if self.path_prepend:
            env["PATH"] = self.path_prepend + os.pathsep + env.get("PATH", "")
        return env


def playbook_command(
    playbook: str,
    inventory: str,
    extra_vars: Optional[dict] = None,
    limit: Optional[str] = None,
    tags: Optional[Sequence[str] | str] = None,
    venv: Optional[str] = None,
    forks: Optional[int] = None,
    *,
    cwd: Optional[str] = None,
    become: bool = False,
    fact_cache: str = DEFAULT_FACT_CACHE,
    extra_args: Sequence[str] = (),
) -> PlaybookCommand:
    """Build the ``ansible-playbook`` invocation (pure).

    ``extra_vars`` goes as one JSON ``-e`` (types survive); ``venv`` selects
    ``<venv>/bin/ansible-playbook`` and puts ``<venv>/bin`` first in PATH.
    """
    exe = f"{venv.rstrip('/')}/bin/ansible-playbook" if venv else "ansible-playbook"
    argv = [exe, "-i", str(inventory)]
    if become:
        argv += ["--become", "--become-user=root"]
    if extra_vars:
        argv += ["-e", json.dumps(extra_vars, sort_keys=True, separators=(",", ":"))]
    if limit:
        argv += ["--limit", limit]
    if tags:
        argv += ["--tags", tags if isinstance(tags, str) else ",".join(tags)]
    argv += list(extra_args)
    argv.append(str(playbook))
    env = {
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_FORKS": str(forks or DEFAULT_FORKS),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_CACHE_PLUGIN": "jsonfile",
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": fact_cache,
        "ANSIBLE_CACHE_PLUGIN_TIMEOUT": "86400",
        "ANSIBLE_STDOUT_CALLBACK": "default",
        "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "True",  # every task shows a banner: honest task counts
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "PYTHONUNBUFFERED": "1",  # lines arrive as they happen, not in 8 KiB chunks
    }
    if venv:
        env["VIRTUAL_ENV"] = venv.rstrip("/")
    return PlaybookCommand(
        tuple(argv), env, cwd=cwd, path_prepend=f"{venv.rstrip('/')}/bin" if venv else None
    )


@dataclass
class PlaybookSummary:
    status: str  # "ok" | "failed" | "interrupted" | "error"
    exit_code: Optional[int]
    recap: list[RecapRow]
    failure: Optional[Failure]
    failures: list[Failure]
    log_path: str
    resume_command: str
    tasks_started: int
    elapsed: float
    errors: list[str] = field(default_factory=list)
    play: Optional[str] = None  # the play/task running last (where an interrupt hit)
    task: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def failed_host(self) -> Optional[str]:
        return self.failure.host if self.failure else None

    @property
    def failed_task(self) -> Optional[str]:
        return self.failure.task if self.failure else None

    @property
    def failed_msg(self) -> Optional[str]:
        return self.failure.msg if self.failure else None

    def describe(self) -> str:
        """A few human lines: what happened, the recap, where the log is, how to resume."""
        head = {
            "ok": "playbook finished OK",
            "failed": f"playbook FAILED: {self.failure}" if self.failure else "playbook FAILED",
            "interrupted": "playbook interrupted" + (f" during task {self.task!r}" if self.task else ""),
            "error": "ansible-playbook error: " + ("; ".join(self.errors) or f"exit code {self.exit_code}"),
        }[self.status]
        out = [f"{head} ({self.tasks_started} tasks, {self.elapsed:.0f}s)"]
        if self.recap:
            out.append(render_recap_table(self.recap))
        out.append(f"log: {self.log_path}")
        if not self.ok:
            out.append(f"resume with: {self.resume_command}")
        return "\n".join(out)


def summarize(
    progress: AnsibleProgress, exit_code: Optional[int], interrupted: bool, log_path: str, resume_command: str
) -> PlaybookSummary:
    """Pure: turn the parser state and exit code into a summary."""
    if interrupted or progress.interrupted or exit_code == EXIT_INTERRUPTED:
        status = "interrupted"
    elif exit_code == 0 and not progress.failures:
        status = "ok"
    elif progress.failures or any(not r.good for r in progress.recap):
        status = "failed"
    else:
        status = "error"
    return PlaybookSummary(
        status=status,
        exit_code=exit_code,
        recap=list(progress.recap),
        failure=progress.failure,
        failures=list(progress.failures),
        log_path=str(log_path),
        resume_command=resume_command,
        tasks_started=progress.tasks_started,
        elapsed=progress.elapsed(),
        errors=list(progress.errors),
        play=progress.play,
        task=progress.task,
    )


# --------------------------------------------------------------------------- processes


class _Local:
    """ansible-playbook as a local child in its own process group."""

    def __init__(self, cmd: PlaybookCommand, out: "queue.Queue"):
        self.proc = subprocess.Popen(
            list(cmd.argv),
            cwd=cmd.cwd,
            env=cmd.local_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self._out = out
        self.thread = threading.Thread(target=self._pump, name="ansible-output", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        try:
            for raw in self.proc.stdout:
                self._out.put(raw.decode("utf-8", "replace"))
        finally:
            self.proc.stdout.close()
            self._out.put(_Done(self.proc.wait()))

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def alive(self) -> bool:
        return self.proc.poll() is None


def remote_line(cmd: PlaybookCommand, sudo: bool = False) -> str:
    """The shell line run over SSH: report the PID, then exec ansible-playbook (pure).

    With ``sudo`` the line runs under ``setsid -w``: behind sudo the shell is
    not a process-group leader, so only a new session makes the reported PID
    the group that Ctrl-C must stop (``-w`` keeps the exit status).
    """
    line = f"echo {PID_MARKER}$$; {cmd.shell(exec_=True)}"
    if sudo:
        line = f"exec setsid -w sh -c {shlex.quote(line)}"
    return line


class _OverSsh:
    """ansible-playbook started through a Remote; its PID is reported first.

    ``sudo``: run it (and the signals that stop it) as root via ``sudo -n``
    when the SSH user is not root (e.g. ``vagrant``).
    """

    def __init__(self, cmd: PlaybookCommand, remote, out: "queue.Queue", sudo: bool = False):
        self.remote = remote
        self.sudo = sudo
        self.pid: Optional[int] = None
        self._out = out
        self._done = threading.Event()
        line = remote_line(cmd, sudo)
        self.thread = threading.Thread(target=self._pump, args=(line,), name="ansible-ssh", daemon=True)
        self.thread.start()

    def _on_line(self, line: str) -> None:
        if self.pid is None and line.startswith(PID_MARKER):
            try:
                self.pid = int(line[len(PID_MARKER):].strip())
            except ValueError:
                pass
            return
        self._out.put(line + "\n")

    def _pump(self, line: str) -> None:
        try:
            res = self.remote.run(line, stream=self._on_line, stderr_stream=self._on_line, sudo=self.sudo)
            self._out.put(_Done(res.exited))
        except BaseException as exc:  # HalabError on a dropped connection
            self._out.put(_Done(None, exc))
        finally:
            self._done.set()

    def signal(self, sig: int) -> None:
        if self._done.is_set():
            return
        if self.pid is None:  # no PID yet: closing the channel is all we can do
            if sig == signal.SIGKILL:
                self.remote.close()
            return
        try:
            self.remote.run(f"kill -{int(sig)} -- -{self.pid} 2>/dev/null || kill -{int(sig)} {self.pid}", timeout=10,
                            sudo=self.sudo)
        except HalabError:
            pass

    def alive(self) -> bool:
        return not self._done.is_set()


@dataclass
class _Done:
    exit_code: Optional[int]
    error: Optional[BaseException] = None


def run_playbook(
    cmd: PlaybookCommand,
    log_path: str | os.PathLike,
    remote=None,
    on_progress: Optional[ProgressCallback] = None,
    resume_command: Optional[str] = None,
    interrupt_grace: float = 15.0,
    term_grace: float = 5.0,
    sudo: bool = False,
    on_idle: Optional[Callable[[AnsibleProgress], None]] = None,
    idle_interval: float = 5.0,
) -> PlaybookSummary:
    """Run the playbook, locally or via ``remote``; never leaves ansible running.

    Every output line goes to ``log_path`` (appended, flushed per line) and to
    the parser; ``on_progress(progress, line)`` is called after each line, and
    ``on_idle(progress)`` every ``idle_interval`` s while no line arrives (a
    long task: keep the elapsed time moving). ``sudo``: see :class:`_OverSsh`.
    KeyboardInterrupt, from the terminal or from ``on_progress``, sends SIGINT
    to the ansible process group, then SIGTERM after ``interrupt_grace`` s and
    SIGKILL after ``term_grace`` more; the summary then says ``interrupted``.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    resume = resume_command or cmd.shell()
    progress = AnsibleProgress()
    lines: "queue.Queue" = queue.Queue()
    interrupted = False
    done: Optional[_Done] = None
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"# halab {time.strftime('%Y-%m-%d %H:%M:%S')} {'on ' + remote.name + ': ' if remote else ''}{cmd.shell()}\n")
        log.flush()
        try:
            runner = _OverSsh(cmd, remote, lines, sudo) if remote is not None else _Local(cmd, lines)
        except OSError as exc:
            raise HalabError(f"cannot start ansible-playbook: {exc}", hint="is ansible-core installed?") from exc

        def consume(item) -> Optional[_Done]:
            if isinstance(item, _Done):
                return item
            log.write(item if item.endswith("\n") else item + "\n")
            log.flush()
            line = item.rstrip("\r\n")
            progress.feed(line)
            if on_progress is not None:
                on_progress(progress, line)
            return None

        try:
            try:
                quiet_since = time.monotonic()
                while done is None:
                    try:
                        done = consume(lines.get(timeout=0.2))
                        quiet_since = time.monotonic()
                    except queue.Empty:
                        if on_idle is not None and time.monotonic() - quiet_since >= idle_interval:
                            quiet_since = time.monotonic()
                            on_idle(progress)
            except KeyboardInterrupt:
                interrupted = True
                log.write("# halab: interrupted (Ctrl-C), stopping ansible-playbook\n")
                done = _stop(runner, lines, consume_quietly(consume), interrupt_grace, term_grace)
        finally:
            if runner.alive() or interrupted:  # any exception: never leave ansible (or its workers) behind
                runner.signal(signal.SIGKILL)
            runner.thread.join(timeout=10)
    if done is not None and done.error is not None and not interrupted:
        err = done.error
        if isinstance(err, HalabError):
            raise HalabError(f"{err.message}; ansible-playbook output so far: {log_path}", code=err.code,
                             hint=err.hint) from err
        raise err
    return summarize(progress, done.exit_code if done else None, interrupted, str(log_path), resume)


def consume_quietly(consume):
    """While stopping: keep logging/parsing, but a failing callback must not stop the cleanup."""

    def inner(item):
        try:
            return consume(item)
        except (KeyboardInterrupt, Exception):
            return item if isinstance(item, _Done) else None

    return inner


def _stop(runner, lines: "queue.Queue", consume, interrupt_grace: float, term_grace: float) -> Optional[_Done]:
    """SIGINT, then SIGTERM, then SIGKILL to the ansible group, draining output meanwhile."""
    done = None
    for sig, grace in ((signal.SIGINT, interrupt_grace), (signal.SIGTERM, term_grace), (signal.SIGKILL, 10.0)):
        runner.signal(sig)
        deadline = time.monotonic() + grace
        try:
            while done is None and time.monotonic() < deadline:
                try:
                    done = consume(lines.get(timeout=0.1))
                except queue.Empty:
                    pass
        except KeyboardInterrupt:  # a second Ctrl-C: escalate now
            continue
        if done is not None:
            break
    return done
