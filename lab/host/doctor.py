"""`halab doctor`: is this host ready for the scenario? Rules are pure; facts are gathered once.

Each finding is OK / WARN / FAIL with a one-line fix. `gather()` is the only part
that looks at the machine; tests feed `evaluate()` recorded facts instead.
"""
from __future__ import annotations

import ipaddress
import json
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from lab.host import hostinfo
from lab.errors import HalabError
from lab.model.scenario import Scenario
from lab.model.topology import Topology

VBOX_DEFAULT_RANGE = ipaddress.IPv4Network("192.168.56.0/21")
DISK_PER_VM_GIB = {True: 3, False: 8}  # linked clone or not
ARM64_BOX_HINTS = ("bento/", "generic-a64/", "arm64", "aarch64")


@dataclass(frozen=True)
class Finding:
    level: str   # OK, WARN, FAIL
    check: str
    detail: str
    fix: str = ""


@dataclass
class HostFacts:
    """Everything doctor needs to know about the host (recorded in tests)."""

    vagrant_version: str | None = None
    vboxmanage_version: str | None = None
    virsh_version: str | None = None
    vagrant_plugins: str = ""
    kvm: bool = False
    memory_mib: int = 0
    cpus: int = 0
    arch: str = "x86_64"
    vbox_networks_conf: str | None = None      # contents of /etc/vbox/networks.conf
    addresses: list = field(default_factory=list)   # `ip -j addr` parsed: [(ifname, cidr)]
    routes: list = field(default_factory=list)      # [(dst, dev)]
    free_disk_gib: float = 0.0


def _version(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = (cp.stdout or cp.stderr).strip().splitlines()
    return out[0] if cp.returncode == 0 and out else None


def gather(labs_dir: Path) -> HostFacts:
    """Read the host's facts (commands and files; changes nothing)."""
    f = HostFacts()
    f.vagrant_version = _version(["vagrant", "--version"])
    f.vboxmanage_version = _version(["VBoxManage", "--version"])
    f.virsh_version = _version(["virsh", "--version"])
    if f.vagrant_version:
        try:
            f.vagrant_plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True,
                                               text=True, timeout=60).stdout
        except (OSError, subprocess.TimeoutExpired):
            pass
    f.kvm = os.access("/dev/kvm", os.R_OK | os.W_OK)
    f.memory_mib = hostinfo.memory_mib()
    f.cpus = hostinfo.cpus()
    f.arch = platform.machine()
    conf = Path("/etc/vbox/networks.conf")
    f.vbox_networks_conf = conf.read_text() if conf.exists() else None
    f.addresses = parse_ip_addr(_json(["ip", "-j", "addr"]))
    f.routes = parse_ip_route(_json(["ip", "-j", "route"]))
    target = labs_dir if labs_dir.exists() else Path.cwd()
    f.free_disk_gib = shutil.disk_usage(target).free / 2**30
    return f


def _json(argv):
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return json.loads(cp.stdout or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []


def parse_ip_addr(data: list) -> list[tuple[str, str]]:
    out = []
    for link in data:
        for a in link.get("addr_info", []):
            if a.get("family") == "inet":
                out.append((link.get("ifname", "?"), f"{a['local']}/{a['prefixlen']}"))
    return out


def parse_ip_route(data: list) -> list[tuple[str, str]]:
    return [(r.get("dst", ""), r.get("dev", "")) for r in data if r.get("dst") not in (None, "default")]


def vbox_allowed_ranges(conf: str | None) -> list[ipaddress.IPv4Network]:
    """Ranges VirtualBox allows for host-only networks (`* 10.0.0.0/8 192.168.0.0/16`)."""
    if conf is None:
        return [VBOX_DEFAULT_RANGE]
    nets = []
    for line in conf.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("*"):
            continue
        for token in line[1:].split():
            try:
                nets.append(ipaddress.IPv4Network(token, strict=False))
            except ValueError:
                continue
    return nets


def evaluate(s: Scenario, facts: HostFacts) -> list[Finding]:
    """Every rule, in the order a user fixes them."""
    topo = Topology.of(s)
    out: list[Finding] = []
    # vagrant
    if facts.vagrant_version:
        out.append(Finding("OK", "vagrant", facts.vagrant_version))
    else:
        out.append(Finding("FAIL", "vagrant", "not installed",
                           "install Vagrant (Debian/Ubuntu: apt-get install vagrant; "
                           "else developer.hashicorp.com/vagrant/install)"))
    # provider
    if s.provider == "virtualbox":
        if facts.vboxmanage_version:
            out.append(Finding("OK", "VirtualBox", f"VBoxManage {facts.vboxmanage_version}"))
        else:
            out.append(Finding("FAIL", "VirtualBox", "VBoxManage not found",
                               "install VirtualBox, or use `--provider libvirt` (Linux) or "
                               "`--provider local` (no VMs)"))
    elif s.provider == "libvirt":
        if facts.virsh_version:
            out.append(Finding("OK", "libvirt", f"virsh {facts.virsh_version}"))
        else:
            out.append(Finding("FAIL", "libvirt", "virsh not found",
                               "apt-get install libvirt-daemon-system libvirt-clients"))
        if "vagrant-libvirt" in facts.vagrant_plugins:
            out.append(Finding("OK", "vagrant-libvirt", "plugin installed"))
        else:
            out.append(Finding("FAIL", "vagrant-libvirt", "plugin missing",
                               "apt-get install vagrant-libvirt (or vagrant plugin install "
                               "vagrant-libvirt)"))
        driver = s.provider_options["libvirt"]["driver"]
        if driver == "kvm" and not facts.kvm:
            out.append(Finding("FAIL", "acceleration", "/dev/kvm is not usable",
                               "enable virtualization in the BIOS, or set "
                               "provider_options.libvirt.driver: qemu (slow emulation)"))
        elif driver == "kvm":
            out.append(Finding("OK", "acceleration", "/dev/kvm"))
        else:
            out.append(Finding("WARN", "acceleration", "driver qemu: software emulation "
                               "(5-10x slower)", "use driver kvm where /dev/kvm works"))
    # memory and CPUs
    need = topo.total_memory()
    if need > facts.memory_mib:
        out.append(Finding("FAIL", "memory", f"the lab needs {need} MiB, the host has "
                           f"{facts.memory_mib} MiB", _shrink_hint(s, topo, facts.memory_mib)))
    elif need > 0.8 * facts.memory_mib:
        out.append(Finding("WARN", "memory", f"the lab needs {need} of {facts.memory_mib} MiB; "
                           "the host may swap", _shrink_hint(s, topo, facts.memory_mib)))
    else:
        out.append(Finding("OK", "memory", f"{need} of {facts.memory_mib} MiB"))
    big = max(n.cpus for n in topo.nodes)
    if big > facts.cpus:
        out.append(Finding("WARN", "CPUs", f"a node has {big} vCPUs, the host {facts.cpus}",
                           f"lower control_plane.cpus/worker.cpus to {facts.cpus} or less"))
    else:
        out.append(Finding("OK", "CPUs", f"{topo.total_cpus()} vCPUs over {facts.cpus} host CPUs"))
    # VirtualBox host-only range
    subnet = s.network.subnet
    if s.provider == "virtualbox":
        allowed = vbox_allowed_ranges(facts.vbox_networks_conf)
        if any(subnet.subnet_of(a) for a in allowed if a.version == 4):
            out.append(Finding("OK", "host-only range", f"{subnet} is allowed"))
        else:
            out.append(Finding("FAIL", "host-only range", f"VirtualBox allows host-only networks"
                               f" only in {', '.join(map(str, allowed))}",
                               f"add the line `* {subnet}` to /etc/vbox/networks.conf "
                               f"(sudo mkdir -p /etc/vbox; echo '* {subnet}' | sudo tee -a "
                               f"/etc/vbox/networks.conf), or use network.subnet: 192.168.56.0/24"))
    # subnet collisions with the host
    lab_hostside = next(subnet.hosts())
    clash = []
    for ifname, cidr in facts.addresses:
        net = ipaddress.IPv4Interface(cidr)
        if net.network.overlaps(subnet) and not (net.ip == lab_hostside and
                                                 re.match(r"^(vboxnet|virbr)", ifname)):
            clash.append(f"{ifname} {cidr}")
    for dst, dev in facts.routes:
        try:
            if ipaddress.IPv4Network(dst, strict=False).overlaps(subnet) and \
                    not re.match(r"^(vboxnet|virbr)", dev) and not any(dev == c.split()[0] for c in clash):
                clash.append(f"route {dst} via {dev}")
        except ValueError:
            continue
    if clash:
        out.append(Finding("FAIL", "subnet", f"{subnet} collides with this host: "
                           f"{'; '.join(clash)}", "choose another network.subnet (e.g. extends "
                           "the scenario with `network: {subnet: 192.168.57.0/24}`)"))
    else:
        out.append(Finding("OK", "subnet", f"{subnet} is free on this host"))
    # box architecture
    arm = facts.arch in ("arm64", "aarch64")
    box = s.box.providers.get(s.provider, {}).get("name", s.box.name)
    if arm and not any(h in box for h in ARM64_BOX_HINTS):
        out.append(Finding("WARN", "box architecture", f"this host is {facts.arch}; "
                           f"{box} may have no arm64 build", "use an arm64 box (e.g. bento/* "
                           "boxes publish arm64) in box.providers"))
    else:
        out.append(Finding("OK", "box architecture", f"{facts.arch} host, box {box}"))
    # disk
    linked = bool(s.provider_options["virtualbox"].get("linked_clone", True))
    need_disk = DISK_PER_VM_GIB[linked] * len(topo.nodes)
    if facts.free_disk_gib < need_disk:
        out.append(Finding("FAIL", "disk", f"{facts.free_disk_gib:.0f} GiB free, the lab needs "
                           f"about {need_disk} GiB", "free disk space or use fewer nodes"))
    else:
        out.append(Finding("OK", "disk", f"{facts.free_disk_gib:.0f} GiB free"))
    return out


def _shrink_hint(s: Scenario, topo: Topology, host_mib: int) -> str:
    if s.name != "mini" and Topology.of(_mini()).total_memory() <= 0.8 * host_mib:
        return "use the `mini` scenario (`halab up mini`)"
    if s.worker.count > 1:
        return (f"drop a worker: a scenario with `extends: {s.name}` and "
                f"`worker: {{count: {s.worker.count - 1}}}`")
    return "lower control_plane.memory / worker.memory, or use `--provider local`"


def _mini():
    from lab.model.scenario import load
    return load("mini")


def run_doctor(s: Scenario, echo=print, fail_on_error: bool = False,
               facts: HostFacts | None = None) -> list[Finding]:
    from lab.state import labs_root
    findings = evaluate(s, facts or gather(labs_root()))
    for f in findings:
        echo(f"  {f.level:<4} {f.check}: {f.detail}" + (f" -> fix: {f.fix}" if f.fix and f.level != "OK" else ""))
    failed = [f for f in findings if f.level == "FAIL"]
    if failed and fail_on_error:
        raise HalabError(f"doctor found {len(failed)} problem(s): "
                         + "; ".join(f"{f.check}: {f.detail}" for f in failed),
                         hint="fix them (see above), or skip the check with --skip-doctor")
    return findings


# ------------------------------------------------------------------ the local provider

REQUIRED_PROGRAMS = {"etcd": "etcd-server", "haproxy": "haproxy", "nginx": "nginx-light",
                     "keepalived": "keepalived", "ip": "iproute2", "unshare": "util-linux"}


def require_root() -> None:
    if os.geteuid() != 0:
        raise HalabError("the local provider needs root (it creates network namespaces)",
                         code=2, hint="run it with sudo, e.g. `sudo halab up case2 --provider local`")


def missing_programs(topo: Topology) -> list[tuple[str, str]]:
    needed = ["ip", "unshare", "etcd"]
    if topo.load_balancers:
        needed.append("haproxy")
    if len(topo.load_balancers) > 1:
        needed.append("keepalived")
    if topo.workers_use_local_proxy and topo.workers:
        needed.append("nginx")
    return [(p, REQUIRED_PROGRAMS[p]) for p in needed if shutil.which(p) is None]


def doctor_verb(s: Scenario, echo=print) -> int:
    """`halab doctor`: every finding with its fix; 1 when one of them fails."""
    if s.provider == "local":
        require_root()
        missing = missing_programs(Topology.of(s))
        for prog, pkg in missing:
            echo(f"  FAIL {prog}: not installed -> fix: apt-get install {pkg}")
        from lab.host.k8sbin import find_k8s_binaries
        try:
            k = find_k8s_binaries()
            echo(f"  OK   Kubernetes binaries: {k.version} in {k.directory}")
        except HalabError as exc:
            echo(f"  FAIL Kubernetes binaries: {exc.message}"
                 + (f" -> fix: {exc.hint}" if exc.hint else ""))
            missing.append(("k8s", ""))
        return 1 if missing else 0
    echo(f"halab doctor: scenario {s.name} ({s.provider})")
    findings = run_doctor(s, echo=echo)
    return 1 if any(f.level == "FAIL" for f in findings) else 0
