"""Pure: a scenario's nodes, addresses, roles and the access paths of its Case."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import cached_property

from typing import TYPE_CHECKING

from lab.errors import Problem

if TYPE_CHECKING:  # a view of a validated scenario; scenario.build asks it for plan problems
    from lab.model.scenario import Scenario

API_PORT = 6443
ROLE_ORDER = ("admin_lb", "control_plane", "worker", "etcd")


@dataclass(frozen=True)
class Node:
    name: str
    role: str
    ip: ipaddress.IPv4Address
    cpus: int
    memory: int
    index: int  # 1-based position within its role

    @property
    def is_control_plane(self) -> bool:
        return self.role == "control_plane"

    @property
    def runs_etcd(self) -> bool:
        return self.role == "etcd"


@dataclass(frozen=True)
class AccessPath:
    """One way a client reaches the Kubernetes API in this Case."""

    key: str          # stable id used by probes and reports: external, direct:<node>, worker:<node>
    client: str       # who uses it, in the lab's words
    runs_on: str      # where a probe of this path runs: "client" (the laptop) or a node name
    server: str       # the URL the client is configured with
    via: str          # what is in between
    needs_lb: bool    # breaks when the external load balancer is down


def _names(s: Scenario) -> list[tuple[str, str, int]]:
    """(name, role, index) in address order: admin-lb(s), control planes, workers, etcd."""
    out = []
    lbs = s.admin_lb.count
    for i in range(1, lbs + 1):
        out.append(("admin-lb" if lbs == 1 else f"admin-lb{i}", "admin_lb", i))
    n = 0
    for role in ("control_plane", "worker"):
        group = getattr(s, role)
        for i in range(1, group.count + 1):
            n += 1
            out.append((f"{s.node_prefix}{n}", role, i))
    if s.etcd_topology == "external":
        for i in range(1, s.etcd.count + 1):
            out.append((f"etcd{i}", "etcd", i))
    return out


def _allocate(s: Scenario):
    """Assign addresses; returns (nodes, problems)."""
    problems: list[Problem] = []
    names = _names(s)
    known = {n for n, _, _ in names}
    if len(known) < len(names):
        twice = sorted({n for n, _, _ in names if [m for m, _, _ in names].count(n) > 1})
        problems.append(Problem("", "node_prefix", s.node_prefix,
                                f"gives nodes the names other nodes have ({', '.join(twice)})",
                                "choose another prefix, e.g. `node_prefix: k8s-node`"))
        return [], problems
    if s.network.lb_name in known:
        problems.append(Problem("", "network.lb_name", s.network.lb_name,
                                "is the name of a node: every client would reach that node "
                                "instead of the load balancer", "e.g. `lb_name: k8s-api.lab`"))
    problems += _drill_problems(s, known)
    for node in s.network.addresses:
        if node not in known:
            import difflib
            close = difflib.get_close_matches(node, sorted(known), n=1)
            problems.append(Problem(
                "", f"network.addresses.{node}", str(s.network.addresses[node]),
                "names no node of this scenario",
                (f"did you mean {close[0]!r}? " if close else "") +
                f"nodes: {', '.join(sorted(known))}"))
    taken: dict[ipaddress.IPv4Address, str] = {}
    if s.network.vip is not None:
        taken[s.network.vip] = "network.vip"
    for node, ip in s.network.addresses.items():
        if node not in known:
            continue
        if ip in taken:
            problems.append(Problem("", f"network.addresses.{node}", str(ip),
                                    f"is already used by {taken[ip]}",
                                    "give every node and the VIP its own address"))
        taken.setdefault(ip, f"network.addresses.{node}")
    subnet = s.network.subnet
    last = subnet.broadcast_address - 1
    cursor = s.network.first_address
    nodes = []
    for name, role, index in names:
        ip = s.network.addresses.get(name)
        if ip is None:
            while cursor <= last and cursor in taken:
                cursor += 1
            if cursor > last:
                need = len(names)
                problems.append(Problem(
                    "", "network.subnet", str(subnet),
                    f"holds too few addresses from {s.network.first_address} on for "
                    f"{need} nodes (ran out at {name})",
                    "use a larger subnet (e.g. a /24), an earlier network.first_address, "
                    "or fewer nodes"))
                return [], problems
            ip = cursor
            taken[ip] = name
        group = getattr(s, role)
        nodes.append(Node(name, role, ip, group.cpus, group.memory, index))
    return nodes, problems


def _drill_problems(s: Scenario, nodes: set[str]) -> list[Problem]:
    """The runbook (`drills:`), checked with the rest of the scenario: a typo must show
    in `halab validate`, not in front of the class in `halab drill run`."""
    from lab.model.grammar import ETCD_ROLES, FAULT_NAMES
    out = []
    for i, step in enumerate(s.drills):
        where = f"drills[{i}]"
        if not isinstance(step, dict) or "fault" not in step:
            out.append(Problem("", where, step, "needs `fault:` (and `target:`)",
                               "e.g. `- {fault: kill, target: k8s-node1}`"))
            continue
        for key in sorted(set(step) - {"fault", "target", "targets"}, key=str):
            out.append(Problem("", f"{where}.{key}", step[key], "unknown key",
                               "a step has `fault` and `target` (or `targets`)"))
        if step["fault"] not in FAULT_NAMES:
            import difflib
            close = difflib.get_close_matches(str(step["fault"]), FAULT_NAMES, n=1)
            out.append(Problem("", f"{where}.fault", step["fault"], "is not a fault",
                               (f"did you mean {close[0]!r}? " if close else "")
                               + f"faults: {', '.join(FAULT_NAMES)}"))
        targets = step.get("targets", step.get("target"))
        targets = [] if targets is None else [targets] if isinstance(targets, str) else targets
        if not isinstance(targets, list) or not all(isinstance(x, str) for x in targets):
            out.append(Problem("", f"{where}.target", targets, "must be a node name or a list "
                               "of them", "e.g. `target: k8s-node1`"))
            continue
        for x in targets:
            if x not in nodes and x not in ETCD_ROLES:
                import difflib
                close = difflib.get_close_matches(x, sorted(nodes), n=1)
                out.append(Problem("", f"{where}.target", x, "names no node of this scenario",
                                   (f"did you mean {close[0]!r}? " if close else "")
                                   + f"nodes: {', '.join(sorted(nodes))}, or etcd-leader / "
                                     "etcd-follower"))
    return out


def plan_problems(s: Scenario) -> list[Problem]:
    """Address-plan problems (used by scenario validation before anything is written)."""
    return _allocate(s)[1]


@dataclass(frozen=True)
class Topology:
    scenario: Scenario
    nodes: tuple[Node, ...]

    def role_label(self, node: "Node") -> str:
        """What the node really runs in this scenario, in the lab's own words."""
        s = self.scenario
        if node.role == "admin_lb":
            runs = []
            if s.load_balancer:
                runs.append("HAProxy")
                if len(self.admin_lbs) > 1:
                    runs.append("keepalived VIP")
            if s.nfs_enabled and s.provider != "local":   # the local provider runs no NFS
                runs.append("NFS")
            if s.uses_kubespray and node.name == self.admin_lbs[0].name:
                runs.append("kubespray runner")
            return f"admin-lb ({', '.join(runs)})" if runs else "admin-lb (admin tools only)"
        if node.role == "control_plane":
            return "control plane + etcd" if s.etcd_topology != "external" else "control plane"
        if node.role == "worker":
            return "worker + nginx API proxy" if self.workers_use_local_proxy else "worker"
        return "external etcd"

    @classmethod
    def of(cls, s: Scenario) -> "Topology":
        nodes, problems = _allocate(s)
        if problems:  # scenario.build already rejected these; keep the invariant loud
            raise ValueError(problems[0].line())
        return cls(s, tuple(nodes))

    # ------------------------------------------------------------ lookups
    def role(self, role: str) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.role == role)

    @property
    def name(self) -> str:
        return self.scenario.name

    @property
    def case(self) -> int:
        return self.scenario.case

    @cached_property
    def admin_lbs(self) -> tuple[Node, ...]:
        return self.role("admin_lb")

    @cached_property
    def control_planes(self) -> tuple[Node, ...]:
        return self.role("control_plane")

    @cached_property
    def workers(self) -> tuple[Node, ...]:
        return self.role("worker")

    @cached_property
    def etcd_members(self) -> tuple[Node, ...]:
        """Nodes that run etcd: the control planes (stacked) or the etcd nodes (external)."""
        if self.scenario.etcd_topology == "external":
            return self.role("etcd")
        return self.control_planes

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def load_balancers(self) -> tuple[Node, ...]:
        return self.admin_lbs if self.scenario.load_balancer else ()

    @property
    def lb_address(self) -> ipaddress.IPv4Address | None:
        """The address clients use for the external LB: the VIP of an HA pair, else admin-lb."""
        if not self.load_balancers:
            return None
        if len(self.load_balancers) > 1:
            return self.scenario.network.vip
        return self.load_balancers[0].ip

    @property
    def lb_name(self) -> str:
        return self.scenario.network.lb_name

    @property
    def worker_proxy(self) -> str:
        return self.scenario.kubespray.worker_proxy

    @property
    def workers_use_local_proxy(self) -> bool:
        return self.case in (1, 2)

    # ------------------------------------------------------------ access paths
    def access_paths(self) -> tuple[AccessPath, ...]:
        """Every path to the API server this Case defines, probes and verify use these."""
        paths = [self.external_path()]
        for cp in self.control_planes:
            paths.append(AccessPath(
                f"direct:{cp.name}", f"anyone, directly to {cp.name}", "client",
                f"https://{cp.ip}:{API_PORT}", "direct", False))
        for w in self.workers:
            paths.append(self.worker_path(w))
        return tuple(paths)

    def external_path(self) -> AccessPath:
        if self.case == 1:
            cp = self.control_planes[0]
            return AccessPath("external", "external kubectl (your laptop)", "client",
                              f"https://{cp.ip}:{API_PORT}",
                              f"direct to {cp.name}; switch contexts by hand if it fails", False)
        via = (f"VIP {self.lb_address} (keepalived) -> HAProxy" if len(self.load_balancers) > 1
               else f"HAProxy on {self.load_balancers[0].name}")
        return AccessPath("external", "external kubectl (your laptop)", "client",
                          f"https://{self.lb_address}:{API_PORT}",
                          f"{via} -> {len(self.control_planes)} API servers", True)

    def worker_path(self, w: Node) -> AccessPath:
        n = len(self.control_planes)
        if self.workers_use_local_proxy:
            return AccessPath(f"worker:{w.name}", f"{w.name} kubelet/kube-proxy", w.name,
                              f"https://localhost:{API_PORT}",
                              f"{self.worker_proxy} proxy on {w.name} -> {n} API servers", False)
        return AccessPath(f"worker:{w.name}", f"{w.name} kubelet/kube-proxy", w.name,
                          f"https://{self.lb_name}:{API_PORT}",
                          f"HAProxy at {self.lb_address} -> {n} API servers", True)

    def client_kinds(self) -> list[tuple[str, str, str]]:
        """(client kind, endpoint, via) for `halab show`."""
        ext = self.external_path()
        rows = [("external kubectl", ext.server, ext.via),
                ("control-plane components", f"https://127.0.0.1:{API_PORT}",
                 "each control plane's own API server")]
        if self.workers:
            w = self.worker_path(self.workers[0])
            rows.append(("worker kubelet/kube-proxy", w.server, w.via.replace(
                self.workers[0].name, "each worker")))
        return rows

    # ------------------------------------------------------------ hosts
    def hosts_entries(self) -> list[tuple[str, str]]:
        """(address, names) lines for every node's /etc/hosts, LB name included."""
        rows = []
        if self.lb_address is not None:
            rows.append((str(self.lb_address), self.lb_name))
        for n in self.nodes:
            rows.append((str(n.ip), n.name))
        return rows

    def total_memory(self) -> int:
        return sum(n.memory for n in self.nodes)

    def total_cpus(self) -> int:
        return sum(n.cpus for n in self.nodes)

    def api_sans(self) -> list[str]:
        """Extra API-server certificate SANs: the LB address and name (and each LB's own IP)."""
        sans = []
        if self.lb_address is not None:
            sans += [str(self.lb_address), self.lb_name]
            sans += [str(lb.ip) for lb in self.load_balancers if lb.ip != self.lb_address]
        return sans


@dataclass(frozen=True)
class MachineNames:
    """What the hypervisor calls a lab's machines and networks: the Vagrantfile sets
    these names, the lab's record lists them, `destroy` and the faults use them."""

    lab: str

    @property
    def domain_prefix(self) -> str:
        return f"halab-{self.lab}-"

    def domain(self, node: str) -> str:
        """libvirt's domain name of a node."""
        return self.domain_prefix + node

    def virtualbox_vm(self, node: str) -> str:
        return f"{self.lab}-{node}"

    @property
    def lab_network(self) -> str:
        return f"halab-{self.lab}-net"

    @property
    def mgmt_network(self) -> str:
        return f"halab-{self.lab}-mgmt"

    @property
    def libvirt_networks(self) -> list[str]:
        return [self.lab_network, self.mgmt_network]
