"""lab.deploy.pki: SANs, subjects, chain verification with openssl, file modes, kubeconfig."""
from __future__ import annotations

import base64
import shutil
import stat
import subprocess
import time

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from lab.deploy import pki

CPS = [("k8s-node1", "10.250.0.11"), ("k8s-node2", "10.250.0.12"), ("k8s-node3", "10.250.0.13")]
EXTRA = ["10.250.0.100", "k8s-api.lab", "10.250.0.101"]


@pytest.fixture(scope="module")
def files():
    return pki.build_pki("case3", CPS, EXTRA, "10.233.0.0/18")


@pytest.fixture(scope="module")
def written(files, tmp_path_factory):
    dest = tmp_path_factory.mktemp("pki")
    pki.write_pki(files, dest)
    return dest


def _pubkey_der(key):
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("cidr,first", [
    ("10.233.0.0/18", "10.233.0.1"), ("10.96.0.0/12", "10.96.0.1"),
    ("10.233.5.7/18", "10.233.0.1"), ("172.20.0.0/16", "172.20.0.1"),
    ("fd00:10:96::/112", "fd00:10:96::1"),
])
def test_first_service_ip(cidr, first):
    assert pki.first_service_ip(cidr) == first


def test_layout(files):
    expected = {"ca.crt", "ca.key", "etcd-ca.crt", "etcd-ca.key", "sa.key", "sa.pub",
                "admin.crt", "admin.key", "prober.crt", "prober.key",
                "apiserver-etcd-client.crt", "apiserver-etcd-client.key",
                "apiserver-kubelet-client.crt", "apiserver-kubelet-client.key",
                "controller-manager.crt", "controller-manager.key",
                "scheduler.crt", "scheduler.key", "kube-proxy.crt", "kube-proxy.key",
                "front-proxy-ca.crt", "front-proxy-ca.key",
                "front-proxy-client.crt", "front-proxy-client.key"}
    for name, _ in CPS:
        expected |= {f"apiserver/{name}.crt", f"apiserver/{name}.key",
                     f"etcd/{name}-server.crt", f"etcd/{name}-server.key",
                     f"etcd/{name}-peer.crt", f"etcd/{name}-peer.key"}
    assert set(files) == expected
    assert all(isinstance(v, bytes) and v.startswith(b"-----BEGIN ") for v in files.values())


def test_apiserver_sans(files):
    for name, ip in CPS:
        info = pki.cert_info(files[f"apiserver/{name}.crt"])
        assert info["dns"] == ["kubernetes", "kubernetes.default", "kubernetes.default.svc",
                               "kubernetes.default.svc.cluster.local", "localhost", name,
                               "k8s-api.lab"]
        assert info["ips"] == ["127.0.0.1", ip, "10.233.0.1", "10.250.0.100", "10.250.0.101"]
        assert info["eku"] == ["serverAuth"]
        assert info["issuer_cn"] == ["case3-ca"]
        # no other node's IP
        others = {i for n, i in CPS if n != name}
        assert not others & set(info["ips"])


def test_etcd_sans(files):
    for name, ip in CPS:
        for kind in ("server", "peer"):
            info = pki.cert_info(files[f"etcd/{name}-{kind}.crt"])
            assert info["dns"] == [name, "localhost"]
            assert info["ips"] == [ip, "127.0.0.1"]
            assert set(info["eku"]) == {"serverAuth", "clientAuth"}


def test_etcd_members_separate():
    f = pki.build_pki("ext", CPS[:1], [], "10.233.0.0/18",
                      etcd_members=[("etcd1", "10.250.0.21"), ("etcd2", "10.250.0.22")])
    assert "etcd/etcd2-peer.crt" in f and "etcd/k8s-node1-server.crt" not in f
    assert pki.cert_info(f["etcd/etcd1-server.crt"])["ips"] == ["10.250.0.21", "127.0.0.1"]


@pytest.mark.parametrize("base,cn,orgs", [
    ("admin", "kubernetes-admin", ["system:masters"]),
    ("controller-manager", "system:kube-controller-manager", []),
    ("scheduler", "system:kube-scheduler", []),
    ("kube-proxy", "system:kube-proxy", []),
    ("apiserver-etcd-client", "kube-apiserver-etcd-client", []),
    ("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ["system:masters"]),
    ("prober", "halab-prober", ["halab:probers"]),
    ("front-proxy-client", "front-proxy-client", []),
])
def test_client_subjects(files, base, cn, orgs):
    info = pki.cert_info(files[f"{base}.crt"])
    assert info["cn"] == [cn]
    assert info["o"] == orgs
    assert info["eku"] == ["clientAuth"]
    assert info["dns"] == [] and info["ips"] == []


def _issuer(files, rel) -> str:
    return pki.cert_info(files[rel])["issuer_cn"][0]


def test_etcd_trusts_only_its_own_ca(files):
    """An approved kube-apiserver-client CSR (signed by the cluster CA, the controller
    manager's signing key) must not be raw etcd access."""
    assert _issuer(files, "etcd-ca.crt") == "case3-etcd-ca" != _issuer(files, "ca.crt")
    for name, _ in CPS:
        for kind in ("server", "peer"):
            assert _issuer(files, f"etcd/{name}-{kind}.crt") == "case3-etcd-ca"
        assert _issuer(files, f"apiserver/{name}.crt") == "case3-ca"
    assert _issuer(files, "apiserver-etcd-client.crt") == "case3-etcd-ca"
    for client in ("admin", "controller-manager", "scheduler", "prober"):
        assert _issuer(files, f"{client}.crt") == "case3-ca"


def test_every_node_gets_its_own_kubelet_identity():
    f = pki.build_pki("n", CPS[:1], [], "10.233.0.0/18", nodes=["k8s-node1", "k8s-node4"])
    for node in ("k8s-node1", "k8s-node4"):
        info = pki.cert_info(f[f"nodes/{node}.crt"])
        assert info["cn"] == [f"system:node:{node}"] and info["o"] == ["system:nodes"]
        assert info["eku"] == ["clientAuth"] and info["issuer_cn"] == ["n-ca"]


def test_keys_match_certs(files):
    for rel in files:
        if not rel.endswith(".crt"):
            continue
        cert = x509.load_pem_x509_certificate(files[rel])
        key = serialization.load_pem_private_key(files[rel[:-4] + ".key"], None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert _pubkey_der(cert) == _pubkey_der(key), rel


def test_sa_keypair_is_rsa(files):
    key = serialization.load_pem_private_key(files["sa.key"], None)
    pub = serialization.load_pem_public_key(files["sa.pub"])
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert _pubkey_der(key) == pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_ca_is_ca(files):
    cert = x509.load_pem_x509_certificate(files["ca.crt"])
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is True
    leaf = x509.load_pem_x509_certificate(files["admin.crt"])
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_openssl_verifies_chain(files, written):
    def verify(ca, rel, purpose):
        r = subprocess.run(["openssl", "verify", "-CAfile", str(written / ca),
                            "-purpose", purpose, str(written / rel)],
                           capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.strip().endswith(": OK"), (rel, r.stdout, r.stderr)

    etcd_side = ("etcd/", "apiserver-etcd-client")
    for rel in files:
        if not rel.endswith(".crt") or rel.startswith("front-proxy") or \
                rel in ("ca.crt", "etcd-ca.crt"):
            continue
        purpose = "sslserver" if rel.startswith(("apiserver/", "etcd/")) else "sslclient"
        verify("etcd-ca.crt" if rel.startswith(etcd_side) else "ca.crt", rel, purpose)
    # etcd's CA verifies no Kubernetes client (an approved CSR is no etcd access) ...
    r = subprocess.run(["openssl", "verify", "-CAfile", str(written / "etcd-ca.crt"),
                        str(written / "admin.crt")], capture_output=True, text=True)
    assert r.returncode != 0
    verify("front-proxy-ca.crt", "front-proxy-client.crt", "sslclient")
    # the wrong CA must not verify
    r = subprocess.run(["openssl", "verify", "-CAfile", str(written / "front-proxy-ca.crt"),
                        str(written / "admin.crt")], capture_output=True, text=True)
    assert r.returncode != 0


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_openssl_checks_host_and_ip(written):
    crt = str(written / "apiserver" / "k8s-node2.crt")
    ca = str(written / "ca.crt")
    for opt, val, ok in [("-verify_ip", "10.233.0.1", True), ("-verify_ip", "10.250.0.12", True),
                         ("-verify_ip", "10.250.0.100", True), ("-verify_ip", "10.250.0.11", False),
                         ("-verify_hostname", "kubernetes.default.svc", True),
                         ("-verify_hostname", "k8s-api.lab", True),
                         ("-verify_hostname", "evil.example", False)]:
        r = subprocess.run(["openssl", "verify", "-CAfile", ca, opt, val, crt],
                           capture_output=True, text=True)
        assert (r.returncode == 0) == ok, (opt, val, r.stdout, r.stderr)


def test_write_pki_modes(files, written):
    for rel in files:
        mode = stat.S_IMODE((written / rel).stat().st_mode)
        assert mode == (0o600 if rel.endswith(".key") else 0o644), (rel, oct(mode))
        assert (written / rel).read_bytes() == files[rel]
    assert not list(written.rglob(".*"))  # no temp files left


def test_write_pki_overwrites_and_rejects_escape(tmp_path):
    pki.write_pki({"a.key": b"one"}, tmp_path)
    (tmp_path / "a.key").chmod(0o644)
    pki.write_pki({"a.key": b"two"}, tmp_path)
    assert (tmp_path / "a.key").read_bytes() == b"two"
    assert stat.S_IMODE((tmp_path / "a.key").stat().st_mode) == 0o600
    with pytest.raises(ValueError):
        pki.write_pki({"../x.key": b"x"}, tmp_path / "sub")


def test_kubeconfig_from_pki(files):
    from lab.deploy import kubeconfig
    text = kubeconfig.dump(kubeconfig.config([("case3", "https://10.250.0.100:6443")],
                                             "case3-admin", files["ca.crt"], files["admin.crt"],
                                             files["admin.key"]))
    cfg = yaml.safe_load(text)
    assert cfg["apiVersion"] == "v1" and cfg["kind"] == "Config"
    assert cfg["current-context"] == "case3"
    assert cfg["contexts"] == [{"name": "case3", "context": {"cluster": "case3",
                                                             "user": "case3-admin"}}]
    c = cfg["clusters"][0]
    assert c["name"] == "case3" and c["cluster"]["server"] == "https://10.250.0.100:6443"
    assert base64.b64decode(c["cluster"]["certificate-authority-data"]) == files["ca.crt"]
    u = cfg["users"][0]
    assert u["name"] == "case3-admin"
    assert base64.b64decode(u["user"]["client-certificate-data"]) == files["admin.crt"]
    assert base64.b64decode(u["user"]["client-key-data"]) == files["admin.key"]


def test_fresh_keys_each_time():
    a = pki.build_pki("x", CPS[:1], [], "10.233.0.0/18", front_proxy=False)
    b = pki.build_pki("x", CPS[:1], [], "10.233.0.0/18", front_proxy=False)
    assert set(a) == set(b) and "front-proxy-ca.crt" not in a
    assert a["ca.key"] != b["ca.key"]


def test_fast_for_five_nodes():
    nodes = [(f"node{i}", f"10.250.0.{10 + i}") for i in range(1, 6)]
    t0 = time.perf_counter()
    pki.build_pki("big", nodes, EXTRA, "10.233.0.0/18")
    assert time.perf_counter() - t0 < 1.0


def test_lab_pki_from_topology_like_object():
    class N:
        def __init__(self, name, ip):
            self.name, self.ip = name, ip

    class T:
        name = "case2"
        control_planes = (N("cp1", "10.250.0.11"), N("cp2", "10.250.0.12"))
        etcd_members = control_planes
        workers = (N("w1", "10.250.0.14"),)

        class scenario:
            service_cidr = "10.233.0.0/18"

        @staticmethod
        def api_sans():
            return ["10.250.0.5", "k8s-api.lab"]

    f = pki.lab_pki(T)
    assert "apiserver/cp2.crt" in f and "etcd/cp1-peer.key" in f
    assert {"nodes/cp1.crt", "nodes/cp2.crt", "nodes/w1.crt"} <= set(f)
    info = pki.cert_info(f["apiserver/cp1.crt"])
    assert "10.250.0.5" in info["ips"] and "k8s-api.lab" in info["dns"]
