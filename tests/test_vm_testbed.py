"""Real VMs: a hand-written 2-VM Vagrantfile brought up with vagrant-libvirt (QEMU TCG).

Proves the test bed (tools/vmtest) works end to end: box, libvirt in a network
namespace, vagrant up/status/ssh/destroy, a private network between the VMs,
the offline packages in the box, and that nothing is left afterwards.
Slow (about 5 minutes on 2 cores once the box is cached): marker ``vm``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.vmtestbed import VMTestbedError, VMTestbed  # noqa: F401

pytestmark = pytest.mark.vm

PREFIX = "halab-vmtest-"
NODES = {"admin-lb": "192.168.250.10", "k8s-node1": "192.168.250.11"}
UP_TIMEOUT = 900
BIG_DISK_NODE, BIG_DISK_GB = "k8s-node1", 6
# What halab's provisioning installs from the box (no internet in the VMs).
BOX_PACKAGES = ["haproxy", "keepalived", "nfs-kernel-server", "nfs-common", "curl",
                "ca-certificates", "rsync", "iptables", "systemd-timesyncd", "conntrack",
                "socat", "python3-venv", "git", "sudo", "openssh-server", "python3"]

VAGRANTFILE = """\
# Hand-written for tests/test_vm_testbed.py (not rendered by halab).
NODES = {nodes}
Vagrant.configure("2") do |config|
  config.vm.box = "halab/debian12"
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.provider :libvirt do |lv|
    lv.driver = "qemu"
    lv.cpus = 1
    lv.memory = 768
    lv.default_prefix = "{prefix}"
    lv.management_network_name = "{prefix}mgmt"
    lv.management_network_address = "192.168.251.0/24"
    lv.graphics_type = "none"
    lv.video_type = "none"
  end
  NODES.each do |name, ip|
    config.vm.define name do |node|
      node.vm.hostname = name
      node.vm.network :private_network, ip: ip, libvirt__network_name: "{prefix}net"
      node.vm.provider :libvirt do |lv|
        lv.serial :type => "file", :source => {{:path => File.join(__dir__, "console-#{{name}}.log")}}
        # Bigger disk than the box's 4 GiB: the box grows its root fs at boot.
        lv.machine_virtual_size = {big_disk_gb} if name == "{big_disk_node}"
      end
      node.vm.provision "shell", inline: "echo #{{name}} > /etc/halab-provisioned"
    end
  end
end
"""


def _ruby_hash(d: dict[str, str]) -> str:
    return "{" + ", ".join(f'"{k}" => "{v}"' for k, v in d.items()) + "}"


def _machine_states(out: str) -> dict[str, str]:
    states = {}
    for line in out.splitlines():
        parts = line.split(",", 3)
        if len(parts) == 4 and parts[2] == "state" and parts[1]:
            states[parts[1]] = parts[3]
    return states


def _console_tails(project: Path) -> str:
    out = []
    for log in sorted(project.glob("console-*.log")):
        text = log.read_text(errors="replace")
        out.append(f"--- {log.name} (last 40 lines) ---\n" + "\n".join(text.splitlines()[-40:]))
    return "\n".join(out)


def test_two_vms_up_ssh_ping_destroy(vm_testbed: VMTestbed, tmp_path: Path) -> None:  # noqa: F811
    tb = vm_testbed
    project = tmp_path / "lab"
    project.mkdir()
    (project / "Vagrantfile").write_text(
        VAGRANTFILE.format(nodes=_ruby_hash(NODES), prefix=PREFIX,
                           big_disk_node=BIG_DISK_NODE, big_disk_gb=BIG_DISK_GB))
    timings = tb.timings

    def vagrant(*args: str, timeout: float = 300, what: str = "", stream: bool = False):
        return tb.run(["vagrant", *args], cwd=project, timeout=timeout, what=what,
                      stream=stream)

    def ssh(node: str, command: str, timeout: float = 120) -> str:
        return vagrant("ssh", node, "-c", command, timeout=timeout,
                       what=f"vagrant ssh {node} -c {command!r}").stdout

    destroyed = False
    try:
        vagrant("validate")
        t0 = time.monotonic()
        try:
            vagrant("up", "--provider", "libvirt", timeout=UP_TIMEOUT, stream=True,
                    what=f"vagrant up of {len(NODES)} VMs (IP lease, SSH, provisioning)")
        except VMTestbedError as exc:
            raise AssertionError(f"{exc}\n{_console_tails(project)}") from None
        timings["vagrant_up_2_vms"] = time.monotonic() - t0

        t0 = time.monotonic()
        status = vagrant("status", "--machine-readable").stdout
        timings["vagrant_status"] = time.monotonic() - t0
        assert _machine_states(status) == {name: "running" for name in NODES}, status

        t0 = time.monotonic()
        ssh_config = vagrant("ssh-config").stdout
        timings["vagrant_ssh_config"] = time.monotonic() - t0
        for name in NODES:
            assert f"Host {name}" in ssh_config

        t0 = time.monotonic()
        for name in NODES:
            assert ssh(name, "hostname").strip().splitlines()[-1] == name
        timings["vagrant_ssh_hostname_each"] = (time.monotonic() - t0) / len(NODES)
        for name in NODES:
            assert name in ssh(name, "cat /etc/halab-provisioned").split()

        ping = ssh("admin-lb", f"ping -c 3 -W 5 {NODES['k8s-node1']}")
        assert " 0% packet loss" in ping, ping

        assert "HAProxy version" in ssh("admin-lb", "sudo haproxy -v")
        pkgs = ssh("k8s-node1", "dpkg-query -W -f='${Package} ${Status}\\n' "
                   + " ".join(BOX_PACKAGES) + " 2>&1 || true")
        not_installed = [p for p in BOX_PACKAGES if f"{p} install ok installed" not in pkgs]
        assert not not_installed, pkgs
        df = ssh(BIG_DISK_NODE, "df -BG --output=size / | tail -n1")
        root_gb = int(df.split()[-1].rstrip("G"))
        assert root_gb >= BIG_DISK_GB - 1, f"root fs not grown to {BIG_DISK_GB} GiB: {df}"
        state = ssh("k8s-node1", "systemctl is-system-running || true").strip()
        assert state.splitlines()[-1] == "running", ssh(
            "k8s-node1", "systemctl --failed --no-legend || true")

        t0 = time.monotonic()
        vagrant("destroy", "-f", timeout=300)
        timings["vagrant_destroy"] = time.monotonic() - t0
        destroyed = True

        left_domains = [n for n in tb.names("domain") if n.startswith(PREFIX)]
        left_networks = [n for n in tb.names("network") if n.startswith(PREFIX)]
        # The box's base image stays in the pool after destroy (vagrant-libvirt
        # reuses it); testbed stop removes it. VM disks must be gone.
        left_volumes = [n for n in tb.names("volume") if n.startswith(PREFIX)]
        assert (left_domains, left_networks, left_volumes) == ([], [], [])
        assert all(n.startswith("halab-VAGRANTSLASH-debian12_") for n in tb.names("volume"))
    finally:
        if not destroyed:
            try:
                vagrant("destroy", "-f", timeout=300)
            except VMTestbedError as exc:  # testbed stop still cleans up
                print(f"[vm test] cleanup destroy failed: {exc}")
        print("\n[vm test] timings (s): " + ", ".join(
            f"{k}={v:.1f}" for k, v in timings.items()))
