"""Parser tests on REAL ansible-playbook output.

The ``*.out`` files under tests/data/ansible were captured by running the
playbooks next to them with ansible-core 2.17 (see tests/support/ansible_runs.py);
the ``ssh``-marked tests run the same playbooks live and check the same facts.
"""

import pytest

from lab.deploy.ansible_progress import AnsibleProgress, RecapRow, blob_msg, count_list_tasks, format_duration, parse, parse_recap_line, render_recap_table
from tests.support.ansible_runs import DATA, LOCAL_INVENTORY, group_left, run_capture, ssh_inventory
from tests.support.sshd import free_port, sshd_server  # noqa: F401


def stored(name: str) -> str:
    return (DATA / f"{name}.out").read_text()


def live_counts_before_recap(text: str) -> AnsibleProgress:
    """Parse everything up to PLAY RECAP: the live view of the run."""
    p = parse(text.split("PLAY RECAP")[0])
    p._end_task()
    return p


# ------------------------------------------------------------------ checks shared by stored and live runs


def check_success(text: str) -> None:
    p = parse(text)
    assert p.finished and p.ok and not p.interrupted and not p.errors
    assert p.failures == [] and p.failure is None and p.failed_hosts == []
    assert [r.host for r in p.recap] == ["node1", "node2", "node3"]
    assert p.recap[0] == RecapRow("node1", ok=8, changed=2, skipped=3)
    assert p.recap[1] == RecapRow("node2", ok=9, changed=3, skipped=2, rescued=1)
    assert p.recap[2] == RecapRow("node3", ok=5, changed=3, skipped=2, ignored=1)
    assert p.plays_started == 2 and p.tasks_started == 12  # 11 tasks + 1 handler
    assert p.retries == 1
    # the live counters agree with ansible's own recap, rescue and ignore included
    live = live_counts_before_recap(text)
    assert live.hosts == p.hosts
    assert live.failures == []


def check_fail(text: str, profile_tasks: bool = False) -> None:
    p = parse(text)
    assert p.finished and not p.ok
    assert p.failure.host == "node2"
    assert p.failure.task == "Check disk space"
    assert p.failure.play == "Install packages"
    assert p.failure.msg == "not enough disk on node2: need 20G, have 3G"
    assert str(p.failure) == "node2 failed in task 'Check disk space': not enough disk on node2: need 20G, have 3G"
    item = p.failures[1]
    assert (item.host, item.task, item.item, item.msg) == ("node3", "Loop with a failing item", "bad",
                                                            "non-zero return code")
    assert len(p.failures) == 2
    assert p.failed_hosts == ["node2", "node3"]
    assert [r.failed for r in p.recap] == [0, 1, 1]
    assert p.recap[0] == RecapRow("node1", ok=2, changed=1, skipped=2)
    assert p.tasks_started == 4
    live = live_counts_before_recap(text)
    assert live.hosts == p.hosts and live.failed_hosts == ["node2", "node3"]


def check_interrupt(text: str) -> None:
    p = parse(text)
    assert p.interrupted and not p.finished and not p.ok
    assert p.play == "Long running play" and p.task == "Slow task"
    assert p.tasks_started == 2 and p.recap == []
    assert {h: c["ok"] for h, c in p.hosts.items()} == {"node1": 1, "node2": 1, "node3": 1}
    assert p.errors == []  # the interrupt is not a playbook error


def check_ssh(text: str, dead_port=None) -> None:
    p = parse(text)
    assert p.finished and not p.ok
    ghost = [f for f in p.failures if f.host == "ghost"]
    assert len(ghost) == 1 and ghost[0].kind == "unreachable" and ghost[0].task == "Gathering Facts"
    assert "Connection refused" in ghost[0].msg and not ghost[0].msg.endswith("\n")
    if dead_port:
        assert f"port {dead_port}" in ghost[0].msg
    assert str(ghost[0]).startswith("ghost unreachable in task 'Gathering Facts'")
    lb = [f for f in p.failures if f.host == "lb"]
    assert len(lb) == 1 and lb[0].task == "Fail on purpose" and lb[0].msg == "non-zero return code: boom"
    assert p.failure.host == "ghost"
    rows = {r.host: r for r in p.recap}
    assert rows["ghost"] == RecapRow("ghost", unreachable=1)
    assert rows["lb"] == RecapRow("lb", ok=3, changed=1, failed=1)
    assert "root" in text  # the debug of `id -un` over ssh
    assert live_counts_before_recap(text).hosts == p.hosts


# ------------------------------------------------------------------ stored captures


def test_success_capture():
    check_success(stored("success"))


def test_fail_capture():
    check_fail(stored("fail"))


def test_fail_capture_with_profile_tasks_lines():
    """kubespray's ansible.cfg enables profile_tasks: timing lines and a summary."""
    text = stored("fail-profile_tasks")
    assert "=======" in text and " 0:00:0" in text
    check_fail(text)


def test_interrupt_capture():
    check_interrupt(stored("interrupt"))


def test_ssh_capture():
    check_ssh(stored("ssh"))


def test_list_tasks_count():
    assert count_list_tasks(stored("success.list-tasks")) == 9


def test_live_state_while_running():
    """Fed line by line, the state tracks play/task as they happen."""
    p = AnsibleProgress()
    seen = []
    for line in stored("fail").splitlines():
        kind = p.feed(line)
        if kind == "task":
            seen.append((p.play, p.task, p.tasks_started))
        if kind == "failed" and p.failure and len(seen) == 2:
            assert p.failed_hosts == ["node2"]
    assert seen == [
        ("Install packages", "Ping every node", 1),
        ("Install packages", "Check disk space", 2),
        ("Install packages", "Loop with a failing item", 3),
        ("Install packages", "After the failures", 4),
    ]


def test_role_include_delegate_lines():
    p = AnsibleProgress()
    kinds = [p.feed(line) for line in stored("success").splitlines()]
    assert "included" in kinds and "handler" in kinds and "retry" in kinds and "ignored" in kinds
    text = stored("success")
    assert "TASK [demo : Included task delegated to localhost]" in text and "ok: [node1 -> localhost]" in text


# ------------------------------------------------------------------ small pure pieces


def test_parse_recap_line():
    row = parse_recap_line("node1                      : ok=8    changed=2    unreachable=0    failed=0    "
                           "skipped=3    rescued=0    ignored=0   ")
    assert row == RecapRow("node1", ok=8, changed=2, skipped=3)
    assert parse_recap_line("TASK [x] ****") is None
    assert parse_recap_line("Loop with a failing item ------------------------------------------------ 1.07s") is None


def test_blob_msg():
    assert blob_msg('{"changed": false, "msg": "disk full"}') == "disk full"
    assert blob_msg('{"msg": "non-zero return code", "rc": 3, "stderr": "boom"}') == "non-zero return code: boom"
    assert blob_msg('{"rc": 2}') == "exit code 2"
    # not JSON (e.g. a cut-off line): the msg is still found
    assert blob_msg('{"changed": false, "msg": "a \\"quoted\\" word", "x": [') == 'a "quoted" word'
    assert blob_msg("something else") == "something else"


def test_estimate_and_status_line():
    now = [100.0]
    p = AnsibleProgress(clock=lambda: now[0])
    assert p.estimate(10).remaining is None
    p.feed("PLAY [Deploy] ****")
    for i in range(4):
        p.feed(f"TASK [step {i}] ****")
    now[0] = 140.0  # 4 tasks in 40 s: 10 s per task
    eta = p.estimate(10)
    assert eta.elapsed == 40.0 and eta.remaining == pytest.approx(60.0) and eta.fraction == pytest.approx(0.4)
    assert p.estimate(None).remaining is None
    assert p.estimate(2).remaining == 0.0  # more tasks than the hint: nothing negative
    assert p.status_line(10) == "[4/10] Deploy > step 3 (eta 1m00s)"
    p.feed("PLAY RECAP ****")
    assert p.estimate(10).remaining == 0.0 and p.estimate(10).fraction == 1.0
    assert format_duration(3725) == "1h02m" and format_duration(5) == "5s" and format_duration(None) == "?"


def test_render_recap_table():
    rows = parse(stored("fail")).recap
    assert render_recap_table(rows) == (
        "  HOST   OK  CHANGED  UNREACHABLE  FAILED  SKIPPED  RESCUED  IGNORED\n"
        "  node1   2        1            0       0        2        0        0\n"
        "! node2   1        0            0       1        0        0        0\n"
        "! node3   1        0            0       1        1        0        0"
    )
    assert render_recap_table([]).startswith("  HOST")


def test_error_and_warning_lines():
    p = parse(
        "ERROR! the playbook: nope.yml could not be found\n"
        " [WARNING]: Unable to parse /nonexist.ini as an inventory source\n"
    )
    assert p.errors == ["the playbook: nope.yml could not be found"]
    assert p.warnings == ["Unable to parse /nonexist.ini as an inventory source"]
    assert not p.ok


# ------------------------------------------------------------------ live runs (real ansible)


@pytest.mark.ssh
def test_live_success(tmp_path):
    text, rc, _ = run_capture("success.yml", LOCAL_INVENTORY, tmp_path)
    assert rc == 0, text
    check_success(text)


@pytest.mark.ssh
def test_live_fail(tmp_path):
    text, rc, _ = run_capture("fail.yml", LOCAL_INVENTORY, tmp_path)
    assert rc == 2, text
    check_fail(text)


@pytest.mark.ssh
def test_live_interrupt(tmp_path):
    text, rc, pid = run_capture("interrupt.yml", LOCAL_INVENTORY, tmp_path, interrupt_after="TASK [Slow task]")
    assert rc == 99, text
    check_interrupt(text)
    assert group_left(pid) == []  # ansible and its workers are all gone (after they exit)


@pytest.mark.ssh
def test_live_over_ssh(sshd_server, tmp_path):
    dead = free_port()
    inv = ssh_inventory(tmp_path / "hosts.ini", sshd_server.port, sshd_server.key_path, sshd_server.user, dead)
    text, rc, _ = run_capture("ssh.yml", inv, tmp_path)
    assert rc == 4, text  # 4: some host unreachable
    check_ssh(text, dead_port=dead)
