import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest

from lab.deploy.ansible_progress import parse
from lab.errors import HalabError
from lab.deploy.playbook import PID_MARKER, playbook_command, run_playbook, summarize
from lab.providers.vagrant.remote import Remote
from tests.support.ansible_runs import DATA, LOCAL_INVENTORY, group_members, live_pids
from tests.support.sshd import descendants, sshd_server  # noqa: F401

# ------------------------------------------------------------------ pure: command building


def test_playbook_command_argv_and_env():
    cmd = playbook_command("cluster.yml", "inventory/lab/hosts.yaml", {"kube_version": "v1.33.1", "n": 3, "flag": True},
                           limit="cp1,cp2", tags=["etcd", "node"], forks=20, become=True)
    assert cmd.argv == (
        "ansible-playbook", "-i", "inventory/lab/hosts.yaml", "--become", "--become-user=root",
        "-e", '{"flag":true,"kube_version":"v1.33.1","n":3}',
        "--limit", "cp1,cp2", "--tags", "etcd,node", "cluster.yml",
    )
    env = cmd.env
    assert env["ANSIBLE_FORCE_COLOR"] == "0" and env["ANSIBLE_NOCOLOR"] == "1"
    assert env["ANSIBLE_PIPELINING"] == "True" and env["ANSIBLE_FORKS"] == "20"
    assert env["ANSIBLE_HOST_KEY_CHECKING"] == "False" and env["ANSIBLE_STDOUT_CALLBACK"] == "default"
    assert env["ANSIBLE_CACHE_PLUGIN"] == "jsonfile"
    assert env["ANSIBLE_CACHE_PLUGIN_CONNECTION"].startswith("/tmp/")
    assert cmd.cwd is None and cmd.path_prepend is None
    minimal = playbook_command("site.yml", "hosts.ini")
    assert minimal.argv == ("ansible-playbook", "-i", "hosts.ini", "site.yml")
    assert minimal.env["ANSIBLE_FORKS"] == "10"
    assert playbook_command("s.yml", "h", tags="a,b").argv[-2] == "a,b"


def test_shell_string_quotes_everything():
    nasty = {"msg": "it's a \"test\" $HOME `id` ; rm -rf /", "list": ["a b", "c"]}
    cmd = playbook_command("my play.yml", "inv dir/hosts.ini", nasty, venv="/opt/ks venv", cwd="/opt/kube spray")
    line = cmd.shell()
    assert line.startswith("cd '/opt/kube spray' && env PATH='/opt/ks venv/bin':\"$PATH\" ")
    words = shlex.split(line)
    i = words.index("/opt/ks venv/bin/ansible-playbook")
    assert words[i:] == list(cmd.argv)
    assert json.loads(words[words.index("-e") + 1]) == nasty
    assert "ANSIBLE_NOCOLOR=1" in words and "VIRTUAL_ENV=/opt/ks venv" in words
    assert cmd.shell(exec_=True).startswith("cd '/opt/kube spray' && exec env ")


def test_shell_string_really_runs_in_sh(tmp_path):
    """The shell form reaches a fake ansible-playbook with argv and env intact."""
    venv = tmp_path / "venv dir"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "ansible-playbook"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "ARG:$a"; done\n'
                    'echo "FORKS:$ANSIBLE_FORKS"; echo "PATH:$PATH"; echo "PWD:$(pwd)"; echo "PID:$$"\n')
    fake.chmod(0o755)
    work = tmp_path / "work dir"
    work.mkdir()
    extra = {"q": "it's \"x\" $HOME"}
    cmd = playbook_command("p.yml", "h.ini", extra, venv=str(venv), cwd=str(work), forks=7)
    out = subprocess.run(["sh", "-c", f"echo {PID_MARKER}$$; " + cmd.shell(exec_=True)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    args = [line[4:] for line in out if line.startswith("ARG:")]
    assert args == list(cmd.argv[1:])
    assert json.loads(args[args.index("-e") + 1]) == extra
    assert "FORKS:7" in out and f"PWD:{work}" in out
    path = next(line for line in out if line.startswith("PATH:"))
    assert path.startswith(f"PATH:{venv}/bin:") and len(path) > len(f"PATH:{venv}/bin:")
    # exec: the fake ansible-playbook kept the shell's PID (what the remote runner signals)
    assert out[0] == f"{PID_MARKER}{next(line for line in out if line.startswith('PID:'))[4:]}"


def test_local_env_prepends_venv():
    cmd = playbook_command("p.yml", "h", venv="/v/")
    env = cmd.local_env({"PATH": "/usr/bin", "HOME": "/root"})
    assert env["PATH"] == "/v/bin:/usr/bin" and env["HOME"] == "/root" and env["ANSIBLE_NOCOLOR"] == "1"
    assert cmd.argv[0] == "/v/bin/ansible-playbook"


# ------------------------------------------------------------------ pure: summaries of stored real output


def _stored(name):
    return parse((DATA / f"{name}.out").read_text())


def test_summarize_statuses():
    ok = summarize(_stored("success"), 0, False, "/l.log", "again")
    assert ok.ok and ok.status == "ok" and ok.failure is None and len(ok.recap) == 3
    assert "finished OK" in ok.describe() and "resume" not in ok.describe()
    bad = summarize(_stored("fail"), 2, False, "/l.log", "RESUME-CMD")
    assert bad.status == "failed" and not bad.ok
    assert (bad.failed_host, bad.failed_task) == ("node2", "Check disk space")
    assert bad.failed_msg == "not enough disk on node2: need 20G, have 3G"
    text = bad.describe()
    assert "node2 failed in task 'Check disk space'" in text and "! node2" in text
    assert "log: /l.log" in text and "resume with: RESUME-CMD" in text
    intr = summarize(_stored("interrupt"), 99, False, "/l.log", "R")
    assert intr.status == "interrupted" and intr.task == "Slow task"
    assert "interrupted during task 'Slow task'" in intr.describe()
    assert summarize(_stored("ssh"), 4, False, "/l", "R").failure.kind == "unreachable"
    err = summarize(parse("ERROR! the playbook: nope.yml could not be found\n"), 1, False, "/l", "R")
    assert err.status == "error" and "nope.yml could not be found" in err.describe()


# ------------------------------------------------------------------ real ansible-playbook


def _cmd(playbook, tmp_path, **kw):
    return playbook_command(DATA / playbook, LOCAL_INVENTORY, {"workdir": str(tmp_path)}, forks=5,
                            fact_cache=str(tmp_path / "facts"), cwd=str(tmp_path), **kw)


@pytest.mark.ssh
def test_run_local_success(tmp_path):
    calls = []
    t0 = time.monotonic()
    log = tmp_path / "logs" / "deploy.log"
    s = run_playbook(_cmd("success.yml", tmp_path), log,
                     on_progress=lambda p, line: calls.append((time.monotonic() - t0, p.tasks_started, line)))
    end = time.monotonic() - t0
    assert s.status == "ok" and s.ok and s.exit_code == 0, s.describe()
    assert [r.host for r in s.recap] == ["node1", "node2", "node3"] and s.tasks_started == 12
    text = log.read_text()
    assert text.startswith("# halab ") and "PLAY RECAP" in text
    assert [c[2] for c in calls] == text.splitlines()[1:]  # every line went to the callback and the log
    assert [c[1] for c in calls] == sorted(c[1] for c in calls)
    first_task = next(c[0] for c in calls if c[2].startswith("TASK ["))
    assert end - first_task > 1.0  # lines were streamed while ansible ran, not at the end


@pytest.mark.ssh
def test_run_local_failure_names_host_task_msg(tmp_path):
    cmd = _cmd("fail.yml", tmp_path)
    s = run_playbook(cmd, tmp_path / "fail.log")
    assert s.status == "failed" and s.exit_code == 2
    assert (s.failed_host, s.failed_task, s.failed_msg) == (
        "node2", "Check disk space", "not enough disk on node2: need 20G, have 3G")
    assert s.resume_command == cmd.shell()
    assert shlex.split(s.resume_command)[-len(cmd.argv):] == list(cmd.argv)
    assert "resume with: " + cmd.shell() in s.describe()
    s2 = run_playbook(cmd, tmp_path / "fail.log", resume_command="halab deploy --resume")
    assert s2.resume_command == "halab deploy --resume"
    assert (tmp_path / "fail.log").read_text().count("PLAY RECAP") == 2  # appended


def _ansible_pids():
    return [p for p in descendants(os.getpid()) if _is_ansible(p)]


def _is_ansible(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"ansible" in f.read()
    except OSError:
        return False


@pytest.mark.ssh
def test_keyboard_interrupt_from_callback_stops_ansible(tmp_path):
    pids = []

    def progress(p, line):
        if line.startswith("TASK [Slow task]"):
            time.sleep(0.5)  # let `sleep 30` start on the hosts
            pids.extend(_ansible_pids())
            raise KeyboardInterrupt

    cmd = _cmd("interrupt.yml", tmp_path)
    t0 = time.monotonic()
    try:
        s = run_playbook(cmd, tmp_path / "i.log", on_progress=progress)
    finally:
        leftovers = live_pids(pids)
        for pid in leftovers:  # never leave anything behind, even when failing
            os.kill(pid, signal.SIGKILL)
    assert leftovers == []
    assert time.monotonic() - t0 < 25
    assert len(pids) >= 2  # ansible-playbook and at least one worker were seen
    assert s.status == "interrupted" and s.task == "Slow task"
    assert s.resume_command == cmd.shell() and "resume with:" in s.describe()
    assert group_members(min(pids)) == []
    assert "interrupted" in (tmp_path / "i.log").read_text()


@pytest.mark.ssh
def test_ctrl_c_signal_during_run(tmp_path):
    """A real SIGINT to halab (as the terminal sends) while it waits on ansible."""
    started = threading.Event()
    pids = []

    def progress(p, line):
        if line.startswith("TASK [Slow task]") and not started.is_set():
            pids.extend(_ansible_pids())
            started.set()

    def ctrl_c():
        if started.wait(60):
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Thread(target=ctrl_c)
    timer.start()
    try:
        s = run_playbook(_cmd("interrupt.yml", tmp_path), tmp_path / "c.log", on_progress=progress)
    except KeyboardInterrupt:  # would mean run_playbook let it escape
        pytest.fail("KeyboardInterrupt escaped run_playbook")
    finally:
        started.set()
        timer.join()
        leftovers = live_pids(pids + _ansible_pids())
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
    assert leftovers == []
    assert s.status == "interrupted" and s.exit_code == 99


@pytest.mark.ssh
def test_callback_error_kills_ansible_and_propagates(tmp_path):
    pids = []

    def progress(p, line):
        if line.startswith("TASK [Slow task]"):
            pids.extend(_ansible_pids())
            raise RuntimeError("display broke")

    try:
        with pytest.raises(RuntimeError, match="display broke"):
            run_playbook(_cmd("interrupt.yml", tmp_path), tmp_path / "e.log", on_progress=progress)
    finally:
        leftovers = live_pids(pids)
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
    assert pids and leftovers == []


def test_missing_ansible_playbook_is_a_halab_error(tmp_path):
    cmd = playbook_command("p.yml", "h.ini", venv=str(tmp_path / "no-venv"))
    with pytest.raises(HalabError) as e:
        run_playbook(cmd, tmp_path / "x.log")
    assert "ansible-playbook" in str(e.value)


# ------------------------------------------------------------------ through a Remote (real sshd)


def _remote_cmd(playbook, tmp_path):
    # the "remote" is this machine: ansible-playbook lives in this Python's prefix
    return playbook_command(DATA / playbook, LOCAL_INVENTORY, {"workdir": str(tmp_path)}, forks=5,
                            venv=sys.prefix, cwd=str(tmp_path), fact_cache=str(tmp_path / "facts"))


@pytest.mark.ssh
def test_run_over_ssh_failure(sshd_server, tmp_path):
    s_ = sshd_server
    with Remote(s_.host, s_.port, s_.user, s_.key_path, name="admin-lb") as remote:
        s = run_playbook(_remote_cmd("fail.yml", tmp_path), tmp_path / "r.log", remote=remote)
    assert s.status == "failed" and s.exit_code == 2
    assert (s.failed_host, s.failed_task) == ("node2", "Check disk space")
    log = (tmp_path / "r.log").read_text()
    assert "on admin-lb:" in log.splitlines()[0] and PID_MARKER not in log and "PLAY RECAP" in log


@pytest.mark.ssh
def test_interrupt_over_ssh_kills_remote_group(sshd_server, tmp_path):
    s_ = sshd_server
    pids = []

    def progress(p, line):
        if line.startswith("TASK [Slow task]"):
            time.sleep(0.5)
            pids.extend(p for p in descendants(s_.pid) if _is_ansible(p))
            raise KeyboardInterrupt

    try:
        with Remote(s_.host, s_.port, s_.user, s_.key_path, name="admin-lb") as remote:
            s = run_playbook(_remote_cmd("interrupt.yml", tmp_path), tmp_path / "ri.log", remote=remote,
                             on_progress=progress)
            assert remote.run("true").ok  # the connection is still usable
    finally:
        time.sleep(0.2)
        leftovers = live_pids(pids)
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
    assert pids and leftovers == []
    assert s.status == "interrupted" and s.task == "Slow task" and s.exit_code == 99
