"""Drills on a real local Case 3 lab: one HAProxy for everybody (markers `drill`, `local`)."""
from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.support.drill_labs import (ARTIFACTS, HALAB, assert_local_only, explain,
                                      healthy_after, lab_fixture, live_drill, marks,
                                      node_lanes, path, wait_for, went_not_ready, workers)

from tests.support.browser import free_port, replay_samples

pytestmark = marks()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    yield from lab_fixture("case3", tmp_path_factory)


def test_stop_lb_takes_the_whole_cluster_down(lab):
    # longer than node-monitor-grace-period (40 s): the node controller gives up on them;
    # watched live in a real browser (the classroom's projector view)
    cp, j, watcher = live_drill(lab, "stop-lb", duration=60, shot="live-case3-stop-lb.png")
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
    # the drill waited for the nodes' own recovery: Ready again, renewing again
    assert j["times"]["nodes_recovered"] >= j["times"]["recovered"], j["times"]
    if watcher is None:
        return
    # what the room saw, live: the external lane and every worker's turned red while
    # the LB was down, the workers' nodes went NotReady, the markers and the verdict came
    during = watcher.during_fault()
    assert any(s["lanes"].get("path:external") == "fail" for s in during), during[-3:]
    for w in workers(j):
        assert any(s["lanes"].get(f"path:{w}") == "fail" for s in during), w
        node = w.split(":", 1)[1]
        assert any(s["lanes"].get(f"node:{node}:Ready") == "fail"
                   for s in watcher.samples), node
    final = watcher.final()
    assert {"injected", "restore", "restored", "recovered",
            "nodes-recovered"} <= set(final["markers"]), final
    assert final["verdict"] == "true" and final["status"] == "completed", final
    for w in workers(j):     # at the end the room sees the workers back
        node = w.split(":", 1)[1]
        assert final["lanes"][f"node:{node}:Ready"] == "ok", final["lanes"]
        assert final["lanes"][f"node:{node}:heartbeats"] == "ok", final["lanes"]
    assert_local_only(watcher)
    # the replay of the journal shows the same lanes, in the same final states
    port = free_port()
    proc = subprocess.Popen(HALAB + ["drill", "report", j["id"], "--no-html", "--serve",
                                     "--port", str(port), "--linger", "60", "--lab", lab.name],
                            cwd=lab.folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        replay = replay_samples(f"http://127.0.0.1:{port}/")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert replay["lanes"] == final["lanes"], (replay["lanes"], final["lanes"])
    assert replay["markers"] == final["markers"] and replay["verdict"] == "true"
    assert (ARTIFACTS / "live-case3-stop-lb.png").stat().st_size > 10_000


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
