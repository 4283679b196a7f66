#!/usr/bin/env python3
"""What the cluster's own clients live through, per Case and fault: the figures behind
the README's table of heartbeat gaps and NotReady times.

    sudo python3 benchmarks/node_drills.py [--cases case2,case3] [--faults stop-lb,kill,freeze]
                                           [--duration 60] [--out DIR]

For each Case, a fresh local lab (`extends: <case>`, unique name `nd<case>`, its own
temporary folder, every node a hollow kubelet and kube-proxy); then, for each fault, a
full `halab drill` held for `--duration` seconds (longer than node-monitor-grace-period
40 s): `stop-lb` on admin-lb, `kill` and `freeze` on an etcd follower (so the figures
are about the access paths, not an etcd election; the report says when that node held
the controller-manager's lease). Prints, per drill, the fresh
probes' error window per access path next to the kubelets' longest heartbeat gap and
NotReady time per node, the long-lived watches' longest silence, and the mechanisms
predicted against measured; `--out` keeps every journal.

Everything that talks to lab addresses runs inside the lab's namespaces (halab's own
probes). The lab is destroyed in `finally`, leftovers killed by PID.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_up import cleanup, env, halab_cmd  # noqa: E402


def halab(args: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(halab_cmd() + args, cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=timeout)


def summarize(j: dict) -> list[str]:
    v = j["verdict"]
    out = [f"  {j['fault']} {' '.join(j['targets'])} (Case {j['case']}, "
           f"{j['settings']['duration']:g} s): verdict {'OK' if v['ok'] else 'DIFFERS'}"]
    for key, p in v["paths"].items():
        win = (f"errors +{p['first_failure']:.1f}..+{p['errors_stop_after']:.1f} s"
               if p["failures"] else "no errors")
        out.append(f"    path {key:<18} {p['measured']:<9} {win} "
                   f"({p['failures']}/{p['probes']} failed)")
    for node, lane in j.get("nodes", {}).items():
        down = [tr["t"] for tr in lane.get("ready_transitions", []) if not tr["ready"]]
        out.append(f"    node {node:<18} longest heartbeat gap {lane.get('max_heartbeat_gap')} s"
                   + (f", NotReady at +{down[0]:.1f} s" if down else ", stayed Ready"))
    for path, w in j.get("long_lived", {}).items():
        out.append(f"    watch {path:<17} longest silence {w['longest_silence']:.1f} s"
                   + (f", broke {len(w['breaks'])}x" if w["breaks"] else ""))
    for m in v.get("mechanisms", {}).get("mechanisms", []):
        out.append(f"    mechanism {m['name']}: predicted {m['predicted']} measured "
                   f"{m['measured']} ({ {True: 'as predicted', False: 'LATE', None: '-'}[m['agree']]})")
    return out


def one_case(case: str, faults: list[str], duration: float, out: Path | None) -> list[str]:
    lab = "nd" + case.replace("-", "")
    root = Path(tempfile.mkdtemp(prefix=f"halab-bench-{lab}-"))
    (root / f"{lab}.yaml").write_text(f"extends: {case}\nname: {lab}\n")
    lines = [f"{case}:"]
    try:
        t0 = time.monotonic()
        up = halab(["up", str(root / f"{lab}.yaml"), "--provider", "local"], root, 600)
        if up.returncode != 0:
            raise RuntimeError(f"halab up {case} failed:\n{up.stdout[-2000:]}{up.stderr}")
        lines.append(f"  up {time.monotonic() - t0:.1f} s")
        for fault in faults:
            target = "admin-lb" if fault == "stop-lb" else "etcd-follower"
            d = halab(["drill", fault, target, "--duration", f"{duration:g}"], root, 1200)
            jpath = next((ln.split(":", 1)[1].strip() for ln in d.stdout.splitlines()
                          if ln.startswith("journal:")), None)
            if not jpath:
                lines.append(f"  {fault} {target}: no journal (exit {d.returncode})\n"
                             + d.stdout[-1500:])
                continue
            j = json.loads(Path(jpath).read_text())
            if out:
                out.mkdir(parents=True, exist_ok=True)
                shutil.copy(jpath, out / f"{case}-{Path(jpath).name}")
            lines += summarize(j)
            print("\n".join(summarize(j)), flush=True)
        return lines
    finally:
        cleanup(lab, root)
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="case2,case3")
    ap.add_argument("--faults", default="stop-lb,kill,freeze")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (the local provider creates network namespaces)", file=sys.stderr)
        return 2
    allout = []
    for case in args.cases.split(","):
        allout += one_case(case, args.faults.split(","), args.duration, args.out)
    print("\n" + "\n".join(allout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
