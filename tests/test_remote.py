import os
import socket
import stat
import threading
import time

import pytest

from lab.errors import HalabError
from lab.providers.vagrant.remote import LineWriter, Remote, Result, connect, run_many, ssh_config_for, sudo_wrap
from tests.support.sshd import free_port, sshd_server  # noqa: F401

VAGRANT_SSH_CONFIG = """\
Host admin-lb
  HostName 127.0.0.1
  User vagrant
  Port 2222
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile "/home/me/my lab/.vagrant/machines/admin-lb/virtualbox/private_key"
  IdentitiesOnly yes
  LogLevel FATAL
  PubkeyAcceptedKeyTypes +ssh-rsa
  HostKeyAlgorithms +ssh-rsa

Host cp1
  HostName 127.0.0.1
  User vagrant
  Port 2200
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile /home/me/lab/.vagrant/machines/cp1/virtualbox/private_key
  IdentitiesOnly yes
  LogLevel FATAL
"""


# ----------------------------------------------------------------- pure


def test_ssh_config_for_vagrant_output():
    t = ssh_config_for(VAGRANT_SSH_CONFIG, "admin-lb")
    assert (t.name, t.host, t.port, t.user) == ("admin-lb", "127.0.0.1", 2222, "vagrant")
    assert t.key_filename == "/home/me/my lab/.vagrant/machines/admin-lb/virtualbox/private_key"
    t = ssh_config_for(VAGRANT_SSH_CONFIG, "cp1")
    assert (t.port, t.key_filename) == (2200, "/home/me/lab/.vagrant/machines/cp1/virtualbox/private_key")


def test_ssh_config_for_unknown_host():
    with pytest.raises(HalabError) as e:
        ssh_config_for(VAGRANT_SSH_CONFIG, "worker9")
    assert "worker9" in str(e.value)
    assert "admin-lb" in e.value.hint and "cp1" in e.value.hint


def test_remote_from_target_names():
    r = Remote.from_target(ssh_config_for(VAGRANT_SSH_CONFIG, "cp1"))
    assert r.name == "cp1"
    assert "cp1" in r.where and "vagrant@127.0.0.1:2200" in r.where
    assert Remote("10.0.0.5").name == "10.0.0.5"  # no connection is made
    assert Remote("127.0.0.1", 2201).name == "127.0.0.1:2201"


def test_sudo_wrap():
    assert sudo_wrap("id -u", "root") == "id -u"
    assert sudo_wrap("echo 'a b' | wc -c", "vagrant") == "sudo -n -H -- sh -c 'echo '\"'\"'a b'\"'\"' | wc -c'"


def test_line_writer_buffers_chunks_into_lines():
    lines = []
    w = LineWriter(lines.append)
    for chunk in ["he", "llo\nwor", "ld\r\n", "\n", "tail"]:
        w.write(chunk)
    assert lines == ["hello", "world", ""]
    w.close()
    assert lines == ["hello", "world", "", "tail"]


def test_result_ok():
    assert Result(exited=0).ok and not Result(exited=2).ok


def test_wrong_port_fails_fast_and_names_host():
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(HalabError) as e:
        connect("127.0.0.1", port, "root", connect_timeout=2)
    assert time.monotonic() - t0 < 3
    assert f"127.0.0.1:{port}" in str(e.value) and "refused" in str(e.value)


def test_silent_server_times_out_quickly():
    """A port that accepts TCP but never speaks SSH: the banner timeout applies."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    try:
        t0 = time.monotonic()
        with pytest.raises(HalabError) as e:
            Remote("127.0.0.1", port, "root", connect_timeout=0.7).run("true")
        assert time.monotonic() - t0 < 5
        assert f"127.0.0.1:{port}" in str(e.value)
    finally:
        srv.close()


# ----------------------------------------------------------------- real sshd


def _remote(s, **kw):
    return Remote(s.host, s.port, s.user, s.key_path, **kw)


@pytest.mark.ssh
def test_run_ok_and_failure_do_not_raise(sshd_server):
    with _remote(sshd_server, name="lb") as r:
        res = r.run("echo out; echo err >&2; exit 0")
        assert res.ok and res.exited == 0
        assert res.stdout == "out\n" and res.stderr == "err\n"
        assert res.host == "lb"
        res = r.run("echo partial; exit 3")
        assert not res.ok and res.exited == 3 and res.stdout == "partial\n"
        assert r.run("id -u", sudo=True).stdout.strip() == "0"  # root: no sudo needed


@pytest.mark.ssh
def test_put_get_with_mode(sshd_server, tmp_path):
    src = tmp_path / "src.txt"
    src.write_text("secret\nline2\n")
    os.chmod(src, 0o644)
    dest = tmp_path / "remote" / "dest.txt"
    dest.parent.mkdir()
    with _remote(sshd_server) as r:
        r.put(str(src), str(dest), mode=0o600)
        assert stat.S_IMODE(os.stat(dest).st_mode) == 0o600
        assert r.run(f"cat {dest}").stdout == "secret\nline2\n"
        back = tmp_path / "back.txt"
        r.get(str(dest), str(back))
        assert back.read_text() == "secret\nline2\n"
        with pytest.raises(HalabError) as e:
            r.get(str(tmp_path / "missing"), str(tmp_path / "x"))
        assert "missing" in str(e.value)
        with pytest.raises(HalabError):
            r.put(str(src), "/nonexistent-dir/x.txt")


@pytest.mark.ssh
def test_streaming_delivers_lines_as_they_arrive(sshd_server):
    seen = []
    with _remote(sshd_server) as r:
        t0 = time.monotonic()
        res = r.run("for i in 1 2 3; do echo $i; sleep 0.3; done; printf tail", stream=lambda l: seen.append((time.monotonic() - t0, l)))
        end = time.monotonic() - t0
    assert [l for _, l in seen] == ["1", "2", "3", "tail"]
    assert res.stdout == "1\n2\n3\ntail"  # still captured
    first = seen[0][0]
    assert end - first > 0.6, seen  # line 1 came well before the command ended
    assert seen[1][0] - first > 0.2 and seen[2][0] - seen[1][0] > 0.2, seen


@pytest.mark.ssh
def test_stream_callback_error_is_not_a_connection_error(sshd_server):
    def boom(line):
        raise ValueError("callback broke")

    with _remote(sshd_server) as r:
        with pytest.raises(ValueError, match="callback broke"):
            r.run("echo a; sleep 5", stream=boom)
        assert r.run("echo ok").ok


@pytest.mark.ssh
def test_stderr_stream(sshd_server):
    out, err = [], []
    with _remote(sshd_server) as r:
        r.run("echo a; echo b >&2", stream=out.append, stderr_stream=err.append)
    assert out == ["a"] and err == ["b"]


@pytest.mark.ssh
def test_timeout_gives_exit_124(sshd_server):
    with _remote(sshd_server) as r:
        t0 = time.monotonic()
        res = r.run("echo begun; sleep 20", timeout=1)
        assert time.monotonic() - t0 < 5
        assert res.exited == 124 and not res.ok and "timed out" in res.stderr
        assert r.run("echo still usable").ok


@pytest.mark.ssh
def test_dropped_connection_raises_naming_host(sshd_server):
    started = threading.Event()
    r = _remote(sshd_server, name="admin-lb")
    r.open()
    killer = threading.Thread(target=lambda: started.wait(10) and sshd_server.kill_sessions())
    killer.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(HalabError) as e:
            r.run("echo started; sleep 30", stream=lambda line: started.set())
        assert time.monotonic() - t0 < 10
        msg = str(e.value)
        assert "admin-lb" in msg and f"127.0.0.1:{sshd_server.port}" in msg and "dropped" in msg
        # the listener is still up: the next command reconnects by itself
        assert r.run("echo again").stdout == "again\n"
        # now stop sshd entirely: a clear connection error
        sshd_server.kill_sessions()  # while they are still the listener's children
        sshd_server.stop()
        with pytest.raises(HalabError) as e:
            r.run("true")
        assert "admin-lb" in str(e.value)
    finally:
        started.set()
        killer.join()
        r.close()


@pytest.mark.ssh
def test_command_killed_by_signal_is_not_a_dropped_connection(sshd_server):
    with _remote(sshd_server) as r:
        res = r.run("kill -9 $$")
        assert not res.ok and res.exited == -1
        assert r.run("true").ok


@pytest.mark.ssh
def test_run_many_keeps_every_host(sshd_server):
    good1 = _remote(sshd_server, name="cp1")
    good2 = _remote(sshd_server, name="cp2")
    bad = Remote("127.0.0.1", free_port(), "root", sshd_server.key_path, name="cp3", connect_timeout=2)
    try:
        results = run_many([good1, good2, bad], "hostname >/dev/null && echo fine")
        assert set(results) == {"cp1", "cp2", "cp3"}
        assert results["cp1"].ok and results["cp1"].stdout == "fine\n"
        assert results["cp2"].ok
        assert not results["cp3"].ok and results["cp3"].exited == 255
        assert "cp3" in results["cp3"].stderr and "refused" in results["cp3"].stderr
        failing = run_many([good1], "exit 7")
        assert failing["cp1"].exited == 7
        assert run_many([], "true") == {}
    finally:
        for r in (good1, good2, bad):
            r.close()
