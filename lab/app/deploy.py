"""`halab deploy`: (re)deploy Kubernetes on an existing lab, then verify it.

kubespray labs run kubespray on admin-lb (lab.kubespray); `deployer: static`
labs (and every local-provider lab) start halab's own control plane
(lab.deploy_static). A deploy that worked is followed by `halab verify`'s checks.
"""
from __future__ import annotations

import time

from lab.deploy import kubeconfig as kc
from lab.app import echo, echo_step
from lab.app.lab import open_lab, report_checks
from lab.errors import HalabError
from lab.state import Lab

KUBESPRAY_ONLY = ("--reset", "--limit", "--tags", "--reset-only")


def run_deploy(lab: Lab, reset: bool = False, limit: str | None = None, tags: str | None = None,
               verify: bool = True, k8s_bin_dir: str | None = None,
               reset_only: bool = False) -> int:
    """Deploy, record the result in the lab state, verify; returns the exit code."""
    if reset and reset_only:
        raise HalabError("--reset and --reset-only exclude each other",
                         hint="--reset wipes and deploys again; --reset-only only wipes")
    with lab.lock("deploy"):
        return _run_deploy(lab, reset, limit, tags, verify, k8s_bin_dir, reset_only)


def _run_deploy(lab: Lab, reset, limit, tags, verify, k8s_bin_dir, reset_only=False) -> int:
    from lab.deploy import static as deploy_static, kubespray
    s, topo, prov = open_lab(lab, k8s_bin_dir)
    if not s.uses_kubespray:
        # halab's own control plane: its binaries must be found now (after
        # `halab up --no-deploy` none are recorded yet)
        s, topo, prov = open_lab(lab, k8s_bin_dir, need_k8s=True)
        if s.provider == "local":
            prov.preflight(need_k8s=True)
    if s.uses_kubespray:
        echo(f"halab: deploying lab {lab.name} (Case {s.case}) with kubespray "
                   f"{s.kubespray.version}")
        result = kubespray.deploy(lab, topo, prov, progress=echo_step, limit=limit, tags=tags,
                                  reset=reset, reset_only=reset_only)
        if reset_only:
            lab.update(phase="reset")
            echo(f"halab: kubespray reset.yml wiped the cluster in {result['seconds']} s; the "
                 f"machines stay. `halab deploy --lab {lab.name}` builds it again")
            return 0
    else:
        given = [flag for flag, value in zip(KUBESPRAY_ONLY, (reset, limit, tags, reset_only))
                 if value]
        if given:
            raise HalabError(f"{', '.join(given)} only apply to kubespray; lab {lab.name} uses "
                             f"the static deployer ({s.provider} provider)",
                             hint=f"run `halab deploy --lab {lab.name}` without them")
        echo(f"halab: deploying lab {lab.name} (Case {s.case}) with halab's static control plane")
        result = deploy_static.deploy(lab, topo, prov, progress=echo_step)
    lab.update(phase="deployed")
    echo(f"halab: deployed in {result['seconds']} s")
    if lab.kubeconfig.exists():
        echo(f"  kubeconfig: {lab.kubeconfig} (context {kc.default_context(topo)}); "
                   "`halab kubeconfig --merge` adds it to ~/.kube/config")
    if not verify:
        return 0
    return verify_after_deploy(lab, topo, prov)


def verify_after_deploy(lab: Lab, topo, provider) -> int:
    """`halab verify`'s checks, when the provider can run them; 1 if any failed."""
    from lab.deploy.verify import run_checks
    echo("halab: verifying every access path")
    try:
        checks = run_checks(lab, topo, provider)
    except HalabError as exc:
        echo(f"  verify could not run: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
        lab.update(verify={"ok": False, "at": time.time(), "error": exc.message})
        return 1
    return report_checks(lab, checks, "the deploy finished, but")
