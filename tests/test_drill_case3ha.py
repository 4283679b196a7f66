"""Drills on a real local case3-ha lab: two HAProxies and a keepalived VIP (`drill`, `local`)."""
from __future__ import annotations

import time

import pytest

from tests.support.drill_labs import explain, healthy_after, lab_fixture, marks, path, workers

pytestmark = marks()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    yield from lab_fixture("case3-ha", tmp_path_factory)


def test_stop_lb_on_the_vip_holder_moves_the_vip(lab):
    cp, j = lab.drill("stop-lb", duration=10)          # default target: the VIP holder
    assert j["targets"] == [j["context"]["vip_holder"]]
    v = j["verdict"]
    assert v["vip_moved_after"] is not None and v["vip_moved_after"] < 8, explain(j)
    for key in ["external"] + workers(j):
        p = path(j, key)
        assert p["measured"] == "blip", explain(j)       # errors, then the VIP moved
        assert p["errors_stop_after"] < 8, explain(j)
    assert healthy_after(j)


def settled_holder(lab) -> str:
    """After a restore keepalived may move the VIP back (admin-lb1 has the higher
    priority): wait until exactly one LB holds it for a while."""
    stable, last = 0, None
    for _ in range(100):
        now = lab.vip_holders()
        stable = stable + 1 if now == last and len(now) == 1 else 0
        last = now
        if stable >= 10:
            return now[0]
        time.sleep(0.3)
    raise AssertionError(f"the VIP does not settle: {last}")


def test_kill_the_vip_holder(lab):
    holder = settled_holder(lab)
    cp, j = lab.drill("kill", holder, duration=10)
    assert j["context"]["vip_holder"] == holder
    assert j["verdict"]["vip_moved_after"] is not None, explain(j)
    assert j["verdict"]["vip_moved_after"] < 8, explain(j)
    ext = path(j, "external")
    assert ext["measured"] in ("up", "blip"), explain(j)
    assert ext["errors_stop_after"] is None or ext["errors_stop_after"] < 8, explain(j)
    assert healthy_after(j)


def test_freeze_the_backup_lb_changes_nothing(lab):
    holder = settled_holder(lab)
    backup = "admin-lb2" if holder == "admin-lb1" else "admin-lb1"
    cp, j = lab.drill("freeze", backup, duration=8)
    for key in ["external"] + workers(j):
        assert path(j, key)["failures"] <= 1, explain(j)
    assert healthy_after(j)
