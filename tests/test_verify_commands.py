"""Which command `halab verify` (and the deploy's readiness wait) sends along each access
path, and on which node. No VM and no namespace: the node is a recording stand-in whose
answers are what halab's prober prints (its real runs are in the local and VM tests)."""
from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from lab.model import scenario
from lab.state import Lab
from tests.support.fake_provider import FakeProvider
from lab.providers.vagrant.provider import VagrantProvider
from lab.model.topology import Topology
from lab.deploy.verify import check_path, node_probe_command, path_command


def _topo(tmp_path: Path, deployer: str = "static", provider: str = "libvirt") -> Topology:
    p = tmp_path / "lab.yaml"
    p.write_text(f"extends: case2\nname: vc\nprovider: {provider}\ndeployer: {deployer}\n")
    return Topology.of(scenario.load(str(p)))


def _paths(topo):
    return {p.key: p for p in topo.access_paths()}


def test_client_paths_use_this_hosts_kubectl_with_the_paths_context(tmp_path):
    topo = _topo(tmp_path)
    k8s = tmp_path / "k8s"
    k8s.mkdir()
    (k8s / "kubectl").write_text("")
    lab = Lab(tmp_path / "lab")
    prov = VagrantProvider(lab, topo, str(k8s))
    node, argv = path_command(lab, topo, prov, _paths(topo)["external"])
    assert node == "client" and argv[0] == str(k8s / "kubectl")
    assert "--context=vc-lb" in argv and argv[-3:] == ["get", "--raw", "/readyz"]
    _, argv = path_command(lab, topo, prov, _paths(topo)["direct:k8s-node2"])
    assert "--context=vc-k8s-node2" in argv
    with pytest.raises(ValueError):   # a worker has no kubectl: see below
        path_command(lab, topo, prov, _paths(topo)["worker:k8s-node4"])


class Worker(FakeProvider):
    """A node that answers like halab's prober would (and records what it was asked)."""

    def __init__(self, stdout: str, rc: int = 0):
        super().__init__()
        self.stdout, self.rc, self.ran = stdout, rc, []

    def layout(self, node):
        return types.SimpleNamespace(p=lambda name: f"/var/lib/halab/{name}")

    def prober_argv(self, node):
        return ["python3", "/opt/halab/prober.py"]

    def run(self, node, argv, timeout=60):
        self.ran.append((node, argv))
        return subprocess.CompletedProcess(argv, self.rc, self.stdout, "")


@pytest.mark.parametrize("deployer", ["static", "kubespray"])
def test_a_worker_path_is_checked_on_the_worker_by_the_stdlib_prober(tmp_path, deployer):
    topo = _topo(tmp_path, deployer)
    w = Worker(json.dumps({"t": 1.0, "ok": True, "lat": 0.2, "code": 200}) + "\n")
    c = check_path(Lab(tmp_path / "lab"), topo, w, _paths(topo)["worker:k8s-node4"], "3s")
    assert c.ok and c.detail == "ok"
    (node, argv), = w.ran
    assert node == "k8s-node4"
    assert argv == ["python3", "/opt/halab/prober.py", "--mode", "read", "--kubeconfig",
                    "/var/lib/halab/prober.kubeconfig", "--path", "/readyz", "--count", "1",
                    "--timeout", "3"]


def test_a_failing_worker_path_says_what_the_prober_saw(tmp_path):
    topo = _topo(tmp_path)
    w = Worker(json.dumps({"t": 1.0, "ok": False, "lat": 1.0,
                           "err": "ConnectionRefusedError: [Errno 111] refused"}) + "\n")
    c = check_path(Lab(tmp_path / "lab"), topo, w, _paths(topo)["worker:k8s-node5"], "3s")
    assert not c.ok and "refused" in c.detail and "nginx proxy" in c.advice
    w = Worker("", rc=127)
    c = check_path(Lab(tmp_path / "lab"), topo, w, _paths(topo)["worker:k8s-node5"], "3s")
    assert not c.ok and c.detail == "no answer"


def test_the_probe_command_runs_the_real_prober(tmp_path):
    """The argv halab builds is one the prober accepts: against a port nobody listens on
    it prints one failed result and exits 0, as a worker whose proxy is down would."""
    kc = tmp_path / "kubeconfig"
    from lab.deploy import kubeconfig, pki
    topo = _topo(tmp_path, provider="local")
    files = pki.lab_pki(topo)
    cfg = kubeconfig.config([("x", "https://127.0.0.1:9")], "u", files["ca.crt"],
                            files["admin.crt"], files["admin.key"])
    kc.write_text(kubeconfig.dump_for_node(cfg))
    argv = node_probe_command([sys.executable, "-m", "lab.drill.prober"], str(kc), 2)
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, cp.stderr
    (line,) = cp.stdout.splitlines()
    rec = json.loads(line)
    assert rec["ok"] is False and rec["err"]


def test_verify_wait_checks_again_until_every_check_passes_or_time_is_up(monkeypatch, tmp_path):
    """`halab verify --wait N`: a busy lab gets N seconds; the last round is the answer."""
    from lab.app import lab as commands
    from lab.deploy import verify
    from lab.deploy.verify import Check

    rounds = iter([[Check("access path", "external", False, "EOF")],
                   [Check("access path", "external", True, "ok")]])
    monkeypatch.setattr(commands, "open_lab", lambda lab: (None, None, None))
    monkeypatch.setattr(verify, "run_checks", lambda *a, **k: next(rounds))
    monkeypatch.setattr(commands.time, "sleep", lambda s: None)
    lab = Lab(tmp_path / "busy")
    assert commands.verify(lab, wait=60) == 0
    events = [json.loads(l) for l in (lab.logs / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["ok"], e["failed"]) for e in events] == [("verify", True, [])]
    assert lab.record().verify["ok"] is True
    # without --wait one failing round is the answer, and the record says so
    monkeypatch.setattr(verify, "run_checks",
                        lambda *a, **k: [Check("access path", "external", False, "EOF")])
    assert commands.verify(lab, wait=0) == 1
    assert lab.record().verify["failed"] == ["access path external"]
