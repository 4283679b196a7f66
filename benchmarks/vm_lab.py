"""Times of a small VM lab on this machine: box build, `halab up` of N VMs, a second
`up`, halt + up of one VM, destroy. Uses the project's libvirt test bed (a network
namespace with its own libvirtd; tools/vmtest/). Needs root. Prints one line per figure.

    sudo python3 benchmarks/vm_lab.py [--nodes 2]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools" / "vmtest"

SCENARIO = """name: vmbench
case: 2
provider: libvirt
deployer: static
box: {{name: halab/debian12, os: debian-12}}
network: {{subnet: 192.168.124.0/24}}
admin_lb: {{count: 1, cpus: 1, memory: 768}}
control_plane: {{count: 1, cpus: 1, memory: 768}}
worker: {{count: {workers}, cpus: 1, memory: 640}}
admin_tools: [kubectl]
provider_options: {{libvirt: {{driver: qemu, management_network_address: 192.168.252.0/24}}}}
"""


def timed(label, argv, env=None, cwd=None, figures=None):
    t0 = time.monotonic()
    cp = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    dt = time.monotonic() - t0
    if cp.returncode != 0:
        sys.stderr.write(cp.stdout[-3000:] + cp.stderr[-3000:])
        raise SystemExit(f"{label} failed (exit {cp.returncode})")
    print(f"{label:<28} {dt:7.1f} s", flush=True)
    if figures is not None:
        figures[label] = dt
    return cp


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=3, help="VMs in the lab (admin-lb + 1 CP + workers)")
    args = ap.parse_args()
    import os
    figures = {}
    timed("box build (cached if done)", ["bash", str(TOOLS / "build-box.sh")], figures=figures)
    start = timed("test bed start", ["bash", str(TOOLS / "testbed.sh"), "start"], figures=figures)
    env = dict(os.environ)
    for line in start.stdout.splitlines():
        k, sep, v = line.partition("=")
        if sep and k.isupper():
            env[k] = v
    ns = ["ip", "netns", "exec", env.get("HALAB_NETNS", "halab-vmtest")]
    work = Path(tempfile.mkdtemp(prefix="halab-vmbench-"))
    (work / "vmbench.yaml").write_text(SCENARIO.format(workers=max(0, args.nodes - 2)))
    try:
        up = ns + ["halab", "up", "vmbench.yaml", "--no-deploy"]
        timed(f"halab up ({args.nodes} VMs)", up, env, work, figures)
        timed("second halab up", up, env, work, figures)
        timed("halab halt k8s-node1", ns + ["halab", "halt", "k8s-node1"], env, work, figures)
        timed("halab up after halt", up, env, work, figures)
        timed("halab destroy", ns + ["halab", "destroy"], env, work, figures)
    finally:
        subprocess.run(ns + ["halab", "destroy", "--force"], env=env, cwd=work,
                       capture_output=True)
        timed("test bed stop", ["bash", str(TOOLS / "testbed.sh"), "stop"])


if __name__ == "__main__":
    main()
