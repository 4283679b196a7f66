"""A small Case 2 lab on real VMs (QEMU emulation), driven through the CLI: up, the
static deployer, verify, two drills with real faults, ssh, halt, up, destroy.

admin-lb (HAProxy, NFS) + one control plane + one worker with its nginx proxy. The
drills are the Case 2 promises that one control plane can show: HAProxy on its own VM
stopped costs external access only (the worker keeps its local proxy), and a worker
powered off (`virsh destroy`) and booted again loses only its own path. Everything
runs inside the test bed's network namespace (tests/support/vmtestbed.py): halab,
vagrant, libvirtd and every SSH connection. Timings are printed for the README.
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


def test_up_deploy_drills_ssh_halt_destroy(vm_testbed, lab_dir):  # noqa: F811
    tb = vm_testbed
    timings = {}
    cp, timings["up"] = tb.halab(["up", str(lab_dir / "vmt.yaml"), "--no-deploy"], lab_dir)
    assert "is up" in cp.stdout and "next: halab deploy" in cp.stdout
    # deploy on its own (after `up --no-deploy` it finds the Kubernetes binaries itself)
    cp, timings["deploy (static)"] = tb.halab(["deploy"], lab_dir)
    assert "all 7 checks passed" in cp.stdout, cp.stdout
    for node, unit in (("k8s-node1", "halab-kube-apiserver"), ("k8s-node2", "halab-nginx-proxy")):
        cp, _ = tb.halab(["ssh", node, "--", "systemctl", "is-active", unit], lab_dir)
        assert cp.stdout.strip() == "active"
    cp, timings["verify"] = tb.halab(["verify"], lab_dir)
    assert "worker:k8s-node2 (https://localhost:6443)" in cp.stdout and "OK" in cp.stdout

    # Case 2's promise with the LB on its own VM: external access lost, the worker keeps
    # its own path through its nginx proxy
    j, timings["drill stop-lb"] = _drill(tb, lab_dir, "stop-lb")
    paths = j["verdict"]["paths"]
    assert paths["external"]["measured"] == "down", paths
    assert paths["worker:k8s-node2"]["failures"] == 0 and paths["write"]["failures"] == 0, paths
    # a real power-off of the worker, then a real boot: only its own path is lost, and
    # the probe worker that died with the VM comes back with it
    j, timings["drill kill worker"] = _drill(tb, lab_dir, "kill", "k8s-node2")
    paths = j["verdict"]["paths"]
    assert paths["worker:k8s-node2"]["measured"] == "down", paths
    for key in ("external", "direct:k8s-node1", "write"):
        assert paths[key]["failures"] == 0, paths
    assert j["prober_restarts"].get("worker:k8s-node2", 0) >= 1
    assert any(p["ok"] for p in j["probes"]["worker:k8s-node2"]
               if p["t"] > j["times"]["restored"]), "the worker's path never answered again"
    timings["kill: boot and services"] = j["times"]["restored"] - j["times"]["restore_start"]

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
    # a second deploy uploads nothing (the binaries are there, checked by digest)
    cp, timings["second deploy"] = tb.halab(["deploy"], lab_dir)
    assert "uploaded" not in cp.stdout and "all 7 checks passed" in cp.stdout, cp.stdout

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


def _drill(tb, lab_dir, *args) -> tuple[dict, float]:
    """`halab drill ARGS`: exit 0 (as expected on every path); returns (journal, seconds)."""
    cp, seconds = tb.halab(["drill", *args], lab_dir, timeout=1500, check=False)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "VERDICT: as expected on every path" in cp.stdout
    journals = sorted((lab_dir / ".halab" / "vmt" / "drills").glob("*.json"))
    journal = json.loads(journals[-1].read_text())
    assert journal["verdict"]["healthy_after"] is True
    return journal, seconds
