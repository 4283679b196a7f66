"""The VM provider: Vagrant with VirtualBox or libvirt. Commands on VMs go through Fabric."""
from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from .. import controlplane, remote as remotelib
from ..errors import HalabError
from ..labdir import Lab
from ..topology import Topology
from ..vagrant import ProgressTracker, Vagrant

VM_BASE = "/var/lib/halab"
VM_BIN = "/opt/halab/bin"
# HAProxy and keepalived run as the distribution's services, set up by admin-lb.sh
PROVISIONED_SERVICES = ("haproxy", "keepalived")
LAB_IFACE = "@LAB_IFACE@"

SHOW_STAT = ("python3 -c \"import socket,sys; s=socket.socket(socket.AF_UNIX); "
             "s.connect('{sock}'); s.sendall(b'show stat\\n'); "
             "sys.stdout.write(b''.join(iter(lambda: s.recv(65536), b'')).decode())\"")


class VagrantProvider:
    name = "vagrant"

    def __init__(self, lab: Lab, topo: Topology, k8s_bin_dir: str | None = None):
        self.lab = lab
        self.topo = topo
        self.k8s_bin_dir = k8s_bin_dir
        self.vagrant = Vagrant(lab.path, topo.scenario.provider, lab.logs)
        self._remotes: dict[str, remotelib.Remote] = {}
        self.fs_root = ""  # prefix for paths on the VMs (tests point it at a folder)

    # ------------------------------------------------------------ machines
    def up(self, progress=lambda m: None, timeout: float = 1800) -> dict:
        """Bring every VM up; VMs already running and provisioned are left alone."""
        states = self.vagrant.status()
        todo = [n.name for n in self.topo.nodes if states.get(n.name) != "running"]
        if not todo:
            progress("every VM is already running")
            return states
        tracker = ProgressTracker([n.name for n in self.topo.nodes])
        t0 = time.monotonic()

        def on_line(line: str) -> None:
            before = {k: (v.state, v.step) for k, v in tracker.vms.items()}
            vm = tracker.feed(line)
            if vm is not None and before[vm.name] != (vm.state, vm.step):
                progress(f"{vm.name:<10} {vm.state:<14} {vm.elapsed():5.0f}s  {vm.step}")

        # libvirt brings VMs up in parallel; VirtualBox cannot (one VM at a time)
        parallel = self.topo.scenario.provider == "libvirt"
        self.lab.update(machines={n: "starting" for n in todo})
        self.vagrant.up(todo, on_line, timeout=timeout, parallel=parallel)
        tracker.finish()
        states = self.vagrant.status()
        self.lab.update(machines=states)
        progress(f"{len(todo)} VM(s) up in {time.monotonic() - t0:.0f} s")
        return states

    def machine_state(self, node: str) -> str:
        if not hasattr(self, "_states"):
            self._states = self.vagrant.status()
        return self._states.get(node, "not_created")

    def halt(self, node: str | None = None) -> None:
        self.vagrant.halt(node)

    def provision(self, node: str | None = None, progress=print) -> None:
        self.vagrant.provision(node, on_line=lambda l: progress(l.rstrip()))

    def destroy(self, progress=lambda m: None) -> list[str]:
        self.vagrant.destroy()
        progress("VMs destroyed; vagrant global-status pruned")
        if self.topo.scenario.provider == "libvirt":
            # vagrant-libvirt keeps the networks it created; they are the lab's
            for net in self.libvirt_networks():
                for verb in ("net-destroy", "net-undefine"):
                    subprocess.run(["virsh", verb, net], capture_output=True, timeout=60)
                progress(f"removed libvirt network {net}")
        return self.leftovers()

    def libvirt_networks(self) -> list[str]:
        cp = subprocess.run(["virsh", "net-list", "--all", "--name"], capture_output=True,
                            text=True, timeout=60)
        prefix = f"halab-{self.topo.name}-"
        return [n.strip() for n in cp.stdout.splitlines() if n.strip().startswith(prefix)]

    def leftovers(self) -> list[str]:
        states = self.vagrant.status()
        left = [f"VM {n} ({s})" for n, s in states.items() if s not in ("not_created",)]
        if self.topo.scenario.provider == "libvirt":
            left += [f"libvirt network {n}" for n in self.libvirt_networks()]
        return left

    # ------------------------------------------------------------ commands on VMs
    def remote(self, node: str) -> remotelib.Remote:
        if node not in self._remotes:
            target = remotelib.ssh_config_for(self.vagrant.ssh_config(node), node)
            # TCG-emulated VMs answer slowly: a generous connect timeout
            self._remotes[node] = remotelib.Remote.from_target(target, connect_timeout=30).open()
        return self._remotes[node]

    def run(self, node: str, argv, timeout: float = 60, input: str | None = None):
        if node == "client":  # the student's laptop is this host
            try:
                return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                return subprocess.CompletedProcess(argv, 124, exc.stdout or "", "timed out")
        cmd = argv if isinstance(argv, str) else shlex.join(argv)
        r = self.remote(node).run(cmd, timeout=timeout, sudo=True)
        return subprocess.CompletedProcess(argv, r.exited, r.stdout, r.stderr)

    def haproxy_stat(self, lb: str) -> list[dict]:
        import csv
        import io
        cp = self.run(lb, SHOW_STAT.format(sock="/var/lib/haproxy/admin.sock"), timeout=30)
        if cp.returncode != 0:
            raise OSError(cp.stderr.strip() or "cannot read the HAProxy stats socket")
        return list(csv.DictReader(io.StringIO(cp.stdout.lstrip("# "))))

    def ssh_argv(self, node: str, command: list[str]) -> list[str]:
        return ["vagrant", "ssh", node, *(["--", *command] if command else [])]

    # ------------------------------------------------------------ static deployer on VMs
    @property
    def kubectl(self) -> str:
        if self.k8s_bin_dir and (Path(self.k8s_bin_dir) / "kubectl").exists():
            return str(Path(self.k8s_bin_dir) / "kubectl")
        return shutil.which("kubectl") or "kubectl"

    def layout(self, node: str) -> controlplane.Layout:
        return controlplane.Layout(base=VM_BASE, k8s_bin=VM_BIN, etcd=f"{VM_BIN}/etcd",
                                   local=False)

    def plan(self, pki: dict, secrets) -> list:
        """The static plan; kubespray labs get name-only specs (their services exist already)."""
        specs = controlplane.plan(self.topo, pki, self.layout, secrets, LAB_IFACE)
        if self.topo.scenario.deployer == "static":
            return specs
        from ..procs import ServiceSpec
        return [ServiceSpec(s.node, s.name, ()) for s in specs]

    def ports_taken(self, specs) -> list[str]:
        return []  # fresh VMs; a unit that cannot bind fails and shows in dead_services

    def put_file(self, node: str, path: str, data, mode: int = 0o644) -> None:
        r = self.remote(node)
        data = data.encode() if isinstance(data, str) else data
        tmp = f"/tmp/halab-upload-{hashlib.sha1(path.encode()).hexdigest()[:12]}"
        r.put_bytes(data, tmp) if hasattr(r, "put_bytes") else _put_bytes(r, data, tmp)
        self._check(node, f"install -D -m {mode:o} {shlex.quote(tmp)} {shlex.quote(path)} "
                          f"&& rm -f {shlex.quote(tmp)}")

    def _check(self, node: str, cmd: str, timeout: float = 120) -> str:
        r = self.remote(node).run(cmd, timeout=timeout, sudo=True)
        if not r.ok:
            raise HalabError(f"{node}: `{cmd[:80]}` failed: {(r.stderr or r.stdout).strip()[-300:]}")
        return r.stdout

    def _upload_binary(self, node: str, local: Path) -> None:
        """Copy a binary once; a second deploy compares checksums and skips it."""
        digest = hashlib.sha256(local.read_bytes()).hexdigest()
        target = f"{VM_BIN}/{local.name}"
        have = self.remote(node).run(f"sha256sum {target} 2>/dev/null", sudo=True).stdout.split()
        if have and have[0] == digest:
            return
        self._check(node, f"mkdir -p {VM_BIN} && chmod 755 {VM_BIN} && chown {self.remote(node).user or 'root'} {VM_BIN}")
        self.remote(node).put(str(local), target, mode=0o755)

    def start(self, specs, progress=lambda m: None) -> None:
        """Each service becomes a systemd unit with Restart=always (kubelet's job on a real node).

        Services the VM already has (HAProxy and keepalived from provisioning, every
        service of a kubespray cluster) are only started again (a drill's restore).
        """
        existing = [s for s in specs if s.name in PROVISIONED_SERVICES
                    or self.topo.scenario.deployer != "static"]
        for spec in existing:
            self._check(spec.node, service_command(self.topo.scenario.deployer, spec.name, "start",
                                                   self.fs_root))
        specs = [s for s in specs if s not in existing]
        binaries = {"etcd": Path(shutil.which("etcd") or "/usr/bin/etcd")}
        for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"):
            binaries[name] = Path(self.k8s_bin_dir or "") / name
        by_node: dict[str, list] = {}
        for spec in specs:
            by_node.setdefault(spec.node, []).append(spec)
        for node, node_specs in by_node.items():
            needed = {Path(s.argv[0]).name for s in node_specs} | {"kubectl"}
            for name in sorted(needed & set(binaries)):
                progress(f"{node}: uploading {name}")
                self._upload_binary(node, binaries[name])
            for spec in node_specs:
                for path, content in spec.files.items():
                    mode = 0o600 if path.endswith(".key") or "kubeconfig" in path else 0o644
                    self.put_file(node, path, content, mode)
                self.put_file(node, f"/etc/systemd/system/halab-{spec.name}.service",
                              systemd_unit(spec), 0o644)
            units = " ".join(f"halab-{s.name}" for s in node_specs)
            self._check(node, f"systemctl daemon-reload && systemctl enable --now {units}")
            progress(f"{node}: started {units}")

    def dead_services(self) -> list[str]:
        dead = []
        faults = self.lab.state().get("faults", {})
        for node in {n.name for n in self.topo.nodes} - set(faults):
            r = self.remote(node).run("systemctl --failed --no-legend --plain 'halab-*'",
                                      sudo=True, timeout=60)
            dead += [f"{node}/{line.split()[0]}" for line in r.stdout.splitlines() if line.strip()]
        return dead

    def stop_service(self, node: str, name: str, hard: bool = False) -> None:
        self._check(node, service_command(self.topo.scenario.deployer, name,
                                          "kill" if hard else "stop", self.fs_root))

    def freeze(self, node: str) -> list[str]:
        """A hung VM: the hypervisor pauses it (TCP peers see silence, no RST)."""
        self._host(vm_control_argv(self.topo.scenario.provider, self.topo.name, node, "pause"))
        return [node]

    def thaw(self, node: str) -> list[str]:
        self._host(vm_control_argv(self.topo.scenario.provider, self.topo.name, node, "resume"))
        return [node]

    def partition(self, node: str) -> None:
        """Drop everything on the lab NIC; SSH from the host uses the NAT NIC and still works."""
        self._check(node, partition_command(str(self.topo.node(node).ip), cut=True))

    def heal(self, node: str) -> None:
        self._check(node, partition_command(str(self.topo.node(node).ip), cut=False))

    def _host(self, argv: list[str]) -> None:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if cp.returncode != 0:
            raise HalabError(f"{' '.join(argv)} failed: {cp.stderr.strip()}")

    # ------------------------------------------------------------ faults
    def power_off(self, node: str) -> None:
        """A real power-off (not `vagrant halt --force`, which is an ACPI shutdown on libvirt)."""
        self._host(power_off_argv(self.topo.scenario.provider, self.topo.name, node))
        self._remotes.pop(node, None)

    def power_on(self, node: str, specs=()) -> None:
        self.vagrant.run(["up", node, "--no-provision"], "up")
        self._remotes.pop(node, None)


def systemd_unit(spec) -> str:
    """A unit for one service: restarted after 1 s like a static pod, started at boot."""
    return (f"[Unit]\nDescription=halab {spec.name} on {spec.node}\nAfter=network-online.target\n\n"
            f"[Service]\nExecStart={shlex.join(spec.argv)}\nRestart=always\nRestartSec=1\n"
            "LimitNOFILE=65536\n\n[Install]\nWantedBy=multi-user.target\n")


def _put_bytes(remote, data: bytes, path: str) -> None:
    import tempfile
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        remote.put(f.name, path)


MANIFESTS = "/etc/kubernetes/manifests"
PARKED = "/etc/kubernetes/halab-stopped"
PARTITION_TAG = "halab-partition"


def service_command(deployer: str, name: str, action: str, root: str = "") -> str:
    """The shell command that stops ("stop", "kill") or starts a service on a VM.

    kubespray runs kube-apiserver as a static pod: moving its manifest out makes
    kubelet stop it, moving it back restores it (`crictl stop` only makes kubelet
    restart it). etcd, HAProxy and keepalived are systemd units there; halab's
    static deployer names its units halab-<service>. `root` prefixes paths (tests).
    """
    if deployer == "kubespray" and name == "kube-apiserver":
        src, dst = f"{root}{MANIFESTS}/kube-apiserver.yaml", f"{root}{PARKED}/kube-apiserver.yaml"
        if action == "start":
            return f"test ! -e {dst} || mv {dst} {src}"
        return f"mkdir -p {root}{PARKED} && {{ test ! -e {src} || mv {src} {dst}; }}"
    unit = name if name in PROVISIONED_SERVICES or deployer == "kubespray" else f"halab-{name}"
    if action == "kill":
        return f"systemctl kill -s KILL {unit} && systemctl stop {unit}"
    return f"systemctl {action} {unit}"


def partition_command(ip: str, cut: bool) -> str:
    """iptables rules that drop the lab NIC's traffic (added once, removed completely)."""
    iface = f"$(ip -o -4 addr show | awk '$4 ~ /^{re_escape(ip)}\\//{{print $2}}' | head -n1)"
    rules = [f"INPUT -i \"$IF\" -m comment --comment {PARTITION_TAG} -j DROP",
             f"OUTPUT -o \"$IF\" -m comment --comment {PARTITION_TAG} -j DROP"]
    if cut:
        body = "; ".join(f"iptables -C {r} 2>/dev/null || iptables -I {r}" for r in rules)
    else:
        body = "; ".join(f"while iptables -C {r} 2>/dev/null; do iptables -D {r}; done"
                         for r in rules)
    return f"IF={iface}; test -n \"$IF\" && {{ {body}; }}"


def re_escape(ip: str) -> str:
    return ip.replace(".", "\\.")


def vm_control_argv(provider: str, lab: str, node: str, action: str) -> list[str]:
    """Pause/resume a whole VM with the hypervisor (a frozen node)."""
    if provider == "libvirt":
        return ["virsh", "suspend" if action == "pause" else "resume", f"halab-{lab}-{node}"]
    return ["VBoxManage", "controlvm", f"{lab}-{node}", action]


def power_off_argv(provider: str, lab: str, node: str) -> list[str]:
    """The provider's hard power-off for one VM (names as the Vagrantfile sets them)."""
    if provider == "libvirt":
        return ["virsh", "destroy", f"halab-{lab}-{node}"]
    return ["VBoxManage", "controlvm", f"{lab}-{node}", "poweroff"]
