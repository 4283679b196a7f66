"""The exact commands each drill fault sends to a VM (and its restore), run over Fabric
against a real sshd. The VM's tools (systemctl, iptables, ip) and the hypervisor's
(virsh, VBoxManage) are stand-ins that record their arguments: they cannot run here,
and must not touch this machine."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab.providers.vagrant import remote as remotelib
from lab.model import scenario
from lab.state import Lab
from lab.providers.vagrant import provider as vprov
from lab.model.topology import Topology
from tests.support.sshd import sshd_server  # noqa: F401

IPTABLES = r'''#!/usr/bin/env python3
# stand-in for iptables: keeps rules in a file so -C/-I/-D behave like the real one
import sys, os
state = os.environ.get("FAKE_STATE", "/tmp") + "/iptables.rules"
rules = open(state).read().splitlines() if os.path.exists(state) else []
op, rule = sys.argv[1], " ".join(sys.argv[2:])
open(os.environ["FAKE_STATE"] + "/calls.log", "a").write("iptables " + " ".join(sys.argv[1:]) + "\n")
if op == "-C":
    sys.exit(0 if rule in rules else 1)
if op == "-I":
    rules.insert(0, rule)
elif op == "-D":
    if rule not in rules:
        sys.exit(1)
    rules.remove(rule)
open(state, "w").write("\n".join(rules) + ("\n" if rules else ""))
'''
RECORDER = '#!/bin/sh\necho "$(basename "$0") $*" >> "$FAKE_STATE/calls.log"\n'
IP = ('#!/bin/sh\necho "ip $*" >> "$FAKE_STATE/calls.log"\n'
      'echo "3: eth1    inet 192.168.10.11/24 brd 192.168.10.255 scope global eth1"\n'
      'echo "2: eth0    inet 10.0.2.15/24 brd 10.0.2.255 scope global eth0"\n')


class PathRemote:
    """A real Fabric Remote whose commands find the stand-ins first."""

    def __init__(self, inner, stubs: Path, state: Path):
        self.inner, self.stubs, self.state, self.user = inner, stubs, state, inner.user

    def run(self, cmd, **kw):
        return self.inner.run(f"export PATH={self.stubs}:$PATH FAKE_STATE={self.state}; {cmd}", **kw)

    def put(self, local, remote, mode=None):
        return self.inner.put(local, remote, mode=mode)


@pytest.fixture
def vm_provider(sshd_server, tmp_path, monkeypatch):  # noqa: F811
    host, port, user, key = sshd_server[:4]
    stubs, state, root = tmp_path / "bin", tmp_path / "state", tmp_path / "vmroot"
    for d in (stubs, state, root / "etc/kubernetes/manifests"):
        d.mkdir(parents=True)
    (root / "etc/kubernetes/manifests/kube-apiserver.yaml").write_text("kind: Pod\n")
    for name, text in {"iptables": IPTABLES, "systemctl": RECORDER, "ip": IP,
                       "virsh": RECORDER, "VBoxManage": RECORDER, "curl": RECORDER}.items():
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{stubs}:{os.environ['PATH']}")  # host-side: virsh, VBoxManage
    monkeypatch.setenv("FAKE_STATE", str(state))
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI", raising=False)

    def make(scenario_name="case2", provider="libvirt", deployer="kubespray"):
        p = tmp_path / f"{scenario_name}-{provider}-{deployer}.yaml"
        p.write_text(f"extends: {scenario_name}\nprovider: {provider}\ndeployer: {deployer}\n"
                     "control_plane: {memory: 2048}\n")
        s = scenario.load(str(p))
        prov = vprov.VagrantProvider(Lab(tmp_path / "lab"), Topology.of(s))
        real = remotelib.connect(host, port=port, user=user, key_filename=key)
        prov._remotes = {n.name: PathRemote(real, stubs, state) for n in prov.topo.nodes}
        prov.fs_root = str(root)
        return prov
    make.calls = lambda: (state / "calls.log").read_text().splitlines() \
        if (state / "calls.log").exists() else []
    make.root = root
    make.state = state
    return make


pytestmark = pytest.mark.ssh


def _spec(prov, node: str, service: str):
    """The service as the deploy layer describes it for this lab (who runs it, how)."""
    from lab.deploy import controlplane
    from lab.deploy.pki import lab_pki
    from lab.render import LabSecrets
    specs = controlplane.kubespray_specs(prov.topo) if prov.topo.scenario.uses_kubespray \
        else controlplane.plan_for(prov, prov.topo, lab_pki(prov.topo), LabSecrets.generate())
    return next(s for s in specs if s.node == node and s.name == service)


def test_stop_apiserver_on_kubespray_moves_the_manifest_out_and_back(vm_provider):
    prov = vm_provider()
    manifest = vm_provider.root / "etc/kubernetes/manifests/kube-apiserver.yaml"
    parked = vm_provider.root / "etc/kubernetes/halab-stopped/kube-apiserver.yaml"
    api = _spec(prov, "k8s-node1", "kube-apiserver")
    assert api.manifest == "kube-apiserver.yaml" and not api.managed
    prov.stop_service(api)
    assert not manifest.exists() and parked.read_text() == "kind: Pod\n"
    prov.stop_service(api)  # twice is harmless
    assert parked.exists()
    prov.start([api])
    assert manifest.exists() and not parked.exists()
    assert vm_provider.calls() == []  # no systemctl: kubelet does the stopping


def test_stop_etcd_and_lb_use_the_units(vm_provider):
    prov = vm_provider()
    etcd, lb = _spec(prov, "k8s-node1", "etcd"), _spec(prov, "admin-lb", "haproxy")
    prov.stop_service(etcd)
    prov.stop_service(lb)
    prov.start([lb, etcd])
    assert vm_provider.calls() == ["systemctl stop etcd", "systemctl stop haproxy",
                                   "systemctl start haproxy", "systemctl start etcd"]


def test_static_deployer_units_are_halab_prefixed(vm_provider):
    prov = vm_provider(deployer="static")
    prov.stop_service(_spec(prov, "k8s-node1", "kube-apiserver"))
    prov.stop_service(_spec(prov, "k8s-node1", "etcd"), hard=True)
    prov.stop_service(_spec(prov, "admin-lb", "haproxy"))
    assert vm_provider.calls() == ["systemctl stop halab-kube-apiserver",
                                   "systemctl kill -s KILL halab-etcd",
                                   "systemctl stop halab-etcd", "systemctl stop haproxy"]


def test_the_vm_provider_never_asks_which_deployer_built_the_lab():
    """Deployer knowledge travels in the service specs (lab.deploy.controlplane)."""
    import inspect
    from lab.providers.vagrant import provider as vagrant_provider
    from lab.providers.local import provider as local_provider
    for module in (vagrant_provider, local_provider):
        assert ".deployer" not in inspect.getsource(module), module.__name__


def test_partition_drops_the_lab_nic_only_and_heal_removes_every_rule(vm_provider):
    prov = vm_provider()
    prov.partition("k8s-node1")
    prov.partition("k8s-node1")  # idempotent: rules are not doubled
    rules = (vm_provider.state / "iptables.rules").read_text().splitlines()
    assert sorted(rules) == sorted([
        "INPUT -i eth1 -m comment --comment halab-partition -j DROP",
        "OUTPUT -o eth1 -m comment --comment halab-partition -j DROP"])
    prov.heal("k8s-node1")
    assert (vm_provider.state / "iptables.rules").read_text() == ""
    assert any(c.startswith("ip -o -4 addr show") for c in vm_provider.calls())


@pytest.mark.parametrize("provider,off,pause,resume", [
    ("libvirt", "virsh -c qemu:///system destroy halab-case2-k8s-node1",
     "virsh -c qemu:///system suspend halab-case2-k8s-node1",
     "virsh -c qemu:///system resume halab-case2-k8s-node1"),
    ("virtualbox", "VBoxManage controlvm case2-k8s-node1 poweroff",
     "VBoxManage controlvm case2-k8s-node1 pause", "VBoxManage controlvm case2-k8s-node1 resume"),
])
def test_kill_and_freeze_use_the_hypervisor(vm_provider, provider, off, pause, resume):
    prov = vm_provider(provider=provider)
    prov.power_off("k8s-node1")
    prov.freeze("k8s-node2")
    prov.thaw("k8s-node2")
    assert vm_provider.calls() == [off, pause.replace("node1", "node2"),
                                   resume.replace("node1", "node2")]


def test_power_off_is_never_vagrant_halt():
    for provider in ("libvirt", "virtualbox"):
        argv = vprov.power_off_argv(provider, "lab", "n1")
        assert "halt" not in argv and argv[0] in ("virsh", "VBoxManage")


def test_static_files_arrive_in_one_upload_with_their_modes(vm_provider):
    prov = vm_provider(deployer="static")
    prov.put_files("k8s-node1", {"/var/lib/halab/pki/ca.key": ("KEY", 0o600),
                                 "/var/lib/halab/pki/ca.crt": (b"CRT", 0o644),
                                 "/etc/systemd/system/halab-etcd.service": ("[Unit]\n", 0o644)})
    root = vm_provider.root
    key = root / "var/lib/halab/pki/ca.key"
    assert key.read_text() == "KEY" and (key.stat().st_mode & 0o777) == 0o600
    assert (root / "var/lib/halab/pki/ca.crt").stat().st_mode & 0o777 == 0o644
    assert (root / "etc/systemd/system/halab-etcd.service").read_text() == "[Unit]\n"
    assert not list(Path("/tmp").glob("halab-files-*.tgz"))  # the upload is cleaned up


def test_static_units_start_etcd_everywhere_then_one_api_server_at_a_time(vm_provider):
    """Three API servers starting at once starve emulated VMs; each waits for the one before."""
    from lab.deploy.controlplane import plan
    from lab.render import LabSecrets
    from lab.deploy.pki import lab_pki
    prov = vm_provider(deployer="static")
    specs = [s for s in plan(prov.topo, lab_pki(prov.topo), prov.layout,
                             LabSecrets.generate(), "eth1") if s.node.startswith("k8s-node")]
    progress = []
    prov._start_units(specs, progress.append)
    calls = [c for c in vm_provider.calls()]
    cps = [c.name for c in prov.topo.control_planes]
    want = ["systemctl start --no-block halab-etcd" for _ in cps]
    for i, cp in enumerate(cps):
        want.append("systemctl start --no-block halab-kube-apiserver "
                    "halab-kube-controller-manager halab-kube-scheduler")
        if i < len(cps) - 1:
            ip = prov.topo.node(cp).ip
            want.append("curl -skf --max-time 10 --retry 100000 --retry-delay 3 "
                        "--retry-all-errors --retry-max-time 900 -o /dev/null "
                        f"https://{ip}:6443/readyz")
    # then the Case 2 workers' nginx proxies
    want += ["systemctl start --no-block halab-nginx-proxy" for _ in prov.topo.workers]
    assert prov.topo.workers and calls == want
    assert sum("answers after" in p for p in progress) == len(cps) - 1


def test_static_unit_waits_for_its_api_server_and_never_gives_up():
    from lab.providers.local.procs import ServiceSpec
    unit = vprov.systemd_unit(ServiceSpec("k8s-node1", "kube-scheduler", ("/opt/halab/bin/kube-scheduler",),
                                          after_url="https://127.0.0.1:6443/healthz"))
    assert "StartLimitIntervalSec=0" in unit and "Restart=always" in unit
    assert "ExecStartPre=/bin/sh -c 'until curl -skf" in unit and "TimeoutStartSec=infinity" in unit
    assert "--retry-all-errors" in unit  # one process asks again: no process start per poll
    plain = vprov.systemd_unit(ServiceSpec("k8s-node1", "etcd", ("/opt/halab/bin/etcd",)))
    assert "ExecStartPre" not in plain


def test_emulated_control_planes_get_slower_timers_and_real_ones_do_not():
    """Leader election that survives a 16 s request on an emulated VM; defaults elsewhere."""
    from lab.deploy import controlplane
    from lab.deploy.pki import lab_pki
    from lab.render import LabSecrets
    from lab.model.scenario import load
    from lab.model.topology import Topology
    topo = Topology.of(load(str(Path(__file__).resolve().parents[1] / "scenarios" / "case2.yaml")))
    pki, secrets = lab_pki(topo), LabSecrets.generate()
    for emulated in (True, False):
        def lay(node, emulated=emulated):
            return controlplane.Layout(base="/var/lib/halab", k8s_bin="/opt/halab/bin",
                                       local=False, emulated=emulated)
        specs = controlplane.plan(topo, pki, lay, secrets, "eth1")
        for name in ("kube-controller-manager", "kube-scheduler"):
            argv = next(s.argv for s in specs if s.name == name)
            assert ("--leader-elect-retry-period=10s" in argv) is emulated, (name, emulated)
            assert ("--leader-elect-renew-deadline=45s" in argv) is emulated
        api = next(s.argv for s in specs if s.name == "kube-apiserver")
        assert ("--watch-cache=false" in api) is emulated


def test_drills_read_a_vm_load_balancer_once_a_second_and_a_local_one_often(vm_provider):
    """An SSH session per read, back to back, kept an emulated admin-lb at 56 % of a core."""
    from lab.drill.engine import Settings
    assert Settings().fitted(vm_provider()).state_poll_interval == 1.0
    from tests.support.fake_provider import FakeProvider
    assert Settings().fitted(FakeProvider()).state_poll_interval == 0.25   # a local lab
    assert Settings(state_poll_interval=3.0).fitted(vm_provider()).state_poll_interval == 3.0


def test_virsh_talks_to_the_connection_vagrant_libvirt_uses(monkeypatch):
    """As a user, plain virsh would ask qemu:///session and see none of the lab's VMs."""
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI", raising=False)
    assert vprov.power_off_argv("libvirt", "c", "n1")[:3] == ["virsh", "-c", "qemu:///system"]
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "qemu+unix:///system?socket=/run/x.sock")
    assert vprov.vm_control_argv("libvirt", "c", "n1", "pause") == [
        "virsh", "-c", "qemu+unix:///system?socket=/run/x.sock", "suspend", "halab-c-n1"]


def test_a_host_command_gets_its_input(tmp_path):
    """`kubectl apply -f -` from the host (the prober's role binding) reads stdin."""
    from lab.model import scenario as scen
    prov = vprov.VagrantProvider(Lab(tmp_path / "lab"),
                                 Topology.of(scen.load("case2", provider="libvirt")))
    assert prov.run("client", ["cat"], input="kind: ClusterRoleBinding\n").stdout == \
        "kind: ClusterRoleBinding\n"


def test_static_nodes_on_vms_are_units_with_a_tmp_of_their_own(vm_provider, tmp_path):
    """With kubemark beside the Kubernetes binaries, every node of a static VM lab runs
    a hollow kubelet and kube-proxy as units: each waits for the API server its Case
    gives it, and the kubelet gets a /tmp of its own (its fake runtime's socket)."""
    from lab.deploy import controlplane
    from lab.deploy.pki import lab_pki
    from lab.render import LabSecrets
    prov = vm_provider(deployer="static")
    assert prov.layout("k8s-node1").kubemark == ""      # no kubemark: no nodes
    bins = tmp_path / "k8s"
    bins.mkdir()
    (bins / "kubemark").write_bytes(b"\x7fELF")
    prov.k8s_bin_dir = str(bins)
    assert prov.layout("k8s-node1").kubemark == "/opt/halab/bin/kubemark"
    specs = controlplane.plan_for(prov, prov.topo, lab_pki(prov.topo), LabSecrets.generate())
    kubelets = {s.node: s for s in specs if s.name == "kubelet"}
    assert set(kubelets) == {n.name for n in (*prov.topo.control_planes, *prov.topo.workers)}
    cp = vprov.systemd_unit(kubelets["k8s-node1"])
    assert "PrivateTmp=yes" in cp and "https://127.0.0.1:6443/healthz" in cp
    assert "--morph=kubelet --name=k8s-node1" in cp
    worker = vprov.systemd_unit(kubelets[prov.topo.workers[0].name])
    assert "https://localhost:6443/healthz" in worker      # Case 2: its nginx proxy
    proxy = vprov.systemd_unit(next(s for s in specs if s.name == "kube-proxy"))
    assert "PrivateTmp" not in proxy and "--morph=proxy" in proxy
