"""Pure: the drill journal's `nodes` and `long_lived` sections, from watch records.

The records are shaped as `python -m lab.drill.prober --mode watch` prints them (its real
runs are in the local drill tests): Lease renewals dated by the kubelet, Node changes,
and the watch connection's own open/broken events.
"""
from __future__ import annotations

from lab.drill import nodes

INJ = 1000.0


def _journal(watches: dict) -> dict:
    return {"times": {"probes_started": INJ - 5, "inject_start": INJ, "restore_start": INJ + 45,
                      "probes_stopped": INJ + 70, "finished": INJ + 80},
            "watches": watches}


def lease(t, node, renew):
    return {"t": t, "kind": "lease", "node": node, "renew": renew}


def node(t, name, ready, taints=()):
    return {"t": t, "kind": "node", "node": name, "ready": ready,
            "reason": "KubeletReady" if ready else "NodeStatusUnknown", "taints": list(taints)}


def test_heartbeat_gaps_come_from_the_kubelets_renew_times_whichever_watch_saw_them():
    # k8s-node4 renews every 10 s but misses two while its API server is dead; the
    # external watch saw the early renewals, the worker's own watch the late ones
    early = [lease(INJ + r + 0.1, "k8s-node4", INJ + r) for r in (-10, 0)]
    late = [lease(INJ + r + 0.1, "k8s-node4", INJ + r) for r in (30, 40, 50, 60)]
    j = _journal({"watch:external": early, "watch:worker:k8s-node4": late,
                  "nodes": [node(INJ - 4, "k8s-node4", True), node(INJ + 62, "k8s-node4", True)]})
    lane = nodes.node_lanes(j)["k8s-node4"]
    assert lane["max_heartbeat_gap"] == 30.0 and lane["gap_from"] == 0.0
    assert lane["renewals"] == 5          # inside the window (+0 ... +60)
    assert lane["ready_transitions"] == [] and lane["ready_at_end"] is True


def test_a_gap_still_open_at_the_end_counts_and_ready_transitions_have_times():
    recs = [lease(INJ - 9.9, "k8s-node5", INJ - 10), lease(INJ + 0.1, "k8s-node5", INJ)]
    j = _journal({"watch:external": recs,
                  "nodes": [node(INJ - 4, "k8s-node5", True),
                            node(INJ + 41, "k8s-node5", False,
                                 ["node.kubernetes.io/unreachable:NoSchedule"]),
                            node(INJ + 66, "k8s-node5", True)]})
    lane = nodes.node_lanes(j)["k8s-node5"]
    assert lane["max_heartbeat_gap"] == 70.0 and lane["gap_from"] == 0.0
    assert [(tr["t"], tr["ready"]) for tr in lane["ready_transitions"]] == [(41.0, False),
                                                                            (66.0, True)]
    assert lane["taints"] == ["node.kubernetes.io/unreachable:NoSchedule"]
    text = "\n".join(nodes.lines({**j, "nodes": nodes.node_lanes(j)}))
    assert "node k8s-node5: 1 Lease renewals, longest gap 70.0 s (from +0.0 s), " \
           "NotReady at +41.0 s, Ready at +66.0 s" in text


def test_a_long_lived_watch_silence_break_and_reopening():
    recs = [{"t": INJ - 2, "kind": "conn", "state": "open"},
            lease(INJ + 1, "k8s-node4", INJ + 1),
            {"t": INJ + 46, "kind": "conn", "state": "broken", "err": "timeout"},
            {"t": INJ + 47.5, "kind": "conn", "state": "open"},
            lease(INJ + 47.6, "k8s-node4", INJ + 41)]
    j = _journal({"watch:worker:k8s-node4": recs, "nodes": []})
    w = nodes.long_lived(j)["worker:k8s-node4"]
    assert w == {"longest_silence": 46.6, "silence_from": 1.0, "breaks": [46.0],
                 "reopened": [47.5], "errors": ["timeout"]}
    text = nodes.lines({**j, "long_lived": nodes.long_lived(j)})
    assert text == ["watch through worker:k8s-node4: longest silence 46.6 s (from +1.0 s); "
                    "broke at +46.0 s (timeout), open again at +47.5 s"]


def test_no_injection_no_lanes():
    assert nodes.node_lanes({"times": {}, "watches": {}}) == {}
    assert nodes.long_lived({"times": {}, "watches": {}}) == {}


def test_the_watch_worker_reads_leases_and_nodes_as_the_api_serves_them():
    import json
    from pathlib import Path
    from lab.drill import prober
    assert prober.rfc3339("2026-12-04T14:41:08.116333Z") == 1796395268.116333
    assert prober.rfc3339("2026-12-04T14:41:08Z") == 1796395268.0
    assert prober.event_record("leases", {"metadata": {"name": "n1"},
                                          "spec": {"renewTime": "2026-12-04T14:41:08.5Z"}}) \
        == {"kind": "lease", "node": "n1", "renew": 1796395268.5}
    recorded = json.loads((Path(__file__).parent / "data" / "nodes" / "nodes.json").read_text())
    rec = prober.event_record("nodes", recorded["items"][0])
    assert rec == {"kind": "node", "node": "k8s-node1", "ready": True, "reason": "KubeletReady",
                   "taints": ["node-role.kubernetes.io/master:NoSchedule"]}


def pod(t, name, node_name, deleting=False, deleted=False):
    return {"t": t, "kind": "pod", "pod": f"halab-workload/{name}", "node": node_name,
            "phase": "Running", "deleting": deleting or deleted, "deleted": deleted}


def test_the_watch_worker_reads_pods_bound_to_nodes_as_the_api_serves_them():
    import json
    from pathlib import Path
    from lab.drill import prober
    recorded = json.loads((Path(__file__).parent / "data" / "nodes" / "pods.json").read_text())
    item = recorded["items"][0]
    assert prober.event_record("pods", item) == {
        "kind": "pod", "pod": "halab-workload/halab-demo-5dcb4d7d94-fblz7", "node": "k8s-node5",
        "phase": "Running", "deleting": False, "deleted": False}
    gone = {**item, "metadata": {**item["metadata"],
                                 "deletionTimestamp": "2026-12-04T14:41:08Z"}}
    assert prober.event_record("pods", gone)["deleting"] is True
    assert prober.event_record("pods", item, deleted=True)["deleted"] is True
    # a pod the scheduler has not bound yet belongs to no node
    assert prober.event_record("pods", {**item, "spec": {}}) is None


def test_evictions_are_deletions_begun_during_the_drill():
    recs = [pod(INJ - 3, "a", "k8s-node5"), pod(INJ - 3, "b", "k8s-node5"),
            pod(INJ - 3, "old", "k8s-node4", deleting=True),      # already going: not ours
            pod(INJ + 46.2, "a", "k8s-node5", deleting=True),
            pod(INJ + 46.3, "b", "k8s-node5", deleting=True),
            pod(INJ + 47, "a", "k8s-node5", deleted=True),           # counted once
            pod(INJ + 47, "c", "k8s-node4"),                          # its replacement
            pod(INJ + 90, "c", "k8s-node4", deleting=True)]         # after the probes stopped
    j = _journal({"nodes": [node(INJ - 4, "k8s-node5", True)], "pods": recs})
    assert nodes.evictions(j) == {"k8s-node5": [
        {"t": 46.2, "pod": "halab-workload/a"}, {"t": 46.3, "pod": "halab-workload/b"}]}
    lanes = nodes.node_lanes(j)
    assert lanes["k8s-node5"]["evictions"][0]["pod"] == "halab-workload/a"
    assert "evictions" not in lanes.get("k8s-node4", {})
    text = "\n".join(nodes.lines({**j, "nodes": lanes}))
    assert "2 pod(s) evicted from +46.2 s (halab-workload/a, halab-workload/b)" in text


def _topo(case: str):
    from lab.model import scenario
    from lab.model.topology import Topology
    return Topology.of(scenario.load(case))


def test_node_expectations_follow_the_kubelets_path():
    from lab.drill import expect
    for case, worker_nr in (("case2", False), ("case3", True)):
        topo = _topo(case)
        nodes_ = [n.name for n in (*topo.control_planes, *topo.workers)]
        paths = expect.expectations(topo, "stop-lb", ["admin-lb"])
        long = expect.node_expectations(topo, "stop-lb", ["admin-lb"], paths, 60, nodes_)
        short = expect.node_expectations(topo, "stop-lb", ["admin-lb"], paths, 20, nodes_)
        for cp in topo.control_planes:        # their kubelets use their own API server
            assert (long[cp.name].heartbeats, long[cp.name].not_ready) == ("continue", False)
        for w in topo.workers:
            assert long[w.name].not_ready is worker_nr
            assert short[w.name].not_ready is False    # 20 s < node-monitor-grace-period
        if worker_nr:
            assert long["k8s-node4"].within == 47.0 and long["k8s-node4"].heartbeats == "stop"
    # the controller-manager may sit on the killed control plane: its standby starts over
    topo = _topo("case2")
    nodes_ = [n.name for n in (*topo.control_planes, *topo.workers)]
    paths = expect.expectations(topo, "kill", ["k8s-node1"])
    e = expect.node_expectations(topo, "kill", ["k8s-node1"], paths, 90, nodes_)
    assert e["k8s-node1"].heartbeats == "stop" and e["k8s-node1"].within == 64.0
    assert "standby takes over" in e["k8s-node1"].reason
    assert e["k8s-node4"].heartbeats == "may pause" and e["k8s-node4"].not_ready is False


def test_the_verdict_judges_notready_or_not():
    from lab.drill.verdict import judge_nodes
    j = {"node_expectations": {
             "k8s-node4": {"heartbeats": "stop", "not_ready": True, "within": 47.0},
             "k8s-node1": {"heartbeats": "continue", "not_ready": False, "within": None},
             "k8s-node2": {"heartbeats": "continue", "not_ready": None, "within": None}},
         "nodes": {"k8s-node4": {"max_heartbeat_gap": 12.0, "ready_transitions": []},
                   "k8s-node1": {"max_heartbeat_gap": 60.0,
                                 "ready_transitions": [{"t": 44.0, "ready": False}]},
                   "k8s-node2": {"max_heartbeat_gap": 60.0,
                                 "ready_transitions": [{"t": 44.0, "ready": False}]}}}
    v = judge_nodes(j)
    assert not v["k8s-node4"]["agree"] and "expected NotReady by +47 s" in v["k8s-node4"]["verdict"]
    assert not v["k8s-node1"]["agree"] and "NotReady at +44.0 s" in v["k8s-node1"]["verdict"]
    assert v["k8s-node2"]["agree"]      # can't say: not judged


def test_the_view_says_on_the_ready_lane_which_node_lost_pods():
    from lab.drill import view
    j = _journal({"nodes": [node(INJ - 4, "k8s-node5", True), node(INJ + 41, "k8s-node5", False),
                            node(INJ + 66, "k8s-node5", True)],
                  "pods": [pod(INJ - 3, "a", "k8s-node5"),
                           pod(INJ + 46.2, "a", "k8s-node5", deleting=True)]})
    j["nodes"] = nodes.node_lanes(j)
    got = {lane["id"]: lane for g in view.model(j)["groups"] for lane in g["lanes"]}
    assert got["node:k8s-node5:Ready"]["sub"] == ("Ready condition (node controller); "
                                                  "1 pod(s) evicted from +46.2 s "
                                                  "(halab-workload/a)")
    assert [s[2] for s in got["node:k8s-node5:Ready"]["segments"]] == ["ok", "fail", "ok"]
