"""The faults a drill can inject, which nodes they fit, when to refuse, how to undo them.

Pure parts (`FAULTS`, `resolve_targets`, `refusals`) decide; `inject`/`restore`
act through the provider's drill primitives (power_off/power_on, stop_service,
start, freeze/thaw, partition/heal), so the same code drives namespaces and VMs.

Every fault is written to the lab state BEFORE it is injected
(`faults: {node: fault}` plus `fault_details`), and removed only after it was
restored: `halab drill restore` can always undo what a killed halab left behind.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from lab.errors import HalabError
from lab.model import grammar
from lab.model.topology import Topology


@dataclass(frozen=True)
class Fault:
    name: str
    summary: str          # what it does, in the lab's words
    restore: str          # how it is undone
    roles: tuple          # node roles it applies to
    service: str | None = None   # the service it stops (stop-* faults)


FAULTS = {f.name: f for f in (
    Fault("kill", "power the node off: every process SIGKILLed, the cable pulled "
          "(packets vanish, no RST, clients wait for their timeouts)",
          "power it on again and start its services (etcd and kube-apiserver first)",
          ("control_plane", "worker", "admin_lb", "etcd")),
    Fault("stop-apiserver", "stop kube-apiserver gracefully (like moving its static-pod "
          "manifest away): the port closes, connections are refused",
          "start kube-apiserver again", ("control_plane",), "kube-apiserver"),
    Fault("freeze", "SIGSTOP every process of the node: the kernel still accepts TCP "
          "connections, nothing ever answers", "SIGCONT (thaw)",
          ("control_plane", "worker", "admin_lb", "etcd")),
    Fault("stop-etcd", "stop the node's etcd member gracefully",
          "start the etcd member again", ("control_plane", "etcd"), "etcd"),
    Fault("stop-lb", "stop HAProxy on a load balancer (default: the one holding the VIP)",
          "start HAProxy again", ("admin_lb",), "haproxy"),
    Fault("partition", "cut the node's network link: its processes run on, nobody reaches "
          "them (packets dropped)", "plug the link back in (heal)",
          ("control_plane", "worker", "admin_lb", "etcd")),
)}

# the same faults on VMs, where the hypervisor and the VM's own tools do them
ON_VMS = {
    "kill": ("power the VM off (`virsh destroy` / `VBoxManage controlvm NAME poweroff`, not "
             "a shutdown: packets vanish, no RST, clients wait for their timeouts)",
             "boot the VM again (`vagrant up --no-provision`) and start its services"),
    "stop-apiserver": ("stop kube-apiserver gracefully (kubespray: its static-pod manifest is "
                       "moved out of /etc/kubernetes/manifests; static: `systemctl stop`): the "
                       "port closes, connections are refused",
                       "start kube-apiserver again (the manifest moved back)"),
    "freeze": ("pause the VM in the hypervisor (`virsh suspend` / `VBoxManage controlvm NAME "
               "pause`): nothing on it runs or answers, TCP peers see silence",
               "resume the VM"),
    "partition": ("drop every packet on the VM's lab NIC (iptables): its processes run on, "
                  "nobody on the lab network reaches them", "remove the iptables rules (heal)"),
}


def described(name: str, provider: str) -> tuple[str, str]:
    """(what the fault does, how it is undone) in the words of the lab's provider."""
    f = fault(name)
    if provider != "local" and name in ON_VMS:
        return ON_VMS[name]
    return f.summary, f.restore


# what a fault takes away from its node
APISERVER_LOST = {"kill", "freeze", "partition", "stop-apiserver"}
ETCD_LOST = {"kill", "freeze", "partition", "stop-etcd"}
LB_LOST = {"kill", "freeze", "partition", "stop-lb"}


def fault(name: str) -> Fault:
    try:
        return FAULTS[name]
    except KeyError:
        raise HalabError(f"unknown fault {name!r}", code=2,
                         hint=f"choose one of: {', '.join(FAULTS)}") from None


# targets named by their etcd role instead of their name: which node holds the raft
# leadership decides what a kill does (a leader's death stops every commit and quorum
# read until the others elect a new one), and it moves from drill to drill
ETCD_ROLES = grammar.ETCD_ROLES     # a target by its etcd role when the drill starts


def by_etcd_role(topo: Topology, word: str, leader: str | None) -> str:
    """`etcd-leader` / `etcd-follower` -> the member that has that role (`leader` now)."""
    members = [m.name for m in topo.etcd_members]
    if not members:
        raise HalabError(f"{word}: lab {topo.name} has no etcd members of its own", code=2)
    if leader not in members:
        raise HalabError(f"{word}: no etcd member answered with a leader just now, so "
                         "halab cannot tell who leads", code=3,
                         hint="`halab verify` shows whether etcd is healthy; or name the "
                              f"node: one of {', '.join(members)}")
    if word == "etcd-leader":
        return leader
    return next(m for m in members if m != leader)


def resolve_targets(topo: Topology, name: str, targets: list[str],
                    vip_holder: str | None = None, etcd_leader: str | None = None) -> list[str]:
    """Check the targets against the fault (and default stop-lb's target); returns node names.

    `etcd-leader` and `etcd-follower` name a node by its etcd role (`etcd_leader` is who
    leads right now)."""
    f = fault(name)
    targets = [by_etcd_role(topo, t, etcd_leader) if t in ETCD_ROLES else t for t in targets]
    if name == "stop-lb" and not topo.load_balancers:
        raise HalabError(
            f"stop-lb: lab {topo.name} is Case {topo.case} and has no load balancer "
            f"(admin-lb runs no HAProxy here: external kubectl talks to "
            f"{topo.control_planes[0].name} directly, workers use their local proxy)",
            code=2, hint="try `halab drill kill k8s-node1` or `halab drill stop-apiserver "
                 f"{topo.control_planes[0].name}`, or a Case 2/3 scenario for stop-lb")
    if not targets:
        if name != "stop-lb":
            raise HalabError(f"{name} needs a TARGET node", code=2,
                             hint=f"e.g. `halab drill {name} {_example(topo, f)}`")
        if len(topo.load_balancers) > 1:
            if vip_holder is None:
                raise HalabError("stop-lb: no load balancer holds the VIP "
                                 f"{topo.lb_address} right now", code=2,
                                 hint="name one: `halab drill stop-lb admin-lb1`; "
                                      "is keepalived running? (`halab status`)")
            targets = [vip_holder]
        else:
            targets = [topo.load_balancers[0].name]
    known = {n.name: n for n in topo.nodes}
    out = []
    for t in targets:
        if t not in known:
            import difflib
            close = difflib.get_close_matches(t, sorted(known), n=1)
            raise HalabError(f"{name}: no node {t!r} in lab {topo.name}", code=2,
                             hint=(f"did you mean {close[0]}? " if close else "")
                             + f"nodes: {', '.join(known)}; or {' / '.join(ETCD_ROLES)}")
        node = known[t]
        role = node.role
        if name == "stop-lb" and node not in topo.load_balancers:
            raise HalabError(f"stop-lb: {t} runs no HAProxy", code=2,
                             hint="load balancers: "
                             + ", ".join(n.name for n in topo.load_balancers))
        if role not in f.roles or (name == "stop-etcd" and node not in topo.etcd_members):
            fits = [n.name for n in topo.nodes if n.role in f.roles
                    and (name != "stop-etcd" or n in topo.etcd_members)]
            raise HalabError(f"{name}: {t} is a {role.replace('_', ' ')} node and runs no "
                             f"{f.service or 'such service'}", code=2,
                             hint=f"{name} fits: {', '.join(fits)}")
        if t not in out:
            out.append(t)
    return out


def _example(topo: Topology, f: Fault) -> str:
    for n in topo.nodes:
        if n.role in f.roles:
            return n.name
    return topo.nodes[0].name


def lost(topo: Topology, faults: dict[str, str]) -> tuple[list[str], list[str]]:
    """(etcd members, API servers) out of service under `faults` ({node: fault})."""
    etcd = [m.name for m in topo.etcd_members if faults.get(m.name) in ETCD_LOST]
    api = [c.name for c in topo.control_planes if faults.get(c.name) in APISERVER_LOST]
    return etcd, api


def refusals(topo: Topology, name: str, targets: list[str], injected: dict[str, str]) -> list[str]:
    """Why this fault would take the whole API away (quorum, last API server); [] if it won't."""
    why = []
    for t in targets:
        if t in injected:
            why.append(f"{t} already has fault {injected[t]!r} injected; restore it first "
                       "(`halab drill restore`)")
    after = {**injected, **{t: name for t in targets}}
    etcd_down, api_down = lost(topo, after)
    n = len(topo.etcd_members)
    quorum = n // 2 + 1
    if n and n - len(etcd_down) < quorum:
        why.append(f"this leaves {n - len(etcd_down)} of {n} etcd members "
                   f"({', '.join(etcd_down)} out): etcd needs {quorum} (a majority) to elect a "
                   "leader and accept writes, so every API server fails /readyz and every "
                   "write until you restore; the cluster's state is safe but frozen")
    if topo.control_planes and len(api_down) == len(topo.control_planes):
        why.append(f"this stops the last API server ({', '.join(api_down)}): every access path "
                   "loses the Kubernetes API, kubelets and controllers cannot report or act")
    return why


# ------------------------------------------------------------------ side effects

def record(lab, name: str, targets: list[str], drill_id: str | None) -> None:
    """Write the faults into the lab state before injecting them."""
    rec = lab.record()
    faults, details = dict(rec.faults), dict(rec.fault_details)
    for t in targets:
        faults[t] = name
        details[t] = {"fault": name, "since": time.time(), "drill": drill_id,
                      "halab_pid": os.getpid(), "service": FAULTS[name].service}
    lab.update(faults=faults, fault_details=details)


def forget(lab, node: str) -> None:
    rec = lab.record()
    faults, details = dict(rec.faults), dict(rec.fault_details)
    faults.pop(node, None)
    details.pop(node, None)
    lab.update(faults=faults, fault_details=details)


def inject(provider, specs, name: str, node: str) -> None:
    """Inject one fault; `specs` is the lab's plan (which service a stop-* stops, and how)."""
    if name == "kill":
        provider.power_off(node)
    elif name == "freeze":
        provider.freeze(node)
    elif name == "partition":
        provider.partition(node)
    else:
        provider.stop_service(_spec_of(specs, name, node))


def _spec_of(specs, name: str, node: str):
    service = FAULTS[name].service
    for s in specs:
        if s.node == node and s.name == service:
            return s
    raise HalabError(f"cannot {name} on {node}: the lab's plan has no {service} there")


def restore(provider, specs, name: str, node: str) -> None:
    """Undo one fault; idempotent (also for a fault that was recorded but never injected)."""
    if name == "kill":
        # the plan lists etcd and kube-apiserver first: they start first
        provider.power_on(node, specs)
    elif name == "freeze":
        provider.thaw(node)
    elif name == "partition":
        provider.heal(node)
    else:
        provider.start([_spec_of(specs, name, node)])


def lab_specs(lab, topo, provider) -> list:
    """The lab's service plan (what power_on and the stop-* restores start again). A
    kubespray lab's services are kubespray's: named from the topology, and halab's own
    PKI is never created for them (kubespray's etcd would reject it)."""
    from lab.deploy import controlplane
    if topo.scenario.uses_kubespray:
        return controlplane.kubespray_specs(topo)
    from lab.deploy.static import load_or_create_pki
    from lab.render import LabSecrets
    return controlplane.plan_for(provider, topo, load_or_create_pki(lab, topo),
                                 LabSecrets.load(lab.path / "keys"))


def restore_all(lab, topo, provider, nodes: list[str] | None = None,
                progress=lambda m: None) -> list[tuple[str, str]]:
    """Restore the recorded faults (all, or those of `nodes`); returns (node, fault) restored."""
    faults = dict(lab.record().faults)
    if nodes:
        unknown = [n for n in nodes if n not in faults]
        if unknown:
            raise HalabError(f"no fault is recorded on {', '.join(unknown)}",
                             hint="injected now: " + (", ".join(f"{k}={v}" for k, v in
                                                              faults.items()) or "nothing"))
        faults = {n: faults[n] for n in nodes}
    if not faults:
        return []
    specs = lab_specs(lab, topo, provider)
    done = []
    # thaw/heal before power-on: a restored etcd member wants its peers reachable
    order = sorted(faults.items(), key=lambda kv: kv[1] == "kill")
    for node, name in order:
        how = described(name, topo.scenario.provider)[1] if name in FAULTS else "?"
        progress(f"restore {name} on {node}: {how}")
        restore(provider, specs, name, node)
        forget(lab, node)
        lab.event("drill:restore", node=node, fault=name)
        done.append((node, name))
    return done
