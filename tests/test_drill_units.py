"""Drills without a lab: expectations, refusals, verdicts, reports, the prober's HTTP bits.

Everything here is pure (or uses loopback only): synthetic journals stand in for
real drills, like python-vagrant's canned `status` output.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from lab.state import Lab
from tests.support.fake_provider import FakeProvider

from lab.model import scenario
from lab.errors import HalabError
from lab.model.topology import Topology
from lab.drill import expect, faults, journal as jlib, prober, report, runbook, verdict
from lab.deploy.verify import etcd_view
from lab.drill.engine import holder_node, observer, path_context, probe_plan, Settings


def topo(name: str) -> Topology:
    return Topology.of(scenario.load(name).with_provider("local"))


def exp(name, fault, targets, **ctx):
    return expect.expectations(topo(name), fault, targets, expect.Context(**ctx))


# ------------------------------------------------------------------ expectations: the seed's table

def test_stop_lb_follows_the_seed_table():
    # Case 2: LB down -> external only; workers keep their local proxy
    e = exp("case2", "stop-lb", ["admin-lb"])
    assert e["external"].expect == "down"
    assert {e[k].expect for k in e if k.startswith("worker:")} == {"up"}
    assert {e[k].expect for k in e if k.startswith("direct:")} == {"up"}
    assert e["write"].expect == "up"
    # Case 3: the whole cluster (every worker goes through the LB)
    e = exp("case3", "stop-lb", ["admin-lb"])
    assert e["external"].expect == "down"
    assert {e[k].expect for k in e if k.startswith("worker:")} == {"down"}
    assert "whole cluster" in e["external"].reason
    # Case 3 with keepalived: the VIP moves, errors stop by themselves
    e = exp("case3-ha", "stop-lb", ["admin-lb1"], vip_holder="admin-lb1")
    assert e["external"].expect == "blip" and e["external"].within <= 8
    assert {e[k].expect for k in e if k.startswith("worker:")} == {"blip"}
    # stopping the backup changes nothing
    e = exp("case3-ha", "stop-lb", ["admin-lb2"], vip_holder="admin-lb1")
    assert e["external"].expect == "up" and "backup" in e["external"].reason


def test_stop_lb_is_refused_in_case1_with_a_clear_message():
    with pytest.raises(HalabError) as err:
        faults.resolve_targets(topo("case1"), "stop-lb", [])
    assert "Case 1" in err.value.message and "no load balancer" in err.value.message


def test_stop_lb_defaults_to_the_vip_holder():
    t = topo("case3-ha")
    assert faults.resolve_targets(t, "stop-lb", [], vip_holder="admin-lb2") == ["admin-lb2"]
    with pytest.raises(HalabError, match="holds the VIP"):
        faults.resolve_targets(t, "stop-lb", [], vip_holder=None)
    assert faults.resolve_targets(topo("case2"), "stop-lb", []) == ["admin-lb"]


@pytest.mark.parametrize("name", ["case2", "case3", "case3-ha"])
def test_graceful_apiserver_stop_is_invisible_through_load_balancers(name):
    e = exp(name, "stop-apiserver", ["k8s-node1"] if name != "case3-ha" else ["k8s-node1"])
    assert e["direct:k8s-node1"].expect == "down"
    for key, x in e.items():
        if key != "direct:k8s-node1":
            assert x.expect == "up", (key, x.reason)


def test_stop_apiserver_on_node1_breaks_case1_external_kubectl():
    e = exp("case1", "stop-apiserver", ["k8s-node1"])
    assert e["external"].expect == "down" and "by hand" in e["external"].reason
    assert e["worker:k8s-node4"].expect == "up"
    assert exp("case1", "stop-apiserver", ["k8s-node2"])["external"].expect == "up"


def test_killing_a_control_plane_is_a_blip_everywhere_and_degraded_behind_nginx():
    e = exp("case2", "kill", ["k8s-node2"], etcd_leader="k8s-node1")
    assert e["direct:k8s-node2"].expect == "down"
    assert e["external"].expect == "blip"
    assert e["direct:k8s-node1"].expect == "blip"       # the etcd client, not the API server
    assert "round-robin" in e["direct:k8s-node1"].reason
    assert e["worker:k8s-node4"].expect == "degraded"   # nginx: passive checks only
    assert "fail_timeout" in e["worker:k8s-node4"].reason
    # one etcd client per resource type: the ConfigMap client may notice later
    assert e["write"].expect == "degraded" and "blip" in e["write"].accept
    assert "per resource type" in e["write"].reason
    assert "pre-vote" in exp("case2", "partition", ["k8s-node2"])["external"].after_restore
    leader = exp("case2", "kill", ["k8s-node1"], etcd_leader="k8s-node1")
    assert "election" in leader["direct:k8s-node2"].reason


def test_freeze_is_worse_than_kill_for_etcd_clients():
    e = exp("case3", "freeze", ["k8s-node1"])
    assert e["direct:k8s-node1"].expect == "down"
    assert e["direct:k8s-node2"].expect == "degraded"
    assert "down" in e["write"].accept
    assert "keepalive" in e["external"].reason


def test_graceful_etcd_stop_is_harmless_but_two_lose_quorum():
    e = exp("case2", "stop-etcd", ["k8s-node1"])
    assert {x.expect for x in e.values()} == {"up"}
    e = exp("case2", "stop-etcd", ["k8s-node1", "k8s-node2"])
    assert {x.expect for x in e.values()} == {"down"}
    assert "quorum" in e["write"].reason


def test_worker_faults_take_only_their_own_path():
    for fault in ("kill", "freeze", "partition"):
        e = exp("case2", fault, ["k8s-node4"])
        assert e["worker:k8s-node4"].expect == "down"
        assert {x.expect for k, x in e.items() if k != "worker:k8s-node4"} == {"up"}


def test_case1_admin_lb_carries_no_traffic():
    e = exp("case1", "kill", ["admin-lb"])
    assert {x.expect for x in e.values()} == {"up"}


def test_every_fault_has_an_expectation_with_a_reason_for_every_path():
    for name in ("case1", "case2", "case3", "case3-ha"):
        t = topo(name)
        keys = {p.key for p in t.access_paths()} | {"write"}
        for fault in faults.FAULTS:
            if fault == "stop-lb" and not t.load_balancers:
                continue
            targets = ["admin-lb1" if name == "case3-ha" else "admin-lb"] \
                if fault == "stop-lb" else ["k8s-node1"]
            e = expect.expectations(t, fault, targets)
            assert set(e) == keys
            for x in e.values():
                assert x.expect in expect.CATEGORIES and x.reason
                assert (x.within is not None) == (x.expect == "blip")


def test_timing_comes_from_the_scenario():
    tm = expect.timing(scenario.load("case2"))
    assert tm["haproxy_fall"] == 2 and tm["haproxy_fastinter"] == 0.5
    assert tm["haproxy_detect_dead"] < tm["haproxy_detect_hang"]
    assert 3 <= tm["vrrp_takeover"] <= 4


# ------------------------------------------------------------------ refusals

def test_quorum_and_last_api_server_are_refused_with_reasons():
    t = topo("case2")
    why = faults.refusals(t, "stop-etcd", ["k8s-node1", "k8s-node2"], {})
    assert len(why) == 1 and "1 of 3 etcd members" in why[0] and "majority" in why[0]
    assert faults.refusals(t, "stop-etcd", ["k8s-node1"], {}) == []
    assert faults.refusals(t, "kill", ["k8s-node1"], {"k8s-node2": "freeze"})
    why = faults.refusals(t, "stop-apiserver", ["k8s-node1", "k8s-node2", "k8s-node3"], {})
    assert any("last API server" in w for w in why)
    assert faults.refusals(t, "freeze", ["k8s-node1"], {"k8s-node1": "kill"})[0].startswith(
        "k8s-node1 already has")


def test_targets_are_checked_against_the_fault():
    t = topo("case2")
    with pytest.raises(HalabError, match="no node 'k8s-nod1'") as err:
        faults.resolve_targets(t, "kill", ["k8s-nod1"])
    assert "did you mean k8s-node1" in err.value.hint
    with pytest.raises(HalabError, match="runs no kube-apiserver"):
        faults.resolve_targets(t, "stop-apiserver", ["k8s-node4"])
    with pytest.raises(HalabError, match="runs no HAProxy"):
        faults.resolve_targets(t, "stop-lb", ["k8s-node1"])
    with pytest.raises(HalabError, match="needs a TARGET"):
        faults.resolve_targets(t, "kill", [])
    assert faults.resolve_targets(t, "kill", ["k8s-node1", "k8s-node1"]) == ["k8s-node1"]


def test_targets_by_etcd_role_resolve_to_the_leader_or_a_follower():
    t = topo("case2")
    assert faults.resolve_targets(t, "kill", ["etcd-leader"], etcd_leader="k8s-node2") == \
        ["k8s-node2"]
    follower = faults.resolve_targets(t, "kill", ["etcd-follower"], etcd_leader="k8s-node1")
    assert follower == ["k8s-node2"]
    assert faults.resolve_targets(t, "stop-etcd", ["etcd-follower"],
                                  etcd_leader="k8s-node2") == ["k8s-node1"]
    # nobody answered with a leader: the lab is not healthy enough to tell (exit 3)
    with pytest.raises(HalabError, match="cannot tell who leads") as err:
        faults.resolve_targets(t, "kill", ["etcd-leader"], etcd_leader=None)
    assert err.value.code == 3 and "k8s-node1" in err.value.hint
    # a role names an etcd member: stop-apiserver still fits it, stop-lb does not
    with pytest.raises(HalabError, match="runs no HAProxy"):
        faults.resolve_targets(t, "stop-lb", ["etcd-leader"], etcd_leader="k8s-node1")
    # the hint for a typo mentions the role words
    with pytest.raises(HalabError) as err:
        faults.resolve_targets(t, "kill", ["leader"])
    assert "etcd-leader" in err.value.hint


def test_the_journal_and_report_say_whether_the_leader_or_a_follower_was_killed():
    t = topo("case2")
    ctx = expect.Context(etcd_leader="k8s-node1")
    assert expect.etcd_roles(t, ["k8s-node1", "k8s-node4"], ctx) == {"k8s-node1": "leader"}
    assert expect.etcd_roles(t, ["k8s-node3"], ctx) == {"k8s-node3": "follower"}
    assert expect.etcd_roles(t, ["k8s-node3"], expect.Context()) == {"k8s-node3": "unknown"}
    j = {"targets": ["k8s-node1"], "etcd_roles": {"k8s-node1": "leader"}}
    assert report.target_words(j) == "k8s-node1 (the etcd leader)"
    assert report.target_words({"targets": ["admin-lb"]}) == "admin-lb"


def test_faults_are_recorded_before_injection_and_forgotten_after_restore(tmp_path, monkeypatch):
    lab = Lab(tmp_path / "l")
    prov = FakeProvider()
    faults.record(lab, "stop-apiserver", ["k8s-node1"], "d1")
    assert lab.record().faults == {"k8s-node1": "stop-apiserver"}
    assert lab.record().fault_details["k8s-node1"]["drill"] == "d1"
    from lab.providers.local.procs import ServiceSpec
    spec = ServiceSpec("k8s-node1", "kube-apiserver", ("x",))
    monkeypatch.setattr(faults, "lab_specs", lambda *a: [spec])
    done = faults.restore_all(lab, topo("case2"), prov)
    assert done == [("k8s-node1", "stop-apiserver")]
    assert ("start", [spec]) in prov.calls
    assert lab.record().faults == {}
    assert faults.restore_all(lab, topo("case2"), prov) == []


def test_restore_order_heals_before_powering_on(tmp_path, monkeypatch):
    lab = Lab(tmp_path / "l")
    lab.update(faults={"k8s-node1": "kill", "k8s-node2": "partition"})
    prov = FakeProvider()
    monkeypatch.setattr(faults, "lab_specs", lambda *a: [])
    faults.restore_all(lab, topo("case2"), prov)
    assert [c[0] for c in prov.calls] == ["heal", "power_on"]


# ------------------------------------------------------------------ verdicts on synthetic journals

T0 = 1000.0
INJECT, RESTORE = T0 + 10, T0 + 30


def probes(fail_when, start=T0 + 2, end=T0 + 40, step=0.2, lat_fail=1.0, err="timeout"):
    out, t = [], start
    while t < end:
        bad = fail_when(t - INJECT)
        out.append({"t": round(t, 3), "ok": not bad, "lat": lat_fail if bad else 0.01,
                    **({"err": err} if bad else {})})
        t += step
    return out


def synthetic(paths: dict, expectations: dict, **extra) -> dict:
    j = {"id": "20990101-000000-kill-k8s-node1", "lab": "t", "case": 2, "provider": "local",
         "fault": "kill", "targets": ["k8s-node1"], "status": "completed",
         "settings": {"probe_interval": 0.2, "probe_timeout": 1.0},
         "times": {"started": T0, "probes_started": T0 + 2, "inject_start": INJECT,
                   "injected": INJECT + 0.1, "restore_start": RESTORE, "restored": RESTORE + 1,
                   "recovered": RESTORE + 1, "probes_stopped": T0 + 40, "finished": T0 + 41},
         "probes": paths, "expectations": expectations, "errors": [],
         "haproxy": [[T0 + 2, "admin-lb", "k8s-node1", "UP", "L7OK"],
                     [INJECT + 2.6, "admin-lb", "k8s-node1", "DOWN", "L4TOUT"]],
         "leases": [[T0 + 3, {"kube-controller-manager": "k8s-node1_a", "kube-scheduler":
                              "k8s-node2_b"}],
                    [INJECT + 16, {"kube-controller-manager": "k8s-node3_c", "kube-scheduler":
                                   "k8s-node2_b"}]],
         "etcd": [[T0 + 3, "k8s-node1", []], [INJECT + 6, "k8s-node2", ["k8s-node1"]]],
         "vip": [], "after": {"ok": True, "problems": []}}
    j.update(extra)
    return j


def e(kind, within=None, accept=()):
    return {"expect": kind, "within": within, "reason": f"because {kind}", "accept": list(accept)}


def test_classify_up_blip_degraded_down():
    never = probes(lambda r: False)
    blip = probes(lambda r: 0 <= r < 3)
    degraded = probes(lambda r: 0 <= r < 20 and int(r * 5) % 3 == 0)
    down = probes(lambda r: 0 <= r < 20.5)
    c = lambda p: verdict.classify(p, INJECT, RESTORE)  # noqa: E731
    assert c(never)["measured"] == "up"
    b = c(blip)
    assert b["measured"] == "blip" and 2.5 <= b["errors_stop_after"] <= 3.0
    assert 3.5 <= b["error_window"] <= 4.1 and b["first_failure"] == 0.0
    assert c(degraded)["measured"] == "degraded"
    assert c(down)["measured"] == "down"
    one = probes(lambda r: 5.0 <= r < 5.2)
    assert c(one)["measured"] == "up" and "tolerated" in c(one)["why"]


def test_probes_started_before_the_fault_but_failing_after_it_count():
    p = [{"t": INJECT - 0.3, "ok": False, "lat": 1.0, "err": "timeout"}]
    assert verdict.in_window(p[0], INJECT, RESTORE)
    assert not verdict.in_window({"t": INJECT - 2, "ok": True, "lat": 0.01}, INJECT, RESTORE)


def test_host_stalls_excuse_timeouts_only():
    canary = [{"t": INJECT + 5, "ok": True, "lat": 0.01, "lag": 0.8}]
    stalls = verdict.host_stalls(canary)
    assert stalls == [(INJECT + 4.2, INJECT + 5.01)]
    t_out = {"t": INJECT + 4.5, "ok": False, "lat": 1.0, "err": "timeout"}
    refused = {"t": INJECT + 4.5, "ok": False, "lat": 0.0, "err": "connection refused"}
    assert verdict.excused(t_out, stalls) and not verdict.excused(refused, stalls)
    p = probes(lambda r: 4.4 <= r < 4.8)
    m = verdict.classify(p, INJECT, RESTORE, stalls=stalls)
    assert m["measured"] == "up" and m["excused"] == 2 and "host stalls" in m["why"]


def _slow_direct(frozen_from, frozen_to, step=1.0):
    """A direct path whose API server stops answering (frozen VM) and then answers all."""
    out, t = [], T0 + 2
    while t < T0 + 40:
        r = t - INJECT
        lat = (frozen_to - r) if frozen_from <= r < frozen_to else 0.05
        out.append({"t": round(t, 3), "ok": True, "lat": round(lat, 3)})
        t += step
    return out


def test_a_lab_stall_excuses_paths_through_the_stalled_control_plane():
    # CI's stop-lb on a one-control-plane VM lab: k8s-node1 answered nothing for 12 s; its
    # direct probes (timeout 15 s) came back late, the worker's nginx (connect 1 s) failed
    worker = probes(lambda r: 4.7 <= r < 12.8, step=1.0, err="EOF")
    j = synthetic({"external": probes(lambda r: 0 <= r < 20), "write": probes(lambda r: False),
                   "direct:k8s-node1": _slow_direct(3.6, 15.6),
                   "worker:k8s-node2": worker},
                  {"external": e("down"), "direct:k8s-node1": e("up"), "write": e("up"),
                   "worker:k8s-node2": e("up")}, fault="stop-lb", targets=["admin-lb"])
    v = verdict.judge(j)
    assert v["ok"], v["reasons"]
    w = v["paths"]["worker:k8s-node2"]
    assert w["measured"] == "up" and w["excused_lab"] == 8 and "lab stalled" in w["why"]
    assert 11 <= v["lab_stall_seconds"] <= 13
    assert v["lab_stall_slowest"]["direct:k8s-node1"] == pytest.approx(12.0, abs=0.5)
    assert v["paths"]["external"]["measured"] == "down"   # the fault's own effect stays
    assert "lab stalled on its own" in report.terminal(j)
    # the same failures without the stall are the fault's: DIFFERS
    j["probes"]["direct:k8s-node1"] = _slow_direct(0, 0)
    v = verdict.judge(j)
    assert not v["ok"] and v["paths"]["worker:k8s-node2"]["measured"] == "blip"
    assert v["lab_stall_seconds"] == 0


def test_a_lab_stall_needs_every_untouched_control_plane_and_excuses_no_direct_path():
    exps = {"direct:k8s-node1": e("up"), "direct:k8s-node2": e("up"),
            "worker:k8s-node3": e("up")}
    worker = probes(lambda r: 4 <= r < 9, step=1.0, err="EOF")
    # only one of two control planes slow: nginx had the other, the failures count
    j = synthetic({"direct:k8s-node1": _slow_direct(3, 10), "direct:k8s-node2":
                   _slow_direct(0, 0), "worker:k8s-node3": worker}, exps,
                  fault="stop-lb", targets=["admin-lb"])
    v = verdict.judge(j)
    assert not v["ok"] and v["paths"]["worker:k8s-node3"]["excused_lab"] == 0
    # both slow: excused; a direct path that times out in the stall is never excused
    j["probes"]["direct:k8s-node2"] = _slow_direct(3, 10)
    j["probes"]["direct:k8s-node1"] = probes(lambda r: 4 <= r < 9, step=1.0, lat_fail=3.0)
    v = verdict.judge(j)
    assert v["paths"]["worker:k8s-node3"]["agree"]
    assert v["paths"]["direct:k8s-node1"]["excused_lab"] == 0
    assert not v["paths"]["direct:k8s-node1"]["agree"]
    # a path expected to fail is judged on its own
    exps["worker:k8s-node3"] = e("down")
    assert not verdict.judge(j)["paths"]["worker:k8s-node3"]["agree"]


def test_agree_rules():
    blip = {"measured": "blip", "errors_stop_after": 4.0, "why": "w"}
    assert verdict.agree(e("blip", 5), blip)[0]
    ok, why = verdict.agree(e("blip", 3), blip)
    assert not ok and "within 3 s" in why
    assert verdict.agree(e("degraded"), blip) == (True, "measured blip, milder than the "
                                                        "degraded allowed")
    assert not verdict.agree(e("up"), blip)[0]
    assert not verdict.agree(e("down"), blip)[0]
    assert verdict.agree(e("degraded", accept=["down"]), {"measured": "down", "why": ""})[0]
    assert not verdict.agree(e("blip", 5), {"measured": "down", "why": "w"})[0]


def test_judge_a_drill_and_its_recovery():
    j = synthetic({"external": probes(lambda r: 0 <= r < 3),
                   "direct:k8s-node1": probes(lambda r: 0 <= r < 21.5),
                   "worker:k8s-node4": probes(lambda r: False)},
                  {"external": e("blip", 5.5), "direct:k8s-node1": e("down"),
                   "worker:k8s-node4": e("up")})
    v = verdict.judge(j)
    assert v["ok"], v["reasons"]
    rec = v["paths"]["direct:k8s-node1"]["recovery"]
    assert rec["recovered_after"] == pytest.approx(0.6, abs=.3)
    assert v["haproxy_down_after"] == {"admin-lb/k8s-node1": 2.6}
    # a path that never comes back fails the verdict, and so does an unhealthy lab
    j["probes"]["direct:k8s-node1"] = probes(lambda r: r >= 0)
    j["after"] = {"ok": False, "problems": ["access path direct:k8s-node1: timeout"]}
    v = verdict.judge(j)
    assert not v["ok"]
    assert any("did not recover" in r for r in v["reasons"])
    assert any("not healthy" in r for r in v["reasons"])


def test_judge_without_injection():
    j = synthetic({}, {"external": e("up")})
    del j["times"]["inject_start"], j["times"]["injected"]
    assert verdict.judge(j)["reasons"] == ["the fault was never injected"]


def test_vip_move_sees_a_new_holder_even_if_the_dead_master_keeps_the_address():
    j = synthetic({}, {}, vip=[[T0 + 2, ["admin-lb1"]], [INJECT + 3.4, ["admin-lb1", "admin-lb2"]]])
    assert verdict.vip_move(j) == 3.4


# ------------------------------------------------------------------ reports

def sample_journal():
    return synthetic({"external": probes(lambda r: 0 <= r < 3),
                      "direct:k8s-node1": probes(lambda r: 0 <= r < 21.5, err="timeout"),
                      "worker:k8s-node4": probes(lambda r: 0 <= r < 20 and int(r) % 10 == 0),
                      "canary": probes(lambda r: False)},
                     {"external": e("blip", 5.5), "direct:k8s-node1": e("down"),
                      "worker:k8s-node4": e("up")})


def test_terminal_report_explains_each_path():
    text = report.terminal(sample_journal())
    assert "kill k8s-node1" in text
    assert re.search(r"external\s+blip<5.5s\s+blip", text)
    assert re.search(r"worker:k8s-node4\s+up\s+blip.*DIFFERS", text)
    assert "HAProxy marked admin-lb/k8s-node1 DOWN 2.6 s after injection" in text
    assert "lease kube-controller-manager: k8s-node1 -> k8s-node3 at +16.0s" in text
    assert "etcd leader: k8s-node1 -> k8s-node2 at +6.0s" in text
    assert "why worker:k8s-node4 was expected up: because up" in text


def test_html_report_is_self_contained():
    page = report.html_report(sample_journal())
    assert page.startswith("<!doctype html>")
    # the drill view's page, script and style inlined, nothing loaded from elsewhere
    assert not re.search(r"""(src|href)\s*=|<link|@import|url\((?!#)""", page)
    m = json.loads(re.search(r'id="halab-model">(.*?)</script>', page, re.S).group(1))
    # three access paths, plus the host canary (not an access path, no expectation)
    ids = [lane["id"] for lane in m["groups"][0]["lanes"]]
    assert len(ids) == 4 and ids[-1] == "path:canary"
    assert m["fault_band"] and [mk["id"] for mk in m["markers"]][:3] == [
        "injected", "restore", "restored"]


def test_runbook_report(tmp_path):
    j = sample_journal()
    rb = {"kind": "runbook", "id": "x-runbook", "lab": "t", "case": 2,
          "steps": [{"step": 1, "fault": "kill", "targets": ["k8s-node1"], "id": j["id"],
                     "result": "differs", "ok": False}],
          "journals": [j], "verdict": {"ok": False, "reasons": ["step 1"]}}
    assert "Runbook x-runbook" in report.terminal(rb)
    page = report.html_report(rb)
    m = json.loads(re.search(r'id="halab-model">(.*?)</script>', page, re.S).group(1))
    assert m["kind"] == "runbook" and len(m["drills"]) == 1 and m["steps"][0]["ok"] is False


def test_journal_store(tmp_path):
    lab = Lab(tmp_path / "lab")
    j = sample_journal()
    jlib.save(lab, j)
    jlib.save(lab, {**j, "id": "20990101-000001-freeze-k8s-node2"})
    assert jlib.load(lab)["id"] == "20990101-000001-freeze-k8s-node2"
    assert jlib.load(lab, "20990101-000000")["fault"] == "kill"
    assert jlib.load(lab, "freeze")["id"].endswith("k8s-node2")
    with pytest.raises(HalabError, match="matches 2"):
        jlib.load(lab, "2099")
    with pytest.raises(HalabError, match="no drill"):
        jlib.load(lab, "nope")
    assert "kill" in report.listing(lab)
    assert jlib.new_id("kill", ["k8s-node1"], 0).endswith("-kill-k8s-node1")


# ------------------------------------------------------------------ engine's pure parts

def test_probe_plan_runs_each_path_where_its_client_is(tmp_path):
    t = topo("case3")

    class Lay:
        def __init__(self, node):
            self.node = node

        def p(self, *parts):
            return f"/nodes/{self.node}/" + "/".join(parts)

    class Prov(FakeProvider):
        def layout(self, node):
            return Lay(node)
    lab = Lab(tmp_path / "case3")
    specs = {s.key: s for s in probe_plan(lab, t, Prov(), ["k8s-node1"], Settings(), "id1")}
    assert specs["external"].node == "client" and "case3-lb" in specs["external"].argv
    assert specs["worker:k8s-node4"].node == "k8s-node4"
    assert "/nodes/k8s-node4/prober.kubeconfig" in specs["worker:k8s-node4"].argv
    assert "case3-k8s-node2" in specs["write"].argv     # not through the target
    assert specs["canary"].mode == "canary" and specs["etcd"].mode == "etcd"
    assert all(s.argv[1:3] == ["-m", "lab.drill.prober"] for s in specs.values())
    assert path_context(t, t.access_paths()[1]) == "case3-k8s-node1"
    assert observer(t, ["k8s-node1", "k8s-node2"]) == "k8s-node3"


def test_etcd_view_and_lease_holders():
    t = topo("case2")
    rec = {"members": {"192.168.10.11": {"ok": True, "id": "a", "leader": "b"},
                       "192.168.10.12": {"ok": True, "id": "b", "leader": "b"},
                       "192.168.10.13": {"ok": False, "err": "timeout"}}}
    known = {}
    assert etcd_view(t, rec, known) == {"leader": "k8s-node2", "down": ["k8s-node3"]}
    rec2 = {"members": {"192.168.10.11": {"ok": True, "id": "a", "leader": "b"},
                        "192.168.10.12": {"ok": False, "err": "timeout"}}}
    assert etcd_view(t, rec2, known)["leader"] == "k8s-node2"
    assert holder_node("k8s-node3_6f0c-11") == "k8s-node3" and holder_node(None) is None


def test_runbook_steps_are_validated_all_at_once():
    s = scenario.load("case2").with_provider("local")
    t = Topology.of(s)
    assert runbook.steps_of(s, t) == [("stop-apiserver", ["k8s-node1"]),
                                      ("kill", ["k8s-node2"]), ("stop-lb", [])]
    bad = s.__class__(**{**s.__dict__, "drills": ({"fault": "explode"},
                                                  {"fault": "kill", "target": "k8s-node9"},
                                                  "kill")})
    with pytest.raises(HalabError) as err:
        runbook.steps_of(bad, t)
    msg = err.value.message
    assert "drills[0].fault = 'explode'" in msg and "drills[1]" in msg and "drills[2]" in msg
    c1 = scenario.load("case1").with_provider("local")
    assert runbook.steps_of(c1, Topology.of(c1))[0] == ("kill", ["k8s-node1"])


# ------------------------------------------------------------------ the prober, on loopback only

def test_http_parsing():
    assert prober._parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") == (200, b"ok")
    chunked = b"HTTP/1.1 500 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    assert prober._parse(chunked) == (500, b"abc")
    assert prober._complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert not prober._complete(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok")
    with pytest.raises(ConnectionError, match="EOF"):
        prober._parse(b"")
    assert prober.describe(ConnectionRefusedError(111, "x")) == "connection refused"
    import socket
    assert prober.describe(socket.timeout()) == "timeout"


def test_canary_server_and_probe_loop(capsys):
    url = prober.start_canary_server()
    assert prober.probe_read(url, None, "/", 1.0) == {"ok": True, "code": 200}
    out = prober.Output()
    prober.loop(lambda n: lambda: prober.probe_read(url, None, "/", 1.0), 0.05, 1.0, out, 3)
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3 and all(l["ok"] and "lag" in l for l in lines)


def test_a_dead_server_is_a_fast_failure_not_a_hang():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)   # accepts (kernel backlog) but never answers: like a frozen API server
    port = s.getsockname()[1]
    out = []
    prober.run_probe(lambda: prober.probe_read(f"http://127.0.0.1:{port}", None, "/", 0.3),
                     type("O", (), {"emit": staticmethod(out.append)})(), 0.0, 0.3)
    s.close()
    assert out[0]["ok"] is False and out[0]["err"] == "timeout" and out[0]["lat"] < 1.0


def test_prober_module_runs_as_a_program():
    cp = subprocess.run([sys.executable, "-m", "lab.drill.prober", "--mode", "canary",
                         "--count", "2", "--interval", "0.05"], capture_output=True, text=True,
                        timeout=30)
    assert cp.returncode == 0, cp.stderr
    assert [json.loads(l)["ok"] for l in cp.stdout.splitlines()] == [True, True]


# ------------------------------------------------------------------ CLI wiring

def test_drill_cli_lists_every_fault_and_plans_for_a_scenario():
    from click.testing import CliRunner
    from lab.cli import main
    r = CliRunner().invoke(main, ["drill", "--help"])
    assert r.exit_code == 0
    for f in faults.FAULTS:
        assert f in r.output
    r = CliRunner().invoke(main, ["drill", "plan", "--scenario", "case2", "stop-lb"])
    assert r.exit_code == 0, r.output
    assert re.search(r"external\s+DOWN", r.output)
    assert re.search(r"worker:k8s-node4\s+UP", r.output)
    r = CliRunner().invoke(main, ["drill", "plan", "--scenario", "case1"])
    assert r.exit_code == 0 and "refused: stop-lb" in r.output
    assert "halab drill kill admin-lb" not in r.output  # Case 1: no LB to kill in the plan


# ------------------------------------------------------------------ a node's clock

SKEWED_WORKER = r"""
import json, sys, time
# a node whose clock is 7 s ahead of this host's: one result at once, one 0.3 s later
for _ in range(2):
    t = time.time() + 7.0
    print(json.dumps({"t": t, "ok": True, "lat": 0.01}), flush=True)
    time.sleep(0.3)
"""


class _Popen:
    def popen(self, node, argv, **kw):
        return subprocess.Popen(argv, **kw)


def test_results_from_a_node_are_put_on_the_hosts_clock():
    from lab.drill.engine import Collector, ProbeSpec
    argv = [sys.executable, "-c", SKEWED_WORKER]
    specs = [ProbeSpec("worker:k8s-node4", "read", "k8s-node4", argv),
             ProbeSpec("external", "read", "client", argv)]
    c = Collector(topo("case1"), _Popen(), specs)   # no LB to poll
    c.start()
    try:
        for proc in (p for _, p in c.procs):
            proc.wait(timeout=30)
    finally:
        c.stop()
    now = __import__("time").time()
    snap = c.snapshot()
    # (the worker then exits, as a dead node's would: what follows are gaps)
    on_node = [r for r in snap["probes"]["worker:k8s-node4"] if not r.get("gap")]
    assert len(on_node) == 2
    # corrected: no result "from the future" of this host
    assert all(r["t"] + r["lat"] <= now for r in on_node), on_node
    assert -7.2 < snap["clock_offsets"]["worker:k8s-node4"] < -6.8
    # the client runs on this host: its clock is ours, left as it is
    assert all(r["t"] > now + 5 for r in snap["probes"]["external"])
    assert "external" not in snap["clock_offsets"]


def test_live_line_shows_what_just_came_back_or_how_long_a_path_has_been_silent():
    from lab.drill.engine import live_mark
    now = 1000.0
    ok = lambda t, lat=0.05: {"t": t, "ok": True, "lat": lat}  # noqa: E731
    bad = lambda t, lat=0.05: {"t": t, "ok": False, "lat": lat}  # noqa: E731
    assert live_mark([], now, 0.2) == "--"
    assert live_mark([ok(999.5), ok(999.7)], now, 0.2) == "ok"
    assert live_mark([ok(999.5), bad(999.7)], now, 0.2) == "1/2FAIL"
    # a probe that started 14 s ago and just timed out counts now, not 15 s later
    assert live_mark([bad(985.5, lat=14.4)], now, 1.0) == "1/1FAIL"
    # nothing back for 12 s: the probes hang (a powered-off server, 15 s timeout)
    assert live_mark([ok(988.0)], now, 1.0) == "stall 12s"
    assert live_mark([ok(998.0)], now, 1.0) == "--"   # between two slow probes


DYING_WORKER = r"""
import json, os, sys, time
first = not os.path.exists(sys.argv[1])
open(sys.argv[1], "a").close()
# the first run answers twice and dies with its node; the next one answers on
for _ in range(2 if first else 3):
    print(json.dumps({"t": time.time(), "ok": True, "lat": 0.01}), flush=True)
    time.sleep(0.1)
if first:
    sys.exit(255)          # what ssh says when the VM is gone
time.sleep(30)
"""


def test_a_worker_that_dies_with_its_node_is_restarted_and_its_gap_counts_as_down(
        tmp_path, monkeypatch):
    from lab.drill import engine
    monkeypatch.setattr(engine, "WORKER_RESTART", 0.5)
    argv = [sys.executable, "-c", DYING_WORKER, str(tmp_path / "ran")]
    spec = engine.ProbeSpec("worker:k8s-node4", "read", "k8s-node4", argv, interval=0.1)
    c = engine.Collector(topo("case1"), _Popen(), [spec])
    c.start()
    try:
        deadline = __import__("time").monotonic() + 20
        while len([r for r in c.since(spec.key, 0) if r["ok"]]) < 5:
            assert __import__("time").monotonic() < deadline, c.since(spec.key, 0)
            __import__("time").sleep(0.05)
        assert c.dead_workers() == []     # supervised: gone, then back
    finally:
        c.stop()
    rows = c.snapshot()["probes"][spec.key]
    gaps = [r for r in rows if r.get("gap")]
    # ~0.5 s without a worker: about five probes that could not run, failed, in order
    assert 3 <= len(gaps) <= 12, rows
    assert all(not r["ok"] and "k8s-node4" in r["err"] and "down" in r["err"] for r in gaps)
    assert [r["t"] for r in rows] == sorted(r["t"] for r in rows)
    assert c.snapshot()["prober_restarts"] == {spec.key: 1}


def test_a_node_worker_that_never_answered_is_reported_dead_not_restarted():
    from lab.drill import engine
    argv = [sys.executable, "-c", "import sys; sys.exit('ModuleNotFoundError: yaml')"]
    spec = engine.ProbeSpec("worker:k8s-node4", "read", "k8s-node4", argv)
    c = engine.Collector(topo("case1"), _Popen(), [spec])
    c.start()
    try:
        deadline = __import__("time").monotonic() + 10
        while not c.dead_workers():
            assert __import__("time").monotonic() < deadline
            __import__("time").sleep(0.05)
        assert "ModuleNotFoundError" in c.dead_workers()[0]
    finally:
        c.stop()
    assert c.snapshot()["prober_restarts"] == {}


def test_the_verdict_times_the_election_after_a_leader_kill():
    j = {"targets": ["k8s-node1"], "context": {"etcd_leader": "k8s-node1"},
         "times": {"inject_start": 100.0, "restore_start": 160.0},
         "etcd": [[99.0, "k8s-node1", []], [102.0, "?", []], [104.0, None, ["k8s-node1"]],
                  [107.5, "k8s-node3", ["k8s-node1"]]]}
    assert verdict.etcd_election(j) == 7.5
    # a follower's kill forces no election: nothing to time
    assert verdict.etcd_election({**j, "context": {"etcd_leader": "k8s-node2"}}) is None
    # no new leader before the restore: not elected
    assert verdict.etcd_election({**j, "etcd": j["etcd"][:3]}) is None


def test_drills_on_a_kubespray_lab_use_kubespray_certificates_and_never_halabs_pki(tmp_path):
    """The etcd probe runs on a member the drill does not touch, with that member's
    kubespray admin certificate; restoring a fault plans kubespray's own services."""
    from lab.deploy import controlplane
    from lab.drill.engine import Settings, probe_plan
    from lab.model import scenario as scen
    from lab.model.topology import Topology
    topo = Topology.of(scen.load("case2"))
    assert topo.scenario.uses_kubespray
    lab = Lab(tmp_path / "ks")
    specs = {s.key: s for s in probe_plan(lab, topo, FakeProvider(), ["k8s-node1"], Settings(),
                                          "id")}
    etcd = specs["etcd"]
    assert etcd.node == "k8s-node2"
    assert etcd.argv[etcd.argv.index("--ca") + 1] == "/etc/ssl/etcd/ssl/ca.pem"
    assert etcd.argv[etcd.argv.index("--key") + 1] == "/etc/ssl/etcd/ssl/admin-k8s-node2-key.pem"
    planned = faults.lab_specs(lab, topo, FakeProvider())
    assert planned == controlplane.kubespray_specs(topo)
    assert not (lab.path / "pki").exists()
    how = {(s.node, s.name): (s.unit, s.manifest) for s in planned}
    assert how[("k8s-node1", "kube-apiserver")] == ("", "kube-apiserver.yaml")
    assert how[("k8s-node1", "etcd")] == ("etcd", "") and how[("admin-lb", "haproxy")] == ("haproxy", "")
