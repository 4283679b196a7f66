"""Real control-plane smoke test in network namespaces (root only, marker `local`).

In namespaces created here, one per node (`halab-t-smoke-<pid>` is node1's,
`-node2`/`-node3` the others'), joined by a bridge in a fourth test namespace
(`halab-t-smokep-<pid>`); every lab address lives only inside them:
  * a 3-member etcd 3.4 cluster (/usr/bin/etcd) on 10.250.0.11-13, TLS from lab.pki
    (own namespaces matter: etcd checks a peer's certificate against the address it
    connects from, and in one shared namespace every member dials from 10.250.0.11,
    so node2 and node3 cannot talk, and a cluster led by one of them never forms)
  * kube-apiserver (cache binaries) on node1, waits for /readyz through kubectl
  * create + delete a ConfigMap
  * kube-controller-manager and kube-scheduler (leader election on), each in
    its own UTS namespace with hostname node1, and checks they hold their
    Leases in kube-system and that the controllers work (ServiceAccount
    `default` appears)
Every process is stopped by PID and both namespaces deleted in `finally`.

The flag sets below are the ones this test proves to work with v1.20.2 and
etcd 3.4 (copied into /tmp/notes-k8s.md for the static deployer).
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

from lab.deploy import kubeconfig as kc, pki
from lab.errors import HalabError

pytestmark = pytest.mark.local

ETCD = "/usr/bin/etcd"
SERVICE_CIDR = "10.233.0.0/18"
NODES = [("node1", "10.250.0.11"), ("node2", "10.250.0.12"), ("node3", "10.250.0.13")]
CLUSTER = "smoke"


# ---------------------------------------------------------------- flag sets
def etcd_flags(name, ip, members, pki_dir, data_dir, client_localhost=True):
    """etcd 3.4 member of a TLS cluster. `members`: [(name, ip)] of every member.

    client_localhost adds https://127.0.0.1:2379 to the client listeners; only
    possible when each member has its own network namespace.
    """
    p = Path(pki_dir)
    listen = f"https://{ip}:2379" + (",https://127.0.0.1:2379" if client_localhost else "")
    return [
        f"--name={name}",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={listen}",
        f"--advertise-client-urls=https://{ip}:2379",
        f"--listen-peer-urls=https://{ip}:2380",
        f"--initial-advertise-peer-urls=https://{ip}:2380",
        "--initial-cluster=" + ",".join(f"{n}=https://{i}:2380" for n, i in members),
        f"--initial-cluster-token=halab-{CLUSTER}",
        "--initial-cluster-state=new",
        f"--cert-file={p / 'etcd' / f'{name}-server.crt'}",
        f"--key-file={p / 'etcd' / f'{name}-server.key'}",
        f"--trusted-ca-file={p / 'ca.crt'}",
        "--client-cert-auth=true",
        f"--peer-cert-file={p / 'etcd' / f'{name}-peer.crt'}",
        f"--peer-key-file={p / 'etcd' / f'{name}-peer.key'}",
        f"--peer-trusted-ca-file={p / 'ca.crt'}",
        "--peer-client-cert-auth=true",
        "--heartbeat-interval=250",
        "--election-timeout=5000",
        "--logger=zap",
        "--log-outputs=stderr",
    ]


def apiserver_flags(name, ip, etcd_ips, pki_dir, service_cidr=SERVICE_CIDR):
    p = Path(pki_dir)
    return [
        f"--advertise-address={ip}",
        "--bind-address=0.0.0.0",
        "--secure-port=6443",
        "--etcd-servers=" + ",".join(f"https://{i}:2379" for i in etcd_ips),
        f"--etcd-cafile={p / 'ca.crt'}",
        f"--etcd-certfile={p / 'apiserver-etcd-client.crt'}",
        f"--etcd-keyfile={p / 'apiserver-etcd-client.key'}",
        f"--client-ca-file={p / 'ca.crt'}",
        f"--tls-cert-file={p / 'apiserver' / f'{name}.crt'}",
        f"--tls-private-key-file={p / 'apiserver' / f'{name}.key'}",
        f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
        f"--service-account-key-file={p / 'sa.pub'}",
        f"--service-account-signing-key-file={p / 'sa.key'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-cluster-ip-range={service_cidr}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        "--allow-privileged=true",
        "--anonymous-auth=true",
        "--profiling=false",
        "--endpoint-reconciler-type=lease",
        f"--requestheader-client-ca-file={p / 'front-proxy-ca.crt'}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-username-headers=X-Remote-User",
        f"--proxy-client-cert-file={p / 'front-proxy-client.crt'}",
        f"--proxy-client-key-file={p / 'front-proxy-client.key'}",
    ]


def controller_manager_flags(kubeconfig, pki_dir, flexvolume_dir, service_cidr=SERVICE_CIDR):
    p = Path(pki_dir)
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--leader-elect=true",
        "--leader-elect-resource-lock=leases",
        "--bind-address=127.0.0.1",
        "--secure-port=10257",
        "--port=0",
        f"--service-account-private-key-file={p / 'sa.key'}",
        f"--root-ca-file={p / 'ca.crt'}",
        f"--cluster-signing-cert-file={p / 'ca.crt'}",
        f"--cluster-signing-key-file={p / 'ca.key'}",
        f"--requestheader-client-ca-file={p / 'front-proxy-ca.crt'}",
        "--use-service-account-credentials=true",
        f"--service-cluster-ip-range={service_cidr}",
        # default is /usr/libexec/kubernetes/kubelet-plugins/volume/exec, which it
        # would create on the host
        f"--flex-volume-plugin-dir={flexvolume_dir}",
    ]


def scheduler_flags(kubeconfig):
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--leader-elect=true",
        "--leader-elect-resource-lock=leases",
        "--bind-address=127.0.0.1",
        "--secure-port=10259",
        "--port=0",
    ]


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
    """Two test namespaces joined by a veth, and the processes started in them."""

    def __init__(self, tmp: Path):
        suffix = os.getpid()
        self.ns = f"halab-t-smoke-{suffix}"
        self.peer = f"halab-t-smokep-{suffix}"
        self.tmp = tmp
        self.procs: list[tuple[str, subprocess.Popen, object]] = []

    def node_ns(self, node: str) -> str:
        return self.ns if node == NODES[0][0] else f"{self.ns}-{node}"

    def namespaces(self) -> list[str]:
        return [self.node_ns(n) for n, _ in NODES] + [self.peer]

    def setup(self):
        _run(["ip", "netns", "add", self.peer])
        _run(["ip", "-n", self.peer, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", self.peer, "link", "set", "br0", "up"])
        for i, (node, ip) in enumerate(NODES):
            ns = self.node_ns(node)
            _run(["ip", "netns", "add", ns])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", ns, "link", "add", "lab0", "type", "veth",
                  "peer", "name", f"lab0p{i}", "netns", self.peer])
            _run(["ip", "-n", self.peer, "link", "set", f"lab0p{i}", "master", "br0", "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "lab0"])
            _run(["ip", "-n", ns, "link", "set", "lab0", "up"])

    def exec_args(self, args, hostname=None, node=None):
        prefix = ["ip", "netns", "exec", self.node_ns(node) if node else self.ns]
        if hostname:
            # own UTS namespace: leader-election identity becomes "<hostname>_<uuid>"
            prefix += ["unshare", "--uts", "--", "sh", "-c",
                       f'hostname {hostname} && exec "$0" "$@"']
        return prefix + [str(a) for a in args]

    def start(self, label, args, hostname=None, node=None):
        log = open(self.tmp / f"{label}.log", "wb")
        proc = subprocess.Popen(self.exec_args(args, hostname, node), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append((label, proc, log))
        return proc

    def run(self, args, timeout=20, check=True):
        return _run(self.exec_args(args), timeout=timeout, check=check)

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
def lab(tmp_path):
    lab = Lab(tmp_path)
    try:
        lab.setup()
        yield lab
    finally:
        lab.teardown()


def test_local_controlplane_smoke(k8s_bins, lab, tmp_path, record_property):
    t_start = time.monotonic()
    pki_dir = tmp_path / "pki"
    files = pki.build_pki(CLUSTER, NODES[:1], [], SERVICE_CIDR, etcd_members=NODES)
    pki.write_pki(files, pki_dir)
    cp_name, cp_ip = NODES[0]

    def kubeconfig(who, server):
        path = tmp_path / f"{who}.kubeconfig"
        path.write_text(kc.dump(kc.config(
            [(CLUSTER, server)], who, files["ca.crt"], files[f"{who}.crt"], files[f"{who}.key"])))
        path.chmod(0o600)
        return path

    admin_kc = kubeconfig("admin", f"https://{cp_ip}:6443")
    # components talk to their own API server over loopback (needs the 127.0.0.1 SAN)
    cm_kc = kubeconfig("controller-manager", "https://127.0.0.1:6443")
    sched_kc = kubeconfig("scheduler", "https://127.0.0.1:6443")

    def kubectl(*args, check=True, timeout=20):
        return lab.run([k8s_bins.kubectl, f"--kubeconfig={admin_kc}", "--request-timeout=5s",
                        *args], timeout=timeout, check=check)

    # ---- etcd: 3 members, TLS everywhere, each in its node's namespace
    for name, ip in NODES:
        data = tmp_path / f"etcd-{name}"
        data.mkdir(mode=0o700)
        lab.start(f"etcd-{name}", [ETCD, *etcd_flags(name, ip, NODES, pki_dir, data)],
                  node=name)

    def etcd_healthy():
        for _, ip in NODES:
            r = lab.run(["python3", "-c", ETCD_HEALTH, f"https://{ip}:2379",
                         pki_dir / "ca.crt", pki_dir / "apiserver-etcd-client.crt",
                         pki_dir / "apiserver-etcd-client.key"], check=False, timeout=10)
            if r.stdout.strip() != "true":
                return False, r.stdout + r.stderr[-300:]
        return True, "all healthy"

    wait_for("etcd cluster health", etcd_healthy, 60, interval=0.5, lab=lab)
    t_etcd = time.monotonic()

    # ---- kube-apiserver
    lab.start("kube-apiserver", [k8s_bins.kube_apiserver,
                                 *apiserver_flags(cp_name, cp_ip, [i for _, i in NODES],
                                                  pki_dir)])
    t_api = time.monotonic()

    def readyz():
        r = kubectl("get", "--raw", "/readyz", check=False, timeout=10)
        return r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr[-300:]

    wait_for("kube-apiserver /readyz", readyz, 120, lab=lab)
    api_ready = time.monotonic() - t_api
    record_property("etcd_ready_seconds", round(t_etcd - t_start, 2))
    record_property("apiserver_ready_seconds", round(api_ready, 2))
    print(f"\netcd cluster healthy after {t_etcd - t_start:.1f}s; "
          f"kube-apiserver ready after {api_ready:.1f}s")

    version = json.loads(kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == k8s_bins.version
    assert version["clientVersion"]["gitVersion"] == k8s_bins.version

    # ---- a write through the API server into etcd
    kubectl("create", "configmap", "halab-smoke", "--from-literal=hello=world")
    got = kubectl("get", "configmap", "halab-smoke", "-o", "jsonpath={.data.hello}").stdout
    assert got == "world"
    kubectl("delete", "configmap", "halab-smoke")
    r = kubectl("get", "configmap", "halab-smoke", check=False)
    assert r.returncode != 0 and "NotFound" in r.stderr

    # ---- controller-manager and scheduler with leader election
    lab.start("kube-controller-manager",
              [k8s_bins.kube_controller_manager,
               *controller_manager_flags(cm_kc, pki_dir, tmp_path / "flexvolume")],
              hostname=cp_name)
    lab.start("kube-scheduler", [k8s_bins.kube_scheduler, *scheduler_flags(sched_kc)],
              hostname=cp_name)
    t_comp = time.monotonic()

    def leases():
        r = kubectl("-n", "kube-system", "get", "lease", "-o", "json", check=False)
        if r.returncode != 0:
            return False, r.stderr[-300:]
        holders = {i["metadata"]["name"]: i["spec"].get("holderIdentity", "")
                   for i in json.loads(r.stdout)["items"]}
        ok = all(holders.get(n, "").startswith(f"{cp_name}_")
                 for n in ("kube-controller-manager", "kube-scheduler"))
        return ok, holders

    holders = wait_for("controller-manager and scheduler leases", leases, 90, interval=0.5,
                       lab=lab)
    print(f"leases acquired {time.monotonic() - t_comp:.1f}s after start: {holders}")

    # the controllers really run: the service-account controller creates `default`
    wait_for("ServiceAccount default/default",
             lambda: (kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
                      ""), 60, interval=0.5, lab=lab)
    lab.assert_alive()
