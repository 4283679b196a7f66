"""The nodes of halab's own control plane, as a plan (pure: no process starts here).

Every control plane and worker runs kubemark's hollow kubelet and kube-proxy, each with
its own identity, on the server its Case gives it. The real runs are in
tests/test_local_nodes.py; the API's answers parsed here were recorded from one.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lab.deploy import controlplane, pki as pkilib, verify
from lab.model import scenario
from lab.model.services import Layout
from lab.model.topology import Topology
from lab.render import LabSecrets

DATA = Path(__file__).parent / "data" / "nodes"


def _topo(tmp_path: Path, case: str) -> Topology:
    p = tmp_path / f"{case}.yaml"
    p.write_text(f"extends: {case}\nname: np\nprovider: local\ndeployer: static\n")
    return Topology.of(scenario.load(str(p)))


def _plan(topo: Topology, kubemark: str = "/k8s/kubemark"):
    pki = pkilib.lab_pki(topo)

    def layout(node):
        return Layout(base=f"/lab/nodes/{node}", k8s_bin="/k8s", kubemark=kubemark)
    return controlplane.plan(topo, pki, layout, LabSecrets.generate()), pki


def _kubeconfig(spec, name):
    text = next(v for k, v in spec.files.items() if k.endswith(name))
    return yaml.safe_load(text)


def _subject(cfg) -> dict:
    import base64
    pem = base64.b64decode(cfg["users"][0]["user"]["client-certificate-data"])
    return pkilib.cert_info(pem)


@pytest.mark.parametrize("case,worker_server", [
    ("case1", "https://localhost:6443"), ("case2", "https://localhost:6443"),
    ("case3", "https://k8s-api.np.lab:6443")])
def test_every_node_runs_a_kubelet_and_a_kube_proxy_on_its_cases_server(tmp_path, case,
                                                                        worker_server):
    topo = _topo(tmp_path, case)
    specs, _ = _plan(topo)
    nodes = [n.name for n in (*topo.control_planes, *topo.workers)]
    assert [s.node for s in specs if s.name == "kubelet"] == nodes
    assert [s.node for s in specs if s.name == "kube-proxy"] == nodes
    # after everything they talk to: the proxies and load balancers start first
    names = [s.name for s in specs]
    assert names.index("kubelet") > max(i for i, n in enumerate(names)
                                        if n in ("nginx-proxy", "haproxy", "kube-apiserver"))
    for s in specs:
        if s.name not in ("kubelet", "kube-proxy"):
            continue
        node = next(n for n in topo.nodes if n.name == s.node)
        cfg = _kubeconfig(s, f"{s.name}.kubeconfig")
        server = cfg["clusters"][0]["cluster"]["server"]
        assert server == ("https://127.0.0.1:6443" if node.is_control_plane else worker_server)
        assert s.argv[0] == "/k8s/kubemark" and f"--name={s.node}" in s.argv
        who = _subject(cfg)
        if s.name == "kubelet":
            assert who["cn"] == [f"system:node:{s.node}"] and who["o"] == ["system:nodes"]
            assert "--morph=kubelet" in s.argv and "--kubelet-read-only-port=0" in s.argv
            assert s.private_tmp == f"/lab/nodes/{s.node}/tmp/kubelet"
            tainted = f"--register-with-taints={controlplane.CONTROL_PLANE_TAINT}" in s.argv
            assert tainted == node.is_control_plane
        else:
            assert who["cn"] == ["system:kube-proxy"] and who["o"] == []
            assert "--morph=proxy" in s.argv and not s.private_tmp


def test_a_worker_kubelet_path_is_the_one_the_topology_names(tmp_path):
    topo = _topo(tmp_path, "case2")
    for w in topo.workers:
        assert controlplane.node_api_server(topo, w) == topo.worker_path(w).server


def test_without_kubemark_the_lab_has_no_nodes(tmp_path):
    specs, _ = _plan(_topo(tmp_path, "case2"), kubemark="")
    assert not {"kubelet", "kube-proxy"} & {s.name for s in specs}


def test_the_api_server_holds_kubelets_to_their_own_objects(tmp_path):
    specs, _ = _plan(_topo(tmp_path, "case2"))
    api = next(s for s in specs if s.name == "kube-apiserver")
    assert "--authorization-mode=Node,RBAC" in api.argv
    assert "--enable-admission-plugins=NodeRestriction" in api.argv


def test_workload_replicas_spread_over_the_workers(tmp_path):
    assert verify.workload_replicas(_topo(tmp_path, "case2")) == 2
    topo = _topo(tmp_path, "mini")
    assert len(topo.workers) == 1 and verify.workload_replicas(topo) == 2
    text = verify.workload_manifest(topo, 2)
    docs = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in docs] == ["Namespace", "Deployment", "PodDisruptionBudget"]
    assert docs[1]["spec"]["replicas"] == 2
    assert docs[2]["apiVersion"] == "policy/v1beta1"    # Kubernetes 1.20
    assert all(d["metadata"].get("namespace", d["metadata"]["name"]) == "halab-workload"
               for d in docs)


def test_nodes_and_pods_as_the_api_answered(tmp_path):
    """`kubectl get nodes/pods -o json` recorded from a local case2 lab."""
    nodes = verify.parse_nodes(json.loads((DATA / "nodes.json").read_text()))
    assert set(nodes) == {"k8s-node1", "k8s-node2", "k8s-node3", "k8s-node4", "k8s-node5"}
    assert all(n["ready"] and n["version"] == "v1.20.2" for n in nodes.values())
    assert nodes["k8s-node4"]["address"] == "192.168.10.14"
    assert nodes["k8s-node1"]["taints"] == ["node-role.kubernetes.io/master:NoSchedule"]
    assert nodes["k8s-node4"]["taints"] == []
    pods = verify.parse_pods(json.loads((DATA / "pods.json").read_text()))
    assert len(pods) == 2 and all(p["phase"] == "Running" and p["ready"] for p in pods)
    assert {p["node"] for p in pods} == {"k8s-node4", "k8s-node5"}



@pytest.mark.parametrize("local", [True, False])
def test_node_agents_sharing_the_host_run_on_one_go_thread_each(tmp_path, local):
    # locally the five nodes' agents share two cores with the control plane (their idle
    # cost, benchmarks/local_up.py); on a VM they keep Go's default, as a real kubelet
    topo = _topo(tmp_path, "case2")
    specs = controlplane.plan(topo, pkilib.lab_pki(topo), lambda node: Layout(
        base=f"/lab/nodes/{node}", k8s_bin="/k8s", kubemark="/k8s/kubemark", local=local),
        LabSecrets.generate())
    for s in specs:
        agent = s.name in ("kubelet", "kube-proxy")
        assert s.env == ({"GOMAXPROCS": "1"} if agent and local else {}), (s.node, s.name)
