#!/usr/bin/env python3
"""The same `kill k8s-node1` drill, once with the seed's HAProxy and once with halab's.

Brings up a case2-like local lab (`extends: case2`, unique name `hb<pid>`, own
temporary folder), then:

  1. halab's haproxy.cfg (as rendered): `option httpchk GET /readyz`, `inter 1s
     fastinter 500ms fall 2 rise 2`, `timeout connect 2s`, `timeout check 2s`,
     `on-marked-down shutdown-sessions`, `option redispatch`, leastconn;
  2. the seed's (blog 004) settings, as a documented RUNTIME OVERRIDE: halab's
     scenario format cannot drop httpchk or shutdown-sessions, so this script
     writes the seed's defaults and backend (TLS-only `check check-ssl verify none
     inter 10000`, HAProxy's default fall 3 rise 2, no httpchk, no
     shutdown-sessions, `timeout connect 10s`, `timeout check 10s`, roundrobin;
     the seed DOES have `option redispatch` + `retries 3` in its defaults, so they
     are kept) into admin-lb's haproxy.cfg, checks it with `haproxy -c`, and
     restarts HAProxy under the lab's supervisor. Two renames keep halab's probes
     working: the backend is called `k8s-api` (the seed: `k8s-api-backend`) and the
     stats socket is halab's. The seed's `timeout client 3h` in the backend is
     left out: HAProxy ignores it there (with a warning).

Before each run the etcd leader is moved off k8s-node1 (`etcdctl move-leader`,
inside the lab), so both runs lose a follower, not the leader: the comparison is
about the load balancer. Each run is a full `halab drill kill k8s-node1`
(journal + HTML in the lab's drills/ folder, copied to --out if given); the
script prints the external path's error window of both and their ratio.

Everything that talks to lab addresses runs inside the lab's network
namespaces. The lab is destroyed in `finally` (and leftovers killed by PID).

    sudo python3 benchmarks/drill_seed_vs_halab.py [--duration 60] [--keep] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import netns_sweep  # noqa: E402
from lab.app.lab import open_lab  # noqa: E402
from lab.state import Lab  # noqa: E402

TARGET = "k8s-node1"


def halab_exe() -> list[str]:
    exe = Path(sys.executable).parent / "halab"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lab.cli"]


def seed_haproxy_cfg(topo, runtime) -> str:
    """Blog 004's haproxy.cfg (defaults + k8s-api backend), on the lab's addresses."""
    lb = topo.load_balancers[0]
    servers = "\n".join(f"    server {cp.name} {cp.ip}:6443 check check-ssl verify none "
                        "inter 10000" for cp in topo.control_planes)
    return f"""# The SEED's HAProxy settings (blog 004), by benchmarks/drill_seed_vs_halab.py
global
    log stdout format raw local0 info
    maxconn 4000
    pidfile {runtime.pidfile}
    stats socket {runtime.stats_socket} mode 600 level admin expose-fd listeners
    stats timeout 30s

defaults
    mode                    http
    log                     global
    option                  httplog
    option                  tcplog
    option                  dontlognull
    option http-server-close
    option                  redispatch
    retries                 3
    timeout http-request    10s
    timeout queue           1m
    timeout connect         10s
    timeout client          1m
    timeout server          1m
    timeout http-keep-alive 10s
    timeout check           10s
    maxconn                 3000

frontend k8s-api
    bind {lb.ip}:6443
    mode tcp
    option tcplog
    default_backend k8s-api

backend k8s-api
    mode tcp
    option tcp-check
    option log-health-checks
    timeout server 3h
    balance roundrobin
{servers}
"""


class Bench:
    def __init__(self, workdir: Path, duration: float):
        self.workdir = workdir
        self.name = f"hb{os.getpid() % 100000}"
        self.duration = duration
        self.scenario = workdir / f"{self.name}.yaml"
        self.scenario.write_text(f"extends: case2\nname: {self.name}\n")
        self.lab = Lab(workdir / ".halab" / self.name)

    def halab(self, *args, check=True, timeout=900, lab=True):
        argv = halab_exe() + list(args) + (["--lab", self.name] if lab else [])
        cp = subprocess.run(argv, cwd=self.workdir, capture_output=True, text=True,
                            timeout=timeout,
                            env={k: v for k, v in os.environ.items() if k != "HALAB_LABS_DIR"})
        if check and cp.returncode != 0:
            raise SystemExit(f"halab {' '.join(args)} failed ({cp.returncode}):\n{cp.stdout}\n"
                             f"{cp.stderr}")
        return cp

    def up(self):
        print(f"bench: lab {self.name} (case2, local) in {self.workdir}", flush=True)
        self.halab("up", str(self.scenario), "--provider", "local", lab=False)

    def use_seed_haproxy(self):
        from lab.deploy import controlplane
        _, topo, prov = open_lab(self.lab)
        lb = topo.load_balancers[0].name
        runtime = controlplane.haproxy_runtime(prov.layout(lb))
        spec = next(s for s in self._specs(topo, prov) if s.node == lb and s.name == "haproxy")
        cfg_path = next(iter(spec.files))
        text = seed_haproxy_cfg(topo, runtime)
        check = prov.layout(lb).p("haproxy-seed-check.cfg")
        Path(check).write_text(text)
        cp = prov.run(lb, ["haproxy", "-c", "-f", check], timeout=30)
        if cp.returncode != 0:
            raise SystemExit(f"the seed config does not pass `haproxy -c`:\n{cp.stdout}{cp.stderr}")
        prov.sup.stop(lb, "haproxy")
        prov.sup.start(replace(spec, files={cfg_path: text}))
        print("bench: admin-lb now runs the seed's HAProxy settings (haproxy -c: OK)", flush=True)
        self._wait_backends_up(prov, lb)

    def _specs(self, topo, prov):
        from lab.drill.faults import lab_specs
        return lab_specs(self.lab, topo, prov)

    def _wait_backends_up(self, prov, lb, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                rows = prov.haproxy_stat(lb)
                states = [r["status"] for r in rows if r.get("pxname") == "k8s-api"
                          and r.get("svname") not in ("FRONTEND", "BACKEND")]
                if states and all(s.startswith("UP") for s in states):
                    return
            except OSError:
                pass
            time.sleep(1)
        raise SystemExit("HAProxy backends did not come UP")

    def move_etcd_leader_off_target(self):
        """`etcdctl move-leader` so the killed node is an etcd follower in both runs."""
        _, topo, prov = open_lab(self.lab)
        pki = self.lab.path / "pki"
        members = {m.name: m.ip for m in topo.etcd_members}
        base = ["etcdctl", "--cacert", str(pki / "ca.crt"),
                "--cert", str(pki / "apiserver-etcd-client.crt"),
                "--key", str(pki / "apiserver-etcd-client.key")]
        eps = ",".join(f"https://{ip}:2379" for ip in members.values())
        for _ in range(10):
            cp = prov.run("client", base + ["--endpoints", eps, "endpoint", "status", "-w",
                                            "json"], timeout=30)
            try:
                status = json.loads(cp.stdout)
            except ValueError:
                time.sleep(2)
                continue
            leader_id = status[0]["Status"]["leader"]
            by_id = {s["Status"]["header"]["member_id"]: s["Endpoint"] for s in status}
            leader_ep = by_id.get(leader_id, "")
            if f"//{members[TARGET]}:" not in leader_ep:
                return
            other = next(mid for mid, ep in by_id.items() if ep != leader_ep)
            prov.run("client", base + ["--endpoints", leader_ep, "move-leader",
                                       format(other, "x")], timeout=30)
            time.sleep(2)
        print("bench: warning: could not move the etcd leader off k8s-node1", flush=True)

    def drill(self, label: str) -> dict:
        self.move_etcd_leader_off_target()
        before = set(self._ids())
        print(f"bench: [{label}] halab drill kill {TARGET} --duration {self.duration:g}",
              flush=True)
        cp = self.halab("drill", "kill", TARGET, "--duration", str(self.duration), "-q",
                        check=False)
        if cp.returncode not in (0, 1):
            raise SystemExit(f"drill failed ({cp.returncode}):\n{cp.stdout}\n{cp.stderr}")
        new = sorted(set(self._ids()) - before)
        j = json.loads((self.lab.path / "drills" / f"{new[-1]}.json").read_text())
        print("\n".join("    " + ln for ln in cp.stdout.splitlines()
                        if ln.startswith(("external", "HAProxy marked", "PATH", "VERDICT"))),
              flush=True)
        return j

    def _ids(self):
        d = self.lab.path / "drills"
        return [p.stem for p in d.glob("*.json")] if d.is_dir() else []

    def destroy(self):
        self.halab("drill", "restore", "--no-wait", check=False, timeout=120)
        self.halab("destroy", "--force", check=False, timeout=300)
        netns_sweep.sweep(self.name)


def summary(j: dict, key: str = "external") -> dict:
    p = j["verdict"]["paths"][key]
    down = j["verdict"].get("haproxy_down_after", {}).get(f"admin-lb/{TARGET}")
    return {"failures": p["failures"], "probes": p["probes"], "window": p["error_window"],
            "stop": p["errors_stop_after"], "streak": p["longest_streak"], "down": down,
            "id": j["id"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=60.0,
                    help="seconds k8s-node1 stays off (the seed needs 20-60 s to notice)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None, help="copy both journals and reports here")
    ap.add_argument("--keep", action="store_true", help="keep the lab (destroy it yourself)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="halab-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    b = Bench(workdir, a.duration)
    t0 = time.monotonic()
    try:
        b.up()
        j = b.drill("halab's HAProxy")
        halab, halab_base = summary(j), summary(j, "direct:k8s-node2")
        b.use_seed_haproxy()
        j = b.drill("seed's HAProxy")
        seed, seed_base = summary(j), summary(j, "direct:k8s-node2")
        if a.out:
            out = Path(a.out)
            out.mkdir(parents=True, exist_ok=True)
            for s in (halab, seed):
                for ext in ("json", "html"):
                    shutil.copy(b.lab.path / "drills" / f"{s['id']}.{ext}", out)
    finally:
        if not a.keep:
            b.destroy()
    print()
    print(f"kill {TARGET} on a case2 local lab, external path (HAProxy), "
          f"{a.duration:g} s off, probes every 0.2 s with a 1 s timeout:")
    print(f"{'HAProxy config':<16} {'failed':>9} {'error window':>13} {'errors stop':>12} "
          f"{'longest stall':>14} {'marked DOWN':>12}")
    def f(v):
        return "-" if v is None else f"{v:.1f} s"
    for label, s in (("halab", halab), ("seed (blog 004)", seed)):
        print(f"{label:<16} {s['failures']:>4}/{s['probes']:<4} {f(s['window']):>13} "
              f"{f(s['stop']):>12} {f(s['streak']):>14} {f(s['down']):>12}")
    print("baseline without any LB (direct:k8s-node2, same drills; kube-apiserver's etcd "
          "client waits ~10 s for the dead etcd member in both):")
    for label, s in (("  halab run", halab_base), ("  seed run", seed_base)):
        print(f"{label:<16} {s['failures']:>4}/{s['probes']:<4} {f(s['window']):>13} "
              f"{f(s['stop']):>12} {f(s['streak']):>14}")
    if halab["window"]:
        print(f"ratio of error windows, seed / halab: {seed['window'] / halab['window']:.1f}x")
    else:
        print("halab's run had no failed probe on the external path")
    print(f"(took {time.monotonic() - t0:.0f} s; journals: {b.lab.path / 'drills'}"
          + (f", copies in {a.out}" if a.out else "") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
