"""Network namespaces for the local provider: one per node, a bridge namespace, a client.

Command lists are built by pure functions; `sh()` is the one place that runs them.
No lab address ever exists in the root namespace: addresses live on `lab0` inside
each node's namespace, and the bridge itself lives in its own namespace.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lab.errors import HalabError

LAB_IFACE = "lab0"
BRIDGE = "br0"
NETNS_RUN = Path("/run/netns")
NETNS_ETC = Path("/etc/netns")


def ns_name(lab: str, node: str) -> str:
    return f"halab-{lab}-{node}"


def bridge_ns(lab: str) -> str:
    return f"halab-{lab}.net"


def client_ns(lab: str) -> str:
    return f"halab-{lab}.client"


@dataclass(frozen=True)
class Port:
    """A namespace attached to the lab bridge."""

    ns: str
    bridge_port: str    # veth end on the bridge (in the bridge namespace)
    address: str        # "192.168.10.11/24"


def sh(argv: list[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise HalabError(f"{argv[0]} is not installed", hint="apt-get install iproute2") from exc
    if check and cp.returncode != 0:
        raise HalabError(f"`{' '.join(argv)}` failed: {cp.stderr.strip() or cp.stdout.strip()}")
    return cp


def exists(ns: str) -> bool:
    return (NETNS_RUN / ns).exists()


def link_exists(ns: str, dev: str) -> bool:
    return sh(["ip", "-n", ns, "link", "show", dev], check=False).returncode == 0


def create_bridge(ns: str) -> None:
    if not exists(ns):
        sh(["ip", "netns", "add", ns])
    sh(["ip", "-n", ns, "link", "set", "lo", "up"])
    if not link_exists(ns, BRIDGE):
        sh(["ip", "-n", ns, "link", "add", BRIDGE, "type", "bridge"])
        # no STP, no forwarding delay: ports forward at once
        sh(["ip", "-n", ns, "link", "set", BRIDGE, "type", "bridge", "forward_delay", "0",
            "stp_state", "0"])
    sh(["ip", "-n", ns, "link", "set", BRIDGE, "up"])


def attach(bridge: str, port: Port) -> None:
    """Create the node's namespace and connect it to the bridge (idempotent)."""
    if not exists(port.ns):
        sh(["ip", "netns", "add", port.ns])
    sh(["ip", "-n", port.ns, "link", "set", "lo", "up"])
    if not link_exists(port.ns, LAB_IFACE):
        if link_exists(bridge, port.bridge_port):  # half-made by an interrupted run
            sh(["ip", "-n", bridge, "link", "del", port.bridge_port])
        sh(["ip", "-n", bridge, "link", "add", port.bridge_port, "type", "veth", "peer", "name",
            LAB_IFACE, "netns", port.ns])
        sh(["ip", "-n", port.ns, "addr", "add", port.address, "dev", LAB_IFACE])
    sh(["ip", "-n", bridge, "link", "set", port.bridge_port, "master", BRIDGE])
    sh(["ip", "-n", bridge, "link", "set", port.bridge_port, "up"])
    sh(["ip", "-n", port.ns, "link", "set", LAB_IFACE, "up"])


def set_link(bridge: str, bridge_port: str, up: bool) -> None:
    """Cable in or out: with the bridge port down, frames to the node are dropped (no RST)."""
    sh(["ip", "-n", bridge, "link", "set", bridge_port, "up" if up else "down"])


def link_is_up(bridge: str, bridge_port: str) -> bool:
    out = sh(["ip", "-n", bridge, "-o", "link", "show", bridge_port], check=False).stdout
    return "state UP" in out or ",UP" in out.split(">")[0]


def write_hosts(ns: str, text: str) -> None:
    """`ip netns exec` bind-mounts /etc/netns/NS/hosts over /etc/hosts for that namespace."""
    d = NETNS_ETC / ns
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n" + text)


def delete(ns: str) -> None:
    if exists(ns):
        sh(["ip", "netns", "del", ns], check=False)
    shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)


def exec_prefix(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns]
