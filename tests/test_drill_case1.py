"""Drills on a real local Case 1 lab: no external LB (markers `drill`, `local`; root)."""
from __future__ import annotations

import json
import re

import pytest

from tests.support.drill_labs import explain, healthy_after, lab_fixture, marks, path, workers

pytestmark = marks()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    # a short runbook of its own (case1's bundled one kills k8s-node1 first)
    yield from lab_fixture("case1", tmp_path_factory, extra_yaml=(
        "drills:\n  - {fault: stop-apiserver, target: k8s-node3}\n"
        "  - {fault: kill, target: k8s-node5}\n"))


def test_stop_lb_is_refused_without_a_load_balancer(lab):
    cp = lab.halab("drill", "stop-lb", check=False)
    assert cp.returncode == 2, cp.stderr
    assert "Case 1" in cp.stderr and "no load balancer" in cp.stderr
    assert not lab.journal_ids()


def test_kill_node1_takes_external_kubectl_down_but_not_the_workers(lab):
    cp, j = lab.drill("kill", "k8s-node1")
    # Case 1: external kubectl is configured with k8s-node1 only
    assert path(j, "external")["measured"] == "down", explain(j)
    for w in workers(j):          # the local nginx proxy fails over (slowly: passive)
        p = path(j, w)
        assert p["measured"] != "down" and p["failures"] < p["probes"] / 2, explain(j)
    assert path(j, "direct:k8s-node2")["measured"] in ("up", "blip"), explain(j)
    assert healthy_after(j), explain(j)


def test_stop_apiserver_elsewhere_leaves_external_alone(lab):
    cp, j = lab.drill("stop-apiserver", "k8s-node2", duration=8)
    assert path(j, "external")["failures"] == 0, explain(j)
    assert path(j, "direct:k8s-node2")["measured"] == "down"
    assert cp.returncode == 0, explain(j)
    assert healthy_after(j)


def test_runbook_plays_the_scenario_drills_and_writes_one_report(lab):
    cp = lab.halab("drill", "run", "--duration", "6", "-q", check=False, timeout=900)
    assert cp.returncode in (0, 1), cp.stdout + cp.stderr
    assert "=== step 1/2: stop-apiserver k8s-node3" in cp.stdout
    assert "=== step 2/2: kill k8s-node5" in cp.stdout
    rb = lab.journal(next(i for i in reversed(lab.journal_ids()) if i.endswith("-runbook")))
    assert rb["kind"] == "runbook" and [s["fault"] for s in rb["steps"]] == ["stop-apiserver",
                                                                             "kill"]
    assert all(s["id"] for s in rb["steps"])
    kill = rb["journals"][1]
    assert kill["verdict"]["paths"]["worker:k8s-node5"]["measured"] == "down", explain(kill)
    assert kill["verdict"]["paths"]["worker:k8s-node4"]["failures"] <= 1, explain(kill)
    html = (lab.path / "drills" / f"{rb['id']}.html").read_text()
    m = json.loads(re.search(r'id="halab-model">(.*?)</script>', html, re.S).group(1))
    assert m["kind"] == "runbook" and len(m["drills"]) == 2
    assert lab.verify().returncode == 0
