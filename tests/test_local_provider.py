"""The whole lab without VMs: the `local` provider through the real CLI (root, marker `local`).

For each Case (case1, case2, case3, case3-ha) one lab is brought up with
`halab up SCENARIO --provider local` (subprocess) and shared by the tests of
that Case (module-scoped fixture); the last test of each Case destroys it and
proves nothing is left: no namespace (`ip netns list`, /run/netns, /etc/netns),
no process (network namespace inode, cmdline or cwd in the lab folder, scanned
in /proc), no mount.

Bad cases: not root, Kubernetes binaries missing, a port already taken, a
second `up` of a running lab, halab SIGKILLed in the middle of `up`, a
kube-apiserver whose process group was SIGKILLed.

Every lab has a unique name (`lpt-*`, scenario files in tmp folders with
`extends: caseN`), so its namespaces (halab-lpt-*) never collide with other
labs on the machine. Nothing here sends traffic from the root network
namespace: every request runs inside the lab's namespaces (`halab kubectl`,
`halab verify`, `ip netns exec`). Processes are stopped in `finally` with
`halab destroy --force` and a kill-by-PID fallback.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from lab.model import scenario as scenario_mod
from lab.model.topology import Topology

pytestmark = pytest.mark.local

# case2 first: the case2-only tests parametrize `lab` indirectly with ["case2"], and
# pytest groups module-scoped instances by parameter *index*: index 0 in both lists
# keeps them in the same group, so the case2 lab is made once.
CASES = ["case2", "case1", "case3", "case3-ha"]
PREFIX = "lpt-"


def _halab_exe() -> list[str]:
    exe = Path(sys.executable).parent / "halab"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("halab")
    return [found] if found else [sys.executable, "-m", "lab.cli"]


HALAB = _halab_exe()


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for prog in ("ip", "unshare", "ss", "etcd", "haproxy", "nginx", "keepalived", "setpriv"):
        if shutil.which(prog) is None:
            return f"{prog} is not installed"
    try:
        from lab.host.k8sbin import find_k8s_binaries
        find_k8s_binaries(check_version=False)
    except Exception as exc:  # noqa: BLE001
        return f"no Kubernetes binaries: {exc}"
    return None


_reason = _skip_reason()
if _reason:
    pytestmark = [pytest.mark.local, pytest.mark.skip(reason=_reason)]


# ------------------------------------------------------------------ helpers

def halab(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None,
          input: str | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HALAB_DEBUG": "", **(env or {})}
    full_env.pop("HALAB_LABS_DIR", None)
    return subprocess.run(HALAB + list(args), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env, input=input)


def _show(cp: subprocess.CompletedProcess) -> str:
    return f"exit {cp.returncode}\n--- stdout\n{cp.stdout}\n--- stderr\n{cp.stderr}"


def _wait(cond, timeout: float, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)


@dataclass
class LabRun:
    """One lab made by a test: where it lives and what to clean up."""

    name: str
    root: Path                      # folder halab runs in (labs in root/.halab)
    scenario: Path
    case: str = ""
    topo: Topology | None = None
    ns_inodes: dict = field(default_factory=dict)   # namespace -> inode, taken while up
    up: subprocess.CompletedProcess | None = None
    up_seconds: float = 0.0
    extra_pids: list = field(default_factory=list)  # processes a test started itself

    @property
    def path(self) -> Path:
        return self.root / ".halab" / self.name

    def ns(self, node: str) -> str:
        return f"halab-{self.name}-{node}"

    def h(self, *args, **kw) -> subprocess.CompletedProcess:
        return halab(*args, cwd=self.root, **kw)


def new_lab(tmp: Path, name: str, extends: str, extra: str = "") -> LabRun:
    assert len(name) <= 20
    tmp.mkdir(parents=True, exist_ok=True)
    scen = tmp / f"{name}.yaml"
    scen.write_text(f"extends: {extends}\nname: {name}\n{extra}")
    topo = Topology.of(scenario_mod.load(str(scen), provider="local"))
    return LabRun(name, tmp, scen, extends, topo)


def _ours(ns: str, lab: str) -> bool:
    return ns.startswith(f"halab-{lab}-") or ns.startswith(f"halab-{lab}.")


def lab_namespaces(lab: str) -> dict[str, list[str]]:
    """Every trace of the lab's namespaces: `ip netns list`, /run/netns, /etc/netns."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    run_dir, etc_dir = Path("/run/netns"), Path("/etc/netns")
    return {
        "ip netns list": [l.split()[0] for l in listed.splitlines() if l and _ours(l.split()[0], lab)],
        "/run/netns": sorted(p.name for p in run_dir.iterdir() if _ours(p.name, lab))
        if run_dir.is_dir() else [],
        "/etc/netns": sorted(p.name for p in etc_dir.iterdir() if _ours(p.name, lab))
        if etc_dir.is_dir() else [],
    }


def snapshot_inodes(lab: LabRun) -> None:
    for ns in lab_namespaces(lab.name)["/run/netns"]:
        try:
            lab.ns_inodes[ns] = os.stat(f"/run/netns/{ns}").st_ino
        except OSError:
            pass


def lab_processes(lab: LabRun) -> list[tuple[int, str]]:
    """Processes in one of the lab's namespaces, or whose cmdline/cwd is in its folder."""
    inodes = {f"net:[{i}]" for i in lab.ns_inodes.values()}
    folder = str(lab.path)
    me = os.getpid()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            stat = (d / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            net = os.readlink(d / "ns" / "net")
            try:
                cwd = os.readlink(d / "cwd")
            except OSError:
                cwd = ""
        except OSError:
            continue
        if net in inodes or folder in cmd or cwd == folder or cwd.startswith(folder + "/"):
            out.append((int(d.name), cmd.strip()[:160]))
    return out


def lab_mounts(lab: str) -> list[str]:
    needles = (f"halab-{lab}-", f"halab-{lab}.")
    out = []
    for f in ("/proc/mounts", "/proc/self/mountinfo"):
        out += [l for l in Path(f).read_text().splitlines() if any(n in l for n in needles)]
    return out


def assert_nothing_left(lab: LabRun) -> None:
    left = {k: v for k, v in lab_namespaces(lab.name).items() if v}
    assert not left, f"namespaces left: {left}"
    procs = lab_processes(lab)
    assert not procs, f"processes left: {procs}"
    mounts = lab_mounts(lab.name)
    assert not mounts, f"mounts left: {mounts}"
    assert not lab.path.exists(), f"lab folder left: {lab.path}"


def force_cleanup(lab: LabRun) -> None:
    """Whatever the test did: destroy, then kill by PID and delete namespaces by hand."""
    snapshot_inodes(lab)
    if lab.path.exists():
        try:
            lab.h("destroy", "--force", timeout=90)
        except subprocess.TimeoutExpired:
            pass
    for pid in lab.extra_pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for _ in range(3):
        victims = lab_processes(lab)
        if not victims:
            break
        for pid, _cmd in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.3)
    for ns in lab_namespaces(lab.name)["/run/netns"]:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    for ns in lab_namespaces(lab.name)["/etc/netns"]:
        shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)


def pid_files(lab: LabRun) -> dict[str, str]:
    return {str(p.relative_to(lab.path / "run")): p.read_text().strip()
            for p in sorted((lab.path / "run").glob("*/*.pid"))}


def status_word(cp: subprocess.CompletedProcess, lab: LabRun) -> str:
    first = cp.stdout.splitlines()[0] if cp.stdout else ""
    assert first.startswith(f"{lab.name}: "), _show(cp)
    return first.split(": ", 1)[1].strip()


def table_rows(text: str) -> list[list[str]]:
    """Rows of halab's plain-text table (split on 2+ spaces), header and dashes skipped."""
    lines = text.splitlines()
    i = next(i for i, l in enumerate(lines) if set(l.strip()) <= {"-", " "} and l.strip())
    rows = []
    for l in lines[i + 1:]:
        if not l.strip():
            break
        rows.append(re.split(r"\s{2,}", l.strip()))
    return rows


def wait_status(lab: LabRun, want: str, timeout: float = 20) -> subprocess.CompletedProcess:
    """`halab status` until its one word is `want` (a leader that lost its lease restarts)."""
    last = None

    def check():
        nonlocal last
        last = lab.h("status", timeout=60)
        return status_word(last, lab) == want
    _wait(check, timeout, step=1)
    return last


def kubectl(lab: LabRun, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return lab.h("kubectl", "--request-timeout=10s", *args, timeout=timeout)


# ------------------------------------------------------------------ the labs

@pytest.fixture(scope="module", params=CASES)
def lab(request, tmp_path_factory):
    case = request.param
    name = PREFIX + case.replace("-", "")
    run = new_lab(tmp_path_factory.mktemp(name), name, case)
    try:
        t0 = time.monotonic()
        run.up = run.h("up", str(run.scenario), "--provider", "local", timeout=300)
        run.up_seconds = time.monotonic() - t0
        snapshot_inodes(run)
        if run.up.returncode != 0:
            pytest.fail(f"halab up {case} failed:\n{_show(run.up)}")
        yield run
    finally:
        force_cleanup(run)


def test_up_then_status_running(lab):
    assert "is up" in lab.up.stdout, _show(lab.up)
    assert lab.up_seconds < 120, f"up took {lab.up_seconds:.0f} s"
    cp = wait_status(lab, "Running")
    assert status_word(cp, lab) == "Running", _show(cp)
    assert cp.returncode == 0
    rows = {r[0]: r for r in table_rows(cp.stdout)}
    assert set(rows) == {n.name for n in lab.topo.nodes}
    for node in lab.topo.nodes:
        assert rows[node.name][3] == "running", rows[node.name]
        assert "stopped" not in rows[node.name][-1]


def test_no_lab_address_in_the_root_namespace(lab):
    subnet = lab.topo.scenario.network.subnet
    root_addrs = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True,
                                text=True, check=True).stdout
    for m in re.finditer(r"inet (\S+)", root_addrs):
        ip = ipaddress.ip_interface(m.group(1)).ip
        assert ip not in subnet, f"lab address {ip} in the root namespace:\n{root_addrs}"
    routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True,
                            check=True).stdout
    for line in routes.splitlines():
        for word in line.split()[:2]:         # "10.0.0.0/8 dev ..." or "unreachable 10.0.0.0/8"
            try:
                dst = ipaddress.ip_network(word, strict=False)
            except ValueError:
                continue
            assert not dst.overlaps(subnet), line
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=True).stdout
    names = {l.split(":")[1].strip().split("@")[0] for l in links.splitlines()}
    assert not names & {"lab0", "br0"}, names
    # ... while the addresses exist where they belong (the check above is not vacuous)
    client = subprocess.run(["ip", "-n", f"halab-{lab.name}.client", "-4", "-o", "addr",
                             "show", "lab0"], capture_output=True, text=True, check=True).stdout
    assert f"inet {next(subnet.hosts())}/" in client
    node1 = lab.topo.control_planes[0]
    inside = subprocess.run(["ip", "-n", lab.ns(node1.name), "-4", "-o", "addr", "show", "lab0"],
                            capture_output=True, text=True, check=True).stdout
    assert f"inet {node1.ip}/" in inside


def test_haproxy_serves_as_an_unprivileged_user_and_secrets_are_private(lab):
    """The load balancer's workers drop root (its master binds as root first); the lab
    folder and the files with keys or passwords are the owner's only."""
    import pwd
    if not lab.topo.load_balancers:
        pytest.skip("no load balancer in this Case")
    lb = lab.topo.load_balancers[0].name
    pids = subprocess.run(["ip", "netns", "pids", lab.ns(lb)], capture_output=True,
                          text=True).stdout.split()
    owners = {}
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "haproxy":
                owners[pid] = Path(f"/proc/{pid}").stat().st_uid
        except OSError:
            continue
    nobody = pwd.getpwnam("nobody").pw_uid
    assert nobody in owners.values(), owners          # the worker(s)
    assert lab.path.stat().st_mode & 0o077 == 0
    for secret in [*lab.path.glob("keys/id_ed25519"), *lab.path.glob("keys/vrrp_password"),
                   *lab.path.glob("files/*/keepalived.conf"), *lab.path.glob("pki/**/*.key")]:
        assert secret.stat().st_mode & 0o077 == 0, secret


def test_identities_prober_reads_only_and_etcd_trusts_only_its_own_ca(lab):
    """A worker holds no admin credentials: its probes run as halab-prober (read-only)
    and its kubelet kubeconfig is system:node:<worker>; etcd refuses every certificate
    of the cluster CA (an approved CSR is no etcd access)."""
    from lab.host.k8sbin import find_k8s_binaries
    if not lab.topo.workers:
        pytest.skip("no workers")
    kubectl = str(find_k8s_binaries(check_version=False).kubectl)
    w = lab.topo.workers[0].name
    folder = lab.path / "nodes" / w
    node_kc = json.loads((folder / "kubeconfig").read_text())
    assert node_kc["users"][0]["name"] == f"{w}-kubelet"
    from lab.deploy import kubeconfig as kc
    from lab.deploy.pki import cert_info
    _, cert, _, _ = kc.credentials(node_kc)
    assert cert_info(cert)["cn"] == [f"system:node:{w}"]

    def as_prober(*args):
        return subprocess.run(["ip", "netns", "exec", lab.ns(w), kubectl,
                               f"--kubeconfig={folder / 'prober.kubeconfig'}",
                               "--request-timeout=10s", *args],
                              capture_output=True, text=True, timeout=60)
    got = as_prober("get", "namespace", "default", "-o", "name")
    assert got.stdout.strip() == "namespace/default", got.stderr
    denied = as_prober("create", "configmap", "halab-should-not-exist")
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr
    cp = lab.topo.etcd_members[0]
    pki = lab.path / "pki"

    def etcd_health(client: str):
        return subprocess.run(["ip", "netns", "exec", lab.ns(cp.name), "etcdctl",
                               f"--endpoints=https://{cp.ip}:2379", f"--cacert={pki / 'etcd-ca.crt'}",
                               f"--cert={pki / (client + '.crt')}", f"--key={pki / (client + '.key')}",
                               "--command-timeout=5s", "endpoint", "health"],
                              capture_output=True, text=True, timeout=60)
    assert etcd_health("apiserver-etcd-client").returncode == 0
    assert etcd_health("admin").returncode != 0       # system:masters, but not etcd's


def test_verify_every_path_backends_leases_write(lab):
    cp = lab.h("verify", timeout=180)
    assert cp.returncode == 0, _show(cp)
    rows = table_rows(cp.stdout)
    by = {(r[0], r[1].split(" (")[0]): r for r in rows}
    for path in lab.topo.access_paths():
        row = by.get(("access path", path.key))
        assert row and row[2] == "OK" and row[3] == "ok", (path.key, cp.stdout)
        assert f"({path.server})" in row[1]
    lbs = [n.name for n in lab.topo.load_balancers]
    backend_rows = [r for r in rows if r[0] == "HAProxy backends"]
    assert sorted(r[1] for r in backend_rows) == sorted(lbs)
    for r in backend_rows:
        assert r[2] == "OK"
        for cp_node in lab.topo.control_planes:
            assert f"{cp_node.name} UP" in r[3], r
    for lease in ("kube-controller-manager", "kube-scheduler"):
        row = by[("lease holder", lease)]
        holders = {n.name for n in lab.topo.control_planes}
        assert row[2] == "OK" and row[3].split("_")[0] in holders, row
    assert by[("write (ConfigMap)", "external")][2] == "OK"
    # every etcd member joined and follows one leader (a member that never joined once
    # made every drill of a lab measure nonsense while verify said healthy)
    n = len(lab.topo.etcd_members)
    row = by[("etcd members", f"{n} members")]
    assert row[2] == "OK" and row[3].startswith(f"{n}/{n} members answer, leader k8s-"), row
    assert f"all {len(rows)} checks passed" in cp.stdout


def test_kubectl_reads_and_a_write_through_the_external_path(lab):
    from lab.deploy import kubeconfig as kc
    external = kc.default_context(lab.topo)
    cfg = yaml.safe_load((lab.path / "kubeconfig").read_text())
    assert cfg["current-context"] == external
    servers = {c["name"]: c["cluster"]["server"] for c in cfg["clusters"]}
    assert servers[external] == lab.topo.external_path().server
    if lab.topo.load_balancers:      # Cases 2/3: the LB (or the VIP); Case 1: node1 directly
        assert str(lab.topo.lb_address) in servers[external]

    cp = kubectl(lab, "get", "ns")
    assert cp.returncode == 0 and "kube-system" in cp.stdout, _show(cp)
    cp = kubectl(lab, "get", "--raw", "/api/v1/namespaces")
    assert cp.returncode == 0, _show(cp)
    names = {i["metadata"]["name"] for i in json.loads(cp.stdout)["items"]}
    assert {"default", "kube-system"} <= names
    cp = kubectl(lab, "get", "nodes")          # no kubelet in this lab: the list is empty
    assert cp.returncode == 0, _show(cp)

    cm = f"lpt-probe-{int(time.time())}"
    cp = kubectl(lab, "--context", external, "-n", "default", "create", "configmap", cm,
                 f"--from-literal=case={lab.case}")
    assert cp.returncode == 0, _show(cp)
    try:
        # every API server sees it: the write went through etcd's quorum
        for node in lab.topo.control_planes:
            cp = kubectl(lab, "--context", f"{lab.name}-{node.name}", "-n", "default", "get",
                         "configmap", cm, "-o", "jsonpath={.data.case}")
            assert cp.returncode == 0 and cp.stdout == lab.case, (node.name, _show(cp))
    finally:
        kubectl(lab, "--context", external, "-n", "default", "delete", "configmap", cm)


def test_each_namespace_holds_its_own_address_and_the_vip_is_on_one_lb(lab):
    prefix = lab.topo.scenario.network.subnet.prefixlen
    vip = str(lab.topo.lb_address) if len(lab.topo.load_balancers) > 1 else None
    holders = []
    for node in lab.topo.nodes:
        out = subprocess.run(["ip", "-n", lab.ns(node.name), "-4", "-o", "addr", "show"],
                             capture_output=True, text=True, check=True).stdout
        addrs = set(re.findall(r"inet (\S+)", out)) - {"127.0.0.1/8"}
        if vip and f"{vip}/{prefix}" in addrs:
            holders.append(node.name)
            addrs.discard(f"{vip}/{prefix}")
        assert addrs == {f"{node.ip}/{prefix}"}, (node.name, out)
    keepalived = sorted(k.split("/")[0] for k in pid_files(lab) if k.endswith("/keepalived.pid"))
    if vip:       # case3-ha: keepalived on both LBs, the VIP on exactly one (the master)
        assert keepalived == sorted(n.name for n in lab.topo.load_balancers)
        assert len(holders) == 1 and holders[0] in keepalived, holders
    else:
        assert keepalived == [] and holders == []


# ------------------------------------------------------------------ case2: lifecycle
case2_only = pytest.mark.parametrize("lab", ["case2"], indirect=True)


def _apiserver_loop_pid(lab: LabRun, node: str) -> int:
    return int((lab.path / "run" / node / "kube-apiserver.pid").read_text().split()[0])


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@case2_only
def test_second_up_of_a_running_lab_is_a_fast_noop(lab):
    before = pid_files(lab)
    starts_before = {str(p): p.read_text().count("--- halab start")
                     for p in (lab.path / "logs").glob("*/*.log")}
    t0 = time.monotonic()
    cp = lab.h("up", str(lab.scenario), "--provider", "local", timeout=120)
    seconds = time.monotonic() - t0
    assert cp.returncode == 0, _show(cp)
    assert pid_files(lab) == before                 # no service restarted ...
    for rel, line in before.items():                # ... and each one still the same process
        pid = int(line.split()[0])
        assert _alive(pid), rel
    starts_after = {str(p): p.read_text().count("--- halab start")
                    for p in (lab.path / "logs").glob("*/*.log")}
    assert starts_after == starts_before
    assert seconds < 15, f"second up took {seconds:.1f} s (first: {lab.up_seconds:.1f} s)"
    print(f"second up of a running lab: {seconds:.1f} s (first up {lab.up_seconds:.1f} s)")


@case2_only
def test_killed_apiserver_group_is_degraded_and_up_repairs_it(lab):
    node = "k8s-node1"
    loop = _apiserver_loop_pid(lab, node)
    before = pid_files(lab)
    os.killpg(loop, signal.SIGKILL)             # the restart loop and the program
    assert _wait(lambda: not _alive(loop), 10)
    cp = lab.h("status", timeout=60)
    assert status_word(cp, lab) == "Degraded" and cp.returncode == 1, _show(cp)
    row = {r[0]: r for r in table_rows(cp.stdout)}[node]
    assert "kube-apiserver:stopped" in row[-1], row

    def broken():
        v = lab.h("verify", "--no-write", timeout=120)
        return v if (v.returncode == 1 and re.search(rf"direct:{node} .*FAIL", v.stdout)
                     and f"{node} DOWN" in v.stdout) else None
    v = _wait(broken, 30, step=1)
    assert v, "verify never showed the dead API server"
    # the other paths keep working: that is what the LB is for
    assert re.search(r"access path\s+external .*OK", v.stdout), v.stdout

    cp = lab.h("up", str(lab.scenario), "--provider", "local", timeout=180)
    assert cp.returncode == 0, _show(cp)
    after = pid_files(lab)
    changed = {k for k in before if before[k] != after.get(k)}
    assert changed == {f"{node}/kube-apiserver.pid"}, changed
    cp = wait_status(lab, "Running")
    assert status_word(cp, lab) == "Running", _show(cp)
    v = _wait(lambda: (lambda r: r if r.returncode == 0 else None)(
        lab.h("verify", "--no-write", timeout=120)), 30, step=1)
    assert v, "verify does not pass after `halab up` restarted the API server"


@case2_only
def test_killed_apiserver_program_is_restarted_by_its_loop(lab):
    node = "k8s-node2"
    loop = _apiserver_loop_pid(lab, node)
    kids = _children(loop)
    assert len(kids) == 1
    os.kill(kids[0], signal.SIGKILL)            # only the program: the loop lives on
    assert _wait(lambda: _children(loop) and _children(loop) != kids
                 and "kube-apiserver" in Path(f"/proc/{_children(loop)[0]}/cmdline").read_text(),
                 10)
    log = (lab.path / "logs" / node / "kube-apiserver.log").read_text()
    assert log.rsplit("--- halab start", 1)[-1].count("halab: program exited") == 1
    v = _wait(lambda: (lambda r: r if r.returncode == 0 else None)(
        lab.h("verify", "--no-write", timeout=120)), 60, step=1)
    assert v, "the restarted API server never became ready"
    cp = wait_status(lab, "Running")
    assert status_word(cp, lab) == "Running", _show(cp)
    assert _apiserver_loop_pid(lab, node) == loop


# ------------------------------------------------------------------ destroy (last per Case)

def test_destroy_leaves_nothing(lab):
    # a user kubeconfig with someone else's cluster: merge ours, destroy removes only ours
    user_kc = lab.root / "user-kubeconfig"
    foreign = {"apiVersion": "v1", "kind": "Config", "current-context": "prod",
               "clusters": [{"name": "prod", "cluster": {"server": "https://prod.invalid"}}],
               "users": [{"name": "me", "user": {"token": "x"}}],
               "contexts": [{"name": "prod", "context": {"cluster": "prod", "user": "me"}}]}
    user_kc.write_text(yaml.safe_dump(foreign))
    env = {"KUBECONFIG": str(user_kc)}
    cp = lab.h("kubeconfig", "--merge", env=env, timeout=60)
    assert cp.returncode == 0, _show(cp)
    merged = yaml.safe_load(user_kc.read_text())
    assert f"{lab.name}-{lab.topo.control_planes[0].name}" in {c["name"] for c in merged["contexts"]}
    assert merged["current-context"] == "prod"

    snapshot_inodes(lab)
    assert lab_processes(lab), "the lab has no processes before destroy?"
    t0 = time.monotonic()
    cp = lab.h("destroy", env=env, timeout=120)
    seconds = time.monotonic() - t0
    assert cp.returncode == 0, _show(cp)
    assert "nothing left behind" in cp.stdout
    assert_nothing_left(lab)
    assert seconds < 30, f"destroy took {seconds:.1f} s"
    back = yaml.safe_load(user_kc.read_text())
    for section in ("clusters", "users", "contexts"):
        assert back[section] == foreign[section], back
    assert back["current-context"] == "prod"


# ------------------------------------------------------------------ bad cases

def test_not_root_is_refused_and_creates_nothing(tmp_path):
    run = new_lab(tmp_path / "w", PREFIX + "nobody", "case2")
    os.chown(run.root, 65534, 65534)
    # nobody may read everything (halab lives under /root here), nothing more
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                 "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--"]
    try:
        for extra in ([], ["--no-deploy"]):
            cp = subprocess.run(as_nobody + HALAB + ["up", str(run.scenario), "--provider",
                                                     "local", *extra],
                                cwd=run.root, capture_output=True, text=True, timeout=60,
                                env={**os.environ, "HOME": str(run.root)})
            assert cp.returncode != 0, _show(cp)
            assert "needs root" in cp.stderr and "sudo" in cp.stderr, _show(cp)
            assert "Traceback" not in cp.stderr
            assert not (run.root / ".halab").exists()
            assert not any(lab_namespaces(run.name).values())
    finally:
        force_cleanup(run)


def test_missing_k8s_binaries_say_how_to_get_them(tmp_path):
    run = new_lab(tmp_path / "w", PREFIX + "nobin", "case2")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    missing = tmp_path / "nonexistent"
    try:
        for args, env, where in (
                (["--k8s-bin-dir", str(missing)], {}, str(missing)),
                ([], {"HALAB_K8S_BIN_DIR": str(empty)}, str(empty))):
            cp = run.h("up", str(run.scenario), "--provider", "local", *args, env=env, timeout=60)
            assert cp.returncode != 0, _show(cp)
            assert where in cp.stderr and "kube-apiserver" in cp.stderr, _show(cp)
            assert "tools/build-k8s.sh" in cp.stderr and "halab fetch-k8s" in cp.stderr
            assert "Traceback" not in cp.stderr
            assert not run.path.exists()
            assert not any(lab_namespaces(run.name).values())
    finally:
        force_cleanup(run)


def test_port_already_taken_names_node_port_and_holder(tmp_path):
    run = new_lab(tmp_path / "w", PREFIX + "port", "case1")
    holder = None
    try:
        cp = run.h("up", str(run.scenario), "--provider", "local", "--no-deploy", timeout=120)
        assert cp.returncode == 0, _show(cp)
        snapshot_inodes(run)
        ns = run.ns("k8s-node1")
        holder = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "http.server",
                                   "6443", "--bind", "0.0.0.0"], cwd=tmp_path,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        run.extra_pids.append(holder.pid)
        listening = lambda: ":6443 " in subprocess.run(  # noqa: E731
            ["ip", "netns", "exec", ns, "ss", "-Htln"], capture_output=True, text=True).stdout
        assert _wait(listening, 15), "the test's listener did not start"

        t0 = time.monotonic()
        cp = run.h("up", str(run.scenario), "--provider", "local", timeout=120)
        assert cp.returncode != 0, _show(cp)
        assert time.monotonic() - t0 < 30
        err = cp.stderr
        assert "k8s-node1" in err and "6443" in err and "kube-apiserver" in err, _show(cp)
        assert "python" in err and f"pid={holder.pid}" in err, _show(cp)
        assert "Traceback" not in err
        assert not pid_files(run), "services were started despite the taken port"
        assert not [p for p, c in lab_processes(run) if p != holder.pid], lab_processes(run)

        cp = run.h("destroy", timeout=120)
        assert cp.returncode == 0, _show(cp)
        assert _wait(lambda: holder.poll() is not None, 5), "destroy left the holder running"
        assert_nothing_left(run)
    finally:
        if holder is not None and holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait(timeout=10)
        force_cleanup(run)


@pytest.mark.parametrize("when", ["deploying", "namespaces"])
def test_halab_killed_during_up_then_destroy_cleans_everything(tmp_path, when):
    run = new_lab(tmp_path / "w", PREFIX + "kill" + when[0], "case2")
    out = open(tmp_path / "up.log", "w")
    proc = None
    try:
        proc = subprocess.Popen(HALAB + ["up", str(run.scenario), "--provider", "local"],
                                cwd=run.root, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "HALAB_DEBUG": ""})
        run.extra_pids.append(proc.pid)
        if when == "deploying":
            marker = run.path / "run" / "k8s-node2" / "kube-apiserver.pid"
        else:
            marker = Path("/run/netns") / f"halab-{run.name}-k8s-node1"
        assert _wait(lambda: marker.exists() or proc.poll() is not None, 120, step=0.02)
        assert proc.poll() is None, "halab up ended before the test could kill it"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        snapshot_inodes(run)
        if when == "deploying":
            assert lab_processes(run), "nothing was running when halab was killed?"
            cp = run.h("status", timeout=60)
            assert status_word(cp, run) == "Interrupted", _show(cp)  # the deploy died with halab
            assert cp.returncode != 0
        cp = run.h("destroy", timeout=120)
        assert cp.returncode == 0, _show(cp)
        # kubectl probes a killed halab had started end by themselves within seconds
        _wait(lambda: not lab_processes(run), 15)
        assert_nothing_left(run)
    finally:
        out.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
        force_cleanup(run)


def _exact_namespaces(run: LabRun) -> set[str]:
    """The lab's namespaces by their exact names (its bridge, its client, its nodes)."""
    from lab.providers.local import netns
    return {netns.bridge_ns(run.name), netns.client_ns(run.name),
            *(netns.ns_name(run.name, n.name) for n in run.topo.nodes)}


def _existing_namespaces() -> set[str]:
    return {p.name for p in Path("/run/netns").iterdir()} if Path("/run/netns").is_dir() else set()


def test_two_labs_sharing_a_name_prefix_outlive_their_scenario_files_and_die_apart(tmp_path):
    """`p` and `p-ha` up together; both YAML files deleted; `status` and `verify` of `p`
    still work (from its record); `destroy` of `p` (no --force) leaves nothing of it,
    and `p-ha` still verifies green."""
    small = "control_plane: {count: 1}\nworker: {count: 1}\n"
    p = new_lab(tmp_path, f"{PREFIX}p", "case2", small)
    pha = new_lab(tmp_path, f"{PREFIX}p-ha", "case3-ha", small)
    assert _exact_namespaces(p).isdisjoint(_exact_namespaces(pha))
    try:
        for run in (p, pha):
            cp = run.h("up", str(run.scenario), "--provider", "local", timeout=300)
            assert cp.returncode == 0, _show(cp)
            snapshot_inodes(run)
        p.scenario.unlink()
        pha.scenario.unlink()
        cp = p.h("status", "--lab", p.name, timeout=60)
        assert cp.returncode == 0 and status_word(cp, p) == "Running", _show(cp)
        cp = p.h("verify", "--lab", p.name, "--wait", "60", timeout=180)
        assert cp.returncode == 0, _show(cp)
        record = json.loads((p.path / "state.json").read_text())
        assert set(record["resources"]["namespace"]) == _exact_namespaces(p)
        cp = p.h("destroy", "--lab", p.name, timeout=120)
        assert cp.returncode == 0 and "nothing left behind" in cp.stdout, _show(cp)
        existing = _existing_namespaces()
        assert not existing & _exact_namespaces(p), existing & _exact_namespaces(p)
        assert _exact_namespaces(pha) <= existing, _exact_namespaces(pha) - existing
        assert not p.path.exists()
        cp = pha.h("verify", "--lab", pha.name, "--wait", "60", timeout=180)
        assert cp.returncode == 0, _show(cp)
        cp = pha.h("destroy", "--lab", pha.name, timeout=120)
        assert cp.returncode == 0, _show(cp)
        assert not _existing_namespaces() & _exact_namespaces(pha)
    finally:
        for run in (pha, p):
            force_cleanup(run)
