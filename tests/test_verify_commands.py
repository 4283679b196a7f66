"""Which command `halab verify` (and the deploy's readiness wait) sends along each access
path, and on which node: pure, no VM and no namespace needed."""
from __future__ import annotations

from pathlib import Path

import pytest

from lab import scenario
from lab.labdir import Lab
from lab.providers.local import LocalProvider
from lab.providers.vagrant import VM_BIN, VagrantProvider
from lab.topology import Topology
from lab.verify import path_command


def _topo(tmp_path: Path, deployer: str, provider: str = "libvirt") -> Topology:
    p = tmp_path / "lab.yaml"
    p.write_text(f"extends: case2\nname: vc\nprovider: {provider}\ndeployer: {deployer}\n")
    return Topology.of(scenario.load(str(p)))


def _paths(topo):
    return {p.key: p for p in topo.access_paths()}


@pytest.mark.parametrize("deployer, on_worker", [("static", f"{VM_BIN}/kubectl"),
                                                 ("kubespray", "kubectl")])
def test_a_vm_worker_path_runs_the_kubectl_that_is_on_the_worker(tmp_path, deployer, on_worker):
    topo = _topo(tmp_path, deployer)
    k8s = tmp_path / "k8s"
    k8s.mkdir()
    (k8s / "kubectl").write_text("")
    prov = VagrantProvider(Lab(tmp_path / "lab"), topo, str(k8s))
    lab = Lab(tmp_path / "lab")
    node, argv = path_command(lab, topo, prov, _paths(topo)["worker:k8s-node4"])
    assert node == "k8s-node4"
    # the host's cache path does not exist on the VM: the worker's own kubectl
    assert argv[0] == on_worker
    assert argv[1] == "--kubeconfig=/var/lib/halab/kubeconfig"
    node, argv = path_command(lab, topo, prov, _paths(topo)["external"])
    assert node == "client" and argv[0] == str(k8s / "kubectl")
    assert "--context=vc-lb" in argv


def test_a_local_worker_path_uses_the_hosts_kubectl_in_its_namespace(tmp_path):
    topo = _topo(tmp_path, "static", provider="local")
    k8s = tmp_path / "k8s"
    k8s.mkdir()
    (k8s / "kubectl").write_text("")
    prov = LocalProvider(Lab(tmp_path / "lab"), topo, str(k8s))
    node, argv = path_command(Lab(tmp_path / "lab"), topo, prov,
                              _paths(topo)["worker:k8s-node5"])
    assert node == "k8s-node5" and argv[0] == str(k8s / "kubectl")
