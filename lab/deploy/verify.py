"""`halab verify`: every access path answers, HAProxy backends are UP, leases are held.

Checks run through the provider (`run(node, argv)`), so the same code verifies a
local lab (namespaces) and a VM lab (SSH).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

from lab.deploy.kubeconfig import PROBER_KUBECONFIG
from lab.model.topology import AccessPath, Topology


@dataclass(frozen=True)
class Check:
    name: str
    target: str
    ok: bool
    detail: str
    advice: str = ""


def kubectl_for(provider) -> str:
    return provider.kubectl


def prober_argv(provider, node: str) -> list[str]:
    """How halab's prober starts on `node`: the provider may ship it there first (a VM)."""
    return provider.prober_argv(node)


KUBESPRAY_ETCD_SSL = "/etc/ssl/etcd/ssl"   # kubespray's etcd certificates on its members


def etcd_probe(lab, topo: Topology, provider, interval: float = 1.0, timeout: float = 1.0,
               avoid: tuple = ()) -> tuple[str, list[str]]:
    """(where it runs, argv) of the prober asking every etcd member for its status.

    halab's own control plane: from the client, with the etcd client certificate in
    `<lab>/pki/`. A kubespray lab keeps etcd's certificates on its members: the probe
    runs on a member the drill does not touch (`avoid`), as root, with that member's
    kubespray admin certificate."""
    eps = ",".join(f"https://{m.ip}:2379" for m in topo.etcd_members)
    tail = ["--interval", str(interval), "--timeout", str(timeout)]
    if not topo.scenario.uses_kubespray:
        pki = lab.path / "pki"
        return "client", prober_argv(provider, "client") + [
            "--mode", "etcd", "--etcd-endpoints", eps, "--ca", str(pki / "etcd-ca.crt"),
            "--cert", str(pki / "apiserver-etcd-client.crt"),
            "--key", str(pki / "apiserver-etcd-client.key"), *tail]
    node = next((m.name for m in topo.etcd_members if m.name not in avoid),
                topo.etcd_members[0].name)
    ssl = KUBESPRAY_ETCD_SSL
    return node, prober_argv(provider, node) + [
        "--mode", "etcd", "--etcd-endpoints", eps, "--ca", f"{ssl}/ca.pem",
        "--cert", f"{ssl}/admin-{node}.pem", "--key", f"{ssl}/admin-{node}-key.pem", *tail]


def etcd_view(topo: Topology, rec: dict, known_ids: dict | None = None) -> dict:
    """An etcd prober record -> {"leader": node|None, "down": [nodes]}.

    `known_ids` (member id -> node) remembers members seen earlier, so a leader that
    did not answer this round is still named.
    """
    by_ip = {str(m.ip): m.name for m in topo.etcd_members}
    members = rec.get("members", {})
    ids = known_ids if known_ids is not None else {}
    ids.update({m.get("id"): by_ip.get(ip, ip) for ip, m in members.items() if m.get("ok")})
    leaders = {m.get("leader") for m in members.values() if m.get("ok") and m.get("leader")
               and m.get("leader") != "0"}
    leader = None
    if len(leaders) == 1:
        leader = ids.get(next(iter(leaders)))
    elif len(leaders) > 1:  # members disagree for a moment during an election
        leader = None
    down = sorted(by_ip.get(ip, ip) for ip, m in members.items() if not m.get("ok"))
    return {"leader": leader, "down": down}


def one_shot_etcd(lab, topo: Topology, provider, timeout: float = 5.0) -> dict:
    """Who leads etcd right now, and which members did not answer."""
    node, argv = etcd_probe(lab, topo, provider, timeout=timeout)
    cp = provider.run(node, argv + ["--count", "1"],
                      timeout=timeout * len(topo.etcd_members) + 10)
    for line in cp.stdout.splitlines():
        try:
            return etcd_view(topo, json.loads(line))
        except (ValueError, KeyError):
            continue
    return {"leader": None, "down": [m.name for m in topo.etcd_members]}


def etcd_check(lab, topo: Topology, provider) -> Check | None:
    """Every etcd member answers and all agree on one leader (a member that never joined
    leaves a cluster one failure away from losing quorum, and a drill measures nonsense)."""
    if not topo.etcd_members or (not topo.scenario.uses_kubespray and
                                 not (lab.path / "pki" / "apiserver-etcd-client.crt").exists()):
        return None   # halab's control plane not deployed yet
    # an emulated VM answers slowly when busy: the drills' etcd probe allows 15 s there
    slow = provider.drill_waits.get("probe_timeout", 5.0)
    view = one_shot_etcd(lab, topo, provider, timeout=max(5.0, slow))
    ok = view["leader"] is not None and not view["down"]
    n = len(topo.etcd_members)
    detail = (f"{n - len(view['down'])}/{n} members answer, leader "
              f"{view['leader'] or 'none'}" + (f"; not answering: {', '.join(view['down'])}"
                                              if view["down"] else ""))
    return Check("etcd members", f"{n} members", ok, detail,
                 "" if ok else f"look at the etcd log of {', '.join(view['down']) or 'every member'}"
                 f" ({lab.logs})")


def path_command(lab, topo: Topology, provider, path: AccessPath, timeout: str = "3s",
                 args: tuple = ("get", "--raw", "/readyz")) -> tuple[str, list[str]]:
    """(client, kubectl argv) that sends one request along a client-side `path`."""
    if path.runs_on != "client":
        raise ValueError(f"{path.key} runs on {path.runs_on}: use node_probe_command")
    context = (f"{topo.name}-{path.key.split(':', 1)[1]}" if path.key.startswith("direct:")
               else _external_context(topo))
    return "client", [kubectl_for(provider), f"--kubeconfig={lab.kubeconfig}",
                      f"--context={context}", f"--request-timeout={timeout}", *args]


def node_probe_command(prober: list[str], kubeconfig: str, seconds: float) -> list[str]:
    """One GET /readyz by halab's stdlib prober on a node, with the kubeconfig of the
    node's kubelet path: a worker has no kubectl (kubespray installs it on control
    planes only), but every node that kubespray or halab manages has python3."""
    return [*prober, "--mode", "read", "--kubeconfig", kubeconfig, "--path", "/readyz",
            "--count", "1", "--timeout", f"{seconds:g}"]


def _external_context(topo: Topology) -> str:
    from lab.deploy.kubeconfig import default_context
    return default_context(topo)


def check_path(lab, topo, provider, path: AccessPath, timeout: str = "3s") -> Check:
    if path.runs_on == "client":
        node, argv = path_command(lab, topo, provider, path, timeout)
        cp = provider.run(node, argv, timeout=15)
        out = (cp.stdout or "").strip()
        ok = cp.returncode == 0 and out == "ok"
        detail = "ok" if ok else _first_line(cp.stderr or out)
    else:
        kc = provider.layout(path.runs_on).p(PROBER_KUBECONFIG)
        argv = node_probe_command(prober_argv(provider, path.runs_on), kc,
                                  float(timeout.rstrip("s")))
        cp = provider.run(path.runs_on, argv, timeout=15)
        rec = _last_json(cp.stdout)
        ok = cp.returncode == 0 and rec.get("ok") is True
        detail = "ok" if ok else (rec.get("err") or _first_line(cp.stderr or cp.stdout))
    return Check("access path", f"{path.key} ({path.server})", ok, detail,
                 "" if ok else f"look at: {path.via}")


def _last_json(text: str) -> dict:
    for line in reversed((text or "").splitlines()):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            return rec
    return {}


def _first_line(text: str) -> str:
    lines = [l for l in (text or "").splitlines() if l.strip()]
    return lines[-1][:160] if lines else "no answer"


def api_servers(rows: list[dict], backend: str = "k8s-api") -> list[dict]:
    """The server rows of the API backend in HAProxy's `show stat` output."""
    return [r for r in rows if r.get("pxname") == backend
            and r.get("svname") not in ("FRONTEND", "BACKEND")]


def lease_holder(lab, topo, provider, name: str) -> str | None:
    path = topo.external_path()
    node, argv = path_command(lab, topo, provider, path, "3s",
                              ("-n", "kube-system", "get", "lease", name, "-o",
                               "jsonpath={.spec.holderIdentity}"))
    cp = provider.run(node, argv, timeout=15)
    if cp.returncode != 0 or not cp.stdout.strip():
        return None
    return cp.stdout.strip()


# ------------------------------------------------------------------ nodes and the workload

WORKLOAD_NAMESPACE = "halab-workload"
WORKLOAD = "halab-demo"


def expected_nodes(lab, topo: Topology) -> list[str]:
    """The Kubernetes nodes this lab should have: kubespray registers every control plane
    and worker; halab's control plane has the nodes its deploy started a kubelet on."""
    if topo.scenario.uses_kubespray:
        return [n.name for n in (*topo.control_planes, *topo.workers)]
    return list(lab.record().deploy.get("nodes") or [])


def parse_nodes(doc: dict) -> dict[str, dict]:
    """`kubectl get nodes -o json` -> {node: {ready, taints, version, address}} (pure)."""
    out = {}
    for item in doc.get("items", []):
        name = item.get("metadata", {}).get("name", "?")
        status = item.get("status", {})
        ready = next((c.get("status") == "True" for c in status.get("conditions", [])
                      if c.get("type") == "Ready"), False)
        address = next((a.get("address") for a in status.get("addresses", [])
                        if a.get("type") == "InternalIP"), "")
        out[name] = {"ready": ready,
                     "taints": [f"{t.get('key')}:{t.get('effect')}"
                                for t in item.get("spec", {}).get("taints", []) or []],
                     "version": status.get("nodeInfo", {}).get("kubeletVersion", ""),
                     "address": address}
    return out


def _get_json(lab, topo: Topology, provider, path: str, timeout: str = "5s",
              attempts: int = 3) -> dict | None:
    """GET `path` of the API (`kubectl get --raw`: one request, no API discovery before it)
    through the external path; None if it did not answer in `attempts` tries. A busy
    emulated API server can miss one answer right after a deploy (CI's VM lab did, with
    every other check passing)."""
    node, argv = path_command(lab, topo, provider, topo.external_path(), timeout,
                              ("get", "--raw", path))
    for attempt in range(attempts):
        if attempt:
            time.sleep(2.0)
        cp = provider.run(node, argv, timeout=20)
        if cp.returncode != 0:
            continue
        try:
            return json.loads(cp.stdout)
        except ValueError:
            continue
    return None


def cluster_nodes(lab, topo: Topology, provider, timeout: str = "5s",
                  attempts: int = 3) -> dict[str, dict] | None:
    """The cluster's nodes as the external path sees them; None if it does not answer."""
    doc = _get_json(lab, topo, provider, "/api/v1/nodes", timeout, attempts)
    return None if doc is None else parse_nodes(doc)


def nodes_check(lab, topo: Topology, provider) -> Check | None:
    want = expected_nodes(lab, topo)
    if not want:
        return None
    seen = cluster_nodes(lab, topo, provider)
    if seen is None:
        return Check("nodes Ready", f"{len(want)} nodes", False, "the API did not answer",
                     "see the access path checks")
    ready = [n for n in want if seen.get(n, {}).get("ready")]
    missing = [n for n in want if n not in seen]
    not_ready = [n for n in want if n in seen and n not in ready]
    detail = f"Ready {len(ready)}/{len(want)}" + \
        (f"; not registered: {', '.join(missing)}" if missing else "") + \
        (f"; NotReady: {', '.join(not_ready)}" if not_ready else "")
    bad = missing + not_ready
    return Check("nodes Ready", f"{len(want)} nodes", not bad, detail,
                 "" if not bad else f"look at the kubelet log of {', '.join(bad)} ({lab.logs})")


def workload_manifest(topo: Topology, replicas: int) -> str:
    """halab's small workload: a Deployment spread over the workers, with a
    PodDisruptionBudget (policy/v1beta1 on halab's Kubernetes 1.20, policy/v1 from
    1.21, which kubespray's releases deploy)."""
    pdb_api = "policy/v1" if topo.scenario.uses_kubespray else "policy/v1beta1"
    return f"""apiVersion: v1
kind: Namespace
metadata:
  name: {WORKLOAD_NAMESPACE}
  labels: {{app.kubernetes.io/managed-by: halab}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {WORKLOAD}
  namespace: {WORKLOAD_NAMESPACE}
  labels: {{app.kubernetes.io/managed-by: halab}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {WORKLOAD}}}
  template:
    metadata:
      labels: {{app: {WORKLOAD}}}
    spec:
      automountServiceAccountToken: false
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: ScheduleAnyway
        labelSelector:
          matchLabels: {{app: {WORKLOAD}}}
      containers:
      - name: pause
        image: registry.k8s.io/pause:3.2
---
apiVersion: {pdb_api}
kind: PodDisruptionBudget
metadata:
  name: {WORKLOAD}
  namespace: {WORKLOAD_NAMESPACE}
  labels: {{app.kubernetes.io/managed-by: halab}}
spec:
  minAvailable: 1
  selector:
    matchLabels: {{app: {WORKLOAD}}}
"""


def workload_replicas(topo: Topology) -> int:
    """One pod per worker, at least two (the PDB then always allows one eviction);
    none without workers (the control planes are tainted NoSchedule)."""
    return max(2, len(topo.workers)) if topo.workers else 0


def parse_pods(doc: dict) -> list[dict]:
    """`kubectl get pods -o json` -> [{name, node, phase, ready}] (pure)."""
    out = []
    for item in doc.get("items", []):
        status = item.get("status", {})
        ready = next((c.get("status") == "True" for c in status.get("conditions", [])
                      if c.get("type") == "Ready"), False)
        out.append({"name": item.get("metadata", {}).get("name", "?"),
                    "node": item.get("spec", {}).get("nodeName") or "",
                    "phase": status.get("phase", "?"), "ready": ready})
    return out


def workload_pods(lab, topo: Topology, provider) -> list[dict] | None:
    doc = _get_json(lab, topo, provider, f"/api/v1/namespaces/{WORKLOAD_NAMESPACE}/pods"
                                         f"?labelSelector=app%3D{WORKLOAD}")
    return None if doc is None else parse_pods(doc)


def workload_check(lab, topo: Topology, provider) -> Check | None:
    want = int(lab.record().deploy.get("workload_replicas") or 0)
    if not want:
        return None
    pods = workload_pods(lab, topo, provider)
    target = f"{WORKLOAD_NAMESPACE}/{WORKLOAD}"
    if pods is None:
        return Check("workload", target, False, "the API did not answer",
                     "see the access path checks")
    running = [p for p in pods if p["phase"] == "Running" and p["ready"]]
    nodes = sorted({p["node"] for p in running})
    ok = len(running) >= want
    detail = (f"{len(running)}/{want} pods Running on {', '.join(nodes) or 'no node'}"
              + ("" if ok else "; " + ", ".join(f"{p['name']} {p['phase']}"
                                                 for p in pods if p not in running)))
    return Check("workload", target, ok, detail,
                 "" if ok else "kubectl -n halab-workload describe pods: scheduler events, "
                               "node taints, the workers' kubelet logs")


def run_checks(lab, topo: Topology, provider, write: bool = True) -> list[Check]:
    checks = [check_path(lab, topo, provider, p) for p in topo.access_paths()]
    for lb in topo.load_balancers:
        try:
            states = {r["svname"]: r["status"] for r in api_servers(provider.haproxy_stat(lb.name))}
            bad = {k: v for k, v in states.items() if not v.startswith("UP")}
            checks.append(Check("HAProxy backends", lb.name, not bad and bool(states),
                                ", ".join(f"{k} {v}" for k, v in states.items()),
                                "" if not bad else "a DOWN server fails /readyz: check its "
                                "kube-apiserver log"))
        except OSError as exc:
            checks.append(Check("HAProxy backends", lb.name, False, f"stats socket: {exc}",
                                f"is HAProxy running on {lb.name}?"))
    etcd = etcd_check(lab, topo, provider)
    if etcd is not None:
        checks.append(etcd)
    for lease in ("kube-controller-manager", "kube-scheduler"):
        holder = lease_holder(lab, topo, provider, lease)
        checks.append(Check("lease holder", lease, holder is not None, holder or "none",
                            "" if holder else f"is {lease} running on a control plane?"))
    checks += [c for c in (nodes_check(lab, topo, provider),
                           workload_check(lab, topo, provider)) if c is not None]
    for w in topo.workers:
        if not provider.capabilities.supervised:
            continue   # on VMs systemd runs nginx; the worker's own path check covers it
        has_proxy = provider.service_states(w.name).get("nginx-proxy") == "running"
        want = topo.workers_use_local_proxy
        checks.append(Check("worker proxy", w.name, has_proxy == want,
                            f"nginx proxy {'running' if has_proxy else 'absent'} "
                            f"(Case {topo.case} {'needs' if want else 'has none'})"))
    if write:
        checks.append(write_check(lab, topo, provider))
    return checks


def write_check(lab, topo, provider) -> Check:
    """Create and delete a ConfigMap through the external path: proves etcd quorum."""
    name = f"halab-verify-{int(time.time() * 1000) % 10**9}"
    path = topo.external_path()
    node, create = path_command(lab, topo, provider, path, "5s",
                                ("-n", "default", "create", "configmap", name,
                                 "--from-literal=by=halab"))
    cp = provider.run(node, create, timeout=20)
    ok = cp.returncode == 0
    _, delete = path_command(lab, topo, provider, path, "5s",
                             ("-n", "default", "delete", "configmap", name))
    if ok:
        ok = provider.run(node, delete, timeout=20).returncode == 0
    return Check("write (ConfigMap)", path.key, ok, "created and deleted" if ok else
                 _first_line(cp.stderr), "" if ok else "no etcd quorum, or the API is down")


def _no_dead_services(lab, provider) -> None:
    """While waiting: a service that keeps exiting will not get better by waiting."""
    dead = provider.dead_services()
    if dead:
        from lab.errors import HalabError
        raise HalabError(f"{len(dead)} service(s) exited: " + "; ".join(dead),
                         hint=f"full logs in {lab.logs}; fix, then `halab up` again")


def wait_ready(lab, topo, provider, timeout: float = 180, progress=lambda m: None) -> list[str]:
    """Wait until every access path answers /readyz and both leases are held."""
    deadline = time.monotonic() + timeout
    pending = list(topo.access_paths())
    ready: list[str] = []
    while pending:
        pending = [p for p in pending if not _ready(lab, topo, provider, p, ready, progress)]
        if not pending:
            break
        _no_dead_services(lab, provider)
        if time.monotonic() > deadline:
            from lab.errors import HalabError
            names = ", ".join(p.key for p in pending)
            raise HalabError(f"not ready after {timeout:.0f} s: {names}",
                             hint=f"look at the logs in {lab.logs}, then `halab verify`")
        time.sleep(0.5)
    for lease in ("kube-controller-manager", "kube-scheduler"):
        while lease_holder(lab, topo, provider, lease) is None:
            if time.monotonic() > deadline:
                from lab.errors import HalabError
                raise HalabError(f"no {lease} lease holder after {timeout:.0f} s",
                                 hint=f"look at {lab.logs}")
            time.sleep(0.5)
        progress(f"{lease} lease held")
    return ready


def wait_nodes(lab, topo, provider, names: list[str], replicas: int, timeout: float,
               progress=lambda m: None) -> dict:
    """Wait until every node in `names` is Ready and, with `replicas`, the workload's
    pods Running; returns {"nodes_ready_s": ..., "workload_running_s": ...}."""
    from lab.errors import HalabError
    t0 = time.monotonic()
    deadline = t0 + timeout
    times: dict = {}
    seen: dict = {}
    while True:
        seen = cluster_nodes(lab, topo, provider, "3s") or {}
        if all(seen.get(n, {}).get("ready") for n in names):
            break
        _no_dead_services(lab, provider)
        if time.monotonic() > deadline:
            bad = [n for n in names if not seen.get(n, {}).get("ready")]
            raise HalabError(f"nodes not Ready after {timeout:.0f} s: {', '.join(bad)}",
                             hint=f"look at their kubelet logs in {lab.logs}, then "
                                  "`halab verify`")
        time.sleep(0.5)
    times["nodes_ready_s"] = round(time.monotonic() - t0, 1)
    progress(f"nodes Ready {len(names)}/{len(names)}: {', '.join(names)}")
    if replicas:
        while True:
            pods = workload_pods(lab, topo, provider) or []
            running = [p for p in pods if p["phase"] == "Running" and p["ready"]]
            if len(running) >= replicas:
                break
            if time.monotonic() > deadline:
                raise HalabError(f"workload {WORKLOAD_NAMESPACE}/{WORKLOAD}: {len(running)}/"
                                 f"{replicas} pods Running after {timeout:.0f} s",
                                 hint=f"kubectl -n {WORKLOAD_NAMESPACE} describe pods")
            time.sleep(0.5)
        times["workload_running_s"] = round(time.monotonic() - t0, 1)
        progress(f"workload {WORKLOAD_NAMESPACE}/{WORKLOAD}: {replicas} pods Running on "
                 f"{', '.join(sorted({p['node'] for p in running}))}")
    return times


def _ready(lab, topo, provider, path, ready, progress) -> bool:
    c = check_path(lab, topo, provider, path, timeout="2s")
    if c.ok:
        ready.append(path.key)
        progress(f"ready: {path.key} ({path.server})")
    return c.ok
