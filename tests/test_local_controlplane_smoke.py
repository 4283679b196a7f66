"""The static control plane's own plan, started by hand (root only, marker `local`).

`lab.deploy.controlplane.plan` (the programs, flags and files halab's static deployer
runs on every provider) for a 3-control-plane lab on 10.250.0.0/24, each node in its
own network namespace created here (`halab-t-smoke-<pid>-<node>`), joined by a bridge
in another (`halab-t-smokep-<pid>`); every lab address lives only inside them. No halab
CLI, no supervisor: if the plan's etcd, kube-apiserver, kube-controller-manager or
kube-scheduler flags are wrong, this fails before any provider is involved:
  * the plan's 3-member etcd 3.4 cluster (TLS from lab.deploy.pki) becomes healthy
  * each kube-apiserver answers /readyz; a ConfigMap is created and deleted
  * controller-managers and schedulers (leader election on, each in its own UTS
    namespace named after its node) hold their Leases, and the controllers work
    (ServiceAccount `default` appears)
Every process is stopped by PID and every namespace deleted in `finally`.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lab.deploy import controlplane, kubeconfig as kc, pki
from lab.deploy.static import admin_kubeconfig
from lab.errors import HalabError
from lab.model import scenario
from lab.model.services import Layout
from lab.model.topology import Topology
from lab.render import LabSecrets

pytestmark = pytest.mark.local

ETCD = "/usr/bin/etcd"
CONTROL_PLANE_SERVICES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


SCENARIO = """extends: case2
name: smoke
provider: local
network: {subnet: 10.250.0.0/24}
"""


# ---------------------------------------------------------------- helpers
def _skip_reason():
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` not installed (iproute2 / util-linux)"
    if not os.access(ETCD, os.X_OK):
        return f"{ETCD} missing (apt-get install etcd-server)"
    return None


def _run(args, timeout=30, check=True):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({r.returncode}): "
                             f"{r.stdout}{r.stderr}")
    return r


class Lab:
    """A namespace per node joined by a bridge namespace, and the processes started in them."""

    def __init__(self, tmp: Path, nodes: list[tuple[str, str]]):
        suffix = os.getpid()
        self.prefix = f"halab-t-smoke-{suffix}"
        self.peer = f"halab-t-smokep-{suffix}"
        self.nodes = nodes              # (name, address)
        self.tmp = tmp
        self.procs: list[tuple[str, subprocess.Popen, object]] = []

    def node_ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def namespaces(self) -> list[str]:
        return [self.node_ns(n) for n, _ in self.nodes] + [self.peer]

    def setup(self):
        _run(["ip", "netns", "add", self.peer])
        _run(["ip", "-n", self.peer, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", self.peer, "link", "set", "br0", "up"])
        for i, (node, ip) in enumerate(self.nodes):
            ns = self.node_ns(node)
            _run(["ip", "netns", "add", ns])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", ns, "link", "add", "lab0", "type", "veth",
                  "peer", "name", f"lab0p{i}", "netns", self.peer])
            _run(["ip", "-n", self.peer, "link", "set", f"lab0p{i}", "master", "br0", "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "lab0"])
            _run(["ip", "-n", ns, "link", "set", "lab0", "up"])

    def exec_args(self, node, args, hostname=None):
        prefix = ["ip", "netns", "exec", self.node_ns(node)]
        if hostname:
            # own UTS namespace: leader-election identity becomes "<hostname>_<uuid>"
            prefix += ["unshare", "--uts", "--", "sh", "-c",
                       f'hostname {hostname} && exec "$0" "$@"']
        return prefix + [str(a) for a in args]

    def start(self, spec):
        """One ServiceSpec of the plan: its files first, then its program in its node."""
        for path, data in spec.files.items():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(data.encode() if isinstance(data, str) else data)
        label = f"{spec.node}-{spec.name}"
        log = open(self.tmp / f"{label}.log", "wb")
        hostname = spec.node if spec.name in ("kube-controller-manager", "kube-scheduler") else None
        proc = subprocess.Popen(self.exec_args(spec.node, spec.argv, hostname), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **spec.env})
        self.procs.append((label, proc, log))
        return proc

    def run(self, node, args, timeout=20, check=True):
        return _run(self.exec_args(node, args), timeout=timeout, check=check)

    def log_tail(self, label, lines=30):
        p = self.tmp / f"{label}.log"
        return "\n".join(p.read_text(errors="replace").splitlines()[-lines:]) if p.exists() else ""

    def assert_alive(self):
        for label, proc, _ in self.procs:
            assert proc.poll() is None, f"{label} exited ({proc.returncode}):\n" \
                                        f"{self.log_tail(label)}"

    def teardown(self):
        # components first, etcd last; SIGTERM, then SIGKILL after a grace period
        for label, proc, log in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            log.close()
        for ns in self.namespaces():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def wait_for(what, fn, timeout, interval=0.25, lab=None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if lab is not None:
            lab.assert_alive()
        try:
            ok, last = fn()
        except subprocess.TimeoutExpired as exc:
            ok, last = False, str(exc)
        if ok:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last}")


ETCD_HEALTH = """
import json, ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.load_cert_chain(sys.argv[3], sys.argv[4])
with urllib.request.urlopen(sys.argv[1] + "/health", context=ctx, timeout=2) as r:
    print(json.load(r)["health"])
"""


# ---------------------------------------------------------------- the test
@pytest.fixture
def k8s_bins():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from lab.host.k8sbin import find_k8s_binaries
    try:
        return find_k8s_binaries()
    except HalabError as exc:
        pytest.skip(f"Kubernetes binaries missing: {exc}")


@pytest.fixture
def topo(tmp_path):
    path = tmp_path / "smoke.yaml"
    path.write_text(SCENARIO)
    return Topology.of(scenario.load(str(path)))


@pytest.fixture
def lab(tmp_path, topo):
    lab = Lab(tmp_path, [(cp.name, cp.ip) for cp in topo.control_planes])
    try:
        lab.setup()
        yield lab
    finally:
        lab.teardown()


def test_local_controlplane_smoke(k8s_bins, lab, topo, tmp_path, record_property):
    t_start = time.monotonic()
    files = pki.lab_pki(topo)

    def layout(node):
        return Layout(base=str(tmp_path / "nodes" / node), k8s_bin=str(k8s_bins.directory),
                      etcd=ETCD, local=True)

    specs = [s for s in controlplane.plan(topo, files, layout, LabSecrets.generate())
             if s.name in CONTROL_PLANE_SERVICES]
    assert [s.name for s in specs].count("kube-apiserver") == len(topo.control_planes) == 3
    cps = [cp.name for cp in topo.control_planes]
    admin_kc = tmp_path / "admin.kubeconfig"
    kc.write(admin_kc, admin_kubeconfig(topo, files))

    def kubectl(node, *args, check=True, timeout=20):
        return lab.run(node, [k8s_bins.kubectl, f"--kubeconfig={admin_kc}",
                              f"--context={topo.name}-{node}", "--request-timeout=5s", *args],
                       timeout=timeout, check=check)

    def start(name):
        for spec in specs:
            if spec.name == name:
                lab.start(spec)

    # ---- etcd: the plan's members, TLS everywhere, each in its node's namespace
    start("etcd")
    # etcd trusts only its own CA (lab.deploy.pki): the API server's client certificate
    etcd_pki = {k: tmp_path / f"etcd-client-{k}" for k in ("etcd-ca.crt",
                                                             "apiserver-etcd-client.crt",
                                                             "apiserver-etcd-client.key")}
    for k, path in etcd_pki.items():
        path.write_bytes(files[k])

    def etcd_healthy():
        for cp in topo.control_planes:
            r = lab.run(cp.name, ["python3", "-c", ETCD_HEALTH, f"https://{cp.ip}:2379",
                                  *etcd_pki.values()], check=False, timeout=10)
            if r.stdout.strip() != "true":
                return False, r.stdout + r.stderr[-300:]
        return True, "all healthy"

    wait_for("etcd cluster health", etcd_healthy, 60, interval=0.5, lab=lab)
    t_etcd = time.monotonic()

    # ---- kube-apiserver on every control plane
    start("kube-apiserver")
    t_api = time.monotonic()

    def readyz():
        for node in cps:
            r = kubectl(node, "get", "--raw", "/readyz", check=False, timeout=10)
            if not (r.returncode == 0 and r.stdout.strip() == "ok"):
                return False, f"{node}: {r.stdout}{r.stderr[-300:]}"
        return True, "ok"

    wait_for("every kube-apiserver /readyz", readyz, 180, lab=lab)
    api_ready = time.monotonic() - t_api
    record_property("etcd_ready_seconds", round(t_etcd - t_start, 2))
    record_property("apiserver_ready_seconds", round(api_ready, 2))
    print(f"\netcd cluster healthy after {t_etcd - t_start:.1f}s; "
          f"every kube-apiserver ready after {api_ready:.1f}s")

    version = json.loads(kubectl(cps[0], "version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == k8s_bins.version

    # ---- a write through one API server, read back through another
    kubectl(cps[0], "create", "configmap", "halab-smoke", "--from-literal=hello=world")
    got = kubectl(cps[1], "get", "configmap", "halab-smoke", "-o", "jsonpath={.data.hello}").stdout
    assert got == "world"
    kubectl(cps[2], "delete", "configmap", "halab-smoke")
    r = kubectl(cps[0], "get", "configmap", "halab-smoke", check=False)
    assert r.returncode != 0 and "NotFound" in r.stderr

    # ---- controller-managers and schedulers with leader election
    start("kube-controller-manager")
    start("kube-scheduler")
    t_comp = time.monotonic()

    def leases():
        r = kubectl(cps[0], "-n", "kube-system", "get", "lease", "-o", "json", check=False)
        if r.returncode != 0:
            return False, r.stderr[-300:]
        holders = {i["metadata"]["name"]: i["spec"].get("holderIdentity", "")
                   for i in json.loads(r.stdout)["items"]}
        ok = all(holders.get(n, "").split("_")[0] in cps
                 for n in ("kube-controller-manager", "kube-scheduler"))
        return ok, holders

    holders = wait_for("controller-manager and scheduler leases", leases, 120, interval=0.5,
                       lab=lab)
    print(f"leases acquired {time.monotonic() - t_comp:.1f}s after start: {holders}")

    # the controllers really run: the service-account controller creates `default`
    wait_for("ServiceAccount default/default",
             lambda: (kubectl(cps[0], "get", "serviceaccount", "default",
                              check=False).returncode == 0, ""), 60, interval=0.5, lab=lab)
    lab.assert_alive()
