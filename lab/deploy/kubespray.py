"""Deploy = one kubespray run on admin-lb, streamed, logged and summarised.

kubespray lives on admin-lb (scripts/admin-lb.sh clones it, builds its venv and
copies the lab inventory). halab syncs the rendered inventory there, runs
``cluster.yml`` (after ``reset.yml`` with ``--reset``) through a
:class:`lab.remote.Remote`, shows the play and task as they go, keeps the whole
Ansible output in ``<lab>/logs/``, and finally turns the admin kubeconfig that
kubespray wrote on the runner into the lab kubeconfig: one context per access
path of the Case.

Command building, status lines, resume commands and the kubeconfig rewrite are
pure functions; the side effects sit in :func:`deploy` and a few helpers.
"""
from __future__ import annotations

import shlex
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import yaml

from lab.deploy import kubeconfig as kc
from lab.deploy.ansible_progress import AnsibleProgress, count_list_tasks, format_duration, render_recap_table
from lab.errors import HalabError
from lab.state import Lab, labs_root
from lab.deploy.playbook import PlaybookCommand, PlaybookSummary, playbook_command, run_playbook
from lab.model.topology import Topology

KUBESPRAY_DIR = "/root/kubespray"
KUBESPRAY_VENV = "/root/kubespray-venv"
CLUSTER = "cluster.yml"
RESET = "reset.yml"
# kubespray >= 2.27 skips reset.yml's prompt when this is defined and true
RESET_CONFIRMATION = "reset_confirmation=yes"
EXIT_INTERRUPTED = 130

Progress = Callable[[str], None]


@dataclass(frozen=True)
class KubesprayPaths:
    """Where kubespray, its venv, the lab inventory and the fact cache are on admin-lb."""

    kubespray_dir: str = KUBESPRAY_DIR
    venv: str = KUBESPRAY_VENV
    inventory_root: Optional[str] = None  # default <kubespray_dir>/inventory
    fact_cache: Optional[str] = None  # default /tmp/halab-facts-<lab>

    def inventory_dir(self, lab_name: str) -> str:
        root = self.inventory_root or f"{self.kubespray_dir.rstrip('/')}/inventory"
        return f"{root.rstrip('/')}/{lab_name}"

    def inventory(self, lab_name: str) -> str:
        return f"{self.inventory_dir(lab_name)}/inventory.ini"

    def extra_vars(self, lab_name: str) -> str:
        return f"{self.inventory_dir(lab_name)}/extra-vars.yml"

    def admin_conf(self, lab_name: str) -> str:
        """What ``kubeconfig_localhost: true`` writes on the runner."""
        return f"{self.inventory_dir(lab_name)}/artifacts/admin.conf"

    def fact_cache_dir(self, lab_name: str) -> str:
        return self.fact_cache or f"/tmp/halab-facts-{lab_name}"

    def playbook(self, name: str) -> str:
        return f"{self.kubespray_dir.rstrip('/')}/{name}"


# --------------------------------------------------------------------------- pure


def inventory_hosts(topo: Topology) -> list[str]:
    """The hosts kubespray manages (admin-lb only runs it)."""
    nodes = list(topo.control_planes) + list(topo.workers)
    if topo.scenario.etcd_topology == "external":
        nodes += list(topo.etcd_members)
    return [n.name for n in nodes]


def runner_node(topo: Topology) -> str:
    """The admin-lb that runs kubespray (the first one of an HA pair)."""
    if not topo.admin_lbs:
        raise HalabError(f"lab {topo.name} has no admin-lb node to run kubespray on",
                         hint="give the scenario `admin_lb: {count: 1}`")
    return topo.admin_lbs[0].name


def kubespray_command(topo: Topology, playbook: str, paths: KubesprayPaths = KubesprayPaths(),
                      limit: Optional[str] = None, tags: Optional[str] = None,
                      list_tasks: bool = False) -> PlaybookCommand:
    """``ansible-playbook`` for one kubespray playbook, run from the kubespray folder.

    The lab inventory carries the Case's group_vars; the scenario's extra_vars go
    last (``-e @extra-vars.yml``: highest precedence). Forks = one per node, so
    every node works at once; pipelining and a jsonfile fact cache in /tmp
    save an SSH round trip per task and the fact gathering of a re-run.
    """
    extra = ["-e", f"@{paths.extra_vars(topo.name)}"]
    if playbook == RESET:
        extra += ["-e", RESET_CONFIRMATION]
    if list_tasks:
        extra.append("--list-tasks")
    return playbook_command(
        paths.playbook(playbook), paths.inventory(topo.name),
        limit=limit, tags=tags if playbook != RESET else None, venv=paths.venv,
        forks=max(1, len(inventory_hosts(topo))), cwd=paths.kubespray_dir,
        fact_cache=paths.fact_cache_dir(topo.name), extra_args=extra)


def deploy_plan(topo: Topology, paths: KubesprayPaths = KubesprayPaths(), limit: Optional[str] = None,
                tags: Optional[str] = None, reset: bool = False,
                reset_only: bool = False) -> list[tuple[str, PlaybookCommand]]:
    """(playbook, command) in the order they run: reset.yml (with --reset), then cluster.yml
    (not with `reset_only`: the cluster is wiped, the machines stay)."""
    plan = []
    if reset or reset_only:
        plan.append((RESET, kubespray_command(topo, RESET, paths, limit=limit)))
    if not reset_only:
        plan.append((CLUSTER, kubespray_command(topo, CLUSTER, paths, limit=limit, tags=tags)))
    return plan


def resume_command(lab: Lab, limit: Optional[str] = None, tags: Optional[str] = None,
                   reset: bool = False) -> str:
    """The ``halab deploy`` line that continues where this one stopped."""
    words = ["halab", "deploy", "--lab", lab.name]
    if lab.path.parent.resolve() != labs_root().resolve():
        words += ["--labs-dir", str(lab.path.parent)]
    if reset:
        words.append("--reset")
    if limit:
        words += ["--limit", limit]
    if tags:
        words += ["--tags", tags]
    return " ".join(shlex.quote(w) for w in words)


def _hosts_of(progress: AnsibleProgress, kind: str) -> list[str]:
    if progress.recap:
        field = "unreachable" if kind == "unreachable" else "failed"
        return [r.host for r in progress.recap if getattr(r, field)]
    return sorted({f.host for f in progress.failures if f.kind == kind})


def status_line(playbook: str, progress: AnsibleProgress, total_tasks: Optional[int],
                now: Optional[float] = None) -> str:
    """``cluster.yml [412/1180 35%] PLAY > TASK | 4m10s elapsed, ~7m40s left | failed: k8s-node2``."""
    eta = progress.estimate(total_tasks, now)
    if total_tasks and progress.tasks_started <= total_tasks:
        pct = f" {min(99, int(100 * eta.fraction))}%" if eta.fraction is not None and not progress.finished else ""
        count = f"{progress.tasks_started}/{total_tasks}{pct}"
    elif total_tasks:  # dynamic includes and handlers are not listed beforehand
        count = f"{progress.tasks_started} tasks, {total_tasks} listed"
    else:
        count = f"{progress.tasks_started} tasks"
    where = " > ".join(x for x in (progress.play, progress.task) if x) or "starting"
    timing = f"{format_duration(eta.elapsed)} elapsed"
    if eta.remaining:
        timing += f", ~{format_duration(eta.remaining)} left"
    parts = [f"{playbook} [{count}] {where}", timing]
    for kind in ("failed", "unreachable"):
        hosts = _hosts_of(progress, kind)
        if hosts:
            parts.append(f"{kind}: {', '.join(hosts)}")
    return " | ".join(parts)


class StatusReporter:
    """Turns ansible's lines into a few readable progress messages.

    Every new play is reported; tasks at most every ``min_interval`` s (kubespray
    starts about one a second), with the latest task shown once the interval has
    passed; a change in the failed/unreachable hosts at once; and, while one
    task runs long, a heartbeat every ``heartbeat`` s.
    """

    def __init__(self, emit: Progress, playbook: str, total_tasks: Optional[int],
                 min_interval: float = 2.0, heartbeat: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.emit = emit
        self.playbook = playbook
        self.total_tasks = total_tasks
        self.min_interval = min_interval
        self.heartbeat = heartbeat
        self._clock = clock
        self._last = float("-inf")
        self._plays = 0
        self._tasks = 0
        self._bad: tuple = ((), ())
        self._pending = False

    def _report(self, progress: AnsibleProgress) -> None:
        self._last = self._clock()
        self._pending = False
        self.emit(status_line(self.playbook, progress, self.total_tasks))

    def on_line(self, progress: AnsibleProgress, line: str) -> None:
        bad = (tuple(_hosts_of(progress, "failed")), tuple(_hosts_of(progress, "unreachable")))
        new_play = progress.plays_started != self._plays
        new_task = progress.tasks_started != self._tasks
        self._plays, self._tasks = progress.plays_started, progress.tasks_started
        if new_play or bad != self._bad:
            self._bad = bad
            self._report(progress)
        elif new_task or self._pending:
            if self._clock() - self._last >= self.min_interval:
                self._report(progress)
            else:
                self._pending = True

    def on_idle(self, progress: AnsibleProgress) -> None:
        since = self._clock() - self._last
        if (self._pending and since >= self.min_interval) or since >= self.heartbeat:
            self._report(progress)


def lab_kubeconfig(topo: Topology, admin_conf: str, source: str = "admin.conf") -> tuple[dict, str]:
    """The lab kubeconfig built from kubespray's admin.conf; also returns kubespray's server.

    Only the CA and the admin client certificate are taken from kubespray's
    file; the servers come from the Case's access paths. This matters in
    Case 2, where kubespray has no ``loadbalancer_apiserver`` and its admin.conf
    points at the first control plane, while external users go through the LB.
    """
    try:
        data = yaml.safe_load(admin_conf)
    except yaml.YAMLError as exc:
        raise HalabError(f"{source} is not valid YAML ({exc})",
                         hint="run `halab deploy` again to let kubespray rewrite it") from exc
    ca, cert, key, server = kc.credentials(data if isinstance(data, dict) else {}, source)
    return kc.build(topo, ca, cert, key, current=kc.default_context(topo)), server


def run_error(playbook: str, summary: PlaybookSummary, runner: str) -> HalabError:
    """The HalabError for a playbook that did not finish OK (pure)."""
    log = summary.log_path
    resume = f"fix the cause, then resume with: {summary.resume_command}"
    if summary.status == "interrupted":
        where = f" during task {summary.task!r}" if summary.task else ""
        return HalabError(
            f"kubespray {playbook} interrupted{where}; ansible-playbook was stopped on {runner} "
            f"(log: {log})", code=EXIT_INTERRUPTED,
            hint=f"continue with: {summary.resume_command} (kubespray is idempotent: "
                 "it picks up what is not done yet)")
    if summary.failure is not None:
        others = sorted({f.host for f in summary.failures} - {summary.failure.host})
        more = f" (also failed: {', '.join(others)})" if others else ""
        return HalabError(f"kubespray {playbook} failed: {summary.failure}{more} (log: {log})",
                          hint=resume)
    if summary.status == "failed":
        bad = ", ".join(r.host for r in summary.recap if not r.good)
        return HalabError(f"kubespray {playbook} failed on {bad} (log: {log})", hint=resume)
    why = "; ".join(summary.errors) or f"ansible-playbook exited with code {summary.exit_code}"
    return HalabError(f"kubespray {playbook} stopped: {why} (log: {log})", hint=resume)


def log_name(playbook: str, when: Optional[float] = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    return f"kubespray-{Path(playbook).stem}-{stamp}.log"


def task_count_key(topo: Topology, playbook: str, limit: Optional[str], tags: Optional[str]) -> str:
    return f"{topo.scenario.kubespray.version} {playbook} limit={limit or ''} tags={tags or ''}"


# --------------------------------------------------------------------------- side effects


def check_runner(remote, paths: KubesprayPaths, lab_name: str, playbooks: list[str],
                 need_inventory: bool) -> None:
    """Fail early, and say how to fix it, when admin-lb lacks kubespray, its venv or the inventory."""
    want = [paths.playbook(p) for p in playbooks] + [f"{paths.venv.rstrip('/')}/bin/ansible-playbook"]
    if need_inventory:
        want.append(paths.inventory(lab_name))
    script = "; ".join(f"[ -e {shlex.quote(p)} ] || echo {shlex.quote(p)}" for p in want)
    res = remote.run(script, sudo=True, timeout=30)
    missing = [line for line in res.stdout.splitlines() if line.strip()]
    if missing or not res.ok:
        raise HalabError(
            f"{remote.name} is not ready to run kubespray: missing {', '.join(missing) or res.stderr.strip()}",
            hint="admin-lb's provisioning installs kubespray, its venv and the inventory "
                 "(scripts/admin-lb.sh): run `halab up` again, or `vagrant provision "
                 f"{remote.name}` in the lab folder")


def sync_inventory(remote, lab: Lab, paths: KubesprayPaths) -> int:
    """Copy the rendered ``<lab>/inventory/`` over the lab inventory on admin-lb.

    Files kubespray's sample put there are kept; halab's (zz-halab.yml, the
    inventory, extra-vars.yml) are replaced, so the Case's variables are the
    ones the lab was rendered with. Returns the number of files copied.
    """
    src = lab.path / "inventory"
    files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else []
    if not files:
        return 0
    res = remote.run("mktemp -d /tmp/halab-inventory.XXXXXX", timeout=30)
    staging = res.stdout.strip()
    if not res.ok or not staging.startswith("/tmp/halab-inventory."):
        raise HalabError(f"cannot make a staging folder on {remote.name}: {res.stderr.strip()}")
    try:
        dirs = sorted({str(p.parent.relative_to(src)) for p in files} - {"."})
        if dirs:
            remote.run("mkdir -p " + " ".join(shlex.quote(f"{staging}/{d}") for d in dirs), timeout=30)
        for p in files:
            remote.put(str(p), f"{staging}/{p.relative_to(src).as_posix()}", mode=0o600)
        dest = paths.inventory_dir(lab.name)
        res = remote.run(f"mkdir -p {shlex.quote(dest)} && cp -R {shlex.quote(staging)}/. {shlex.quote(dest)}/",
                         sudo=True, timeout=60)
        if not res.ok:
            raise HalabError(f"cannot copy the lab inventory to {remote.name}:{dest}: {res.stderr.strip()}")
    finally:
        remote.run(f"rm -rf {shlex.quote(staging)}", sudo=True, timeout=30)
    return len(files)


def count_tasks(remote, cmd: PlaybookCommand, timeout: float = 300) -> Optional[int]:
    """Tasks ``ansible-playbook --list-tasks`` lists (None when it cannot tell)."""
    res = remote.run(cmd.shell(), sudo=True, timeout=timeout)
    n = count_list_tasks(res.stdout) if res.ok else 0
    return n or None


def fetch_admin_conf(remote, path: str) -> Optional[str]:
    """The text of kubespray's admin.conf on admin-lb, or None when there is none."""
    res = remote.run(f"cat {shlex.quote(path)}", sudo=True, timeout=30)
    return res.stdout if res.ok and res.stdout.strip() else None


def _task_hint(lab: Lab, remote, topo: Topology, playbook: str, cmd_limit, cmd_tags,
               list_cmd: PlaybookCommand, progress: Progress) -> tuple[str, Optional[int]]:
    key = task_count_key(topo, playbook, cmd_limit, cmd_tags)
    known = lab.record().kubespray_tasks.get(key)
    if known:
        return key, int(known)
    progress(f"counting the tasks of {playbook} (ansible-playbook --list-tasks) for the estimate")
    return key, count_tasks(remote, list_cmd)


def _remember_tasks(lab: Lab, key: str, n: int) -> None:
    counts = dict(lab.record().kubespray_tasks)
    counts[key] = n
    lab.update(kubespray_tasks=counts)


def write_lab_kubeconfig(lab: Lab, topo: Topology, admin_conf: str, source: str,
                         progress: Progress) -> dict:
    """Write ``lab.kubeconfig`` (0600) and say which context goes where."""
    config, ks_server = lab_kubeconfig(topo, admin_conf, source)
    kc.write(lab.kubeconfig, config)
    default = config["current-context"]
    servers = {c["name"]: c["cluster"]["server"] for c in config["clusters"]}
    progress(f"kubeconfig {lab.kubeconfig}: " + ", ".join(
        f"{name} -> {server}{' (default)' if name == default else ''}" for name, server in servers.items()))
    if ks_server and ks_server != servers[default]:
        progress(f"kubespray's admin.conf points at {ks_server}; the default context {default} "
                 f"uses {servers[default]}, the Case {topo.case} path for external kubectl")
    rec = lab.record()
    into = rec.kubeconfig_merged_into
    if rec.kubeconfig_merged and into and Path(into).exists():
        # `halab kubeconfig --merge` ran before: a new cluster (--reset) has new credentials
        merged, added = kc.merge(kc.load(Path(into)), config)
        kc.write(Path(into), merged)
        lab.update(kubeconfig_merged=added)
        progress(f"updated the lab's {len(added)} entries in {into}")
    return {"kubeconfig": str(lab.kubeconfig), "default_context": default, "contexts": servers,
            "kubespray_server": ks_server}


def deploy(lab: Lab, topo: Topology, provider, progress: Progress = lambda m: None,
           limit: Optional[str] = None, tags: Optional[str] = None, reset: bool = False, *,
           reset_only: bool = False,
           paths: KubesprayPaths = KubesprayPaths(), sync: bool = True,
           count_tasks_first: bool = True, min_interval: float = 2.0,
           interrupt_grace: float = 15.0) -> dict:
    """Run kubespray on admin-lb for the lab's Case and write the lab kubeconfig.

    ``reset``: reset.yml first (``-e reset_confirmation=yes``), then cluster.yml.
    ``limit``/``tags`` go to ansible-playbook as they are. Raises HalabError
    naming the failing host, task, message, the log and the command to resume;
    Ctrl-C stops ansible on admin-lb and raises HalabError (exit 130).
    Returns ``{"seconds": ...}`` plus what was recorded in the lab state.
    """
    t0 = time.monotonic()
    runner = runner_node(topo)
    if not provider.capabilities.ssh:
        raise HalabError(f"the {type(provider).__name__} cannot reach {runner} over SSH, where kubespray runs",
                         hint="kubespray needs VMs (provider virtualbox or libvirt); "
                              "the local provider uses `deployer: static`")
    plan = deploy_plan(topo, paths, limit, tags, reset, reset_only)
    reset = reset or reset_only
    previous = lab.record().deploy
    lab.update(deploy={"state": "deploying", "deployer": "kubespray", "started_at": time.time(),
                       "pid": os.getpid(),
                       "limit": limit, "tags": tags, "reset": reset})
    runs: list[dict] = []
    last: Optional[PlaybookSummary] = None
    kube: dict = {}
    remote = provider.remote(runner)
    try:
        with lab.step("deploy"):
            progress(f"kubespray on {runner} ({remote.where}): {' then '.join(p for p, _ in plan)}"
                     + (f", --limit {limit}" if limit else "") + (f", --tags {tags}" if tags else ""))
            check_runner(remote, paths, lab.name, [p for p, _ in plan],
                         need_inventory=not (sync and (lab.path / "inventory").is_dir()))
            if sync:
                n = sync_inventory(remote, lab, paths)
                progress(f"lab inventory ({n} files) -> {runner}:{paths.inventory_dir(lab.name)}")
            for playbook, cmd in plan:
                # a failed reset must be resumed with --reset; a failed cluster.yml without
                resume = resume_command(lab, limit, tags, reset=reset and playbook == RESET)
                summary, key = _run_one(lab, topo, remote, playbook, cmd, resume, progress,
                                        count_tasks_first, min_interval, interrupt_grace, paths,
                                        limit, tags)
                last = summary
                runs.append({"playbook": playbook, "status": summary.status, "log": summary.log_path,
                             "tasks": summary.tasks_started, "seconds": round(summary.elapsed, 1)})
                if summary.recap:
                    for line in render_recap_table(summary.recap).splitlines():
                        progress(line)
                if not summary.ok:
                    err = run_error(playbook, summary, runner)
                    f = summary.failure
                    lab.update(deploy={"state": summary.status, "deployer": "kubespray",
                                       "runs": runs, "limit": limit, "tags": tags, "reset": reset,
                                       "failure": {"host": f.host, "task": f.task, "msg": f.msg}
                                       if f else None,
                                       "resume": summary.resume_command, "error": err.message})
                    raise err
                progress(f"{playbook} finished OK in {format_duration(summary.elapsed)} "
                         f"({summary.tasks_started} tasks); log {summary.log_path}")
                if key:  # what really ran is a better estimate next time than --list-tasks
                    _remember_tasks(lab, key, summary.tasks_started)
            admin_conf = paths.admin_conf(lab.name)
            text = None if reset_only else fetch_admin_conf(remote, admin_conf)
            if reset_only:
                pass   # no cluster: the lab kubeconfig stays as it was, pointing nowhere
            elif text is None:
                if limit or tags:
                    progress(f"no {admin_conf} on {runner} after this partial run; "
                             "the lab kubeconfig was left as it was")
                else:
                    raise HalabError(f"kubespray finished but wrote no {runner}:{admin_conf}",
                                     hint="the lab's group_vars must keep `kubeconfig_localhost: true`; "
                                          f"then run: {resume_command(lab)}")
            else:
                kube = write_lab_kubeconfig(lab, topo, text, f"{runner}:{admin_conf}", progress)
                if topo.workers:
                    # halab's checks and drill probes on a worker go its kubelet's way
                    # (kubespray's kubelets have their own kubeconfig; the probes borrow
                    # admin.conf's identity: halab has no key of kubespray's CA to sign
                    # a read-only one)
                    ca, cert, key, _ = kc.credentials(yaml.safe_load(text), admin_conf)
                    kc.put_worker_kubeconfigs(topo, provider, ca, (cert, key))
                    progress(f"worker kubeconfigs ({topo.worker_path(topo.workers[0]).server}) "
                             f"-> {', '.join(w.name for w in topo.workers)}")
    except KeyboardInterrupt:  # outside ansible (sync, task count): nothing runs on admin-lb
        resume = resume_command(lab, limit, tags, reset=reset and not runs)
        lab.update(deploy={"state": "interrupted", "deployer": "kubespray", "runs": runs,
                           "limit": limit, "tags": tags, "reset": reset, "resume": resume})
        raise HalabError("deploy interrupted before kubespray ran" if not runs else
                         "deploy interrupted", code=EXIT_INTERRUPTED,
                         hint=f"continue with: {resume}") from None
    finally:
        remote.close()
    seconds = round(time.monotonic() - t0, 1)
    partial = bool(limit or tags) and previous.get("state") != "deployed"
    state = "reset" if reset_only else "partial" if partial else "deployed"
    record = {"state": state, "deployer": "kubespray",
              "seconds": seconds, "finished_at": time.time(), "runs": runs,
              "limit": limit, "tags": tags, "reset": reset,
              "recap": {r.host: {k: v for k, v in asdict(r).items() if k != "host"}
                        for r in (last.recap if last else [])}, **kube}
    lab.update(deploy=record)
    return {"seconds": seconds, **record}


def _run_one(lab, topo, remote, playbook, cmd, resume, progress, count_first, min_interval,
             interrupt_grace, paths, limit, tags) -> tuple[PlaybookSummary, Optional[str]]:
    key, total = None, None
    if count_first:
        list_cmd = kubespray_command(topo, playbook, paths, limit=limit, tags=tags, list_tasks=True)
        key, total = _task_hint(lab, remote, topo, playbook, limit, tags, list_cmd, progress)
    log = lab.logs / log_name(playbook)
    progress(f"running {playbook}" + (f" (~{total} tasks)" if total else "") + f"; full log: {log}")
    reporter = StatusReporter(progress, playbook, total, min_interval=min_interval)
    summary = run_playbook(cmd, log, remote=remote, on_progress=reporter.on_line,
                           on_idle=reporter.on_idle, idle_interval=min(5.0, reporter.heartbeat),
                           resume_command=resume, interrupt_grace=interrupt_grace, sudo=True)
    return summary, key
