"""One drill, chaostoolkit-shaped: steady state -> probes -> inject -> observe -> restore
(always) -> observe recovery -> health check -> verdict, all written to the journal.

Probes run as long-lived workers (`lab.drill.prober`) inside the namespace of
the client each access path belongs to (the laptop for external and direct
paths, the worker for its kubelet path); threads here collect their JSON lines.
HAProxy backend states come from the stats socket, VIP holders from `ip addr`
on the load balancers, lease holders and the etcd leader from prober workers,
and a canary worker (a loopback server of its own) tells host stalls (a starved
2-core machine) apart from the lab's failures.

"Recovered" means: every path OK for `stable` seconds, etcd answering with one
leader, the VIP back on its keepalived master, and (after a partition) at least
`settle` seconds observed: a healed member's etcd and API server need a few
seconds to catch up (without --pre-vote, which halab sets, it would also force an
election).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from lab.errors import HalabError
from lab.deploy.kubeconfig import PROBER_KUBECONFIG, default_context
from lab.deploy.verify import (api_servers, etcd_probe, etcd_view, expected_nodes,
                               one_shot_etcd, prober_argv)
from lab.drill import expect, faults as faultlib, journal as jlib, nodes as nodelib
from lab.drill import verdict as verdictlib

CLIENT = "client"
MIN_AUTO_DURATION = 15.0


class Interrupted(BaseException):
    """SIGTERM/SIGHUP during a drill: unwinds like Ctrl-C so the fault is restored."""


@dataclass
class Settings:
    duration: float | None = None   # how long the fault stays injected (None: auto)
    warmup: float = 2.0             # probes before the fault
    probe_interval: float | None = None  # per read path (None: the provider's; 5/s locally)
    probe_timeout: float | None = None  # per probe; a dead server is a failure, not a hang
    #                                     (None: the provider's; 1 s locally)
    # what a read probe asks: a namespace GET is what clients do (a quorum read from
    # etcd, so it fails without quorum); /readyz turns 500 the moment an API server
    # starts a graceful shutdown, while it still serves requests
    probe_path: str = "/api/v1/namespaces/default"
    write_interval: float | None = None  # None: the provider's (0.5 s locally)
    lease_interval: float | None = None  # leases and etcd members (None: 1 s locally)
    # between two reads of HAProxy's states and the VIP's holder: a socket next door
    # locally, an SSH session and a process on a VM (read back to back, that kept an
    # emulated admin-lb at 56 % of a host core). None: the provider's (0.25 s locally)
    state_poll_interval: float | None = None
    recovery_timeout: float | None = None  # after restore, until every path is OK again
    #                                 (None: the provider's, 60 s for the local provider)
    stable: float = 2.0             # "recovered" = this long without a failed probe ...
    settle: float = 8.0             # ... and at least this long after healing a partition:
    #                                 the etcd member may force an election seconds later
    steady_wait: float = 15.0       # how long the steady-state check may wait for health
    after_wait: float = 90.0        # how long the health check after the restore may wait

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def fitted(self, provider) -> "Settings":
        """These settings with the provider's waits: an emulated VM boots in minutes.

        A provider's `drill_waits` ({field: seconds}) fill an unset recovery timeout and
        raise the steady-state and after-restore waits to at least that much.
        """
        from dataclasses import replace
        waits = {**LOCAL_WAITS, **provider.drill_waits}
        return replace(self, recovery_timeout=self.recovery_timeout or waits["recovery_timeout"],
                       probe_interval=self.probe_interval or waits["probe_interval"],
                       probe_timeout=self.probe_timeout or waits["probe_timeout"],
                       write_interval=self.write_interval or waits["write_interval"],
                       lease_interval=self.lease_interval or waits["lease_interval"],
                       state_poll_interval=(self.state_poll_interval
                                            or waits["state_poll_interval"]),
                       steady_wait=max(self.steady_wait, waits["steady_wait"]),
                       after_wait=max(self.after_wait, waits["after_wait"]))


LOCAL_WAITS = {"recovery_timeout": 60.0, "steady_wait": 15.0, "after_wait": 90.0,
               "probe_interval": 0.2, "probe_timeout": 1.0, "write_interval": 0.5,
               "lease_interval": 1.0, "state_poll_interval": 0.25}


@dataclass
class ProbeSpec:
    key: str          # access path key, or "write", "leases", "etcd"
    mode: str
    node: str         # where it runs: "client" or a node name
    argv: list = field(default_factory=list)
    interval: float = 0.2   # seconds between two probes


# a probe worker on a node dies with its node (a VM powered off): try again this often
WORKER_RESTART = 3.0


# ------------------------------------------------------------------ pure helpers

def path_context(topo, path) -> str | None:
    """The kubeconfig context a client-side path uses (None: the node's own kubeconfig)."""
    if path.runs_on != "client":
        return None
    if path.key.startswith("direct:"):
        return f"{topo.name}-{path.key.split(':', 1)[1]}"
    return default_context(topo)


def live_mark(recs: list[dict], now: float, interval: float) -> str:
    """One path in the live line: results that ended in the last second or so (`ok`,
    `2/3FAIL`), or `stall 12s` when none has come back for a while (probes hang)."""
    window = max(1.0, interval) + 0.5
    recent = [r for r in recs if now - window <= r["t"] + r.get("lat", 0.0) <= now]
    if recent:
        fails = sum(1 for r in recent if not r["ok"])
        return "ok" if not fails else f"{fails}/{len(recent)}FAIL"
    if not recs:
        return "--"
    age = now - max(r["t"] + r.get("lat", 0.0) for r in recs)
    return f"stall {age:.0f}s" if age >= 2 * window else "--"


def observer(topo, targets: list[str]) -> str:
    """A control plane the fault does not touch: writes and leases are read through it."""
    for cp in topo.control_planes:
        if cp.name not in targets:
            return cp.name
    return topo.control_planes[0].name


def path_clients(lab, topo, provider):
    """Per access path: (path, where its client sits, the prober's --kubeconfig/--context):
    the laptop with the lab kubeconfig, or the worker with its kubelet-path one."""
    for p in topo.access_paths():
        if p.runs_on == "client":
            kc, node = str(lab.kubeconfig), CLIENT
        else:
            kc, node = provider.layout(p.runs_on).p(PROBER_KUBECONFIG), p.runs_on
        ctx = path_context(topo, p)
        yield p, node, ["--kubeconfig", kc, *(["--context", ctx] if ctx else [])]


def probe_plan(lab, topo, provider, targets, s: Settings, label: str) -> list[ProbeSpec]:
    s = s.fitted(provider)
    base = prober_argv(provider, CLIENT)
    specs = []
    for p, node, where in path_clients(lab, topo, provider):
        specs.append(ProbeSpec(p.key, "read", node, prober_argv(provider, node) + [
            "--mode", "read", *where, "--path", s.probe_path,
            "--interval", str(s.probe_interval), "--timeout", str(s.probe_timeout)],
            s.probe_interval))
    obs = f"{topo.name}-{observer(topo, targets)}"
    kc = str(lab.kubeconfig)
    wt = max(s.probe_timeout, 2.0)
    specs.append(ProbeSpec("write", "write", CLIENT, base + [
        "--mode", "write", "--kubeconfig", kc, "--context", obs, "--label", label,
        "--interval", str(s.write_interval), "--timeout", str(wt)], s.write_interval))
    specs.append(ProbeSpec("leases", "lease", CLIENT, base + [
        "--mode", "lease", "--kubeconfig", kc, "--context", obs,
        "--interval", str(s.lease_interval), "--timeout", str(wt)]))
    specs.append(ProbeSpec("canary", "canary", CLIENT, base + [
        "--mode", "canary", "--interval", str(s.probe_interval),
        "--timeout", str(s.probe_timeout)]))
    etcd_node, etcd_argv = etcd_probe(lab, topo, provider, s.lease_interval, s.probe_timeout,
                                      avoid=tuple(targets))
    specs.append(ProbeSpec("etcd", "etcd", etcd_node, etcd_argv))
    if expected_nodes(lab, topo):
        specs += watch_plan(lab, topo, provider, obs, s)
    return specs


# how long after the paths a drill waits for the nodes it reached to recover (Ready again,
# heartbeats back): a kubelet renews every 10 s and posts a changed status within 10 s
NODES_RECOVERY = 60.0

# a watch's connection is given up after this long without a byte: client-go's HTTP/2
# health check (read idle 30 s, then a ping that gets 15 s) closes a dead one
WATCH_IDLE = 45.0


def watch_plan(lab, topo, provider, observer_context: str, s: Settings) -> list[ProbeSpec]:
    """The cluster's own clients, imitated: on every access path a long-lived watch on the
    nodes' Leases, as a kubelet or kube-proxy holds it, and through a control plane the
    fault does not touch one on the Nodes and one on the pods bound to them (evictions);
    lab.drill.nodes reads them."""
    specs = []
    tail = ["--timeout", str(max(s.probe_timeout, 2.0)), "--idle", str(WATCH_IDLE)]
    for p, node, where in path_clients(lab, topo, provider):
        specs.append(ProbeSpec(f"{nodelib.WATCH_PREFIX}{p.key}", "watch", node,
                               prober_argv(provider, node) + [
                                   "--mode", "watch", "--resource", "leases", *where, *tail]))
    for key, resource in ((nodelib.NODES_WATCH, "nodes"), (nodelib.PODS_WATCH, "pods")):
        specs.append(ProbeSpec(key, "watch", CLIENT, prober_argv(provider, CLIENT) + [
            "--mode", "watch", "--resource", resource, "--kubeconfig", str(lab.kubeconfig),
            "--context", observer_context, *tail]))
    return specs


def holder_node(identity: str | None) -> str | None:
    """`k8s-node3_6f0c...` -> `k8s-node3` (leader election ids are hostname_uuid)."""
    if not identity:
        return None
    return identity.rsplit("_", 1)[0]


# ------------------------------------------------------------------ collection

class Collector:
    """Starts the probe workers and pollers; keeps everything they report."""

    def __init__(self, topo, provider, specs: list[ProbeSpec], echo=lambda m: None,
                 state_poll_interval: float = 0.25):
        self.topo = topo
        self.provider = provider
        self.specs = specs
        self.echo = echo
        self.state_poll_interval = state_poll_interval
        self.lock = threading.Lock()
        self.probes: dict[str, list] = defaultdict(list)
        self.leases: list = []      # [t, {lease: holder identity}] on change
        self.etcd: list = []        # [t, leader, [down]] on change
        self.haproxy: list = []     # [t, lb, server, status, check_status] on change
        self.vip: list = []         # [t, [holders]] on change
        self.watches: dict[str, list] = defaultdict(list)   # long-lived watches' records
        self.etcd_ids: dict = {}
        self.clock_offsets: dict[str, float] = {}  # per probe on a node: its clock vs ours
        self.outages: dict[str, float] = {}   # a node's worker is gone since (see _supervise)
        self.restarts: dict[str, int] = {}
        self.stderr: dict[str, list] = defaultdict(list)
        self.procs: list = []
        self.threads: list = []
        self.stopping = threading.Event()

    # --- probe workers
    def start(self) -> None:
        for spec in self.specs:
            proc = self._launch(spec)
            self._thread(self._supervise, spec, proc)
        for lb in self.topo.load_balancers:
            self._thread(self._poll_haproxy, lb.name)
        if len(self.topo.load_balancers) > 1:
            self._thread(self._poll_vip)

    def _launch(self, spec: ProbeSpec):
        proc = self.provider.popen(spec.node, spec.argv, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                   text=True, bufsize=1)
        with self.lock:
            self.procs.append((spec, proc))
        self._thread(self._read_err, spec, proc)
        return proc

    def _supervise(self, spec: ProbeSpec, proc) -> None:
        """Read a worker's results; a worker on a node is started again when it dies.

        A worker on a node dies with the node (a powered-off VM takes its SSH session
        along). While it is gone nothing probes that path, but its client (the node's
        kubelet) is down too: each probe that could not run is recorded as a failure
        marked `gap`, from the end of its last result until the new worker answers.
        """
        while True:
            self._read(spec, proc)
            proc.wait()
            if spec.node == CLIENT or self.stopping.is_set():
                return    # a client-side worker that dies is an error the engine reports
            with self.lock:
                if self.probes.get(spec.key) or spec.key in self.outages:
                    last = self.probes[spec.key][-1] if self.probes.get(spec.key) else None
                    self.outages.setdefault(spec.key, last["t"] + last["lat"] if last
                                            else time.time())
                else:
                    return    # never produced a result: a broken worker, not a dead node
            while not self.stopping.wait(WORKER_RESTART):
                try:
                    proc = self._launch(spec)
                    with self.lock:
                        self.clock_offsets.pop(spec.key, None)  # a rebooted node's clock
                        self.restarts[spec.key] = self.restarts.get(spec.key, 0) + 1
                    break
                except Exception as exc:  # noqa: BLE001 - the node may still be booting
                    self.stderr[spec.key].append(f"restart: {exc}")
            else:
                return

    def _gap(self, spec: ProbeSpec, since: float, until: float) -> list[dict]:
        """The probes that could not run between `since` and `until` (see _supervise)."""
        out, t = [], since + spec.interval
        while t < until:
            out.append({"t": round(t, 3), "ok": False, "lat": spec.interval, "gap": True,
                        "err": f"no probe: {spec.node}, where this client runs, is down"})
            t += spec.interval
        return out

    def _thread(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self.threads.append(t)

    def _read(self, spec: ProbeSpec, proc) -> None:
        for line in proc.stdout:
            received = time.time()
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if spec.node != CLIENT and isinstance(rec.get("t"), (int, float)):
                rec["t"] = rec["t"] + self._clock_offset(spec.key, rec, received)
            with self.lock:
                if spec.key in self.outages and spec.mode in ("read", "write"):
                    self.probes[spec.key] += self._gap(spec, self.outages.pop(spec.key),
                                                       rec["t"])
                if spec.mode in ("read", "write", "canary"):
                    row = {"t": rec["t"], "ok": rec["ok"], "lat": rec.get("lat", 0.0)}
                    if not rec["ok"]:
                        row["err"] = rec.get("err", "?")
                    if rec.get("lag", 0) >= 0.05:
                        row["lag"] = rec["lag"]
                    self.probes[spec.key].append(row)
                elif spec.mode == "watch":
                    self.watches[spec.key].append(rec)
                elif spec.mode == "lease":
                    self._lease(rec)
                elif spec.mode == "etcd":
                    self._etcd(rec)

    def _clock_offset(self, key: str, rec: dict, received: float) -> float:
        """Seconds to add to a node's timestamps to put them on this host's clock.

        A VM's clock can be off by seconds (no NTP in an offline lab, emulated timers).
        A result cannot arrive before it ended, so `received - (t + lat)` is the clock
        difference plus the transport delay; its minimum so far is the best estimate.
        """
        seen = received - (rec["t"] + rec.get("lat", 0.0))
        with self.lock:
            best = min(self.clock_offsets.get(key, seen), seen)
            self.clock_offsets[key] = best
        return best

    def _read_err(self, spec: ProbeSpec, proc) -> None:
        for line in proc.stderr:
            if line.strip():
                self.stderr[spec.key].append(line.rstrip()[:300])
                del self.stderr[spec.key][:-20]

    def _lease(self, rec: dict) -> None:
        if not rec.get("ok"):
            return
        now = {k: v.get("holder") for k, v in rec.get("holders", {}).items()}
        if not self.leases or self.leases[-1][1] != now:
            self.leases.append([rec["t"], now])

    def _etcd(self, rec: dict) -> None:
        view = etcd_view(self.topo, rec, self.etcd_ids)
        if view["leader"] is None and not rec.get("ok"):
            view["leader"] = "?"  # nobody answered: unknown, not "no leader"
        if not self.etcd or self.etcd[-1][1:] != [view["leader"], view["down"]]:
            self.etcd.append([rec["t"], view["leader"], view["down"]])

    # --- pollers
    def _poll_haproxy(self, lb: str) -> None:
        last: dict[str, tuple] = {}
        while not self.stopping.is_set():
            t = time.time()
            try:
                # a short timeout: a frozen HAProxy must not stall the poller
                rows = self.provider.haproxy_stat(lb, timeout=0.5)
                now = {r["svname"]: (r.get("status", "?"), r.get("check_status", ""))
                       for r in api_servers(rows)}
            except (OSError, ValueError) as exc:
                # no HAProxy to ask: every server it had is unreachable through it
                now = {srv: ("no HAProxy", type(exc).__name__) for srv in last} or \
                    {"*": ("no HAProxy", type(exc).__name__)}
            for server, (status, check) in now.items():
                if last.get(server, (None,))[0] != status:
                    with self.lock:
                        self.haproxy.append([round(t, 3), lb, server, status, check])
            last = now
            self.stopping.wait(self.state_poll_interval)

    def _poll_vip(self) -> None:
        vip = str(self.topo.lb_address)
        last = None
        while not self.stopping.is_set():
            t = time.time()
            holders = []
            for lb in self.topo.load_balancers:
                cp = self.provider.run(lb.name, ["ip", "-o", "-4", "addr", "show"], timeout=5)
                if f" {vip}/" in cp.stdout:
                    holders.append(lb.name)
            if holders != last:
                with self.lock:
                    self.vip.append([round(t, 3), holders])
                last = holders
            self.stopping.wait(self.state_poll_interval)

    # --- queries
    def since(self, key: str, t0: float) -> list:
        with self.lock:
            return [r for r in self._with_gaps(key) if r["t"] >= t0]

    def _with_gaps(self, key: str) -> list:
        rows = self.probes.get(key, [])
        if key in self.outages:     # still gone: the probes it missed so far
            spec = next(s for s in self.specs if s.key == key)
            rows = rows + self._gap(spec, self.outages[key], time.time())
        return rows

    def dead_workers(self) -> list[str]:
        """Workers that are gone for good: a client's, or a node's that never answered."""
        with self.lock:
            procs = list(self.procs)
            supervised = {k for k in self.specs_on_nodes() if self.probes.get(k)
                          or k in self.outages}
        latest = {spec.key: (spec, proc) for spec, proc in procs}
        return [f"{spec.key}: exited {proc.returncode}: "
                + (self.stderr[spec.key][-1] if self.stderr[spec.key] else "no output")
                for spec, proc in latest.values()
                if proc.poll() is not None and spec.key not in supervised]

    def specs_on_nodes(self) -> list[str]:
        return [s.key for s in self.specs if s.node != CLIENT]

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            procs = list(self.procs)
        for _, proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 3
        for _, proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=2)
        for t in self.threads:
            t.join(timeout=2)

    def node_state(self) -> tuple[dict[str, bool], dict[str, float]]:
        """({node: Ready in the latest record of the Nodes watch}, {node: its kubelet's
        latest Lease renewal seen by any watch})."""
        with self.lock:
            watches = {k: list(v) for k, v in self.watches.items()}
        ready = {r["node"]: bool(r.get("ready")) for r in watches.get(nodelib.NODES_WATCH, [])
                 if r.get("kind") == "node"}
        renewed = {n: times[-1] for n, times in nodelib.renewals({"watches": watches}).items()}
        return ready, renewed

    def snapshot(self) -> dict:
        with self.lock:
            return {"probes": {k: list(self._with_gaps(k)) for k in self.probes},
                    "prober_restarts": dict(self.restarts),
                    "leases": list(self.leases), "etcd": list(self.etcd),
                    "haproxy": list(self.haproxy), "vip": list(self.vip),
                    "watches": {k: list(v) for k, v in self.watches.items()},
                    "clock_offsets": {k: round(v, 3) for k, v in self.clock_offsets.items()}}


# ------------------------------------------------------------------ the lab's state

def vip_holders(topo, provider) -> list[str]:
    if len(topo.load_balancers) < 2:
        return []
    vip = str(topo.lb_address)
    return [lb.name for lb in topo.load_balancers
            if f" {vip}/" in provider.run(lb.name, ["ip", "-o", "-4", "addr", "show"],
                                          timeout=10).stdout]


def steady_state(lab, topo, provider, wait: float = 0.0, echo=lambda m: None) -> dict:
    """The hypothesis: nothing injected, and every check of `halab verify` passes."""
    from lab.deploy.verify import run_checks
    injected = lab.record().faults
    if injected:
        return {"ok": False, "checks": [], "problems": [
            "faults are still injected: " + ", ".join(f"{k}={v}" for k, v in injected.items())
            + " (undo them with `halab drill restore`)"]}
    deadline = time.monotonic() + wait
    while True:
        checks = run_checks(lab, topo, provider, write=True)
        if len(topo.load_balancers) > 1:
            # with every LB healthy the highest keepalived priority (the first LB) holds it;
            # anywhere else, it is about to move back (preemption) in the middle of a drill
            home = topo.load_balancers[0].name
            holders = vip_holders(topo, provider)
            checks.append(_Check("VIP holder", str(topo.lb_address), holders == [home],
                                 ", ".join(holders) or "nobody",
                                 "" if holders == [home] else
                                 f"keepalived has not settled (it moves the VIP to {home})"))
        bad = [c for c in checks if not c.ok]
        if not bad or time.monotonic() >= deadline:
            break
        echo(f"steady state: waiting for {', '.join(c.target for c in bad)}")
        time.sleep(2)
    problems = [f"{c.name} {c.target}: {c.detail}" + (f" ({c.advice})" if c.advice else "")
                for c in bad]
    return {"ok": not bad, "problems": problems,
            "checks": [{"name": c.name, "target": c.target, "ok": c.ok, "detail": c.detail}
                       for c in checks]}


@dataclass(frozen=True)
class _Check:
    name: str
    target: str
    ok: bool
    detail: str
    advice: str = ""


def lease_holders_from(checks: list[dict]) -> dict:
    return {c["target"]: holder_node(c["detail"]) for c in checks
            if c["name"] == "lease holder" and c["ok"]}


# ------------------------------------------------------------------ the drill

def drill_running(lab) -> str | None:
    """The pid of a running drill on this lab, if any."""
    h = lab.holder()
    if h and str(h.get("verb", "")).startswith("drill"):
        return str(h.get("pid", "?"))
    return None


class Drill:
    def __init__(self, lab, scenario, topo, provider, fault: str, targets: list[str],
                 settings: Settings | None = None, allow_quorum_loss: bool = False,
                 echo=print, live: bool = True, runbook: str | None = None):
        self.lab, self.scenario, self.topo, self.provider = lab, scenario, topo, provider
        self.fault = faultlib.fault(fault).name
        self.requested = list(targets)
        self.s = (settings or Settings()).fitted(provider)
        self.allow_quorum_loss = allow_quorum_loss
        self.echo = echo
        self.live = live
        self.runbook = runbook
        self.journal: dict = {}
        self.collector: Collector | None = None
        self._deferred: list[int] = []

    # --- small helpers
    def say(self, msg: str) -> None:
        self.echo(f"  {time.strftime('%H:%M:%S')} {msg}")

    def mark(self, name: str) -> float:
        t = time.time()
        self.journal["times"][name] = round(t, 3)
        return t

    def view_snapshot(self) -> dict:
        """The journal so far with what the probes have seen (for the live view; called
        from another thread, so it reads copies)."""
        journal = json.loads(json.dumps(self.journal))
        if not journal.get("id"):
            return {}
        from lab.drill import view
        return view.live_journal(journal, self.collector.snapshot()
                                 if self.collector is not None else {})

    def save(self) -> None:
        if self.collector is not None:
            self.journal.update(self.collector.snapshot())
        jlib.save(self.lab, self.journal)

    # --- preconditions (pure checks first, then the lab)
    def prepare(self) -> None:
        topo = self.topo
        holders = vip_holders(topo, self.provider) if self.fault == "stop-lb" else []
        self.by_role = any(t in faultlib.ETCD_ROLES for t in self.requested)
        leader = one_shot_etcd(self.lab, topo, self.provider, self.s.probe_timeout)["leader"] if self.by_role else None
        self.targets = faultlib.resolve_targets(topo, self.fault, self.requested,
                                                holders[0] if len(holders) == 1 else None,
                                                etcd_leader=leader)
        injected = self.lab.record().faults
        why = faultlib.refusals(topo, self.fault, self.targets, injected)
        quorum_only = all(("etcd needs" in w or "last API server" in w) for w in why)
        if why and (not quorum_only or not self.allow_quorum_loss):
            raise HalabError(f"refusing {self.fault} {' '.join(self.targets)}: " + "; ".join(why),
                             code=2, hint="add --allow-quorum-loss to do it anyway (the drill "
                             "restores it at the end)" if quorum_only else
                             "`halab drill restore` first")
        self.quorum_loss = bool(why)

    def run(self) -> dict:
        # one drill at a time, and no up/deploy/destroy meanwhile (the kernel drops the
        # lock when halab dies)
        with self.lab.lock(f"drill {self.fault}"):
            return self._run()

    def _run(self) -> dict:
        self.prepare()
        t0 = time.time()
        drill_id = jlib.new_id(self.fault, self.targets, t0)
        s = self.s
        self.journal = {
            "version": jlib.VERSION, "id": drill_id, "lab": self.lab.name,
            "scenario": self.scenario.name, "scenario_file": self.scenario.source,
            "case": self.topo.case, "provider": self.scenario.provider,
            "fault": self.fault, "targets": self.targets, "requested": self.requested,
            "fault_summary": faultlib.described(self.fault, self.scenario.provider)[0],
            "restore_summary": faultlib.described(self.fault, self.scenario.provider)[1],
            "runbook": self.runbook, "settings": s.as_dict(),
            "timing": expect.timing(self.scenario), "status": "starting",
            "times": {"started": round(t0, 3)}, "errors": [], "quorum_loss": self.quorum_loss,
            "paths": [dict(p.__dict__) for p in self.topo.access_paths()],
            "halab_pid": os.getpid(),
        }
        self.say(f"drill {drill_id}: {self.fault} {' '.join(self.targets)} "
                 f"(lab {self.lab.name}, Case {self.topo.case})")
        self.say("steady state: every access path, HAProxy backends, leases, a write")
        steady = steady_state(self.lab, self.topo, self.provider, s.steady_wait, self.say)
        self.journal["steady_state"] = steady
        if not steady["ok"]:
            raise HalabError("the lab is not healthy, so a drill would measure nothing useful: "
                             + "; ".join(steady["problems"]), code=3,
                             hint="`halab verify` shows details; `halab drill restore` undoes "
                                  "injected faults")
        etcd = one_shot_etcd(self.lab, self.topo, self.provider, self.s.probe_timeout)
        if self.by_role:
            # the leadership may have moved during the steady-state check: the role asked
            # for is what counts
            self.targets = faultlib.resolve_targets(self.topo, self.fault, self.requested,
                                                    etcd_leader=etcd["leader"])
            self.journal["targets"] = self.targets
        holders = vip_holders(self.topo, self.provider)
        ctx = expect.Context(etcd_leader=etcd["leader"],
                             vip_holder=holders[0] if len(holders) == 1 else None,
                             lease_holders=lease_holders_from(steady["checks"]),
                             observer=observer(self.topo, self.targets))
        self.journal["context"] = ctx.as_dict()
        self.journal["etcd_roles"] = expect.etcd_roles(self.topo, self.targets, ctx)
        for t, role in self.journal["etcd_roles"].items():
            self.say(f"{t} is {expect.ROLE_WORDS[role]}"
                     + (f" (the leader is {ctx.etcd_leader})" if role == "follower" else ""))
        exps = expect.expectations(self.topo, self.fault, self.targets, ctx)
        self.journal["expectations"] = {k: e.as_dict() for k, e in exps.items()}
        longest = max((e.within or 0 for e in exps.values()), default=0)
        if self.s.duration is None:
            # long enough to see the slowest expected blip end, and some calm after it
            self.s.duration = float(max(MIN_AUTO_DURATION, round(longest + 6)))
        elif longest and self.s.duration < longest + 3:
            self.say(f"note: --duration {self.s.duration:g} s is shorter than the slowest "
                     f"expected failover ({longest:g} s) + 3 s: a blip may look like "
                     "degraded/down")
        self.journal["settings"] = self.s.as_dict()
        nodes = expected_nodes(self.lab, self.topo)
        if nodes:
            self.journal["node_expectations"] = {
                n: e.as_dict() for n, e in expect.node_expectations(
                    self.topo, self.fault, self.targets, exps, self.s.duration, nodes).items()}
        for k, e in exps.items():
            self.say(f"expect {k}: {e.expect}" + (f" (errors stop within {e.within:g} s)"
                                                  if e.within else ""))
        self.journal["status"] = "running"
        self.save()
        return self._run_probed(drill_id)

    def _run_probed(self, drill_id: str) -> dict:
        s = self.s
        specs = probe_plan(self.lab, self.topo, self.provider, self.targets, s, drill_id)
        self.collector = Collector(self.topo, self.provider, specs, self.say,
                                   s.state_poll_interval)
        old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
        recorded = False
        status = "completed"
        try:
            self.collector.start()
            self.mark("probes_started")
            self.say(f"probing {len(specs)} things, {1 / s.probe_interval:g}/s per access path; "
                     f"warm-up {s.warmup:g} s")
            self._wait_probes_ready(timeout=45)
            self.mark("warmup_start")
            self._sleep(s.warmup, live=False)
            self._check_warmup()
            # which unit, process or manifest a stop-* fault stops: the lab's plan says
            self.specs = faultlib.lab_specs(self.lab, self.topo, self.provider) \
                if faultlib.FAULTS[self.fault].service else []
            self.mark("inject_start")
            recorded = True   # from here on, a signal must lead to a restore
            faultlib.record(self.lab, self.fault, self.targets, drill_id)
            self.lab.event("drill:inject", drill=drill_id, fault=self.fault, targets=self.targets)
            for t in self.targets:
                faultlib.inject(self.provider, self.specs, self.fault, t)
            self.mark("injected")
            self.say(f"injected {self.fault} on {', '.join(self.targets)}; observing "
                     f"{s.duration:g} s")
            self.save()
            self._sleep(s.duration)
        except (KeyboardInterrupt, Interrupted) as exc:
            status = "interrupted"
            self.journal["errors"].append(f"interrupted ({type(exc).__name__}) during the drill")
            self.say("interrupted: restoring the lab first")
        except Exception as exc:  # noqa: BLE001 - restore first, report after
            status = "failed"
            self.journal["errors"].append(f"{type(exc).__name__}: {exc}")
            self.say(f"error: {exc}; restoring the lab first")
        finally:
            if recorded:
                self._restore()
        if self._deferred:
            status = "interrupted"
            self.journal["errors"].append("interrupted while restoring (restore finished)")
        try:
            if recorded and status == "completed":
                self._observe_recovery()
        except (KeyboardInterrupt, Interrupted):
            status = "interrupted"
            self.journal["errors"].append("interrupted while observing recovery")
        finally:
            self.collector.stop()
            self._cleanup_writes(drill_id)
            for sig, h in old.items():
                signal.signal(sig, h)
        self.journal["status"] = status
        self.mark("probes_stopped")
        if status != "interrupted":
            self.say("health after restore (`halab verify` checks)")
            t_after = time.time()
            after = steady_state(self.lab, self.topo, self.provider, s.after_wait, self.say)
            after["seconds"] = round(time.time() - t_after, 1)
            self.journal["after"] = after
        self.mark("finished")
        self.journal.update(self.collector.snapshot())
        self.journal["nodes"] = nodelib.node_lanes(self.journal)
        self.journal["long_lived"] = nodelib.long_lived(self.journal)
        self.journal["verdict"] = verdictlib.judge(self.journal)
        self.save()
        if status == "interrupted":
            raise KeyboardInterrupt
        return self.journal

    # --- phases
    def _on_signal(self, signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    def _defer(self, signum, frame):
        self._deferred.append(signum)
        self.echo("  (restoring the lab first; halab exits when it is done)")

    def _restore(self) -> None:
        """Undo the fault; SIGINT/SIGTERM wait until it is done."""
        saved = {sig: signal.signal(sig, self._defer)
                 for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            self.mark("restore_start")
            recorded = self.lab.record().faults
            done = faultlib.restore_all(self.lab, self.topo, self.provider,
                                        [t for t in self.targets if t in recorded],
                                        progress=self.say) \
                if any(t in recorded for t in self.targets) else []
            self.mark("restored")
            self.say(f"restored: {', '.join(f'{f} {n}' for n, f in done) or 'nothing'}")
        except Exception as exc:  # noqa: BLE001
            self.journal["errors"].append(f"restore failed: {exc}")
            self.say(f"RESTORE FAILED: {exc}; run `halab drill restore`")
        finally:
            self.save()
            for sig, h in saved.items():
                signal.signal(sig, h)

    def _wait_probes_ready(self, timeout: float) -> None:
        """Python workers take a moment to start (seconds on a busy 2-core host)."""
        keys = [sp.key for sp in self.collector.specs if sp.mode in ("read", "write")]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = self.collector.dead_workers()
            if dead:
                raise HalabError("probe workers died: " + "; ".join(dead))
            if all(any(r["ok"] for r in self.collector.since(k, 0)) for k in keys):
                return
            time.sleep(0.2)
        missing = [k for k in keys if not any(r["ok"] for r in self.collector.since(k, 0))]
        raise HalabError(f"no successful probe within {timeout:g} s on: {', '.join(missing)}")

    def _check_warmup(self) -> None:
        t0 = self.journal["times"]["warmup_start"]
        # a probe is recorded when it ends: give the last ones up to their timeout
        keys = [sp.key for sp in self.collector.specs if sp.mode in ("read", "write")]
        deadline = time.monotonic() + self.s.probe_timeout + 1.0
        while time.monotonic() < deadline and \
                not all(self.collector.since(k, t0) for k in keys):
            time.sleep(0.1)
        dead = self.collector.dead_workers()
        if dead:
            raise HalabError("probe workers died: " + "; ".join(dead))
        bad = []
        for spec in self.collector.specs:
            if spec.mode not in ("read", "write"):
                continue
            recs = self.collector.since(spec.key, t0)
            if not recs or not recs[-1]["ok"]:
                why = recs[-1].get("err", "?") if recs else "no probe answered yet"
                bad.append(f"{spec.key} ({why})")
        if bad:
            raise HalabError("steady state deviated during the warm-up, no fault injected: "
                             + ", ".join(bad))

    def _sleep(self, seconds: float, live: bool = True) -> None:
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(1.0, left))
            if live and self.live:
                self._live_line()

    def _live_line(self) -> None:
        t_inj = self.journal["times"].get("inject_start") or self.journal["times"]["probes_started"]
        now = time.time()
        parts = []
        for spec in self.collector.specs:
            if spec.mode not in ("read", "write"):
                continue
            every = self.s.write_interval if spec.mode == "write" else self.s.probe_interval
            recs = self.collector.since(spec.key, now - 60.0 - self.s.probe_timeout)
            short = spec.key.replace("direct:", "").replace("worker:", "w:")
            parts.append(f"{short} {live_mark(recs, now, every)}")
        self.echo(f"    +{now - t_inj:4.1f}s " + " | ".join(parts))

    def _observe_recovery(self) -> None:
        s = self.s
        t_restored = self.journal["times"].get("restored") or time.time()
        self.say(f"observing recovery (every path OK for {s.stable:g} s and etcd with a leader; "
                 f"at most {s.recovery_timeout:g} s)")
        deadline = time.monotonic() + s.recovery_timeout
        keys = [sp.key for sp in self.collector.specs if sp.mode in ("read", "write")]
        while time.monotonic() < deadline:
            self._sleep(1.0)
            now = time.time()
            ok = True
            last_fail = t_restored
            for k in keys:
                recs = self.collector.since(k, t_restored)
                fails = [r["t"] + r["lat"] for r in recs if not r["ok"]]
                done = [r for r in recs if r["t"] + r["lat"] <= now]
                if fails:
                    last_fail = max(last_fail, max(fails))
                recent = [r for r in done if r["t"] >= now - s.stable - s.probe_timeout]
                if not recent or any(not r["ok"] for r in recent) or \
                        (fails and now - max(fails) < s.stable):
                    ok = False
            vip = self._vip_settled(now)
            settle = s.settle if self.fault == "partition" else min(s.settle, 3.0)
            if now - t_restored < settle or not self._etcd_settled():
                ok = False
            if ok and vip:
                self.journal["times"]["recovered"] = round(max(last_fail, vip), 3)
                self.say(f"recovered: every path OK since +{last_fail - t_restored:.1f} s "
                         "after restore" + (f", VIP settled on {self.topo_vip_home()} "
                                            f"+{vip - t_restored:.1f} s" if vip is not True
                                            and vip > t_restored else ""))
                self._observe_nodes(t_restored, deadline)
                return
        self.journal["errors"].append(f"not every path recovered within {s.recovery_timeout:g} s"
                                      + ("" if self._vip_settled(time.time()) else
                                         f" (the VIP is not back on {self.topo_vip_home()})"))
        self.say(f"NOT recovered within {s.recovery_timeout:g} s")

    def _observe_nodes(self, t_restored: float, deadline: float) -> None:
        """The nodes' own recovery, when the fault reached them: every node the node
        controller marked NotReady is Ready again, every kubelet whose heartbeats stopped
        has renewed since the restore (a kubelet renews every 10 s and posts its status
        when it changed, so this takes up to ~10 s more than the paths)."""
        if not self.journal.get("node_expectations"):
            return
        ready, renewed = self.collector.node_state()
        # a kubelet that had renewed nothing for 1.5 periods when the restore came
        stalled = {n for n in ready
                   if t_restored - renewed.get(n, 0.0) > 1.5 * nodelib.RENEW_EVERY}
        hit = {n for n, r in ready.items() if not r} | stalled
        if not hit:
            return
        self.say(f"waiting for the nodes' own recovery ({', '.join(sorted(hit))}: Ready again "
                 "and a Lease renewal since the restore)")
        limit = min(deadline, time.monotonic() + NODES_RECOVERY)
        while time.monotonic() < limit:
            ready, renewed = self.collector.node_state()
            waiting = [n for n in hit if not ready.get(n, True) or renewed.get(n, 0.0) < t_restored]
            if not waiting:
                self.journal["times"]["nodes_recovered"] = round(time.time(), 3)
                self.say(f"nodes recovered +{time.time() - t_restored:.1f} s after restore")
                return
            self._sleep(1.0)
        self.journal["errors"].append(
            f"nodes not recovered {NODES_RECOVERY:g} s after the paths: "
            + ", ".join(sorted(n for n in hit if not ready.get(n, True)
                               or renewed.get(n, 0.0) < t_restored)))

    def _etcd_settled(self) -> bool:
        """Every member answered the last round and agrees on a leader."""
        with self.collector.lock:
            last = self.collector.etcd[-1] if self.collector.etcd else None
        return last is not None and last[1] not in (None, "?") and not last[2]

    def topo_vip_home(self) -> str | None:
        return (self.journal.get("context") or {}).get("vip_holder")

    def _vip_settled(self, now: float):
        """HA pair: keepalived moves the VIP back to the higher priority LB a few seconds
        after its restore (no `nopreempt`), a second, later failover. Recovery waits for it:
        True (no VIP), or the time it settled; False while it has not."""
        if len(self.topo.load_balancers) < 2:
            return True
        with self.collector.lock:
            changes = list(self.collector.vip)
        if not changes:
            return False
        t, holders = changes[-1]
        home = self.topo_vip_home()
        if holders != ([home] if home else holders[:1]) or len(holders) != 1:
            return False
        return t if now - t >= self.s.stable else False

    def _cleanup_writes(self, drill_id: str) -> None:
        """Delete ConfigMaps a write probe created but could not delete (during the fault)."""
        spec = next(sp for sp in self.collector.specs if sp.key == "write")
        argv = [a for a in spec.argv]
        i = argv.index("--mode")
        argv[i + 1] = "cleanup"
        self.provider.run(spec.node, argv, timeout=15)
