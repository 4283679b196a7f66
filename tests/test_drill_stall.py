"""A lab that stalls on its own during a drill (markers `drill`, `local`; root).

CI met this on emulated VMs: during `drill stop-lb` on a one-control-plane Case 2
lab, k8s-node1 answered nothing for 12 s (a starved VM). Its direct probes (15 s
timeout) came back late but OK; the worker's nginx (1 s connect timeout) failed, and
the verdict blamed the fault. Here the same shape is made for real: while the fault
is active, k8s-node1's namespace drops every new connection to the API port for 4 s.
"""
from __future__ import annotations

import subprocess
import time

import pytest

from lab.providers.local import netns
from tests.support.drill_labs import HALAB, explain, healthy_after, lab_fixture, marks, path

pytestmark = marks()

STALL = 4.0
# a new connection to the API port, except the node's own components (loopback)
RULE = ["INPUT", "-p", "tcp", "--dport", "6443", "--syn", "!", "-i", "lo", "-j", "DROP"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    yield from lab_fixture("case2", tmp_path_factory, extra_yaml=(
        "control_plane: {count: 1}\nworker: {count: 1}\ndrills: []\n"))


def _iptables(ns: str, action: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, "iptables", action, *RULE],
                          capture_output=True, text=True)


def test_a_control_plane_stall_is_the_labs_not_the_faults(lab):
    ns = netns.ns_name(lab.name, "k8s-node1")
    before = set(lab.journal_ids())
    # direct probes may wait out the SYN retransmits (1 + 2 + 4 s): give them 10 s, and
    # fewer of them (the prober counts 20 in flight as a failure)
    proc = subprocess.Popen(HALAB + ["drill", "stop-lb", "-q", "--duration", "12",
                                     "--probe-timeout", "10", "--probe-interval", "0.5",
                                     "--lab", lab.name],
                            cwd=lab.folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    dropped = False
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            new = sorted(set(lab.journal_ids()) - before)
            if new and lab.journal(new[-1]).get("times", {}).get("injected"):
                break
            time.sleep(0.2)
        time.sleep(2.0)                    # the fault alone first: the worker is fine
        assert _iptables(ns, "-I").returncode == 0
        dropped = True
        time.sleep(STALL)
        assert _iptables(ns, "-D").returncode == 0
        dropped = False
        out, _ = proc.communicate(timeout=300)
    finally:
        if dropped:
            _iptables(ns, "-D")
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    new = sorted(set(lab.journal_ids()) - before)
    j = lab.journal(new[-1])
    v = j["verdict"]
    w = path(j, "worker:k8s-node2")
    # the stall happened, and the direct probes saw it as slow answers, not failures
    assert path(j, "direct:k8s-node1")["max_latency"] >= 2.0, explain(j)
    assert path(j, "direct:k8s-node1")["failures"] == 0, explain(j)
    assert 2.0 <= v["lab_stall_seconds"] <= STALL + 5, explain(j)
    # nginx's 1 s connect timeout failed the worker's probes in it: laid on the stall
    assert w["excused_lab"] > 0 and w["measured"] == "up" and w["agree"], explain(j)
    assert path(j, "external")["measured"] == "down", explain(j)   # the fault's own effect
    assert proc.returncode == 0, out
    assert "lab stalled on its own during the fault" in out, out
    assert healthy_after(j)
