"""PKI for halab's own control plane (the `static` deployer).

Everything is generated in memory with `cryptography` and returned as a dict
{relative path: PEM bytes}; `write_pki` puts it on disk (keys 0600). Layout
(the names `lab.controlplane` expects):

    ca.crt, ca.key                              cluster CA (Kubernetes clients, CSR signing)
    etcd-ca.crt, etcd-ca.key                    etcd's own CA: etcd trusts only it, so no
                                                certificate the cluster CA signs (an approved
                                                CSR) can talk to etcd
    apiserver/<cp>.crt, apiserver/<cp>.key      kube-apiserver serving cert per control plane
    etcd/<member>-server.crt/.key               etcd client-facing serving cert
    etcd/<member>-peer.crt/.key                 etcd peer cert (server+client auth)
    apiserver-etcd-client.crt/.key              kube-apiserver -> etcd (from the etcd CA)
    nodes/<node>.crt/.key                       each node's kubelet identity:
                                                CN=system:node:<node>, O=system:nodes
    prober.crt/.key                             halab's probes on nodes: CN=halab-prober,
                                                O=halab:probers (read-only ClusterRole halab-prober)
    apiserver-kubelet-client.crt/.key           kube-apiserver -> kubelets (O=system:masters)
    admin.crt/.key                              CN=kubernetes-admin, O=system:masters
    controller-manager.crt/.key                 CN=system:kube-controller-manager
    scheduler.crt/.key                          CN=system:kube-scheduler
    kube-proxy.crt/.key                         CN=system:kube-proxy (every node's kube-proxy)
    sa.key, sa.pub                              service-account signing key pair (RSA 2048)
    front-proxy-ca.crt/.key, front-proxy-client.crt/.key   (front_proxy=True)

Certificates use EC P-256 keys (fast: a 5-node lab takes well under a second);
only the service-account key is RSA, as Kubernetes expects. The API server
certificate carries the SANs kubespray gives it: kubernetes, kubernetes.default,
kubernetes.default.svc, kubernetes.default.svc.<domain>, localhost, 127.0.0.1,
the node's IP and hostname, the first service IP, plus the extra SANs (LB
address/name, VIP).
"""
from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from pathlib import Path
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lab.state import write_atomically

CA_DAYS = 3650
LEAF_DAYS = 1825
CLUSTER_DOMAIN = "cluster.local"

SERVER = (ExtendedKeyUsageOID.SERVER_AUTH,)
CLIENT = (ExtendedKeyUsageOID.CLIENT_AUTH,)
BOTH = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


# ---------------------------------------------------------------- helpers
def first_service_ip(service_cidr: str) -> str:
    """The `kubernetes` Service's ClusterIP: the first host of the service CIDR."""
    net = ipaddress.ip_network(service_cidr, strict=False)
    if net.num_addresses < 4:
        raise ValueError(f"service CIDR {service_cidr} is too small")
    return str(net.network_address + 1)


def _new_key():
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str, orgs: Sequence[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _san_entries(names: Iterable[str]) -> list[x509.GeneralName]:
    """IP strings become IPAddress entries, anything else DNSName; duplicates dropped."""
    out: list[x509.GeneralName] = []
    seen: set = set()
    for raw in names:
        if raw is None:
            continue
        s = str(raw).strip()
        if not s:
            continue
        try:
            entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(s))
        except ValueError:
            entry = x509.DNSName(s.lower())
        if entry not in seen:
            seen.add(entry)
            out.append(entry)
    return out


def _now() -> _dt.datetime:
    # back-date an hour: tolerate small clock differences between lab nodes
    return _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(hours=1)


class _CA:
    def __init__(self, cn: str):
        self.key = _new_key()
        self.name = _name(cn)
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now())
            .not_valid_after(_now() + _dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.ski = ski

    def issue(self, cn: str, orgs: Sequence[str] = (), usages=CLIENT,
              sans: Iterable[str] = ()) -> tuple[bytes, bytes]:
        key = _new_key()
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, orgs)).issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now())
            .not_valid_after(_now() + _dt.timedelta(days=LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True,
                                         key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                self.ski), critical=False)
        )
        entries = _san_entries(sans)
        if entries:
            b = b.add_extension(x509.SubjectAlternativeName(entries), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        return _cert_pem(cert), _key_pem(key)

    def pem(self) -> tuple[bytes, bytes]:
        return _cert_pem(self.cert), _key_pem(self.key)


def apiserver_sans(name: str, ip: str, service_cidr: str, extra_sans: Iterable[str] = (),
                   cluster_domain: str = CLUSTER_DOMAIN) -> list[str]:
    """The kube-apiserver certificate SANs for one control plane, kubespray-style."""
    return ["kubernetes", "kubernetes.default", "kubernetes.default.svc",
            f"kubernetes.default.svc.{cluster_domain}", "localhost", "127.0.0.1",
            str(ip), name, first_service_ip(service_cidr), *[str(s) for s in extra_sans]]


# ---------------------------------------------------------------- public API
# halab's read-only identity for the probes it runs on nodes (ClusterRole halab-prober)
PROBER_USER = "halab-prober"
PROBER_GROUP = "halab:probers"


def build_pki(cluster_name: str, control_planes: Sequence[tuple[str, str]],
              extra_sans: Sequence[str] = (), service_cidr: str = "10.233.0.0/18",
              etcd_members: Sequence[tuple[str, str]] | None = None,
              front_proxy: bool = True,
              cluster_domain: str = CLUSTER_DOMAIN,
              nodes: Sequence[str] = ()) -> dict[str, bytes]:
    """Every certificate and key of one lab, as {relative path: PEM bytes}.

    control_planes: (node name, node IP) for each kube-apiserver.
    etcd_members: (node name, node IP) for each etcd member (default: the
    control planes, i.e. stacked etcd).
    extra_sans: added to every API server certificate (LB IP/name, VIP).
    nodes: node names that get a kubelet identity (`nodes/<name>.crt`).
    """
    if not control_planes:
        raise ValueError("build_pki needs at least one control plane")
    etcd_members = list(control_planes if etcd_members is None else etcd_members)
    files: dict[str, bytes] = {}

    ca = _CA(f"{cluster_name}-ca")
    files["ca.crt"], files["ca.key"] = ca.pem()
    etcd_ca = _CA(f"{cluster_name}-etcd-ca")
    files["etcd-ca.crt"], files["etcd-ca.key"] = etcd_ca.pem()

    for name, ip in control_planes:
        files[f"apiserver/{name}.crt"], files[f"apiserver/{name}.key"] = ca.issue(
            "kube-apiserver", usages=SERVER,
            sans=apiserver_sans(name, ip, service_cidr, extra_sans, cluster_domain))

    for name, ip in etcd_members:
        etcd_sans = [name, str(ip), "localhost", "127.0.0.1"]
        files[f"etcd/{name}-server.crt"], files[f"etcd/{name}-server.key"] = etcd_ca.issue(
            name, usages=BOTH, sans=etcd_sans)
        files[f"etcd/{name}-peer.crt"], files[f"etcd/{name}-peer.key"] = etcd_ca.issue(
            name, usages=BOTH, sans=etcd_sans)
    files["apiserver-etcd-client.crt"], files["apiserver-etcd-client.key"] = etcd_ca.issue(
        "kube-apiserver-etcd-client", usages=CLIENT)

    clients = {
        "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ("system:masters",)),
        "admin": ("kubernetes-admin", ("system:masters",)),
        "controller-manager": ("system:kube-controller-manager", ()),
        "scheduler": ("system:kube-scheduler", ()),
        "prober": (PROBER_USER, (PROBER_GROUP,)),
        # every node's kube-proxy (bootstrap RBAC binds this user to system:node-proxier)
        "kube-proxy": ("system:kube-proxy", ()),
    }
    for base, (cn, orgs) in clients.items():
        files[f"{base}.crt"], files[f"{base}.key"] = ca.issue(cn, orgs, usages=CLIENT)
    for node in nodes:
        files[f"nodes/{node}.crt"], files[f"nodes/{node}.key"] = ca.issue(
            f"system:node:{node}", ("system:nodes",), usages=CLIENT)

    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files["sa.key"] = _key_pem(sa)
    files["sa.pub"] = sa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    if front_proxy:
        fp = _CA("front-proxy-ca")
        files["front-proxy-ca.crt"], files["front-proxy-ca.key"] = fp.pem()
        files["front-proxy-client.crt"], files["front-proxy-client.key"] = fp.issue(
            "front-proxy-client", usages=CLIENT)
    return files


def lab_pki(topo) -> dict[str, bytes]:
    """build_pki for a `lab.topology.Topology`."""
    return build_pki(
        topo.name,
        [(n.name, str(n.ip)) for n in topo.control_planes],
        extra_sans=topo.api_sans(),
        service_cidr=str(topo.scenario.service_cidr),
        etcd_members=[(n.name, str(n.ip)) for n in topo.etcd_members],
        nodes=[n.name for n in (*topo.control_planes, *topo.workers)],
    )


def is_private(rel_path: str) -> bool:
    """Files that must be 0600: private keys."""
    return rel_path.endswith(".key")


def write_pki(files: dict[str, bytes], dest_dir) -> list[Path]:
    """Write the PKI under dest_dir: keys 0600, certificates and sa.pub 0644.

    Each file is written to a temporary file then renamed, so a reader never
    sees a half-written key and a key is never briefly world-readable.
    """
    dest = Path(dest_dir)
    written = []
    for rel, data in sorted(files.items()):
        if os.path.isabs(rel) or ".." in Path(rel).parts:
            raise ValueError(f"refusing to write outside {dest}: {rel}")
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data, mode=0o600 if is_private(rel) else 0o644)
        written.append(path)
    return written


def cert_info(pem: bytes) -> dict:
    """Subject CN/O, issuer CN, SANs (DNS and IP as strings) and EKUs of a PEM cert."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
        ips = [str(i) for i in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns, ips = [], []
    try:
        eku = [o._name for o in
               cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value]
    except x509.ExtensionNotFound:
        eku = []
    return {
        "cn": [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)],
        "o": [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)],
        "issuer_cn": [a.value for a in cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)],
        "dns": dns, "ips": ips, "eku": eku,
    }
