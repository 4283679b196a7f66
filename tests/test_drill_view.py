"""The drill view: the model drawn by the live page and the report, and the live server.

The model is computed from a real recorded journal (the VM lab test's `kill
etcd-follower`, Case 2, QEMU VMs); the server runs on 127.0.0.1 and is asked with
urllib, as a browser would (tests/test_drill_live.py drives a real browser).
"""
from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lab.drill import report, view
from lab.drill.live import CSP, LiveView, Publisher
from lab.errors import HalabError

DATA = Path(__file__).parent / "data" / "journals"


@pytest.fixture
def journal() -> dict:
    return json.loads((DATA / "vm-case2-kill-etcd-follower.json").read_text())


def lanes(m: dict) -> dict:
    return {lane["id"]: lane for g in m["groups"] for lane in g["lanes"]}


def failing_inside(lane: dict, a: float, b: float) -> float:
    return sum(min(s[1], b) - max(s[0], a) for s in lane["segments"]
               if s[2] == "fail" and s[1] > a and s[0] < b)


def test_the_model_has_a_lane_per_path_and_backend_and_the_markers(journal):
    m = view.model(journal)
    got = lanes(m)
    for key in ("external", "direct:k8s-node1", "direct:k8s-node2", "direct:k8s-node3", "write"):
        assert f"path:{key}" in got
    assert {"state:admin-lb -> k8s-node2", "state:etcd leader",
            "state:controller-manager leader"} <= set(got)
    assert [mk["id"] for mk in m["markers"]] == ["injected", "restore", "restored", "recovered"]
    assert m["fault_band"] == [0.0, 47.1]
    # the killed node's direct path fails for (nearly) the whole fault; the others do not
    dead = failing_inside(got["path:direct:k8s-node2"], 0, 47.1)
    assert dead > 44, got["path:direct:k8s-node2"]["segments"][:5]
    assert failing_inside(got["path:direct:k8s-node1"], 15, 47.1) == 0
    # HAProxy took k8s-node2 out (DOWN) and kept the others
    assert any(s[2] == "fail" and "DOWN" in s[3]
               for s in got["state:admin-lb -> k8s-node2"]["segments"])
    ext = got["path:external"]
    assert ext["expect"].startswith("BLIP < 14 s") and ext["agree"] is True
    assert m["verdict"]["ok"] is True and m["status"] == "completed"


def test_segments_are_ordered_and_never_overlap(journal):
    for lane in lanes(view.model(journal)).values():
        segs = lane["segments"]
        assert all(a[0] <= a[1] <= b[0] + 1e-9 for a, b in zip(segs, segs[1:])), lane["id"]


def test_a_running_drill_has_no_verdict_yet_and_shows_the_current_state(journal):
    running = {k: v for k, v in journal.items() if k not in ("verdict", "after")}
    running["status"] = "running"
    cut = running["times"]["inject_start"] + 20
    running["times"] = {k: v for k, v in running["times"].items() if v <= cut}
    running["probes"] = {k: [p for p in v if p["t"] <= cut] for k, v in journal["probes"].items()}
    m = view.model(running, now=cut + 0.5)
    assert m["verdict"] is None and m["status"] == "running"
    assert m["now"] == pytest.approx(20.5, abs=0.01)
    assert lanes(m)["path:direct:k8s-node2"]["state"] == "fail"   # killed: failing right now
    assert [mk["id"] for mk in m["markers"]] == ["injected"]


def test_the_report_is_the_page_with_the_view_inlined(journal):
    page = report.html_report(journal)
    inline = re.search(r'<script type="application/json" id="halab-model">(.*?)</script>',
                       page, re.S).group(1)
    assert json.loads(inline) == json.loads(json.dumps(view.model(journal)))
    assert view.asset("view.js") in page and view.asset("view.css") in page
    # nothing comes from elsewhere: no src or href at all in the offline page
    assert not re.search(r"\s(src|href)=", page)


def test_hostile_text_in_a_journal_cannot_close_the_script(journal):
    journal["errors"] = ['</script><script>alert("x")</script>']
    journal["lab"] = "<img src=x onerror=alert(1)>"
    page = report.html_report(journal)
    assert "</script><script>alert" not in page and "<img src=x" not in page
    inline = re.search(r'id="halab-model">(.*?)</script>', page, re.S).group(1)
    assert json.loads(inline)["errors"] == journal["errors"]


def test_a_runbook_shows_each_drill(journal):
    rb = {"kind": "runbook", "id": "20990101-000000-runbook", "lab": "vmd", "case": 2,
          "steps": [{"step": 1, "fault": "kill", "targets": ["k8s-node2"], "ok": True,
                     "result": "as expected"}], "journals": [journal],
          "verdict": {"ok": True, "reasons": []}}
    m = view.model(rb)
    assert m["kind"] == "runbook" and len(m["drills"]) == 1
    assert "path:external" in lanes(m["drills"][0])
    assert "halab runbook" in report.html_report(rb)


# ------------------------------------------------------------------ the live server

def get(url: str, method: str = "GET"):
    req = urllib.request.Request(url, method=method)
    return urllib.request.urlopen(req, timeout=5)


@pytest.fixture
def live():
    lv = LiveView("127.0.0.1", 0, "t").start()
    yield lv
    lv.close()


def test_the_live_server_serves_the_page_read_only_on_loopback(live):
    assert live.url.startswith("http://127.0.0.1:")
    with get(live.url) as r:
        page = r.read().decode()
        assert r.headers["Content-Security-Policy"] == CSP
    assert 'src="/view.js"' in page and 'data-live="1"' in page
    with get(live.url + "view.js") as r:
        assert r.read().decode() == view.asset("view.js")
    for method in ("POST", "PUT", "DELETE"):
        with pytest.raises(urllib.error.HTTPError) as e:
            get(live.url, method)
        assert e.value.code == 405
    with pytest.raises(urllib.error.HTTPError) as e:
        get(live.url + "../../etc/passwd")
    assert e.value.code == 404


def test_events_push_every_new_view_and_end_with_the_final_one(live, journal):
    got: list[dict] = []

    def listen():
        with get(live.url + "events") as r:
            for line in r:
                if line.startswith(b"data: "):
                    got.append(json.loads(line[6:]))
    live.publish({"kind": "drill", "n": 1})
    t = threading.Thread(target=listen)
    t.start()
    for _ in range(200):                   # the browser is connected and has view 1
        if got:
            break
        threading.Event().wait(0.05)
    assert got == [{"kind": "drill", "n": 1, "final": False}]
    live.publish({"kind": "drill", "n": 2})
    assert live.wait_delivered(5)
    live.publish(view.model(journal), final=True)
    t.join(10)
    assert not t.is_alive()               # the stream ends after the final view
    assert [g.get("n") for g in got] == [1, 2, None]
    assert got[-1]["final"] is True and got[-1]["id"] == journal["id"]
    with get(live.url + "view.json") as r:
        assert json.loads(r.read())["final"] is True


def test_the_publisher_builds_views_of_a_running_drill(live, journal):
    pub = Publisher(live, lambda: {**journal, "status": "running"}, every=0.05).start()
    deadline = 50
    while live.version == 0 and deadline:
        threading.Event().wait(0.05)
        deadline -= 1
    assert json.loads(live.data)["status"] == "running"
    pub.finish(journal)
    assert json.loads(live.data)["final"] is True and json.loads(live.data)["verdict"]["ok"]


def test_a_bad_bind_or_a_taken_port_says_what_to_do(live):
    with pytest.raises(HalabError, match="not an IP address"):
        LiveView("projector.local")
    port = live.server.server_address[1]
    with pytest.raises(HalabError, match="cannot listen") as e:
        LiveView("127.0.0.1", port)
    assert "--port" in e.value.hint
