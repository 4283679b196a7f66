"""The VM provider: Vagrant with VirtualBox or libvirt. Commands on VMs go through Fabric."""
from __future__ import annotations

import shlex
import subprocess
import time

from .. import remote as remotelib
from ..errors import HalabError
from ..labdir import Lab
from ..topology import Topology
from ..vagrant import ProgressTracker, Vagrant

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
        return self.leftovers()

    def leftovers(self) -> list[str]:
        states = self.vagrant.status()
        return [f"VM {n} ({s})" for n, s in states.items() if s not in ("not_created",)]

    # ------------------------------------------------------------ commands on VMs
    def remote(self, node: str) -> remotelib.Remote:
        if node not in self._remotes:
            target = remotelib.ssh_config_for(self.vagrant.ssh_config(node), node)
            # TCG-emulated VMs answer slowly: a generous connect timeout
            self._remotes[node] = remotelib.Remote.from_target(target, connect_timeout=30).open()
        return self._remotes[node]

    def run(self, node: str, argv, timeout: float = 60, input: str | None = None):
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

    # ------------------------------------------------------------ faults
    def power_off(self, node: str) -> None:
        """A real power-off (not `vagrant halt --force`, which is an ACPI shutdown on libvirt)."""
        argv = power_off_argv(self.topo.scenario.provider, self.topo.name, node)
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if cp.returncode != 0:
            raise HalabError(f"{' '.join(argv)} failed: {cp.stderr.strip()}")
        self._remotes.pop(node, None)

    def power_on(self, node: str, specs=()) -> None:
        self.vagrant.run(["up", node, "--no-provision"], "up")
        self._remotes.pop(node, None)


def power_off_argv(provider: str, lab: str, node: str) -> list[str]:
    """The provider's hard power-off for one VM (names as the Vagrantfile sets them)."""
    if provider == "libvirt":
        return ["virsh", "destroy", f"{lab}_{node}"]
    return ["VBoxManage", "controlvm", f"{lab}-{node}", "poweroff"]
