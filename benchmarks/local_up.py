#!/usr/bin/env python3
"""How long the local provider takes: `halab up --provider local` to every access path ready,
every node Ready and the workload Running, and `halab destroy`; what the nodes cost.

    sudo python3 benchmarks/local_up.py [--cases case2,case3-ha] [--runs 2] [--idle 30]

For each Case, each run makes a fresh lab (unique name `lpb-<case>`, in a temporary
folder), times `halab up` (it returns once every access path the Case defines answers
/readyz, both leases are held, every node is Ready and halab's workload runs; the
moment each step was done is taken from halab's unbuffered progress lines), checks the
lab with `halab verify --no-write`, then measures the idle lab for `--idle` seconds:
the memory (RSS) of each node's hollow kubelet and kube-proxy, and the CPU every lab
process used, split into the nodes' kubelet and kube-proxy and all the rest, with the
agents running and, alternating in 20 s windows, with them paused (targets:
ready in under 30 s on a 2-core machine; the nodes add at most 10 % CPU to the idle
lab). Then times `halab destroy`. Prints each run and the median per Case.

Cleanup is guaranteed: `halab destroy --force` in `finally`, then SIGKILL of any
process still in the lab's namespaces or folder, then the namespaces themselves.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 30.0
NODES_ADD_TARGET = 10.0


def halab_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "halab"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("halab")
    return [found] if found else [sys.executable, "-m", "lab.cli"]


def env() -> dict:
    e = {**os.environ, "PYTHONUNBUFFERED": "1", "HALAB_DEBUG": ""}
    e.pop("HALAB_LABS_DIR", None)
    return e


def _ours(ns: str, lab: str) -> bool:
    return ns.startswith(f"halab-{lab}-") or ns.startswith(f"halab-{lab}.")


def cleanup(lab: str, root: Path) -> None:
    """destroy --force, then kill by PID and delete namespaces by hand (never others')."""
    if (root / ".halab" / lab).exists():
        subprocess.run(halab_cmd() + ["destroy", "--force"], cwd=root, env=env(),
                       capture_output=True, timeout=120)
    run_netns = Path("/run/netns")
    names = [p.name for p in run_netns.iterdir() if _ours(p.name, lab)] if run_netns.is_dir() else []
    for ns in names:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        for pid in pids.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    folder = str(root / ".halab" / lab)
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if folder in (d / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(d.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    for ns in names:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    for p in Path("/etc/netns").glob(f"halab-{lab}[-.]*"):
        shutil.rmtree(p, ignore_errors=True)


IDLE_S = 30.0
CLK = os.sysconf("SC_CLK_TCK")


def _lab_pids(folder: Path) -> dict[int, str]:
    """PID -> what it is ("kubelet", "kube-proxy" or "other") for the lab's processes."""
    out = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (d / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(folder) not in cmd and "halab-lpb-" not in cmd:
            continue
        argv0 = cmd.split("\0", 1)[0]   # the program itself, not its restart loop's shell
        agent = argv0.endswith("/kubemark")
        kind = ("kubelet" if agent and "--morph=kubelet" in cmd else
                "kube-proxy" if agent and "--morph=proxy" in cmd else "other")
        out[int(d.name)] = kind
    return out


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK
    except (OSError, IndexError):
        return 0.0


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cpu_used(pids: dict[int, str], seconds: float) -> dict[str, float]:
    """CPU seconds each kind of lab process used in `seconds` of wall time."""
    before = {p: _cpu(p) for p in pids}
    time.sleep(seconds)
    used = {"kubelet": 0.0, "kube-proxy": 0.0, "other": 0.0}
    for p, kind in pids.items():
        used[kind] += max(0.0, _cpu(p) - before[p])
    return used


# the node agents are paused for less than node-monitor-grace-period (40 s): the node
# controller does not react yet, so the control plane only misses their requests; the
# windows alternate (running, paused, running, ...) so that a slow drift of the lab's own
# load falls on both sides alike
WINDOW_S = 20.0


def _add(total: dict, part: dict) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0.0) + v


def alternate(seconds: float, switch_on, switch_off, pids) -> tuple[dict, dict, float]:
    """A/B in alternating windows of WINDOW_S (`seconds` of each side): `switch_on()`, one
    window, `switch_off()`, one window, again. Returns the CPU seconds per kind of lab
    process (`pids()` at the start of each window) with the thing on and off, and the
    seconds each side lasted."""
    windows = max(1, round(seconds / WINDOW_S))
    on: dict = {}
    off: dict = {}
    for _ in range(windows):
        switch_on()
        try:
            _add(on, _cpu_used(pids(), WINDOW_S))
        finally:
            switch_off()
        _add(off, _cpu_used(pids(), WINDOW_S))
    return on, off, windows * WINDOW_S


def _signal(pids, sig) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def idle_costs(folder: Path, seconds: float) -> dict:
    """Memory of the node agents and what the nodes cost the idle lab, A/B: the lab's CPU
    with the agents running and with them paused (SIGSTOP, shorter than the grace
    period), in alternating windows. The nodes' cost is their own CPU plus what the rest
    of the lab (API servers, etcd, controllers) spends serving them: `other` running
    minus paused."""
    pids = _lab_pids(folder)
    rss = {k: [_rss_mb(p) for p, kind in pids.items() if kind == k]
           for k in ("kubelet", "kube-proxy")}
    agents = [p for p, kind in pids.items() if kind != "other"]
    try:
        on, off, span = alternate(seconds, lambda: _signal(agents, signal.SIGCONT),
                                  lambda: _signal(agents, signal.SIGSTOP), lambda: pids)
    finally:
        _signal(agents, signal.SIGCONT)
    own = (on["kubelet"] + on["kube-proxy"]) / span
    rest_on, rest_off = on["other"] / span, off["other"] / span
    serving = max(0.0, rest_on - rest_off)
    return {"idle_s": span,
            "kubelet_rss_mb": statistics.median(rss["kubelet"]) if rss["kubelet"] else 0.0,
            "proxy_rss_mb": statistics.median(rss["kube-proxy"]) if rss["kube-proxy"] else 0.0,
            "node_agents": len(rss["kubelet"]),
            "idle_cpu_pct": 100 * sum(on.values()) / span, "nodes_cpu_pct": 100 * own,
            "serving_cpu_pct": 100 * serving, "without_nodes_pct": 100 * rest_off,
            "nodes_add_pct": 100 * (own + serving) / rest_off if rest_off else 0.0}


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children."""
    total = _cpu(pid)
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    return total + sum(_tree_cpu(int(k)) for k in kids)


def lanes_costs(root: Path, lab_name: str, seconds: float) -> dict:
    """What a drill's node lanes cost the idle lab: the long-lived watches the drill keeps
    (lab.drill.engine.watch_plan: per access path one on the nodes' Leases, one on the
    Nodes, one on the pods) started as a drill starts them, A/B against the same lab
    without them (`alternate`): their own CPU and what the control plane spends serving
    them (a watch's events are encoded and sent by the API servers)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from lab.app.lab import open_lab
    from lab.drill import engine
    from lab.state import Lab
    lab = Lab(root / ".halab" / lab_name)
    _, topo, provider = open_lab(lab)
    specs = engine.watch_plan(lab, topo, provider, f"{topo.name}-{engine.observer(topo, [])}",
                              engine.Settings().fitted(provider))
    running: list = []
    tally = {"own": 0.0, "records": 0}

    def start() -> None:
        running[:] = [provider.popen(sp.node, sp.argv, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
                      for sp in specs]
        time.sleep(3.0)           # their first LIST, as in a drill's warm-up
        tally["own"] -= sum(_tree_cpu(p.pid) for p in running)

    def stop() -> None:
        tally["own"] += sum(_tree_cpu(p.pid) for p in running)
        for p in running:
            p.kill()
        for p in running:
            tally["records"] += p.communicate(timeout=10)[0].count(b"\n")

    def others() -> dict:          # the lab without the watchers themselves
        mine = {p.pid for p in running if p.poll() is None}
        return {pid: kind for pid, kind in _lab_pids(lab.path).items() if pid not in mine}

    on, off, span = alternate(seconds, start, stop, others)
    rest_on, rest_off = sum(on.values()) / span, sum(off.values()) / span
    serving = max(0.0, rest_on - rest_off)
    own = tally["own"]
    records = tally["records"]
    return {"watches": len(specs), "watch_records": records,
            "lanes_cpu_pct": 100 * own / span, "lanes_serving_pct": 100 * serving,
            "lab_pct": 100 * rest_off,
            "lanes_add_pct": 100 * (own / span + serving) / rest_off if rest_off else 0.0}


def one_run(case: str) -> dict:
    lab = "lpb-" + case.replace("-", "")
    root = Path(tempfile.mkdtemp(prefix=f"halab-bench-{lab}-"))
    scen = root / f"{lab}.yaml"
    scen.write_text(f"extends: {case}\nname: {lab}\n")
    result = {"case": case}
    try:
        t0 = time.monotonic()
        proc = subprocess.Popen(halab_cmd() + ["up", str(scen), "--provider", "local"],
                                cwd=root, env=env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        paths, lines, stamps = {}, [], []
        for line in proc.stdout:
            lines.append(line)
            stamps.append((line, time.monotonic() - t0))
            m = re.search(r"ready: (\S+)", line)
            if m:
                paths[m.group(1)] = time.monotonic() - t0
        rc = proc.wait(timeout=600)
        result["up_s"] = time.monotonic() - t0
        if rc != 0:
            raise RuntimeError(f"halab up {case} failed (exit {rc}):\n{''.join(lines[-20:])}")
        result["nodes_ready_s"] = next((t for l, t in stamps if "nodes Ready" in l),
                                       float("nan"))
        result["workload_s"] = next((t for l, t in stamps if "pods Running" in l), float("nan"))
        result["first_path_s"] = min(paths.values()) if paths else float("nan")
        result["last_path_s"] = max(paths.values()) if paths else float("nan")
        result["paths"] = len(paths)
        v = subprocess.run(halab_cmd() + ["verify", "--no-write"], cwd=root, env=env(),
                           capture_output=True, text=True, timeout=180)
        if v.returncode != 0:
            raise RuntimeError(f"halab verify {case} failed after up:\n{v.stdout}{v.stderr}")
        if IDLE_S:
            result.update(idle_costs(root / ".halab" / lab, IDLE_S))
            result.update(lanes_costs(root, lab, IDLE_S))
        t1 = time.monotonic()
        d = subprocess.run(halab_cmd() + ["destroy"], cwd=root, env=env(),
                           capture_output=True, text=True, timeout=180)
        result["destroy_s"] = time.monotonic() - t1
        if d.returncode != 0:
            raise RuntimeError(f"halab destroy {case} failed:\n{d.stdout}{d.stderr}")
        return result
    finally:
        cleanup(lab, root)
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    global IDLE_S
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="case2,case3-ha")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--idle", type=float, default=IDLE_S,
                    help="seconds to measure the idle lab's CPU and memory (0: skip)")
    args = ap.parse_args()
    IDLE_S = args.idle
    if os.geteuid() != 0:
        print("needs root (the local provider creates network namespaces)", file=sys.stderr)
        return 2
    print(f"halab local provider: {os.cpu_count()} CPUs, {args.runs} run(s) per Case, "
          f"target ready < {TARGET_S:.0f} s")
    summary = []
    for case in args.cases.split(","):
        runs = []
        for i in range(1, args.runs + 1):
            r = one_run(case)
            runs.append(r)
            print(f"  {case:<9} run {i}: ready {r['up_s']:5.1f} s (paths ready from "
                  f"{r['first_path_s']:.1f} s to {r['last_path_s']:.1f} s, {r['paths']} paths; "
                  f"nodes Ready at {r['nodes_ready_s']:.1f} s, workload Running at "
                  f"{r['workload_s']:.1f} s); destroy {r['destroy_s']:4.1f} s", flush=True)
            if "idle_cpu_pct" in r:
                print(f"  {'':<9}        idle {r['idle_s']:g} s, in {WINDOW_S:g} s windows "
                      f"alternating with the agents paused: lab {r['idle_cpu_pct']:.1f} % of a "
                      f"core; the {r['node_agents']} nodes' kubelet + kube-proxy "
                      f"{r['nodes_cpu_pct']:.1f} %, the control plane serving them "
                      f"{r['serving_cpu_pct']:.1f} % (agents paused: lab "
                      f"{r['without_nodes_pct']:.1f} %): the nodes add "
                      f"{r['nodes_add_pct']:.0f} % (target {NODES_ADD_TARGET:.0f} %); "
                      f"RSS per kubelet {r['kubelet_rss_mb']:.0f} MB, per kube-proxy "
                      f"{r['proxy_rss_mb']:.0f} MB", flush=True)
                print(f"  {'':<9}        a drill's node lanes ({r['watches']} long-lived "
                      f"watches, {r['watch_records']} records), A/B the same way: their own "
                      f"{r['lanes_cpu_pct']:.1f} % of a core, the control plane serving them "
                      f"{r['lanes_serving_pct']:.1f} % (without them: lab {r['lab_pct']:.1f} %):"
                      f" they add {r['lanes_add_pct']:.0f} % (target "
                      f"{NODES_ADD_TARGET:.0f} %)", flush=True)
        summary.append((case, statistics.median(r["up_s"] for r in runs),
                        statistics.median(r["destroy_s"] for r in runs),
                        statistics.median(r["nodes_add_pct"] for r in runs)
                        if all("nodes_add_pct" in r for r in runs) else None,
                        statistics.median(r["lanes_add_pct"] for r in runs)
                        if all("lanes_add_pct" in r for r in runs) else None))
    print("\nmedian:")
    ok = True
    for case, up_s, destroy_s, add, lanes in summary:
        verdict = "OK" if up_s < TARGET_S else f"over the {TARGET_S:.0f} s target"
        ok &= up_s < TARGET_S
        idle = ""
        if add is not None:
            idle = (f"; the nodes add {add:.1f} % to the idle lab ("
                    + ("OK" if add <= NODES_ADD_TARGET else
                       f"over the {NODES_ADD_TARGET:.0f} % target") + ")")
        if lanes is not None:
            idle += (f"; a drill's node lanes add {lanes:.1f} % ("
                     + ("OK" if lanes <= NODES_ADD_TARGET else
                        f"over the {NODES_ADD_TARGET:.0f} % target") + ")")
        print(f"  {case:<9} up to every path ready {up_s:5.1f} s ({verdict}); "
              f"destroy {destroy_s:4.1f} s{idle}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
