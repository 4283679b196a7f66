"""Drills on a real local Case 3 lab: one HAProxy for everybody (markers `drill`, `local`)."""
from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.support.drill_labs import (HALAB, explain, healthy_after, lab_fixture, marks,
                                      node_lanes, path, wait_for, went_not_ready, workers)

pytestmark = marks()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    yield from lab_fixture("case3", tmp_path_factory)


def test_stop_lb_takes_the_whole_cluster_down(lab):
    # longer than node-monitor-grace-period (40 s): the node controller gives up on them
    cp, j = lab.drill("stop-lb", duration=60)
    assert path(j, "external")["measured"] == "down", explain(j)
    for w in workers(j):          # the seed's Case 3: the LB is a SPOF for kubelets too
        assert path(j, w)["measured"] == "down", explain(j)
    for key in ("direct:k8s-node1", "direct:k8s-node2", "direct:k8s-node3", "write"):
        assert path(j, key)["failures"] <= 1, explain(j)
    # ... and the cluster saw it: every worker NotReady, the control planes not
    lanes = node_lanes(j)
    for node, lane in lanes.items():
        worker = f"worker:{node}" in j["verdict"]["paths"]
        assert bool(went_not_ready(lane)) == worker, (node, lane)
        assert j["verdict"]["nodes"][node]["agree"], j["verdict"]["nodes"][node]
        if worker:   # 40 s after its last renewal, seen within the controller's 5 s period
            assert went_not_ready(lane)[0] <= 50, (node, lane)
            assert lane["max_heartbeat_gap"] >= 50, (node, lane)
    assert cp.returncode == 0, explain(j)
    assert healthy_after(j)


def test_partition_a_control_plane(lab):
    cp, j = lab.drill("partition", "k8s-node2")
    assert path(j, "direct:k8s-node2")["measured"] == "down", explain(j)
    assert j["verdict"]["haproxy_down_after"]["admin-lb/k8s-node2"] < 5, explain(j)
    for w in workers(j):          # through HAProxy: failures stop while still cut off
        assert path(j, w)["measured"] in ("up", "blip"), explain(j)
    assert healthy_after(j), explain(j)


def test_sigterm_mid_drill_restores_first(lab):
    proc = subprocess.Popen(HALAB + ["drill", "kill", "k8s-node3", "--duration", "120", "-q",
                                     "--lab", lab.name], cwd=lab.folder,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(lambda: lab.record().faults, 90), "the fault was never injected"
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out
    assert "restoring the lab first" in out and "restored: kill k8s-node3" in out
    assert not lab.record().faults
    j = lab.journal(lab.journal_ids()[-1])
    assert j["status"] == "interrupted" and j["times"]["restored"] > j["times"]["inject_start"]
    assert wait_for(lambda: lab.verify().returncode == 0, 120, step=3), lab.verify().stdout
