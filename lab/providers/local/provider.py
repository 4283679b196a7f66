"""The local provider: every node is a network namespace, every service a real process.

Layout in the lab directory:
    nodes/<node>/      the node's files (pki, etcd data, configs)
    run/<node>/*.pid   PID files (procs.Supervisor)
    logs/<node>/*.log  every process's output
The student's laptop is the `client` namespace, with the subnet's first address
(the address VirtualBox/libvirt give the host on a host-only network).
"""
from __future__ import annotations

import csv
import io
import os
import socket
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from lab.model.services import NGINX_STREAM_MODULE, Layout
from lab.host.doctor import missing_programs, require_root
from lab.providers.base import Capabilities
from lab.providers.local import netns
from lab import render
from lab.errors import HalabError
from lab.state import Lab
from lab.providers.local.procs import Supervisor
from lab.model.topology import API_PORT, Topology

CLIENT = "client"


def local_command(command: list[str]) -> list[str]:
    """A command for a local lab's node: one argument goes through sh, several are exec'd."""
    return ["sh", "-c", command[0]] if len(command) == 1 else command


class LocalProvider:
    """Every node a network namespace, every service a process halab supervises."""

    name = "local"
    capabilities = Capabilities(supervised=True, provisioning=False, ssh=False)
    lab_iface = netns.LAB_IFACE
    ready_timeout = 180.0
    drill_waits: dict = {}     # the drill's defaults are this provider's

    def __init__(self, lab: Lab, topo: Topology, k8s_bin_dir: str | None = None):
        self.lab = lab
        self.topo = topo
        self.k8s_bin_dir = k8s_bin_dir
        self.sup = Supervisor(lab.run, lab.logs, self.ns)

    @property
    def kubectl(self) -> str:
        """The kubectl matching the control plane's version when halab has it."""
        if self.k8s_bin_dir and (Path(self.k8s_bin_dir) / "kubectl").exists():
            return str(Path(self.k8s_bin_dir) / "kubectl")
        return shutil.which("kubectl") or "kubectl"

    # ------------------------------------------------------------ naming
    def ns(self, node: str) -> str:
        if node == CLIENT:
            return netns.client_ns(self.topo.name)
        return netns.ns_name(self.topo.name, node)

    @property
    def bridge(self) -> str:
        return netns.bridge_ns(self.topo.name)

    def ports(self) -> list[tuple[str, netns.Port]]:
        prefix = self.topo.scenario.network.subnet.prefixlen
        client_ip = next(self.topo.scenario.network.subnet.hosts())
        out = [(CLIENT, netns.Port(self.ns(CLIENT), "p0", f"{client_ip}/{prefix}"))]
        for i, n in enumerate(self.topo.nodes, 1):
            out.append((n.name, netns.Port(self.ns(n.name), f"p{i}", f"{n.ip}/{prefix}")))
        return out

    def port_of(self, node: str) -> netns.Port:
        return dict(self.ports())[node]

    def layout(self, node: str) -> Layout:
        modules = (NGINX_STREAM_MODULE,) if Path(NGINX_STREAM_MODULE).exists() else ()
        return Layout(base=str(self.lab.path / "nodes" / node),
                      k8s_bin=self.k8s_bin_dir or "", nginx_modules=modules,
                      kubemark=self.kubemark or "", local=True)

    @property
    def kubemark(self) -> str | None:
        """The hollow kubelet/kube-proxy program beside the control-plane binaries, if
        any (`tools/build-k8s.sh` builds it; Kubernetes publishes no kubemark binary,
        so `halab fetch-k8s` cannot bring it)."""
        path = Path(self.k8s_bin_dir or "") / "kubemark"
        return str(path) if self.k8s_bin_dir and path.is_file() else None

    # ------------------------------------------------------------ checks
    def preflight(self, need_k8s: bool = True) -> None:
        require_root()
        missing = missing_programs(self.topo)
        if missing:
            pkgs = " ".join(sorted({pkg for _, pkg in missing}))
            raise HalabError(f"programs the local provider runs are missing: "
                             f"{', '.join(p for p, _ in missing)}",
                             hint=f"apt-get install {pkgs}")
        if need_k8s and not self.k8s_bin_dir:
            raise HalabError("no Kubernetes binaries", hint="see `halab fetch-k8s --help`")

    def ports_taken(self, specs) -> list[str]:
        """Ports our services need that something else in their namespace already holds."""
        wanted = {"etcd": (2379, 2380), "kube-apiserver": (API_PORT,),
                  "kube-controller-manager": (10257,), "kube-scheduler": (10259,),
                  "haproxy": (API_PORT,), "nginx-proxy": (API_PORT,), "kubelet": (10250,)}
        problems, listening = [], {}
        for spec in specs:
            if self.sup.pid(spec.node, spec.name) is not None:
                continue
            if spec.node not in listening:
                listening[spec.node] = self.run(spec.node, ["ss", "-Htlnp"], timeout=10).stdout
            out = listening[spec.node]
            for port in wanted.get(spec.name, ()):
                for line in out.splitlines():
                    cols = line.split()
                    if len(cols) >= 4 and cols[3].rsplit(":", 1)[-1] == str(port):
                        who = cols[5] if len(cols) > 5 else "an unknown process"
                        problems.append(f"{spec.node}: port {port} for {spec.name} is held by {who}")
                        break
        return problems

    # ------------------------------------------------------------ machines
    def up(self, progress=lambda msg: None) -> None:
        """Namespaces, bridge, links and hosts files (idempotent)."""
        progress(f"lab network {self.topo.scenario.network.subnet} on bridge namespace {self.bridge}")
        mine = set(self.lab.record().names("namespace"))
        foreign = [ns for ns in self.namespaces() if ns not in mine and netns.exists(ns)]
        if foreign:
            raise HalabError(f"network namespace(s) {', '.join(foreign)} exist but are not in "
                             f"lab {self.topo.name}'s record (another lab, or one whose folder "
                             f"was deleted)", hint="remove them if they are stale: "
                             + "; ".join(f"ip netns delete {ns}" for ns in foreign))
        # recorded before they exist: a crash in between leaves nothing unlisted
        self.lab.add_resources("namespace", self.namespaces())
        netns.create_bridge(self.bridge)
        hosts = render.hosts_file(self.topo)
        for node, port in self.ports():
            netns.attach(self.bridge, port)
            netns.write_hosts(port.ns, hosts)
            if len(self.topo.load_balancers) > 1 and node in {n.name for n in self.topo.load_balancers}:
                # both HAProxies bind the VIP; only the keepalived master holds it
                netns.sh(netns.exec_prefix(port.ns) + ["sysctl", "-q", "-w",
                                                       "net.ipv4.ip_nonlocal_bind=1"])
            progress(f"{node}: namespace {port.ns} with {port.address}")
        self.lab.update(machines={n: "running" for n, _ in self.ports()})

    def machine_state(self, node: str) -> str:
        port = self.port_of(node)
        if not netns.exists(port.ns):
            return "not_created"
        if not netns.link_is_up(self.bridge, port.bridge_port):
            down = self.lab.record().faults.get(node)
            return "poweroff" if down in ("kill", None) else "partitioned"
        if any(self.sup.state(n, s) == "frozen" for n, s in self.sup.services(node)):
            return "frozen"
        return "running"

    def namespaces(self) -> list[str]:
        """The namespaces this lab creates: the bridge, the client, one per node."""
        return [self.bridge] + [p.ns for _, p in self.ports()]

    def recorded_namespaces(self) -> list[str]:
        """What the record lists (exact names, never a prefix: lab `case2` must not
        touch `case2-alice`'s namespaces). A record from before halab listed them gets
        the names this lab's topology gives (exact names too)."""
        rec = self.lab.record()
        return rec.names("namespace") if "namespace" in rec.resources else self.namespaces()

    def destroy(self, progress=lambda msg: None) -> list[str]:
        """Stop every service, then kill what is left in the recorded namespaces (by
        PID: e.g. started by a killed halab) and delete them; returns what was left."""
        for node, name in self.sup.services():
            self.sup.stop(node, name, timeout=2, hard=True)
        destroy_namespaces(self.recorded_namespaces(), progress)
        return self.leftovers()

    def leftovers(self) -> list[str]:
        recorded = self.recorded_namespaces()
        left = [f"namespace {ns}" for ns in recorded if netns.exists(ns)]
        left += [f"process {n}/{s}" for n, s in self.sup.services() if self.sup.pid(n, s)]
        left += [f"hosts {netns.NETNS_ETC / ns}" for ns in recorded
                 if (netns.NETNS_ETC / ns).exists()]
        return left

    # ------------------------------------------------------------ control plane
    def service_states(self, node: str) -> dict[str, str]:
        return {name: self.sup.state(node, name) for _, name in self.sup.services(node)}

    def halt(self, node: str | None = None) -> str:
        targets = [node] if node else [n.name for n in self.topo.nodes]
        for t in targets:
            self.sup.stop_all(t)
        return f"stopped the processes of {', '.join(targets)}; `halab up` starts them"

    def provision(self, node: str | None = None, progress=print) -> None:
        progress("the local provider has no provisioning scripts; `halab up` re-applies")

    def shell_argv(self, node: str, command: list[str]) -> list[str]:
        return netns.exec_prefix(self.ns(node)) + (local_command(command) or
                                                   [os.environ.get("SHELL", "bash")])

    def client_argv(self, argv: list[str]) -> list[str]:
        """A host program run as the student's laptop: inside the client namespace."""
        return netns.exec_prefix(self.ns(CLIENT)) + list(argv)

    def prober_argv(self, node: str) -> list[str]:
        return [sys.executable, "-m", "lab.drill.prober"]

    def put_file(self, node: str, path: str, data, mode: int = 0o644) -> None:
        """Nodes' files live in the lab directory: a plain write."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch(mode=mode)
        p.chmod(mode)
        p.write_bytes(data.encode() if isinstance(data, str) else data)

    def start(self, specs, progress=lambda msg: None) -> None:
        for spec in specs:
            pid = self.sup.start(spec)
            progress(f"{spec.node}: {spec.name} (pid {pid})")

    def dead_services(self, specs=None) -> list[str]:
        """Services of the plan that are not running, each with the last line of its log."""
        dead = []
        faults = self.lab.record().faults
        for node, name in self.sup.services():
            if faults.get(node):
                continue
            if self.sup.pid(node, name) is None or self.sup.restarts(node, name) >= 5:
                dead.append(f"{node}/{name}: {_last_line(self.sup.log(node, name))}")
        return dead

    # ------------------------------------------------------------ running commands
    def run(self, node: str, argv: list[str], timeout: float = 30,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run a command on a node (or the client) and wait for it."""
        try:
            return subprocess.run(netns.exec_prefix(self.ns(node)) + list(argv),
                                  capture_output=True, text=True, timeout=timeout, input=input)
        except subprocess.TimeoutExpired as exc:
            # what the program printed before it was killed comes as bytes, even with text=True
            def text(b) -> str:
                return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
            return subprocess.CompletedProcess(argv, 124, text(exc.stdout),
                                               text(exc.stderr) + "\ntimed out")

    def popen(self, node: str, argv: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(netns.exec_prefix(self.ns(node)) + list(argv), **kw)

    def haproxy_socket(self, lb: str) -> Path:
        return Path(self.layout(lb).p(render.LOCAL_STATS_SOCKET))

    def haproxy_stat(self, lb: str, timeout: float = 2.0) -> list[dict]:
        """HAProxy `show stat` rows of a load balancer (its admin socket is a local file)."""
        return haproxy_show_stat(self.haproxy_socket(lb), timeout=timeout)

    # ------------------------------------------------------------ faults (drill primitives)
    def power_off(self, node: str) -> None:
        """Like pulling the plug: SIGKILL everything, then the cable (no RST, packets vanish)."""
        netns.set_link(self.bridge, self.port_of(node).bridge_port, up=False)
        for n, name in self.sup.services(node):
            self.sup.signal(n, name, signal.SIGKILL)
        for n, name in self.sup.services(node):
            self.sup.stop(n, name, timeout=2, hard=True)

    def power_on(self, node: str, specs) -> None:
        netns.set_link(self.bridge, self.port_of(node).bridge_port, up=True)
        self.start([s for s in specs if s.node == node])

    def freeze(self, node: str) -> list[str]:
        return self.sup.signal_all(node, signal.SIGSTOP)

    def thaw(self, node: str) -> list[str]:
        return self.sup.signal_all(node, signal.SIGCONT)

    def partition(self, node: str) -> None:
        netns.set_link(self.bridge, self.port_of(node).bridge_port, up=False)

    def heal(self, node: str) -> None:
        netns.set_link(self.bridge, self.port_of(node).bridge_port, up=True)

    def stop_service(self, spec, hard: bool = False) -> None:
        self.sup.stop(spec.node, spec.name, hard=hard)


def _last_line(path: Path) -> str:
    try:
        from lab.providers.local.procs import RESTART_MARK
        lines = [l for l in path.read_text(errors="replace").splitlines()
                 if l.strip() and RESTART_MARK not in l]
    except OSError:
        return "no log"
    return lines[-1][:200] if lines else "empty log"


def haproxy_show_stat(sock: Path, timeout: float = 2.0) -> list[dict]:
    """`show stat` over the admin socket -> rows (pxname, svname, status, check_status, ...)."""
    # through the folder's descriptor: the full path may exceed a socket path's 107 bytes
    folder = os.open(sock.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(f"/proc/self/fd/{folder}/{sock.name}")
            s.sendall(b"show stat\n")
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
    finally:
        os.close(folder)
    text = b"".join(chunks).decode().lstrip("# ")
    return list(csv.DictReader(io.StringIO(text)))


def destroy_namespaces(names: list[str], progress=lambda m: None) -> list[str]:
    """Kill what runs in these namespaces (by PID), delete them; returns what is left."""
    for ns in names:
        if netns.exists(ns):
            cp = netns.sh(["ip", "netns", "pids", ns], check=False)
            for pid in cp.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        existed = netns.exists(ns)
        netns.delete(ns)            # also its hosts file, which may outlive it
        if existed:
            progress(f"deleted namespace {ns}")
    return [f"namespace {ns}" for ns in names if netns.exists(ns)]
