"""`halab up` of a small libvirt lab on real VMs (QEMU emulation), driven through the CLI.

Everything runs inside the test bed's network namespace (tests/support/vmtestbed.py):
halab, vagrant, libvirtd and every SSH connection. Timings are printed for the README.
"""
from __future__ import annotations

import json

import pytest



pytestmark = pytest.mark.vm

SCENARIO = """\
name: vmt
description: "admin-lb + 2 nodes on the test box (libvirt, QEMU emulation)"
case: 2
provider: libvirt
deployer: static
box:
  name: halab/debian12
  os: debian-12
network:
  subnet: 192.168.123.0/24
admin_lb: {{count: 1, cpus: 1, memory: 768}}
control_plane: {{count: 1, cpus: 1, memory: 768}}
worker: {{count: 1, cpus: 1, memory: 640}}
nfs: {{enabled: true}}
admin_tools: [kubectl]
provider_options:
  libvirt:
    driver: qemu
    management_network_address: 192.168.251.0/24
"""


@pytest.fixture(scope="module")
def lab_dir(vm_testbed, tmp_path_factory):  # noqa: F811
    work = tmp_path_factory.mktemp("vmlab")
    (work / "vmt.yaml").write_text(SCENARIO.replace("{{", "{").replace("}}", "}"))
    yield work
    # always leave nothing behind, even when a test failed
    vm_testbed.run(["halab", "destroy", "--force"], cwd=work, timeout=600, check=False)


def test_up_status_ssh_halt_destroy(vm_testbed, lab_dir):  # noqa: F811
    tb = vm_testbed
    timings = {}
    cp, timings["up"] = tb.halab(["up", str(lab_dir / "vmt.yaml"), "--no-deploy"], lab_dir)
    assert "is up" in cp.stdout

    cp, _ = tb.halab(["status"], lab_dir, check=False)
    for node in ("admin-lb", "k8s-node1", "k8s-node2"):
        assert f"{node} " in cp.stdout
    assert cp.stdout.count("running") >= 3, cp.stdout

    # provisioning really ran: hosts file, lab key, no password logins
    for node in ("admin-lb", "k8s-node1", "k8s-node2"):
        cp, _ = tb.halab(["ssh", node, "--", "sudo", "cat", "/etc/hosts"], lab_dir)
        assert "192.168.123.11 k8s-node1" in cp.stdout and "k8s-api.vmt.lab" in cp.stdout
        cp, _ = tb.halab(["ssh", node, "--", "sudo", "sshd", "-T"], lab_dir)
        assert "passwordauthentication no" in cp.stdout.lower()
    for node in ("k8s-node1", "k8s-node2"):
        cp, _ = tb.halab(["ssh", "admin-lb", "--", "sudo", "ssh", "-i", "/root/.ssh/id_ed25519",
                           "-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes",
                           f"root@{node}", "hostname"], lab_dir)
        assert node in cp.stdout
        # a password login is refused outright
        cp, _ = tb.halab(["ssh", "admin-lb", "--", "ssh", "-o", "BatchMode=yes",
                           "-o", "PreferredAuthentications=password",
                           "-o", "StrictHostKeyChecking=no", f"root@{node}", "true"],
                      lab_dir, check=False)
        assert cp.returncode != 0
    cp, _ = tb.halab(["ssh", "admin-lb", "--", "sudo", "haproxy", "-c", "-f",
                       "/etc/haproxy/haproxy.cfg"], lab_dir)
    assert "valid" in cp.stdout.lower()
    cp, _ = tb.halab(["ssh", "admin-lb", "--", "sudo", "exportfs", "-v"], lab_dir)
    assert "192.168.123.0/24" in cp.stdout and "*(" not in cp.stdout

    # a second up changes nothing and is fast
    cp, timings["second up"] = tb.halab(["up", str(lab_dir / "vmt.yaml"), "--no-deploy"],
                                     lab_dir)
    assert "already running" in cp.stdout

    cp, timings["halt"] = tb.halab(["halt", "k8s-node1"], lab_dir)
    cp, _ = tb.halab(["status"], lab_dir, check=False)
    assert "shutoff" in cp.stdout or "poweroff" in cp.stdout, cp.stdout
    cp, timings["up after halt"] = tb.halab(["up", str(lab_dir / "vmt.yaml"), "--no-deploy"],
                                         lab_dir)

    cp, timings["destroy"] = tb.halab(["destroy"], lab_dir)
    assert not (lab_dir / ".halab" / "vmt").exists()
    assert [d for d in tb.names("domain") if d.startswith("halab-vmt-")] == []
    assert [v for v in tb.names("volume") if v.startswith("halab-vmt-")] == []
    assert [n for n in tb.names("network") if n.startswith("halab-vmt-")] == []
    gs = tb.run(["vagrant", "global-status", "--prune"], cwd=lab_dir).stdout
    assert "vmt" not in gs
    print("\nVM lab timings (s): " + json.dumps({k: round(v, 1) for k, v in timings.items()}))
