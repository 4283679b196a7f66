"""Every fault on every Case, judged by halab's own expectations (opt-in: ~25 min).

    HALAB_DRILL_MATRIX=1 pytest -m drill tests/test_drill_matrix.py

The default drill suite (test_drill_case*.py) asserts measured facts for the
behaviour that tells the Cases apart and runs in a few minutes; this module
plays the whole Case x fault table (representative targets, like `halab drill
plan`) and requires every path to agree with the expectation and the lab to be
healthy after each restore. It writes the measured error windows to
`drill-matrix.txt` in the pytest temporary folder and prints them (-s).
"""
from __future__ import annotations

import os

import pytest

from lab.drill.faults import FAULTS
from tests.support.drill_labs import explain, healthy_after, lab_fixture, marks

pytestmark = marks() + ([] if os.environ.get("HALAB_DRILL_MATRIX") == "1" else
                        [pytest.mark.skip(reason="opt-in: HALAB_DRILL_MATRIX=1 (~25 min)")])

CASES = ["case1", "case2", "case3", "case3-ha"]
ROWS: list[str] = []


def targets(case: str, fault: str) -> list[str]:
    if fault == "stop-lb":
        return []            # the sole LB, or the VIP holder
    return ["k8s-node2"]     # a control plane (not Case 1's external endpoint)


@pytest.fixture(scope="module", params=CASES)
def lab(request, tmp_path_factory):
    yield from lab_fixture(request.param, tmp_path_factory)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_agrees_with_its_expectation(lab, fault, tmp_path_factory):
    if fault == "stop-lb" and lab.case == "case1":
        cp = lab.halab("drill", "stop-lb", check=False)
        assert cp.returncode == 2 and "no load balancer" in cp.stderr
        return
    cp, j = lab.drill(fault, *targets(lab.case, fault))
    for key, p in j["verdict"]["paths"].items():
        ROWS.append(f"{lab.case:<9} {fault:<15} {key:<17} expected {p['expected']:<9} "
                    f"measured {p['measured']:<9} {p['failures']:>3}/{p['probes']:<3} "
                    f"window {p['error_window']:5.1f}s stop "
                    f"{'-' if p['errors_stop_after'] is None else p['errors_stop_after']}")
    out = tmp_path_factory.getbasetemp() / "drill-matrix.txt"
    out.write_text("\n".join(ROWS) + "\n")
    print("\n".join(ROWS[-len(j["verdict"]["paths"]):]))
    assert cp.returncode == 0, explain(j)
    assert healthy_after(j), explain(j)
