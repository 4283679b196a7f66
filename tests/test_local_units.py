"""Unit tests of the local provider's building blocks, without root.

labdir (find_lab rules), commands.lab_health, kubeconfig merge/unmerge, netns
naming, procs.Supervisor on harmless `sleep` processes started here. Only the
last test (Supervisor.start, which goes through `ip netns exec`) needs root: it
is marked `local` and makes its own throwaway namespace.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from lab.deploy import kubeconfig as kc
from lab.providers.local import netns, procs
from tests.support import netns_sweep
from lab.app.lab import lab_health
from lab.errors import HalabError
from lab.state import Lab, Record, all_labs, find_lab, labs_root
from lab.providers.local.procs import RESTART_MARK, ServiceSpec, Supervisor


def _wait(cond, timeout=10.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


# ================================================================== labdir

def _make_lab(root: Path, name: str) -> Lab:
    lab = Lab(root / name)
    lab.update(name=name, provider="local")
    return lab


def test_find_lab_none_gives_the_fix(tmp_path):
    with pytest.raises(HalabError) as err:
        find_lab(None, tmp_path)
    assert str(tmp_path) in err.value.message
    assert "halab up" in err.value.hint


def test_find_lab_missing_root_is_like_none(tmp_path):
    with pytest.raises(HalabError, match="no lab in"):
        find_lab(None, tmp_path / "does-not-exist")


def test_find_lab_picks_the_only_one(tmp_path):
    _make_lab(tmp_path, "alpha")
    (tmp_path / "not-a-lab").mkdir()          # a folder without state.json is no lab
    (tmp_path / "stray-file").write_text("x")
    assert find_lab(None, tmp_path).name == "alpha"
    assert [l.name for l in all_labs(tmp_path)] == ["alpha"]


def test_find_lab_several_need_lab(tmp_path):
    for n in ("alpha", "beta"):
        _make_lab(tmp_path, n)
    with pytest.raises(HalabError) as err:
        find_lab(None, tmp_path)
    assert "alpha" in err.value.message and "beta" in err.value.message
    assert "--lab" in err.value.hint
    assert find_lab("beta", tmp_path).name == "beta"


def test_find_lab_unknown_name_lists_known(tmp_path):
    _make_lab(tmp_path, "alpha")
    with pytest.raises(HalabError) as err:
        find_lab("gamma", tmp_path)
    assert "'gamma'" in err.value.message and "alpha" in err.value.message
    assert "--labs-dir" in err.value.hint


def test_labs_root_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HALAB_LABS_DIR", raising=False)
    assert labs_root() == (tmp_path / ".halab").resolve()
    monkeypatch.setenv("HALAB_LABS_DIR", str(tmp_path / "env"))
    assert labs_root() == (tmp_path / "env").resolve()
    assert labs_root(tmp_path / "explicit") == (tmp_path / "explicit").resolve()


def test_lab_state_update_and_step_events(tmp_path):
    lab = Lab(tmp_path / "l")
    assert lab.record() == Record(name="l") and not lab.exists()
    lab.update(phase="rendered")
    lab.update(phase="up", case=2)
    rec = lab.record()
    assert rec.phase == "up" and rec.case == 2 and rec.updated_at > 0
    assert sorted(p.name for p in lab.path.iterdir()) == [".record.lock", "state.json"]  # no temp
    with pytest.raises(TypeError, match="phsae"):
        lab.update(phsae="up")                         # a typo is not silently stored
    # keys of another halab version survive a round trip
    lab.state_path.write_text(json.dumps({"name": "l", "phase": "up", "future": {"x": 1}}))
    lab.update(case=3)
    assert json.loads(lab.state_path.read_text())["future"] == {"x": 1}
    with pytest.raises(RuntimeError):
        with lab.step("deploy"):
            raise RuntimeError("boom")
    events = [json.loads(l) for l in (lab.logs / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["deploy:start", "deploy:failed"]
    assert events[-1]["error"] == "boom"


def test_damaged_state_is_a_clear_error(tmp_path):
    lab = Lab(tmp_path / "l")
    lab.path.mkdir()
    lab.state_path.write_text("{not json")
    with pytest.raises(HalabError, match="damaged"):
        lab.record()


# ================================================================== lab_health

@pytest.mark.parametrize("machines, deploy, faults, services, want", [
    ({}, None, {}, None, "Absent"),
    ({"a": "not_created", "b": "not_created"}, "deployed", {}, None, "Absent"),
    ({"a": "poweroff", "b": "poweroff"}, "deployed", {}, None, "Stopped"),
    ({"a": "running", "b": "running"}, None, {}, None, "Created"),
    ({"a": "running", "b": "running"}, "starting", {}, None, "Deploying"),
    ({"a": "running", "b": "running"}, "deployed", {}, None, "Running"),
    ({"a": "running", "b": "running"}, "deployed", {}, {"a/etcd": "running"}, "Running"),
    ({"a": "running", "b": "poweroff"}, "deployed", {"b": "kill"}, None, "Degraded"),
    ({"a": "running", "b": "frozen"}, "deployed", {}, None, "Degraded"),
    ({"a": "running", "b": "partitioned"}, "deployed", {}, None, "Degraded"),
    ({"a": "running", "b": "running"}, "deployed", {"b": "stop-apiserver"}, None, "Degraded"),
    # every machine runs, but a service is dead (e.g. its process group was SIGKILLed)
    ({"a": "running", "b": "running"}, "deployed", {},
     {"a/etcd": "running", "b/kube-apiserver": "stopped"}, "Degraded"),
    ({"a": "running"}, "deployed", {}, {"a/kube-apiserver": "restarting"}, "Degraded"),
    # while deploying, services come and go: that is not "Degraded"
    ({"a": "running"}, "starting", {}, {"a/kube-apiserver": "stopped"}, "Deploying"),
])
def test_lab_health(machines, deploy, faults, services, want):
    assert lab_health(machines, deploy, faults, services) == want


def test_lab_health_old_signature_still_works():
    assert lab_health({"a": "running"}, "deployed", {}) == "Running"


# ================================================================== kubeconfig

def _topo(name="case2"):
    from lab.model import scenario
    from lab.model.topology import Topology
    return Topology.of(scenario.load(name, provider="local"))


def _lab_kubeconfig(topo):
    return kc.build(topo, b"CA", b"CERT", b"KEY")


def test_kubeconfig_contexts_per_case():
    t1, t2, t3 = _topo("case1"), _topo("case2"), _topo("case3-ha")
    assert kc.default_context(t1) == "case1-k8s-node1"          # no LB: a control plane
    assert kc.contexts(t1)[0][1] == "https://192.168.10.11:6443"
    assert kc.default_context(t2) == "case2-lb"
    assert dict(kc.contexts(t3))["case3-ha-lb"] == "https://192.168.10.10:6443"  # the VIP
    assert len(kc.contexts(t3)) == 4


def test_kubeconfig_merge_keeps_other_clusters(tmp_path):
    topo = _topo()
    other = {"apiVersion": "v1", "kind": "Config", "current-context": "prod",
             "clusters": [{"name": "prod", "cluster": {"server": "https://prod.example:6443"}}],
             "users": [{"name": "me", "user": {"token": "t"}}],
             "contexts": [{"name": "prod", "context": {"cluster": "prod", "user": "me"}}]}
    path = tmp_path / ".kube" / "config"
    kc.write(path, other)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    merged, added = kc.merge(kc.load(path), _lab_kubeconfig(topo))
    kc.write(path, merged)
    again = kc.load(path)
    names = {s: [e["name"] for e in again[s]] for s in ("clusters", "users", "contexts")}
    assert "prod" in names["clusters"] and "me" in names["users"] and "prod" in names["contexts"]
    assert {"case2-lb", "case2-k8s-node1"} <= set(names["contexts"])
    assert again["current-context"] == "prod"            # merging never switches context
    assert "contexts/case2-lb" in added and "users/case2-admin" in added
    assert not any("prod" in a or a == "users/me" for a in added)

    # merging twice does not duplicate
    twice, _ = kc.merge(again, _lab_kubeconfig(topo))
    assert len(twice["contexts"]) == len(again["contexts"])

    # unmerge removes exactly ours
    back = kc.unmerge(kc.load(path), added)
    assert back["clusters"] == other["clusters"]
    assert back["users"] == other["users"]
    assert back["contexts"] == other["contexts"]
    assert back["current-context"] == "prod"


def test_kubeconfig_merge_into_empty_takes_our_context_and_unmerge_clears_it(tmp_path):
    topo = _topo()
    merged, added = kc.merge(kc.load(tmp_path / "missing"), _lab_kubeconfig(topo))
    assert merged["current-context"] == "case2-lb"
    back = kc.unmerge(merged, added)
    assert back["contexts"] == [] and back["clusters"] == [] and back["users"] == []
    assert back["current-context"] == ""        # no dangling current-context


def test_kubeconfig_merge_replaces_stale_entries_of_the_same_lab():
    topo = _topo()
    stale = {"clusters": [{"name": "case2-lb", "cluster": {"server": "https://old:6443"}}],
             "contexts": [], "users": []}
    merged, _ = kc.merge(stale, _lab_kubeconfig(topo))
    servers = [c["cluster"]["server"] for c in merged["clusters"] if c["name"] == "case2-lb"]
    assert servers == ["https://192.168.10.10:6443"]


def test_kubeconfig_load_rejects_garbage(tmp_path):
    p = tmp_path / "cfg"
    p.write_text("a: [unclosed")
    with pytest.raises(HalabError, match="not valid YAML"):
        kc.load(p)
    p.write_text("- a list\n")
    with pytest.raises(HalabError, match="not a kubeconfig"):
        kc.load(p)


def test_user_kubeconfig_path_follows_KUBECONFIG(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path}/a{os.pathsep}{tmp_path}/b")
    assert kc.user_kubeconfig_path() == tmp_path / "a"
    monkeypatch.delenv("KUBECONFIG")
    assert kc.user_kubeconfig_path() == Path.home() / ".kube" / "config"


# ================================================================== netns naming

def test_namespace_names():
    assert netns.ns_name("case2", "k8s-node1") == "halab-case2-k8s-node1"
    assert netns.bridge_ns("case2") == "halab-case2.net"
    assert netns.client_ns("case2") == "halab-case2.client"
    assert netns.exec_prefix("x") == ["ip", "netns", "exec", "x"]


def test_test_sweep_matches_only_that_lab_name(tmp_path, monkeypatch):
    run = tmp_path / "netns"
    run.mkdir()
    for n in ("halab-a-n1", "halab-a.net", "halab-a.client", "halab-ab-n1", "halab-ab.net",
              "halab-b-n1", "other", "halab-a"):
        (run / n).touch()
    monkeypatch.setattr(netns, "NETNS_RUN", run)
    assert netns_sweep.lab_namespaces("a") == ["halab-a-n1", "halab-a.client", "halab-a.net"]
    assert netns_sweep.lab_namespaces("ab") == ["halab-ab-n1", "halab-ab.net"]
    monkeypatch.setattr(netns, "NETNS_RUN", tmp_path / "missing")
    assert netns_sweep.lab_namespaces("a") == []


@pytest.mark.parametrize("case", ["case1", "case2", "case3", "case3-ha"])
def test_provider_ports_are_unique_and_in_the_subnet(tmp_path, case):
    import ipaddress
    from lab.providers.local.provider import LocalProvider
    topo = _topo(case)
    prov = LocalProvider(Lab(tmp_path / topo.name), topo)
    ports = prov.ports()
    assert ports[0][0] == "client"
    assert ports[0][1].address == "192.168.10.1/24"        # the host's address on the network
    assert len({p.ns for _, p in ports}) == len(ports) == len(topo.nodes) + 1
    assert len({p.bridge_port for _, p in ports}) == len(ports)
    subnet = topo.scenario.network.subnet
    for node, p in ports:
        assert p.ns.startswith(f"halab-{topo.name}")
        assert len(p.bridge_port) <= 15                      # IFNAMSIZ
        assert ipaddress.ip_interface(p.address).ip in subnet
    assert len({p.address for _, p in ports}) == len(ports)
    assert prov.bridge not in {p.ns for _, p in ports}


def test_require_root_message(monkeypatch):
    from lab.providers.local import provider as local
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(HalabError) as err:
        local.require_root()
    assert "root" in err.value.message and "sudo" in err.value.hint and err.value.code == 2


def test_up_without_root_says_root_first_and_creates_nothing(tmp_path, monkeypatch):
    """Not "binaries missing": the root check comes before anything else."""
    from lab.app import lab as commands
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("HALAB_K8S_BIN_DIR", str(empty))
    with pytest.raises(HalabError, match="needs root"):
        commands.up("case2", "local", True, str(tmp_path / "labs"), None)
    assert not (tmp_path / "labs").exists()


# ================================================================== Supervisor (no root)

@pytest.fixture
def procs_started():
    """Processes started by a test; killed (whole group) at the end whatever happens."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _spawn(started, script: str) -> subprocess.Popen:
    p = subprocess.Popen(["sh", "-c", script], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started.append(p)
    assert _wait(lambda: procs._starttime(p.pid) is not None)
    return p


def _adopt(sup: Supervisor, node: str, name: str, pid: int, start: str | None = None):
    f = sup.pidfile(node, name)
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(f"{pid} {start or procs._starttime(pid)}\n")


def _sup(tmp_path) -> Supervisor:
    return Supervisor(tmp_path / "run", tmp_path / "logs", lambda node: f"halab-none-{node}")


def test_supervisor_pid_checks_start_time(tmp_path, procs_started):
    sup = _sup(tmp_path)
    assert sup.pid("n1", "x") is None and sup.state("n1", "x") == "stopped"
    p = _spawn(procs_started, "sleep 300; :")
    _adopt(sup, "n1", "x", p.pid)
    assert sup.pid("n1", "x") == p.pid
    _adopt(sup, "n1", "recycled", p.pid, start="1")       # same PID, another process
    assert sup.pid("n1", "recycled") is None
    sup.pidfile("n1", "garbage").write_text("not a pid file")
    assert sup.pid("n1", "garbage") is None
    assert sup.services() == [("n1", "garbage"), ("n1", "recycled"), ("n1", "x")]
    assert sup.services("n2") == []


def test_supervisor_states(tmp_path, procs_started):
    sup = _sup(tmp_path)
    # a restart loop whose program runs: "running"
    busy = _spawn(procs_started, "sleep 300; :")
    _adopt(sup, "n1", "busy", busy.pid)
    assert _wait(lambda: procs._children(busy.pid))
    assert sup.state("n1", "busy") == "running"
    # a loop whose only child is its `sleep 1` back-off: "restarting" (crash loop)
    looping = _spawn(procs_started, "while :; do false; sleep 1; done")
    _adopt(sup, "n1", "looping", looping.pid)
    assert _wait(lambda: sup.state("n1", "looping") == "restarting")
    # SIGSTOP: "frozen"; SIGCONT: running again
    assert sup.signal("n1", "busy", signal.SIGSTOP)
    assert _wait(lambda: sup.state("n1", "busy") == "frozen")
    assert sup.signal_all("n1", signal.SIGCONT) == ["busy", "looping"]
    assert _wait(lambda: sup.state("n1", "busy") == "running")
    assert sup.signal("n1", "nothing", signal.SIGTERM) is False


def test_supervisor_stop_kills_the_whole_group(tmp_path, procs_started):
    sup = _sup(tmp_path)
    p = _spawn(procs_started, "sleep 300 & sleep 300; :")
    _adopt(sup, "n1", "svc", p.pid)
    assert _wait(lambda: len(procs._children(p.pid)) == 2)
    kids = procs._children(p.pid)
    sup.stop("n1", "svc", timeout=2)
    assert sup.pid("n1", "svc") is None
    assert not sup.pidfile("n1", "svc").exists()
    assert not procs._group_alive(p.pid)
    for k in kids:
        assert procs._starttime(k) is None


def test_supervisor_stop_of_a_frozen_and_stubborn_service(tmp_path, procs_started):
    sup = _sup(tmp_path)
    # ignores SIGTERM and is stopped: stop() must still end it (SIGCONT, then SIGKILL)
    p = _spawn(procs_started, "trap '' TERM; sleep 300; :")
    _adopt(sup, "n1", "svc", p.pid)
    os.killpg(p.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    sup.stop("n1", "svc", timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert not procs._group_alive(p.pid)
    sup.stop("n1", "svc")     # stopping a stopped service is fine
    sup.stop_all()


def test_supervisor_restarts_counts_since_last_start(tmp_path):
    sup = _sup(tmp_path)
    assert sup.restarts("n1", "x") == 0
    log = sup.log("n1", "x")
    log.parent.mkdir(parents=True)
    log.write_text(f"--- halab start A\n{RESTART_MARK} with status 1\n"
                   f"{RESTART_MARK} with status 1\n--- halab start B\nhello\n"
                   f"{RESTART_MARK} with status 2\n")
    assert sup.restarts("n1", "x") == 1


# ================================================================== Supervisor.start (root)

@pytest.fixture
def throwaway_ns():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespace)")
    name = f"halab-lpu{uuid.uuid4().hex[:6]}-n1"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
        for pid in out.stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", name], check=False)


def _netns_inode(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


@pytest.mark.local
def test_supervisor_start_in_a_namespace(tmp_path, throwaway_ns):
    sup = Supervisor(tmp_path / "run", tmp_path / "logs", lambda node: throwaway_ns)
    key = tmp_path / "files" / "svc.key"
    spec = ServiceSpec("n1", "sleeper", ("sleep", "300"), files={str(key): "secret"})
    host_name = os.uname().nodename
    pid = None
    try:
        pid = sup.start(spec)
        assert key.read_text() == "secret" and stat.S_IMODE(key.stat().st_mode) == 0o600
        assert sup.pid("n1", "sleeper") == pid
        assert _wait(lambda: procs._children(pid))
        child = procs._children(pid)[0]
        # in the test namespace, with its own hostname; the host's is untouched
        ns_ino = os.stat(f"/run/netns/{throwaway_ns}").st_ino
        assert _netns_inode(child) == f"net:[{ns_ino}]"
        assert subprocess.run(["nsenter", "-t", str(child), "-u", "hostname"],
                              capture_output=True, text=True).stdout.strip() == "n1"
        assert os.uname().nodename == host_name
        assert sup.state("n1", "sleeper") == "running"
        assert sup.start(spec) == pid                     # already running: no second copy
        # the program dies: the loop restarts it, the loop's PID stays
        os.kill(child, signal.SIGKILL)
        assert _wait(lambda: sup.restarts("n1", "sleeper") == 1, timeout=5)
        assert _wait(lambda: procs._children(pid) and procs._children(pid)[0] != child
                     and procs._cmdline(procs._children(pid)[0]) == ["sleep", "300"], timeout=5)
        assert sup.pid("n1", "sleeper") == pid and sup.state("n1", "sleeper") == "running"
        assert "halab start" in sup.log("n1", "sleeper").read_text()
        sup.stop("n1", "sleeper", timeout=2)
        assert sup.pid("n1", "sleeper") is None and not procs._group_alive(pid)
    finally:
        if pid is not None and procs._group_alive(pid):
            os.killpg(pid, signal.SIGKILL)


@pytest.mark.local
def test_supervisor_crash_loop_shows_restarting(tmp_path, throwaway_ns):
    sup = Supervisor(tmp_path / "run", tmp_path / "logs", lambda node: throwaway_ns)
    pid = None
    try:
        pid = sup.start(ServiceSpec("n1", "crasher", ("sh", "-c", "exit 3")))
        assert _wait(lambda: sup.restarts("n1", "crasher") >= 2, timeout=6)
        assert _wait(lambda: sup.state("n1", "crasher") == "restarting", timeout=3)
        assert "with status 3" in sup.log("n1", "crasher").read_text()
        sup.stop("n1", "crasher", timeout=2)
    finally:
        if pid is not None and procs._group_alive(pid):
            os.killpg(pid, signal.SIGKILL)


def test_deploy_killed_midway_reads_as_interrupted():
    import subprocess
    from lab.app.lab import deploy_state_of
    p = subprocess.Popen(["true"])
    p.wait()
    assert deploy_state_of({"state": "starting", "pid": p.pid}) == "interrupted"
    assert deploy_state_of({"state": "starting", "pid": os.getpid()}) == "starting"
    assert deploy_state_of({"state": "deployed", "pid": p.pid}) == "deployed"
    assert lab_health({"a": "running"}, "interrupted", {}) == "Interrupted"
    assert lab_health({"a": "running"}, "failed", {}) == "Failed"


@pytest.mark.local
def test_supervisor_private_tmp_keeps_a_fixed_tmp_path_to_the_node(tmp_path, throwaway_ns):
    """Two services writing the same /tmp path (kubemark's fake runtime socket is
    /tmp/kubelet_remote.sock) each write into their own folder; the host's /tmp stays
    untouched."""
    sup = Supervisor(tmp_path / "run", tmp_path / "logs", lambda node: throwaway_ns)
    marker = f"halab-private-tmp-{os.getpid()}"
    pids = []
    try:
        for node in ("n1", "n2"):
            folder = tmp_path / node / "tmp"
            conf = tmp_path / node / "conf"     # the lab's files stay readable (in /tmp here)
            spec = ServiceSpec(node, "writer", ("sh", "-c", f"cat {conf} > /tmp/{marker}; "
                                                      "exec sleep 300"),
                               files={str(conf): f"{node}\n"}, private_tmp=str(folder))
            pids.append(sup.start(spec))
        for node in ("n1", "n2"):
            path = tmp_path / node / "tmp" / marker
            assert _wait(lambda: path.exists() and path.read_text().strip() == node, timeout=5)
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert not Path("/tmp", marker).exists()
        for node in ("n1", "n2"):
            sup.stop(node, "writer", timeout=2)
    finally:
        for pid in pids:
            if procs._group_alive(pid):
                os.killpg(pid, signal.SIGKILL)


def test_a_command_that_times_out_on_a_node_is_exit_124_with_its_output_as_text(tmp_path):
    """subprocess hands what a killed program printed over as bytes, even with text=True."""
    from lab.providers.local.provider import LocalProvider
    prov = LocalProvider.__new__(LocalProvider)
    prov.ns = lambda node: "unused"
    import lab.providers.local.provider as lp
    real = lp.netns.exec_prefix
    lp.netns.exec_prefix = lambda ns: []
    try:
        cp = prov.run("n1", ["sh", "-c", "echo started; echo oops >&2; sleep 5"], timeout=0.5)
    finally:
        lp.netns.exec_prefix = real
    assert cp.returncode == 124 and isinstance(cp.stdout, str) and isinstance(cp.stderr, str)
    assert cp.stderr.endswith("timed out")
