"""Lab lifecycle verbs: up, status, verify, destroy, kubectl, kubeconfig, fetch-k8s."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

from . import kubeconfig as kc
from . import render
from .errors import HalabError
from .state import Lab, find_lab, labs_root
from .table import table
from .topology import Topology

PROVIDERS = click.Choice(["virtualbox", "libvirt", "local"])


def lab_options(fn):
    """--lab NAME and --labs-dir DIR for verbs that act on an existing lab."""
    @click.option("--lab", "lab_name", default=None, metavar="NAME",
                  help="Which lab (default: the only one under the labs folder).")
    @click.option("--labs-dir", default=None, metavar="DIR", envvar="HALAB_LABS_DIR",
                  help="Folder holding labs (default ./.halab).")
    @functools.wraps(fn)
    def wrapper(*args, lab_name=None, labs_dir=None, **kwargs):
        lab = find_lab(lab_name, labs_root(labs_dir))
        return fn(*args, lab=lab, **kwargs)
    return wrapper


def open_lab(lab: Lab, k8s_bin_dir: str | None = None, need_k8s: bool = False):
    """(scenario, topology, provider) of an existing lab.

    `need_k8s`: the caller runs halab's own control plane, so the Kubernetes binaries
    must be found now (a lab made with `up --no-deploy` has none recorded yet); the
    folder found is recorded in the lab state for later verbs.
    """
    from . import providers
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
    from . import scenario
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


def echo_step(msg: str) -> None:
    click.echo(f"  {time.strftime('%H:%M:%S')} {msg}")


def _resolve_k8s(explicit: str | None, required: bool) -> str | None:
    if not required:
        return explicit
    from .k8sbin import find_k8s_binaries
    return str(find_k8s_binaries(explicit).directory)


# ------------------------------------------------------------------ up

def up(scenario_ref: str, provider: str | None, deploy: bool, labs_dir: str | None,
       k8s_bin_dir: str | None, doctor: bool = True) -> Lab:
    from . import providers, scenario
    from .cli import _print_warnings
    s = scenario.load(scenario_ref, provider=provider)
    _print_warnings(s.warnings)
    topo = Topology.of(s)
    if s.provider == "local":
        # before anything else: without root, say so (not "binaries missing"), create nothing
        from .providers.local import require_root
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
        from .doctor import run_doctor
        run_doctor(s, echo=click.echo, fail_on_error=True)

    with lab.lock("up"):
        return _up(lab, s, topo, prov, rec, bin_dir, deploy)


def _compare_with_record(lab: Lab, rec, s):
    """`up` on an existing lab: the YAML against what the lab was built from."""
    from . import scenario
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
    click.echo("halab: the scenario changed since `up` (taken over, nothing to rebuild):")
    click.echo("\n".join(rows))
    return s


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _up(lab: Lab, s, topo, prov, rec, bin_dir, deploy) -> Lab:
    from . import deploy_static, scenario
    click.echo(f"halab: lab {s.name} (Case {s.case}, {s.provider}) in {lab.path}")
    # render: secrets are made once per lab and kept
    keys = lab.path / "keys"
    secrets = render.LabSecrets.load(keys) if (keys / "id_ed25519").exists() else \
        render.LabSecrets.generate(comment=f"halab-{s.name}")
    files = render.render(s, secrets)
    lab.path.mkdir(parents=True, exist_ok=True)
    render.write(files, secrets, lab.path)
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
            from .kubespray import deploy as ks_deploy
            result = ks_deploy(lab, topo, prov, progress=echo_step)
        lab.update(phase="deployed")
        click.echo(f"halab: deployed in {result['seconds']} s")
    click.echo(f"halab: lab {s.name} is up ({time.monotonic() - t0:.1f} s).")
    _summary(lab, topo, deploy)
    return lab


def _summary(lab: Lab, topo: Topology, deployed: bool) -> None:
    click.echo(f"  nodes: {', '.join(f'{n.name} {n.ip}' for n in topo.nodes)}")
    if deployed:
        click.echo(f"  kubeconfig: {lab.kubeconfig} (context {kc.default_context(topo)})")
        click.echo("  next: halab verify | halab kubectl get --raw /readyz | "
                   "halab drill plan | halab drill kill " + topo.control_planes[0].name)
    else:
        click.echo("  next: halab deploy, then halab verify")


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
    for n in topo.nodes:
        m = prov.machine_state(n.name)
        machines[n.name] = m
        services = ""
        if hasattr(prov, "sup"):
            node_svcs = {name: prov.sup.state(n.name, name)
                         for _, name in prov.sup.services(n.name)}
            svc_states.update({f"{n.name}/{k}": v for k, v in node_svcs.items()})
            services = " ".join(f"{k}:{v}" for k, v in node_svcs.items()) or "-"
        rows.append([n.name, n.role.replace("_", "-"), n.ip, m, services])
    deploy = deploy_state_of(rec.deploy)
    health = lab_health(machines, deploy, faults, svc_states)
    click.echo(f"{lab.name}: {health}")
    click.echo(f"  Case {s.case}, provider {s.provider}, deploy: {deploy or 'not deployed'}"
               + (f", faults injected: {', '.join(f'{k}={v}' for k, v in faults.items())}"
                  if faults else ""))
    click.echo(table(["NODE", "ROLE", "ADDRESS", "STATE", "SERVICES"], rows, indent="  "))
    return 0 if health == "Running" else 1


# ------------------------------------------------------------------ verify

def verify(lab: Lab, write: bool = True, wait: float = 0) -> int:
    """One round of checks; with `wait`, rounds every 10 s until all pass or it is up
    (an emulated lab is busy for minutes after a deploy or a boot)."""
    from .verify import run_checks
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
    rows = [[c.name, c.target, "OK" if c.ok else "FAIL", c.detail] for c in checks]
    click.echo(table(["CHECK", "TARGET", "RESULT", "DETAIL"], rows))
    lab.event("verify", ok=not failed, failed=[c.target for c in failed])
    if failed:
        click.echo(f"\n{len(failed)} check(s) failed:")
        for c in failed:
            click.echo(f"  {c.name} {c.target}: {c.detail}" + (f"; {c.advice}" if c.advice else ""))
        return 1
    click.echo(f"\nall {len(checks)} checks passed")
    return 0


# ------------------------------------------------------------------ destroy

def destroy(lab: Lab, force: bool = False) -> None:
    """Remove exactly what the lab's record lists; `force` only skips the question."""
    with lab.lock("destroy"):
        s, topo, prov = open_lab(lab)
        rec = lab.record()
        if not force and sys.stdin.isatty():
            what = f"{len(topo.nodes)} {'VMs' if s.provider != 'local' else 'nodes'}"
            click.confirm(f"destroy lab {lab.name} ({what}, Case {s.case}, {s.provider})?",
                          abort=True)
        if rec.kubeconfig_merged:
            path = Path(rec.kubeconfig_merged_into or kc.user_kubeconfig_path())
            if path.exists():
                kc.write(path, kc.unmerge(kc.load(path), rec.kubeconfig_merged))
                click.echo(f"  removed {len(rec.kubeconfig_merged)} entries from {path}")
            lab.update(kubeconfig_merged=[])
        left = prov.destroy(progress=echo_step)
        if left:
            raise HalabError(f"destroy left: {', '.join(left)}",
                             hint="run `halab destroy` again; the lab folder and its record "
                                  "were kept")
        shutil.rmtree(lab.path)
    click.echo(f"halab: lab {lab.name} destroyed; nothing left behind")


# ------------------------------------------------------------------ kubectl

def kubectl(lab: Lab, args: list[str]) -> int:
    s, topo, prov = open_lab(lab)
    if not lab.kubeconfig.exists():
        raise HalabError(f"lab {lab.name} has no kubeconfig yet", hint="run `halab deploy`")
    from .verify import kubectl_for
    argv = [kubectl_for(prov), f"--kubeconfig={lab.kubeconfig}", *args]
    if s.provider == "local":
        from . import netns
        argv = netns.exec_prefix(prov.ns("client")) + argv
    return subprocess.call(argv)


def register(main: click.Group) -> None:
    @main.command("up")
    @click.argument("scenario_ref", metavar="SCENARIO")
    @click.option("--provider", type=PROVIDERS, default=None,
                  help="Override the scenario's provider (local = network namespaces).")
    @click.option("--no-deploy", is_flag=True, help="Only bring the machines up.")
    @click.option("--skip-doctor", is_flag=True, help="Do not run `halab doctor` first.")
    @click.option("--k8s-bin-dir", default=None, envvar="HALAB_K8S_BIN_DIR",
                  help="Folder with kube-apiserver, kube-controller-manager, kube-scheduler.")
    @click.option("--labs-dir", default=None, envvar="HALAB_LABS_DIR")
    def up_cmd(scenario_ref, provider, no_deploy, skip_doctor, k8s_bin_dir, labs_dir):
        """Create (or continue) a lab: render, machines up, deploy, summary."""
        from .cli import handle_errors
        handle_errors(up)(scenario_ref, provider, not no_deploy, labs_dir, k8s_bin_dir,
                          doctor=not skip_doctor)

    @main.command("status")
    @lab_options
    def status_cmd(lab):
        """Per node state, addresses, services and a one-word lab health."""
        from .cli import handle_errors
        sys.exit(handle_errors(status)(lab))

    @main.command("verify")
    @click.option("--no-write", is_flag=True, help="Skip the ConfigMap write check.")
    @click.option("--wait", type=click.FloatRange(min=0), default=0, metavar="SECONDS",
                  show_default=True,
                  help="Check again every 10 s until every check passes or SECONDS pass.")
    @lab_options
    def verify_cmd(lab, no_write, wait):
        """Check every access path, HAProxy backends, leases and a write."""
        from .cli import handle_errors
        sys.exit(handle_errors(verify)(lab, write=not no_write, wait=wait))

    @main.command("destroy")
    @click.option("--force", "-f", is_flag=True, help="Do not ask first.")
    @lab_options
    def destroy_cmd(lab, force):
        """Remove the lab: machines, processes, namespaces, kubeconfig entries, lab folder."""
        from .cli import handle_errors
        handle_errors(destroy)(lab, force)

    @main.command("kubectl", context_settings={"ignore_unknown_options": True,
                                               "allow_interspersed_args": False})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    @lab_options
    def kubectl_cmd(lab, args):
        """Run kubectl against the lab (for the local provider, from the client namespace)."""
        from .cli import handle_errors
        sys.exit(handle_errors(kubectl)(lab, list(args)))

    @main.command("kubeconfig")
    @click.option("--merge", is_flag=True, help="Merge the lab's contexts into ~/.kube/config.")
    @lab_options
    def kubeconfig_cmd(lab, merge):
        """Print the lab kubeconfig's path, or merge it into your kubeconfig."""
        from .cli import handle_errors

        def run():
            if not lab.kubeconfig.exists():
                raise HalabError(f"lab {lab.name} has no kubeconfig yet", hint="run `halab deploy`")
            if not merge:
                click.echo(str(lab.kubeconfig))
                return
            target = kc.user_kubeconfig_path()
            merged, added = kc.merge(kc.load(target), kc.load(lab.kubeconfig))
            kc.write(target, merged)
            lab.update(kubeconfig_merged=added, kubeconfig_merged_into=str(target))
            click.echo(f"merged {len(added)} entries into {target}; "
                       f"`halab destroy` removes them again")
        handle_errors(run)()

    @main.command("fetch-k8s")
    @click.argument("version")
    @click.option("--dest", default=None, help="Folder (default: halab's cache).")
    def fetch_k8s_cmd(version, dest):
        """Download official Kubernetes server binaries (checksums verified) into the cache."""
        from .cli import handle_errors
        from . import k8sbin

        def run():
            target = k8sbin.fetch_k8s(version, dest)
            click.echo(f"installed Kubernetes {version} binaries into {target}")
        handle_errors(run)()
