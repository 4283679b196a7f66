"""A package mirror for offline lab VMs: the classroom's apt server, made on this host.

Kubespray installs OS packages (roles/system_packages) before anything else, and
refreshes apt's lists to do it; a VM with no way out fails right there. An offline
classroom answers with a local mirror (kubespray's docs/operations/offline-environment.md);
so does this test support: it downloads the packages kubespray wants on the box's OS,
with everything they depend on, from this host's own Debian mirror (the host and
the test box are both Debian 12), makes a flat repository of them
(`dpkg-scanpackages`) and serves it inside the test bed's namespace on the lab
network's own address, where only the lab VMs reach it.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

# kubespray's system_packages on Debian 12 (roles/system_packages/vars/main.yml at
# v2.29.1 and v2.31.0, with the conditions evaluated for Debian 12, kube_proxy_mode
# ipvs, no NTP management)
KUBESPRAY_DEBIAN12 = (
    "apparmor", "apt-transport-https", "bash-completion", "conntrack", "curl", "e2fsprogs",
    "ebtables", "gnupg", "iproute2", "iptables", "ipvsadm", "libseccomp2", "mergerfs",
    "openssl", "python3-apt", "rsync", "socat", "software-properties-common", "tar",
    "unzip", "xfsprogs")


def to_install(packages: Sequence[str], dpkg_status: str, workdir: Path) -> list[str]:
    """What apt would install on a machine whose dpkg status is `dpkg_status` (read
    from the VM) to get `packages`: this host's apt lists, simulated (`apt-get -s`)."""
    status = workdir / "status"
    status.write_text(dpkg_status)
    out = subprocess.run(
        ["apt-get", "-s", "-q", "--no-install-recommends", "-o", f"Dir::State::status={status}",
         "install", *packages], capture_output=True, text=True, check=True, timeout=300).stdout
    return sorted({line.split()[1] for line in out.splitlines() if line.startswith("Inst ")})


def build_repo(packages: Sequence[str], dpkg_status: str, cache: Path) -> Path:
    """A flat apt repository (folder with .debs and Packages) holding what a machine
    with this dpkg status needs for `packages`; built once per list and status."""
    key = hashlib.sha256((" ".join(sorted(packages)) + dpkg_status).encode()).hexdigest()[:12]
    repo = cache / "vmtest-apt-mirror" / key
    if (repo / "Packages").is_file():
        return repo
    repo.mkdir(parents=True, exist_ok=True)
    names = to_install(packages, dpkg_status, repo)
    if names:   # apt-get download fetches the candidate of each into the current folder
        subprocess.run(["apt-get", "download", "-q", *names], cwd=repo, check=True,
                       capture_output=True, text=True, timeout=1800)
    scan = subprocess.run(["dpkg-scanpackages", "-m", "."], cwd=repo, check=True,
                          capture_output=True, text=True, timeout=300)
    (repo / "Packages.tmp").write_text(scan.stdout)
    (repo / "Packages.tmp").rename(repo / "Packages")
    return repo


def lab_gateway(netns: str, subnet_prefix: str) -> str:
    """The namespace's own address on the lab network (the libvirt bridge)."""
    out = subprocess.run(["ip", "netns", "exec", netns, "ip", "-o", "-4", "addr", "show"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    for line in out.split("\n"):
        words = line.split()
        if "inet" in words:
            addr = words[words.index("inet") + 1].split("/")[0]
            if addr.startswith(subnet_prefix):
                return addr
    raise RuntimeError(f"no address in {subnet_prefix}* inside {netns}:\n{out}")


@contextlib.contextmanager
def served(repo: Path, netns: str, address: str, port: int = 8081) -> Iterator[str]:
    """Serve `repo` over HTTP on address:port inside `netns`; stopped by PID at the end."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "http.server", str(port),
         "--bind", address, "--directory", str(repo)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://{address}:{port}/"
        for _ in range(50):
            probe = subprocess.run(["ip", "netns", "exec", netns, "curl", "-sf", "-o",
                                    "/dev/null", url + "Packages"], timeout=10)
            if probe.returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"the package mirror did not answer on {url}")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def use_mirror_script(url: str) -> str:
    """A shell line that makes a VM's apt use only the mirror (trusted: it is the lab's)."""
    return ("mkdir -p /etc/apt/halab-offline && "
            "{ mv /etc/apt/sources.list /etc/apt/halab-offline/ 2>/dev/null || true; } && "
            "{ mv /etc/apt/sources.list.d/* /etc/apt/halab-offline/ 2>/dev/null || true; } && "
            f"echo 'deb [trusted=yes] {url} ./' > /etc/apt/sources.list.d/lab-mirror.list")
