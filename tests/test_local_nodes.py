"""Real nodes in a local lab (root, marker `local`): kubemark's hollow kubelet and
kube-proxy on every node of a case2 lab, against the lab's real control plane.

`halab up` waits until every node is Ready and halab's workload (a Deployment over the
workers with a PodDisruptionBudget) runs; `halab verify` says so; `halab status` shows
each node's condition; each kubelet renews its own Lease and may touch no other node's
objects (Node authorizer, NodeRestriction); `halab destroy` leaves no kubelet or proxy.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.drill_labs import DrillLab, skip_reason, wait_for

REASON = skip_reason()
KUBEMARK_MISSING = None
if REASON is None:
    from lab.host.k8sbin import find_k8s_binaries
    if not (find_k8s_binaries(check_version=False).directory / "kubemark").is_file():
        KUBEMARK_MISSING = "no kubemark beside the Kubernetes binaries: bash tools/build-k8s.sh"
pytestmark = [pytest.mark.local,
              *([pytest.mark.skip(reason=REASON or KUBEMARK_MISSING)]
                if REASON or KUBEMARK_MISSING else [])]
NODES = ["k8s-node1", "k8s-node2", "k8s-node3", "k8s-node4", "k8s-node5"]
RECORD = os.environ.get("HALAB_RECORD_NODES_DATA")   # refresh tests/data/nodes/*.json


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nodes")
    lab = DrillLab("case2", folder)
    lab.name = f"nd{os.getpid() % 100000}"
    lab.scenario.write_text(f"extends: case2\nname: {lab.name}\n")
    lab.path = folder / ".halab" / lab.name
    try:
        lab.up = lab.halab("up", str(lab.scenario), "--provider", "local", lab=False,
                           timeout=300)
        yield lab
    finally:
        try:
            lab.halab("destroy", "--force", check=False, timeout=180)
        finally:
            lab.kill_leftovers()


def kubectl(lab, *args, check=True) -> subprocess.CompletedProcess:
    return lab.halab("kubectl", "--lab", lab.name, "--", *args, check=check, timeout=60,
                     lab=False)


def test_up_waits_until_every_node_is_ready_and_the_workload_runs(lab):
    out = lab.up.stdout
    assert "nodes Ready 5/5" in out, out
    assert "workload halab-workload/halab-demo: 2 pods Running on k8s-node4, k8s-node5" in out
    deploy = lab.record().deploy
    assert deploy["nodes"] == NODES and deploy["workload_replicas"] == 2
    assert 0 < deploy["nodes_ready_s"] <= deploy["workload_running_s"]

    nodes = json.loads(kubectl(lab, "get", "nodes", "-o", "json").stdout)
    pods = json.loads(kubectl(lab, "-n", "halab-workload", "get", "pods", "-o", "json").stdout)
    if RECORD:
        data = Path(__file__).parent / "data" / "nodes"
        data.mkdir(parents=True, exist_ok=True)
        (data / "nodes.json").write_text(json.dumps(nodes, indent=1) + "\n")
        (data / "pods.json").write_text(json.dumps(pods, indent=1) + "\n")
    by_name = {n["metadata"]["name"]: n for n in nodes["items"]}
    assert sorted(by_name) == NODES
    for name, node in by_name.items():
        status = node["status"]
        # a real version, and the node's own lab address
        assert status["nodeInfo"]["kubeletVersion"] == "v1.20.2", status["nodeInfo"]
        addresses = {a["type"]: a["address"] for a in status["addresses"]}
        assert addresses["InternalIP"] == f"192.168.10.1{name[-1]}", addresses
    assert all(p["status"]["phase"] == "Running" for p in pods["items"])


def test_verify_checks_the_nodes_and_the_workload(lab):
    cp = lab.verify()
    assert cp.returncode == 0, cp.stdout
    assert "nodes Ready" in cp.stdout and "Ready 5/5" in cp.stdout
    assert "2/2 pods Running on k8s-node4, k8s-node5" in cp.stdout


def test_status_shows_each_nodes_condition(lab):
    cp = lab.halab("status")
    rows = {line.split()[0]: line for line in cp.stdout.splitlines()[3:] if line.strip()}
    for n in NODES:
        assert " Ready " in rows[n], cp.stdout
        assert "kubelet:running" in rows[n] and "kube-proxy:running" in rows[n]
    assert " - " in rows["admin-lb"]


def test_each_kubelet_renews_its_own_lease_and_touches_no_other_node(lab):
    leases = json.loads(kubectl(lab, "-n", "kube-node-lease", "get", "leases",
                                "-o", "json").stdout)
    holders = {l["metadata"]["name"]: l["spec"]["holderIdentity"] for l in leases["items"]}
    assert holders == {n: n for n in NODES}
    # k8s-node4's own identity may not change k8s-node5 (the Node authorizer and
    # NodeRestriction): the kubeconfig its kubelet uses, through its own path
    kc = lab.path / "nodes" / "k8s-node4" / "kubelet.kubeconfig"
    from lab.host.k8sbin import find_k8s_binaries
    kubectl_bin = str(find_k8s_binaries(check_version=False).kubectl)

    def label(node, value):
        return lab.halab("ssh", "--lab", lab.name, "k8s-node4", "--", kubectl_bin,
                         f"--kubeconfig={kc}", "label", "node", node, f"halab-test={value}",
                         "--overwrite", check=False, lab=False)
    own, other = label("k8s-node4", "own"), label("k8s-node5", "other")
    assert own.returncode == 0, own.stdout + own.stderr
    assert other.returncode != 0 and "forbidden" in (other.stdout + other.stderr).lower()


def test_a_killed_kubelet_is_restarted_and_its_node_is_ready_again(lab):
    from lab.providers.local import procs
    pidfile = lab.path / "run" / "k8s-node5" / "kubelet.pid"
    loop = int(pidfile.read_text().split()[0])
    child = procs._children(loop)[0]
    os.kill(child, 9)
    assert wait_for(lambda: procs._children(loop) and procs._children(loop)[0] != child
                    and "--morph=kubelet" in procs._cmdline(procs._children(loop)[0]), 10)
    # the restarted kubelet keeps its environment: one Go thread, as the plan says
    env = Path(f"/proc/{procs._children(loop)[0]}/environ").read_bytes().split(b"\0")
    assert b"GOMAXPROCS=1" in env
    # a new kubelet reports NotReady until its runtime and pod lifecycle checks have run
    cp = lab.halab("verify", "--wait", "60", check=False, timeout=120)
    assert cp.returncode == 0, cp.stdout


EVICT_ME = """apiVersion: v1
kind: Pod
metadata: {name: evict-me, namespace: default}
spec:
  nodeName: k8s-node5
  containers: [{name: pause, image: k8s.gcr.io/pause:3.2}]
  tolerations:
  - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
  - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
"""


def test_a_frozen_worker_outliving_a_pods_toleration_has_it_evicted(lab, tmp_path):
    # a pod that tolerates its node's unreachable taint for 2 s only; halab's workload
    # keeps the default 300 s. Frozen 60 s, the node goes NotReady after the grace period
    # (40 s), the node controller taints it and evicts the short-tolerating pod
    manifest = tmp_path / "evict-me.yaml"
    manifest.write_text(EVICT_ME)
    kubectl(lab, "apply", "-f", str(manifest))
    assert wait_for(lambda: "Running" in kubectl(lab, "get", "pod", "evict-me", "-o",
                                                 "jsonpath={.status.phase}").stdout, 30)
    cp, j = lab.drill("freeze", "k8s-node5", duration=60)
    lane = j["nodes"]["k8s-node5"]
    assert any(not tr["ready"] for tr in lane["ready_transitions"]), lane
    evicted = lane.get("evictions", [])
    assert [e["pod"] for e in evicted] == ["default/evict-me"], (lane, cp.stdout)
    not_ready = next(tr["t"] for tr in lane["ready_transitions"] if not tr["ready"])
    assert not_ready <= evicted[0]["t"] <= 60, (lane, cp.stdout)
    report = lab.halab("drill", "report", j["id"], "--no-html").stdout
    assert "1 pod(s) evicted from" in report and "default/evict-me" in report, report
    # nobody else lost a pod: the workload's tolerate 300 s, the other nodes were fine
    assert all(not n.get("evictions") for name, n in j["nodes"].items() if name != "k8s-node5")
    cp = lab.halab("verify", "--wait", "60", check=False, timeout=120)
    assert cp.returncode == 0, cp.stdout


def test_destroy_leaves_no_kubelet_or_proxy(lab):
    cp = lab.halab("destroy", "--force")
    assert "nothing left behind" in cp.stdout, cp.stdout
    ps = subprocess.run(["pgrep", "-af", "kubemark"], capture_output=True, text=True).stdout
    assert lab.name not in ps, ps
    assert not lab.path.exists() or not (lab.path / "nodes").exists()
