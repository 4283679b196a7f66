"""The only module that opens SSH connections (built on Fabric/paramiko).

Pure helpers (``ssh_config_for``, ``sudo_wrap``) are tested without a host;
``Remote`` is a thin wrapper over ``fabric.Connection`` that turns every
command into a :class:`Result` and every connection problem into a
:class:`~lab.errors.HalabError` that names the host.
"""

from __future__ import annotations

import logging
import shlex
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from lab.errors import HalabError

LineCallback = Callable[[str], None]

# paramiko logs a dropped connection ("Socket exception: Connection reset by peer")
# from its transport thread; without a handler Python prints it on the terminal, in
# the middle of a drill's output (a killed VM drops its sessions by design). halab
# reports connection problems itself, as HalabError naming the host.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

#: exit code used for a command that timed out (like coreutils ``timeout``)
EXIT_TIMEOUT = 124
#: exit code used by run_many for a host that could not be reached (like ``ssh``)
EXIT_CONNECTION = 255


@dataclass(frozen=True)
class Result:
    """Outcome of one command, local or remote."""

    stdout: str = ""
    stderr: str = ""
    exited: int = 0
    command: str = ""
    host: str = ""

    @property
    def ok(self) -> bool:
        return self.exited == 0


@dataclass(frozen=True)
class SshTarget:
    """Where and how to reach a host (what ``vagrant ssh-config`` tells)."""

    name: str
    host: str
    port: int = 22
    user: Optional[str] = None
    key_filename: Optional[str] = None


# --------------------------------------------------------------------------- pure


def ssh_config_for(text: str, host: str) -> SshTarget:
    """Parse ``vagrant ssh-config`` (or any ssh_config) text for ``host``.

    Raises HalabError when the text has no ``Host`` entry for it.
    """
    from paramiko import SSHConfig

    config = SSHConfig.from_text(text)
    if host not in config.get_hostnames():
        known = sorted(h for h in config.get_hostnames() if h != "*")
        raise HalabError(
            f"no ssh config entry for host {host!r}",
            hint=f"hosts in the ssh config: {', '.join(known) or 'none'}",
        )
    entry = config.lookup(host)
    keys = entry.get("identityfile") or []
    try:
        port = int(entry.get("port", 22))
    except ValueError:
        raise HalabError(f"bad Port {entry.get('port')!r} for host {host!r} in ssh config") from None
    return SshTarget(
        name=host,
        host=entry.get("hostname", host),
        port=port,
        user=entry.get("user"),
        key_filename=keys[0] if keys else None,
    )


def sudo_wrap(cmd: str, user: Optional[str]) -> str:
    """Command line running ``cmd`` as root via non-interactive sudo.

    Unchanged when already connected as root (the host may lack sudo).
    """
    if user == "root":
        return cmd
    return f"sudo -n -H -- sh -c {shlex.quote(cmd)}"


class LineWriter:
    """File-like sink for invoke's ``out_stream``: calls ``callback`` once per line.

    Invoke writes arbitrary chunks; complete lines (without the newline and
    a trailing ``\\r``) are delivered as soon as they are complete; call
    ``close()`` to deliver an unterminated last line.
    """

    def __init__(self, callback: LineCallback):
        self._callback = callback
        self._buf = ""

    def write(self, data: str) -> int:
        self._buf += data
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self._callback(line.rstrip("\r"))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self._buf:
            line, self._buf = self._buf, ""
            self._callback(line.rstrip("\r"))


# --------------------------------------------------------------------------- side effects


class Remote:
    """One SSH host. Opens lazily, reconnects after a dropped connection.

    ``name`` is the label used in messages and by :func:`run_many`
    (default ``host`` or ``host:port``).
    """

    def __init__(
        self,
        host: str,
        port: int = 22,
        user: Optional[str] = None,
        key_filename: Optional[str] = None,
        *,
        name: Optional[str] = None,
        connect_timeout: float = 5.0,
        keepalive: int = 15,
    ):
        self.host = host
        self.port = int(port)
        self.user = user
        self.key_filename = key_filename
        self.name = name or (host if self.port == 22 else f"{host}:{self.port}")
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self._conn = None
        self._lock = threading.Lock()

    @classmethod
    def from_target(cls, target: SshTarget, **kwargs) -> "Remote":
        return cls(target.host, target.port, target.user, target.key_filename, name=target.name, **kwargs)

    def __repr__(self) -> str:
        return f"Remote({self.where})"

    @property
    def where(self) -> str:
        who = f"{self.user}@" if self.user else ""
        label = "" if self.name in (self.host, f"{self.host}:{self.port}") else f"{self.name} "
        return f"{label}{who}{self.host}:{self.port}".strip()

    # -- connection

    def _connection(self):
        if self._conn is None:
            import fabric
            from paramiko import SSHConfig

            t = self.connect_timeout
            self._conn = fabric.Connection(
                self.host,
                user=self.user,
                port=self.port,
                # explicit empty ssh config: ignore ~/.ssh/config and /etc/ssh/ssh_config
                config=fabric.Config(ssh_config=SSHConfig()),
                connect_kwargs={
                    **({"key_filename": [self.key_filename]} if self.key_filename else {}),
                    "look_for_keys": not self.key_filename,
                    "allow_agent": not self.key_filename,
                    "timeout": t,
                    "banner_timeout": t,
                    "auth_timeout": t,
                    "channel_timeout": t,
                },
            )
        return self._conn

    def open(self) -> "Remote":
        """Connect now (idempotent). Raises HalabError quickly on failure."""
        with self._lock:
            conn = self._connection()
            if conn.is_connected:
                return self
            try:
                conn.open()
            except Exception as exc:  # socket, paramiko and DNS errors alike
                conn.close()
                raise HalabError(
                    f"cannot connect to {self.where}: {_describe(exc)}",
                    hint="is the VM up and is sshd listening? (vagrant status / vagrant ssh-config)",
                ) from exc
            if self.keepalive and conn.transport is not None:
                conn.transport.set_keepalive(self.keepalive)
            return self

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def __enter__(self) -> "Remote":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _transport_alive(self, settle: float = 0.5) -> bool:
        """Whether the SSH transport is still up (waits ``settle`` s for it to go down)."""
        deadline = time.monotonic() + settle
        while True:
            conn = self._conn
            transport = conn.transport if conn is not None else None
            if transport is None or not transport.is_active():
                return False
            if time.monotonic() >= deadline:
                return True
            time.sleep(0.05)

    # -- commands

    def run(
        self,
        cmd: str,
        timeout: Optional[float] = None,
        stream: Optional[LineCallback] = None,
        sudo: bool = False,
        stderr_stream: Optional[LineCallback] = None,
    ) -> Result:
        """Run ``cmd`` through the remote user's shell.

        Never raises for a non-zero exit (see ``Result.ok``). A command still
        running after ``timeout`` s gets its channel closed and exit code 124.
        ``stream`` gets each stdout line as it arrives, ``stderr_stream`` each
        stderr line. Raises HalabError when the connection cannot be made or
        drops while the command runs.
        """
        from invoke.exceptions import CommandTimedOut, ThreadException

        full = sudo_wrap(cmd, self.user) if sudo else cmd
        self.open()
        out = LineWriter(stream) if stream else None
        err = LineWriter(stderr_stream) if stderr_stream else None
        # invoke's hide= names the streams NOT copied to out_stream/err_stream
        hide = {(True, True): None, (True, False): "stderr", (False, True): "stdout"}.get((bool(out), bool(err)), True)
        kwargs = dict(warn=True, hide=hide, in_stream=False, pty=False, timeout=timeout)
        if out:
            kwargs["out_stream"] = out
        if err:
            kwargs["err_stream"] = err
        t0 = time.monotonic()
        try:
            res = self._conn.run(full, **kwargs)
            stdout, stderr, exited = res.stdout, res.stderr, res.exited
            # invoke closes the channel when its timer fires; on a busy host it may
            # return before the timer thread has ended, with exit -1 and no
            # CommandTimedOut (seen under load): that is our timeout all the same
            if exited == -1 and timeout and time.monotonic() - t0 >= timeout \
                    and self._transport_alive():
                stderr += f"\nhalab: command timed out after {timeout}s on {self.name}\n"
                exited = EXIT_TIMEOUT
        except CommandTimedOut as exc:
            stdout, stderr = exc.result.stdout, exc.result.stderr
            stderr += f"\nhalab: command timed out after {timeout}s on {self.name}\n"
            exited = EXIT_TIMEOUT
        except ThreadException as exc:
            # an error raised by a stream callback is the caller's, not the connection's
            for wrapped in exc.exceptions:
                if not _is_connection_error(wrapped.value):
                    raise wrapped.value from None
            raise self._dropped(full, exc) from exc
        except Exception as exc:
            raise self._dropped(full, exc) from exc
        finally:
            for w in (out, err):
                if w:
                    w.close()
        if exited == -1 and not self._transport_alive():
            raise self._dropped(full, None)
        return Result(stdout=stdout, stderr=stderr, exited=exited, command=full, host=self.name)

    def _dropped(self, cmd: str, exc: Optional[BaseException]) -> HalabError:
        why = f": {_describe(exc)}" if exc is not None else ""
        return HalabError(
            f"connection to {self.where} dropped while running {_short(cmd)}{why}",
            hint="the VM may have rebooted or sshd restarted; the command may still be running there",
        )

    def put(self, local: str, remote: str, mode: Optional[int] = None) -> None:
        """Copy a local file to the host; ``mode`` (e.g. 0o600) is set afterwards."""
        self.open()
        try:
            self._conn.put(str(local), remote=str(remote))
            if mode is not None:
                self._conn.sftp().chmod(str(remote), mode)
        except (OSError, EOFError) as exc:
            raise HalabError(f"cannot copy {local} to {self.name}:{remote}: {_describe(exc)}") from exc
        except Exception as exc:
            raise self._dropped(f"put {remote}", exc) from exc

    def get(self, remote: str, local: str) -> None:
        """Copy a file from the host to ``local``."""
        self.open()
        try:
            self._conn.get(str(remote), local=str(local))
        except (OSError, EOFError) as exc:
            raise HalabError(f"cannot copy {self.name}:{remote} to {local}: {_describe(exc)}") from exc
        except Exception as exc:
            raise self._dropped(f"get {remote}", exc) from exc


def connect(
    host: str,
    port: int = 22,
    user: Optional[str] = None,
    key_filename: Optional[str] = None,
    *,
    name: Optional[str] = None,
    connect_timeout: float = 5.0,
    keepalive: int = 15,
) -> Remote:
    """Open a connection now; raises HalabError naming the host on failure."""
    return Remote(
        host, port, user, key_filename, name=name, connect_timeout=connect_timeout, keepalive=keepalive
    ).open()


def run_many(
    remotes: Iterable[Remote], cmd: str, timeout: Optional[float] = None, sudo: bool = False, workers: int = 8
) -> dict[str, Result]:
    """Run ``cmd`` on every remote in parallel: ``{remote.name: Result}``.

    A host that cannot be reached gets a Result with exit code 255 and the
    error in ``stderr``; no host is ever left out.
    """
    remotes = list(remotes)

    def one(r: Remote) -> Result:
        try:
            return r.run(cmd, timeout=timeout, sudo=sudo)
        except HalabError as exc:
            return Result(stderr=str(exc), exited=EXIT_CONNECTION, command=cmd, host=r.name)
        except Exception as exc:  # never lose a host to an unexpected error
            return Result(stderr=f"{r.name}: {_describe(exc)}", exited=EXIT_CONNECTION, command=cmd, host=r.name)

    if not remotes:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(remotes)))) as pool:
        results = list(pool.map(one, remotes))
    return {r.name: res for r, res in zip(remotes, results)}


# --------------------------------------------------------------------------- helpers


def _is_connection_error(exc: BaseException) -> bool:
    from paramiko.ssh_exception import SSHException

    return isinstance(exc, (OSError, EOFError, SSHException))


def _describe(exc: BaseException) -> str:
    from paramiko.ssh_exception import AuthenticationException, NoValidConnectionsError

    if isinstance(exc, NoValidConnectionsError):
        return "connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host name ({exc.strerror})"
    if isinstance(exc, AuthenticationException):
        return f"authentication failed ({exc})"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _short(cmd: str, limit: int = 80) -> str:
    one = " ".join(cmd.split())
    return repr(one if len(one) <= limit else one[: limit - 3] + "...")
