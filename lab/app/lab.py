"""A lab's lifecycle: open it from its record, up, status, verify, destroy, kubectl, kubeconfig."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from lab.deploy import kubeconfig as kc
from lab import render
from lab.app import echo, echo_step, print_warnings
from lab import providers
from lab.errors import HalabError, ScenarioError
from lab.state import Lab, labs_root
from lab.table import table
from lab.model.scenario import UPSTREAM_TOOLS
from lab.model.topology import Topology

def open_lab(lab: Lab, k8s_bin_dir: str | None = None, need_k8s: bool = False):
    """(scenario, topology, provider) of an existing lab.

    `need_k8s`: the caller runs halab's own control plane, so the Kubernetes binaries
    must be found now (a lab made with `up --no-deploy` has none recorded yet); the
    folder found is recorded in the lab state for later verbs.
    """
    rec = lab.record()
    s = scenario_of(lab, rec)
    topo = Topology.of(s)
    bin_dir = k8s_bin_dir or rec.k8s_bin_dir
    if need_k8s:
        bin_dir = _resolve_k8s(bin_dir, True)
        if bin_dir != rec.k8s_bin_dir:
            lab.update(k8s_bin_dir=bin_dir)
    return s, topo, providers.for_lab(lab, topo, bin_dir)


def scenario_of(lab: Lab, rec=None):
    """The scenario the lab was built from, out of its record (never the YAML file)."""
    from lab.model import scenario
    rec = rec or lab.record()
    if rec.scenario:
        return scenario.from_record(rec.scenario, rec.scenario_file or str(lab.state_path))
    if not rec.scenario_file:
        raise HalabError(f"the record of lab {lab.name} ({lab.state_path}) holds no scenario",
                         hint="restore the file from a backup; `halab up SCENARIO` again "
                              "records it anew")
    # a lab made by an earlier halab: its record names the file only; record it now
    s = scenario.load(rec.scenario_file, provider=rec.provider or None)
    lab.update(scenario=scenario.as_record(s))
    return s


def _resolve_k8s(explicit: str | None, required: bool) -> str | None:
    if not required:
        return explicit
    from lab.host.k8sbin import find_k8s_binaries
    return str(find_k8s_binaries(explicit).directory)


# ------------------------------------------------------------------ up

def up(scenario_ref: str, provider: str | None, deploy: bool, labs_dir: str | None,
       k8s_bin_dir: str | None, doctor: bool = True) -> Lab:
    from lab.model import scenario
    s = scenario.load(scenario_ref, provider=provider)
    print_warnings(s.warnings)
    topo = Topology.of(s)
    if s.provider == "local":
        # before anything else: without root, say so (not "binaries missing"), create nothing
        from lab.host.doctor import require_root
        require_root()
    lab = Lab(labs_root(labs_dir) / s.name)
    rec = lab.record()
    if lab.exists():
        s = _compare_with_record(lab, rec, s)
    needs_k8s = s.provider == "local" or s.deployer == "static"
    bin_dir = _resolve_k8s(k8s_bin_dir or rec.k8s_bin_dir, needs_k8s and deploy)
    prov = providers.for_lab(lab, topo, bin_dir)
    if s.provider == "local":
        prov.preflight(need_k8s=deploy)
    elif doctor:
        from lab.host.doctor import run_doctor
        run_doctor(s, echo=echo, fail_on_error=True)

    with lab.lock("up"):
        return _up(lab, s, topo, prov, rec, bin_dir, deploy)


def _compare_with_record(lab: Lab, rec, s):
    """`up` on an existing lab: the YAML against what the lab was built from."""
    from lab.model import scenario
    if not rec.scenario:
        return s
    diff = scenario.changes(rec.scenario, scenario.as_record(s))
    if not diff:
        return s
    rows = [f"  {field}: {_short(old)} -> {_short(new)}" for field, old, new in diff]
    built = [f for f, _, _ in diff if f.split(".")[0] not in scenario.LIVE_FIELDS]
    if built:
        raise HalabError(f"lab {lab.name} was built from another version of {s.source}; "
                         f"changed since:\n" + "\n".join(rows), code=2,
                         hint=f"undo the change to continue the lab as built, or "
                              f"`halab destroy --lab {lab.name}` and `halab up` again to build "
                              f"the new one")
    echo("halab: the scenario changed since `up` (taken over, nothing to rebuild):")
    echo("\n".join(rows))
    return s


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _up(lab: Lab, s, topo, prov, rec, bin_dir, deploy) -> Lab:
    from lab.deploy import static as deploy_static
    from lab.model import scenario
    echo(f"halab: lab {s.name} (Case {s.case}, {s.provider}) in {lab.path}")
    # render: secrets are made once per lab and kept
    keys = lab.path / "keys"
    secrets = render.LabSecrets.load(keys) if (keys / "id_ed25519").exists() else \
        render.LabSecrets.generate(comment=f"halab-{s.name}")
    files = render.render(s, secrets)
    from lab.host.wheels import wheels_for
    wheels = wheels_for(s, progress=echo_step)   # a failed download leaves no lab folder
    lab.path.mkdir(parents=True, exist_ok=True)
    render.write(files, secrets, lab.path)
    if render.write_kubespray_source(s, lab.path):
        echo(f"  kubespray {s.kubespray.source} packed for the runner ({render.KUBESPRAY_UPLOAD})")
    for line in render.write_uploads(s, lab.path, wheels):
        echo(f"  {line}")
    missing = [t for t in s.admin_tools if t in UPSTREAM_TOOLS and t not in render.uploaded_tools(s)]
    if missing and s.provider != "local":
        echo(f"  admin tools {', '.join(missing)}: upstream programs in no OS repository; "
             "admin-lb gets them when the scenario's `admin_tools_dir:` names a folder "
             "holding them (Linux x86-64)")
    lab.update(scenario_file=str(Path(s.source).resolve()), scenario=scenario.as_record(s),
               provider=s.provider, name=s.name, case=s.case, deployer=s.deployer,
               k8s_bin_dir=bin_dir, created_at=rec.created_at or time.time(),
               phase="rendered" if rec.phase in ("", "rendered") else rec.phase)
    lab.event("rendered", files=len(files))
    t0 = time.monotonic()
    with lab.step("up"):
        prov.up(progress=echo_step)
    lab.update(phase="up")
    if deploy:
        if s.deployer == "static":
            result = deploy_static.deploy(lab, topo, prov, progress=echo_step)
        else:
            from lab.deploy.kubespray import deploy as ks_deploy
            result = ks_deploy(lab, topo, prov, progress=echo_step)
        lab.update(phase="deployed")
        echo(f"halab: deployed in {result['seconds']} s")
    echo(f"halab: lab {s.name} is up ({time.monotonic() - t0:.1f} s).")
    _summary(lab, topo, deploy)
    return lab


def _summary(lab: Lab, topo: Topology, deployed: bool) -> None:
    echo(f"  nodes: {', '.join(f'{n.name} {n.ip}' for n in topo.nodes)}")
    if deployed:
        echo(f"  kubeconfig: {lab.kubeconfig} (context {kc.default_context(topo)})")
        echo("  next: halab verify | halab kubectl get --raw /readyz | "
                   "halab drill plan | halab drill kill " + topo.control_planes[0].name)
    else:
        echo("  next: halab deploy, then halab verify")


# ------------------------------------------------------------------ status

def lab_health(machine_states: dict, deploy_state: str | None, faults: dict,
               service_states: dict | None = None) -> str:
    """One word, like minikube: Running, Degraded, Stopped, Deploying, Created.

    `service_states` ({"node/name": "running"|"stopped"|...}): a deployed lab with a
    dead or crash-looping service is Degraded, even when every machine runs.
    """
    values = list(machine_states.values())
    if not values or all(v in ("not_created",) for v in values):
        return "Absent"
    if all(v in ("poweroff", "not_created", "shutoff") for v in values):
        return "Stopped"
    if faults or any(v != "running" for v in values):
        return "Degraded"
    if deploy_state == "deployed" and any(v != "running" for v in (service_states or {}).values()):
        return "Degraded"
    if deploy_state in ("failed", "partial"):
        return "Failed"
    if deploy_state == "interrupted":
        return "Interrupted"
    if deploy_state != "deployed":
        return "Created" if not deploy_state else "Deploying"
    return "Running"


def deploy_state_of(deploy: dict) -> str | None:
    """The deploy state, with a deploy whose halab process died counted as interrupted."""
    word = deploy.get("state")
    pid = deploy.get("pid")
    if word in ("starting", "deploying") and pid and not _alive(pid):
        return "interrupted"
    return word


def _alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def status(lab: Lab) -> int:
    s, topo, prov = open_lab(lab)
    rec = lab.record()
    faults = rec.faults
    rows, machines, svc_states = [], {}, {}
    k8s = _k8s_nodes(lab, topo, prov, rec)
    for n in topo.nodes:
        m = prov.machine_state(n.name)
        machines[n.name] = m
        services = ""
        if prov.capabilities.supervised:
            node_svcs = prov.service_states(n.name)
            svc_states.update({f"{n.name}/{k}": v for k, v in node_svcs.items()})
            services = " ".join(f"{k}:{v}" for k, v in node_svcs.items()) or "-"
        rows.append([n.name, n.role.replace("_", "-"), n.ip, m, k8s.get(n.name, "-"),
                     services])
    deploy = deploy_state_of(rec.deploy)
    health = lab_health(machines, deploy, faults, svc_states)
    echo(f"{lab.name}: {health}")
    echo(f"  Case {s.case}, provider {s.provider}, deploy: {deploy or 'not deployed'}"
               + (f", faults injected: {', '.join(f'{k}={v}' for k, v in faults.items())}"
                  if faults else ""))
    echo(table(["NODE", "ROLE", "ADDRESS", "STATE", "KUBERNETES", "SERVICES"], rows,
               indent="  "))
    return 0 if health == "Running" else 1


def _k8s_nodes(lab: Lab, topo, prov, rec) -> dict[str, str]:
    """Each cluster node's condition as the API tells it (Ready, NotReady, absent), or
    "?" when the API does not answer; {} before a deploy."""
    from lab.deploy.verify import cluster_nodes, expected_nodes
    want = expected_nodes(lab, topo) if rec.deploy.get("state") == "deployed" else []
    if not want:
        return {}
    seen = cluster_nodes(lab, topo, prov, "3s", attempts=1)
    if seen is None:
        return {n: "?" for n in want}
    out = {}
    for n in want:
        info = seen.get(n)
        out[n] = "absent" if info is None else ("Ready" if info["ready"] else "NotReady")
    return out


# ------------------------------------------------------------------ verify

def verify(lab: Lab, write: bool = True, wait: float = 0) -> int:
    """One round of checks; with `wait`, rounds every 10 s until all pass or it is up
    (an emulated lab is busy for minutes after a deploy or a boot)."""
    from lab.deploy.verify import run_checks
    s, topo, prov = open_lab(lab)
    deadline = time.monotonic() + wait
    while True:
        checks = run_checks(lab, topo, prov, write=write)
        failed = [c for c in checks if not c.ok]
        left = deadline - time.monotonic()
        if not failed or left <= 0:
            break
        echo_step(f"{len(failed)} check(s) failed ({', '.join(c.target for c in failed)}); "
                  f"checking again, {left:.0f} s left")
        time.sleep(min(10.0, max(left, 0.1)))
    return report_checks(lab, checks)


def report_checks(lab: Lab, checks, failed_words: str = "") -> int:
    """The table of checks, each failure with its advice, recorded in the lab; 1 if any
    failed. `failed_words` leads the failure list (`the deploy finished, but`)."""
    echo(table(["CHECK", "TARGET", "RESULT", "DETAIL"],
               [[c.name, c.target, "OK" if c.ok else "FAIL", c.detail] for c in checks]))
    failed = [c for c in checks if not c.ok]
    lab.update(verify={"ok": not failed, "at": time.time(),
                       "failed": [f"{c.name} {c.target}" for c in failed]})
    lab.event("verify", ok=not failed, failed=[c.target for c in failed])
    if failed:
        echo(f"\n{failed_words + ' ' if failed_words else ''}{len(failed)} check(s) failed:")
        for c in failed:
            echo(f"  {c.name} {c.target}: {c.detail}" + (f"; {c.advice}" if c.advice else ""))
        return 1
    echo(f"\nall {len(checks)} checks passed")
    return 0


# ------------------------------------------------------------------ destroy

def destroy(lab: Lab, confirm=None) -> None:
    """Remove exactly what the lab's record lists. `confirm(question)` may say no
    (the CLI asks at a terminal unless --force)."""
    with lab.lock("destroy"):
        rec = lab.record()
        try:
            s, topo, prov = open_lab(lab)
            what = f"{len(topo.nodes)} {'VMs' if s.provider != 'local' else 'nodes'}, " \
                   f"Case {s.case}, {s.provider}"
        except ScenarioError as exc:     # a record an older halab wrote
            prov = None
            what = rec.provider or "unknown provider"
            echo(f"  warning: the lab's recorded scenario no longer passes halab's checks "
                 f"({exc.problems[0].line()}); removing what the record lists", err=True)
        if confirm and not confirm(f"destroy lab {lab.name} ({what})?"):
            echo("halab: nothing was destroyed")
            return
        if rec.kubeconfig_merged:
            path = Path(rec.kubeconfig_merged_into or kc.user_kubeconfig_path())
            try:
                if path.exists():
                    kc.write(path, kc.unmerge(kc.load(path), rec.kubeconfig_merged))
                    echo(f"  removed {len(rec.kubeconfig_merged)} entries from {path}")
            except (HalabError, OSError) as exc:   # never block the rest of destroy
                echo(f"  warning: could not take the lab's entries out of {path}: "
                     f"{getattr(exc, 'message', exc)}; remove the contexts "
                     f"{', '.join(n.split('/', 1)[1] for n in rec.kubeconfig_merged if n.startswith('contexts/'))}"
                     " by hand", err=True)
            lab.update(kubeconfig_merged=[])
        left = prov.destroy(progress=echo_step) if prov else \
            providers.destroy_recorded(lab, progress=echo_step)
        if left:
            raise HalabError(f"destroy left: {', '.join(left)}",
                             hint="run `halab destroy` again; the lab folder and its record "
                                  "were kept")
        shutil.rmtree(lab.path)
    echo(f"halab: lab {lab.name} destroyed; nothing left behind")


# ------------------------------------------------------------------ kubectl

def kubectl(lab: Lab, args: list[str]) -> int:
    s, topo, prov = open_lab(lab)
    if not lab.kubeconfig.exists():
        raise HalabError(f"lab {lab.name} has no kubeconfig yet", hint="run `halab deploy`")
    return subprocess.call(prov.client_argv([prov.kubectl, f"--kubeconfig={lab.kubeconfig}",
                                             *args]))


def merge_kubeconfig(lab: Lab) -> None:
    """The lab's contexts into ~/.kube/config; `destroy` takes them out again."""
    if not lab.kubeconfig.exists():
        raise HalabError(f"lab {lab.name} has no kubeconfig yet", hint="run `halab deploy`")
    target = kc.user_kubeconfig_path()
    merged, added = kc.merge(kc.load(target), kc.load(lab.kubeconfig))
    kc.write(target, merged)
    lab.update(kubeconfig_merged=added, kubeconfig_merged_into=str(target))
    echo(f"merged {len(added)} entries into {target}; `halab destroy` removes them again")


# ------------------------------------------------------------------ machines

def shell_argv(lab: Lab, node: str, command: list[str]) -> list[str]:
    """The argv of `halab ssh NODE [-- CMD]` on the lab's provider."""
    s, topo, prov = open_lab(lab)
    names = [n.name for n in topo.nodes]
    if node not in names:
        raise HalabError(f"lab {lab.name} has no node {node!r}", hint=f"nodes: {', '.join(names)}")
    return prov.shell_argv(node, command)


def halt(lab: Lab, node: str | None = None) -> None:
    s, topo, prov = open_lab(lab)
    with lab.lock("halt"):
        echo(prov.halt(node))
        lab.event("halt", node=node)


def provision(lab: Lab, node: str | None = None) -> None:
    s, topo, prov = open_lab(lab)
    with lab.lock("provision"):
        prov.provision(node, progress=echo)
        lab.event("provision", node=node)
