#!/usr/bin/env python3
"""CPU an API server costs, by flag set: to its first `/readyz` 200, and idle after it.

    sudo python3 benchmarks/apiserver_cpu.py [--idle 120] [--runs 1] [--only SETS]
        [--env K=V ...] [--wrap 'qemu-x86_64 -cpu max']

Why: on emulated VMs (QEMU without KVM) three control planes share 2 host cores, and
what the running ones burn while idle is what the next one lacks to start. halab runs
emulated API servers with `lab.controlplane.EMULATED_APISERVER_FLAGS`; this script
measures, natively, what each of those flags saves.

How: it brings a local Case 2 lab up (`halab up --provider local`, a unique name in a
temporary folder), then, for each flag set, starts one more kube-apiserver inside
k8s-node1's namespace on port 6444 with the lab's own certificates and a fresh etcd
prefix (a first start, as on a new lab: bootstrap roles, priority levels, ...), and
reads its CPU time (utime + stime from /proc) when `/readyz` first answers 200, and
over `--idle` seconds after a 60 s settle. Prints one line per flag set.

Cleanup is guaranteed: the extra API server is stopped by PID, then the lab is
destroyed (and whatever is left in its namespaces killed by PID).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_up import cleanup, env, halab_cmd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lab.deploy.controlplane import EMULATED_APISERVER_FLAGS  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")
FLAG_SETS = {
    "defaults": (),
    "no priority-and-fairness": ("--enable-priority-and-fairness=false",),
    "halab's emulated flags": EMULATED_APISERVER_FLAGS,
}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def apiserver_argv(lab_dir: Path, topo, k8s_bin: str, flags) -> list[str]:
    from lab.deploy.controlplane import etcd_endpoints
    node, ip = topo.control_planes[0].name, topo.control_planes[0].ip
    pki = lab_dir / "nodes" / node / "pki"
    eps = etcd_endpoints(topo)
    return [f"{k8s_bin}/kube-apiserver", f"--advertise-address={ip}", "--bind-address=127.0.0.1",
            "--secure-port=6444", f"--etcd-servers={eps}", f"--etcd-cafile={pki}/ca.crt",
            f"--etcd-certfile={pki}/apiserver-etcd-client.crt",
            f"--etcd-keyfile={pki}/apiserver-etcd-client.key", f"--client-ca-file={pki}/ca.crt",
            f"--tls-cert-file={pki}/apiserver/{node}.crt",
            f"--tls-private-key-file={pki}/apiserver/{node}.key",
            f"--service-account-key-file={pki}/sa.pub",
            f"--service-account-signing-key-file={pki}/sa.key",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.233.0.0/18", "--authorization-mode=Node,RBAC",
            "--anonymous-auth=true", "--profiling=false", "--endpoint-reconciler-type=none",
            f"--etcd-prefix=/bench-{uuid.uuid4().hex[:8]}", *flags]


def measure(ns: str, argv: list[str], idle: float, log: Path,
            extra_env: dict | None = None) -> tuple[float, float, float]:
    """(seconds to /readyz 200, CPU-seconds until then, idle CPU % of one core)."""
    t0 = time.monotonic()
    with log.open("w") as err:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.DEVNULL,
                                stderr=err, env={**os.environ, **(extra_env or {})})
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"kube-apiserver exited {proc.returncode}; see {log}")
            code = subprocess.run(["ip", "netns", "exec", ns, "curl", "-sk", "-o", "/dev/null",
                                   "-w", "%{http_code}", "--max-time", "1",
                                   "https://127.0.0.1:6444/readyz"],
                                  capture_output=True, text=True).stdout
            if code == "200":
                break
            if time.monotonic() - t0 > 900:
                raise SystemExit(f"kube-apiserver not ready after 900 s; see {log}")
            time.sleep(0.1)
        ready, at_ready = time.monotonic() - t0, cpu_seconds(proc.pid)
        if idle <= 0:  # --idle 0: the start only
            return ready, at_ready, float("nan")
        time.sleep(60)
        a = cpu_seconds(proc.pid)
        time.sleep(idle)
        return ready, at_ready, 100 * (cpu_seconds(proc.pid) - a) / idle
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--idle", type=float, default=120.0,
                    help="seconds of idle measured (0: the start only)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated flag set names "
                    f"(default: all of {', '.join(FLAG_SETS)})")
    ap.add_argument("--env", action="append", default=[], metavar="K=V",
                    help="also run each chosen set with this environment variable")
    ap.add_argument("--wrap", default="", help="run kube-apiserver through this command, "
                    "e.g. 'qemu-x86_64 -cpu qemu64' (user-mode TCG: the CPU emulation "
                    "an emulated VM adds, without its devices)")
    args = ap.parse_args()
    wrap = args.wrap.split()
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in FLAG_SETS]
    if unknown:
        raise SystemExit(f"--only {', '.join(unknown)}: no such flag set; "
                         f"choose from: {', '.join(FLAG_SETS)}")
    chosen = {n: FLAG_SETS[n] for n in names} or FLAG_SETS
    envs = [{}] + [dict([kv.split("=", 1)]) for kv in args.env]
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    lab = f"acb{os.getpid() % 10000}"
    root = Path(tempfile.mkdtemp(prefix="halab-apiserver-bench-"))
    (root / f"{lab}.yaml").write_text(f"extends: case2\nname: {lab}\n")
    try:
        up = subprocess.run(halab_cmd() + ["up", f"{lab}.yaml", "--provider", "local"],
                            cwd=root, env=env(), capture_output=True, text=True, timeout=600)
        if up.returncode != 0:
            raise SystemExit(f"halab up failed:\n{up.stdout}\n{up.stderr}")
        import json
        from lab.model import scenario
        from lab.model.topology import Topology
        state = json.loads((root / ".halab" / lab / "state.json").read_text())
        topo = Topology.of(scenario.load(str(root / f"{lab}.yaml"), provider="local"))
        ns = f"halab-{lab}-{topo.control_planes[0].name}"
        print(f"extra kube-apiserver in {ns} ({state['k8s_bin_dir']}); idle over {args.idle:g} s "
              f"after a 60 s settle")
        for name, flags in chosen.items():
            for extra in envs:
                label = name + "".join(f" {k}={v}" for k, v in extra.items())
                for run in range(args.runs):
                    argv = apiserver_argv(root / ".halab" / lab, topo, state["k8s_bin_dir"],
                                          flags)
                    ready, cpu, idle = measure(ns, wrap + argv, args.idle,
                                               root / f"apiserver-{run}.log", extra)
                    print(f"  {label:<34} ready {ready:5.1f} s, {cpu:4.1f} CPU-s to ready, "
                          f"idle {idle:4.1f} % of a core  [{' '.join(flags) or 'no extra flags'}]",
                          flush=True)
    finally:
        cleanup(lab, root)


if __name__ == "__main__":
    main()
