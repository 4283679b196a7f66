"""Pure parser of ``ansible-playbook`` output (default stdout callback).

Feed it line by line (``AnsibleProgress.feed``); it tracks the current play
and task, counts tasks, keeps per-host outcome counters, records failures
(host, task, msg) and parses the ``PLAY RECAP`` block.  No I/O, no clock of
its own (``clock`` is injectable), so it is tested on captured output.

Counting follows ansible's own stats: one outcome per host per task (loop
items are folded into the task's outcome), and ``ok`` includes ``changed``.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

RECAP_FIELDS = ("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored")

_BANNER = re.compile(r"^(PLAY|TASK|RUNNING HANDLER) \[(.*)\]\s*\**\s*$")
_RECAP_BANNER = re.compile(r"^PLAY RECAP\b")
_RECAP_ROW = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$")
_HOST = r"\[(?P<host>[^\]]+?)(?: -> (?P<delegate>[^\]]+))?\]"
_RESULT = re.compile(r"^(?P<status>ok|changed|skipping): " + _HOST + r"(?: => (?P<rest>.*))?$")
_FATAL = re.compile(r"^fatal: " + _HOST + r": (?P<kind>FAILED|UNREACHABLE)! => (?P<blob>.*)$")
_ITEM_FAILED = re.compile(r"^failed: " + _HOST + r" \(item=(?P<item>.*?)\) => (?P<blob>.*)$")
_ITEM = re.compile(r"^\(item=(?P<item>.*?)\)")
_RETRY = re.compile(r"^FAILED - RETRYING: " + _HOST + r": (?P<task>.*) \((?P<left>\d+) retries left\)\.?$")
_INCLUDED = re.compile(r"^included: (?P<file>.+) for (?P<hosts>[^\s,]+(?:, [^\s,]+)*)\s*$")
_IGNORING = re.compile(r"^\.\.\.ignoring\s*$")
_INTERRUPTED = re.compile(r"^\s*\[ERROR\]: User interrupted execution")
_ERROR = re.compile(r"^\s*(?:ERROR!|\[ERROR\]:)\s*(?P<msg>.*)$")
_WARNING = re.compile(r"^\s*\[(?:WARNING|DEPRECATION WARNING)\]:\s*(?P<msg>.*)$")
_NO_HOSTS = re.compile(r"^skipping: no hosts matched")
_MSG = re.compile(r'"msg":\s*"(?P<msg>(?:[^"\\]|\\.)*)"')

# a host's outcome for one task: the worst wins when loop items disagree
_RANK = {"skipped": 0, "ok": 1, "changed": 2, "rescued": 3, "ignored": 4, "failed": 5, "unreachable": 6}


@dataclass(frozen=True)
class RecapRow:
    host: str
    ok: int = 0
    changed: int = 0
    unreachable: int = 0
    failed: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0

    @property
    def good(self) -> bool:
        return self.failed == 0 and self.unreachable == 0


@dataclass(frozen=True)
class Failure:
    host: str
    task: Optional[str]
    play: Optional[str]
    msg: str
    kind: str = "failed"  # or "unreachable"
    item: Optional[str] = None

    def __str__(self) -> str:
        where = f"task {self.task!r}" if self.task else "ansible"
        what = "unreachable" if self.kind == "unreachable" else "failed"
        item = f" (item={self.item})" if self.item else ""
        return f"{self.host} {what} in {where}{item}: {self.msg}"


@dataclass(frozen=True)
class Eta:
    elapsed: float
    remaining: Optional[float]  # seconds, None while unknown
    fraction: Optional[float]  # 0..1, None while unknown


def _empty_counts() -> dict[str, int]:
    return {k: 0 for k in RECAP_FIELDS}


def blob_msg(blob: str) -> str:
    """The ``msg`` of a result blob (``{"msg": ...}``, JSON or nearly so).

    For a failed command (``"msg": "non-zero return code"``) the stderr (or
    stdout) is appended, since that is what says what went wrong.
    """
    data = None
    try:
        data = json.loads(blob)
    except ValueError:
        pass
    if isinstance(data, dict):
        msg = data.get("msg")
        if isinstance(msg, (list, dict)):
            msg = json.dumps(msg)
        msg = str(msg) if msg is not None else ""
        detail = (data.get("stderr") or data.get("stdout") or "").strip()
        if detail and detail not in msg:
            msg = f"{msg}: {detail}" if msg else detail
        if not msg and "rc" in data:
            msg = f"exit code {data['rc']}"
        return msg.strip() or blob.strip()
    m = _MSG.search(blob)
    if m:
        try:
            return json.loads(f'"{m.group("msg")}"')
        except ValueError:
            return m.group("msg")
    return blob.strip()


def parse_recap_line(line: str) -> Optional[RecapRow]:
    """One ``host : ok=1 changed=0 ...`` line, or None."""
    m = _RECAP_ROW.match(line.strip())
    if not m:
        return None
    values = dict(kv.split("=", 1) for kv in m.group(2).split())
    if "ok" not in values:
        return None
    return RecapRow(m.group(1), **{k: int(values.get(k, 0)) for k in RECAP_FIELDS})


def count_list_tasks(text: str) -> int:
    """Number of tasks in ``ansible-playbook --list-tasks`` output (a total_tasks hint).

    Handlers, rescue tasks and dynamic includes are not listed there, so the
    real run usually starts a few more tasks than this.
    """
    n = 0
    in_tasks = False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("play #"):
            in_tasks = False
        elif s == "tasks:":
            in_tasks = True
        elif in_tasks and "\tTAGS: [" in line:
            n += 1
    return n


class AnsibleProgress:
    """State of one ``ansible-playbook`` run, updated by :meth:`feed`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.started_at = clock()
        self.play: Optional[str] = None
        self.task: Optional[str] = None
        self.plays_started = 0
        self.tasks_started = 0
        self.task_started_at: Optional[float] = None
        self.failures: list[Failure] = []
        self.recap: list[RecapRow] = []
        self.in_recap = False
        self.finished = False  # saw PLAY RECAP
        self.interrupted = False
        self.errors: list[str] = []  # ERROR! lines (syntax, missing files, ...)
        self.warnings: list[str] = []
        self.retries: int = 0
        self.lines = 0
        self._totals: dict[str, dict[str, int]] = {}
        self._current: dict[str, str] = {}  # host -> outcome for the current task
        self._last_failed_host: Optional[str] = None
        self._last_failed_changed = False
        self._ignored_changed: set[str] = set()
        self._failed_earlier: set[str] = set()  # hosts whose failure ended a task

    # ---------------------------------------------------------------- feeding

    def feed_all(self, lines: Iterable[str]) -> "AnsibleProgress":
        for line in lines:
            self.feed(line)
        return self

    def feed(self, line: str) -> Optional[str]:
        """Consume one output line; returns what it was (``"task"``, ``"ok"``...) or None."""
        line = line.rstrip("\r\n")
        self.lines += 1
        if self.in_recap:
            row = parse_recap_line(line)
            if row:
                self.recap.append(row)
                self._reconcile(row)
                return "recap-row"
            if line.strip():
                self.in_recap = False  # e.g. profile_tasks' summary follows
            else:
                return None
        m = _BANNER.match(line)
        if m:
            kind, name = m.group(1), m.group(2)
            self._end_task()
            if kind == "PLAY":
                self.play, self.task = name, None
                self._failed_earlier = set()  # failed hosts never come back in later plays
                self.plays_started += 1
                return "play"
            self.task = name
            self.tasks_started += 1
            self.task_started_at = self._clock()
            return "task" if kind == "TASK" else "handler"
        if _RECAP_BANNER.match(line):
            self._end_task()
            self.task = None
            self.in_recap = self.finished = True
            return "recap"
        m = _RESULT.match(line)
        if m:
            status = "skipped" if m.group("status") == "skipping" else m.group("status")
            self._outcome(m.group("host"), status)
            return status
        m = _INCLUDED.match(line)
        if m:  # ansible counts an include as ok for each host
            for host in m.group("hosts").split(", "):
                self._outcome(host.strip(), "ok")
            return "included"
        m = _FATAL.match(line)
        if m:
            kind = "unreachable" if m.group("kind") == "UNREACHABLE" else "failed"
            self._fail(m.group("host"), kind, m.group("blob"))
            return kind
        m = _ITEM_FAILED.match(line)
        if m:
            self._fail(m.group("host"), "failed", m.group("blob"), item=m.group("item"))
            return "failed"
        if _IGNORING.match(line):
            self._ignore_last()
            return "ignored"
        if _RETRY.match(line):
            self.retries += 1
            return "retry"
        if _INTERRUPTED.match(line):
            self.interrupted = True
            return "interrupted"
        m = _ERROR.match(line)
        if m:
            self.errors.append(m.group("msg").strip())
            return "error"
        m = _WARNING.match(line)
        if m:
            self.warnings.append(m.group("msg").strip())
            return "warning"
        if _NO_HOSTS.match(line):
            self.warnings.append(f"no hosts matched in play {self.play!r}")
            return "warning"
        return None

    def _outcome(self, host: str, status: str) -> None:
        if host in self._failed_earlier:
            self._rescued(host)
        prev = self._current.get(host)
        if prev is None or _RANK[status] > _RANK[prev]:
            self._current[host] = status
        elif status == "ok" and prev == "skipped":
            self._current[host] = status

    def _fail(self, host: str, kind: str, blob: str, item: Optional[str] = None) -> None:
        self._outcome(host, kind)
        self._last_failed_host = host
        self._last_failed_changed = '"changed": true' in blob
        self.failures.append(Failure(host, self.task, self.play, blob_msg(blob), kind, item))

    def _rescued(self, host: str) -> None:
        """A failed host got another result: ansible only runs a failed host's
        ``rescue:`` tasks, so its failure was rescued (as the recap will say)."""
        self._failed_earlier.discard(host)
        counts = self._totals.get(host)
        if counts and counts["failed"] > 0:
            counts["failed"] -= 1
            counts["rescued"] += 1
        mine = [f for f in self.failures if f.host == host and f.kind == "failed"]
        if mine:
            last = (mine[-1].play, mine[-1].task)
            self.failures = [f for f in self.failures if not (f.host == host and (f.play, f.task) == last)]

    def _ignore_last(self) -> None:
        host = self._last_failed_host
        if host is None:
            return
        self._current[host] = "ignored"
        if self._last_failed_changed:
            self._ignored_changed.add(host)
        # the failure(s) of that host in this task were ignored: not failures
        self.failures = [f for f in self.failures if not (f.host == host and f.task == self.task)]
        self._last_failed_host = None

    def _reconcile(self, row: RecapRow) -> None:
        """Drop failures the recap shows were rescued: a good host has none, and
        a failed host keeps only those of its last failing task (its real end)."""
        mine = [f for f in self.failures if f.host == row.host]
        if not mine:
            return
        last = (mine[-1].play, mine[-1].task)
        keep = [] if row.good else [f for f in mine if (f.play, f.task) == last]
        self.failures = [f for f in self.failures if f.host != row.host or f in keep]

    def _end_task(self) -> None:
        for host, status in self._current.items():
            counts = self._totals.setdefault(host, _empty_counts())
            counts[status] += 1
            if status == "changed":
                counts["ok"] += 1
            elif status == "ignored":  # ansible counts an ignored failure as ok too
                counts["ok"] += 1
                if host in self._ignored_changed:
                    counts["changed"] += 1
            elif status == "failed":
                self._failed_earlier.add(host)
        self._current = {}
        self._ignored_changed = set()
        self._last_failed_host = None

    # ---------------------------------------------------------------- views

    @property
    def hosts(self) -> dict[str, dict[str, int]]:
        """Live per-host counters (``ok`` includes ``changed``), current task included.

        After ``PLAY RECAP`` the recap's own numbers are returned.
        """
        if self.recap:
            return {r.host: {k: getattr(r, k) for k in RECAP_FIELDS} for r in self.recap}
        out = {h: dict(c) for h, c in self._totals.items()}
        for host, status in self._current.items():
            counts = out.setdefault(host, _empty_counts())
            counts[status] += 1
            if status in ("changed", "ignored"):
                counts["ok"] += 1
            if status == "ignored" and host in self._ignored_changed:
                counts["changed"] += 1
        return out

    @property
    def failure(self) -> Optional[Failure]:
        """The first failure of the run (what to show the user), if any."""
        return self.failures[0] if self.failures else None

    @property
    def failed_hosts(self) -> list[str]:
        if self.recap:
            return [r.host for r in self.recap if not r.good]
        return sorted({f.host for f in self.failures})

    @property
    def ok(self) -> bool:
        """True when the run reached its recap with no failed/unreachable host."""
        return self.finished and not self.interrupted and not self.errors and all(r.good for r in self.recap)

    def elapsed(self, now: Optional[float] = None) -> float:
        return (self._clock() if now is None else now) - self.started_at

    def estimate(self, total_tasks_hint: Optional[int], now: Optional[float] = None) -> Eta:
        """ETA from elapsed time and tasks started so far, given a total task count hint."""
        elapsed = self.elapsed(now)
        if self.finished:
            return Eta(elapsed, 0.0, 1.0)
        if not total_tasks_hint or total_tasks_hint <= 0 or self.tasks_started == 0 or elapsed <= 0:
            return Eta(elapsed, None, None)
        done = min(self.tasks_started, total_tasks_hint)
        fraction = done / total_tasks_hint
        per_task = elapsed / done
        remaining = max(total_tasks_hint - done, 0) * per_task
        return Eta(elapsed, remaining, fraction)

    def status_line(self, total_tasks_hint: Optional[int] = None, now: Optional[float] = None) -> str:
        """One short human line: ``[12/840] PLAY > TASK (eta 5m20s)``."""
        count = f"{self.tasks_started}/{total_tasks_hint}" if total_tasks_hint else f"{self.tasks_started}"
        where = " > ".join(x for x in (self.play, self.task) if x)
        eta = self.estimate(total_tasks_hint, now)
        tail = f" (eta {format_duration(eta.remaining)})" if eta.remaining is not None else ""
        bad = f" [{len(self.failed_hosts)} failed]" if self.failures else ""
        return f"[{count}] {where}{tail}{bad}".rstrip()


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def parse(text: str, clock: Callable[[], float] = time.monotonic) -> AnsibleProgress:
    """Parse a whole captured output."""
    return AnsibleProgress(clock).feed_all(text.splitlines())


def render_recap_table(rows: Iterable[RecapRow]) -> str:
    """Plain-text table of recap rows (failed/unreachable hosts marked with ``!``)."""
    rows = list(rows)
    headers = ["HOST"] + [f.upper() for f in RECAP_FIELDS]
    table = [headers] + [
        [("! " if not r.good else "  ") + r.host] + [str(getattr(r, f)) for f in RECAP_FIELDS] for r in rows
    ]
    table[0][0] = "  HOST"
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = []
    for row in table:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
