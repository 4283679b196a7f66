"""Deploy halab's own control plane (the `static` deployer) on any provider.

The provider supplies where files go (`layout`), how programs start (`start`) and
how commands run on a node (`run`); this module decides what runs. The local
provider and VMs share it.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from lab.deploy import controlplane, kubeconfig, pki as pkilib
from lab.errors import HalabError
from lab.state import Lab
from lab.render import LabSecrets
from lab.model.topology import Topology


def load_or_create_pki(lab: Lab, topo: Topology) -> dict:
    """The lab's certificates: generated once, kept in `<lab>/pki/`."""
    folder = lab.path / "pki"
    if folder.is_dir():
        return {str(p.relative_to(folder)): p.read_bytes()
                for p in sorted(folder.rglob("*")) if p.is_file()}
    files = pkilib.lab_pki(topo)
    # the whole PKI or none: written beside, then renamed in one step (a crash midway
    # must not leave a partial PKI that every later deploy would reuse)
    lab.path.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pki.", dir=lab.path))
    try:
        pkilib.write_pki(files, tmp)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files


def admin_kubeconfig(topo: Topology, pki: dict, current: str | None = None) -> dict:
    return kubeconfig.build(topo, pki["ca.crt"], pki["admin.crt"], pki["admin.key"],
                            current=current or kubeconfig.default_context(topo))


def write_kubeconfigs(lab: Lab, topo: Topology, pki: dict, provider) -> None:
    """The lab kubeconfig on the host; on each worker the one its kubelet path uses."""
    kubeconfig.write(lab.kubeconfig, admin_kubeconfig(topo, pki))
    kubeconfig.put_worker_kubeconfigs(
        topo, provider, pki["ca.crt"], (pki["prober.crt"], pki["prober.key"]),
        {w.name: (pki[f"nodes/{w.name}.crt"], pki[f"nodes/{w.name}.key"]) for w in topo.workers})


# a role of its own, not the aggregated `view`: that one is empty until the
# controller-manager's aggregation controller has filled it (seconds after a deploy)
PROBER_BINDING = """apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: halab-prober
  labels: {app.kubernetes.io/managed-by: halab}
rules:
- apiGroups: [""]
  resources: [namespaces, nodes, pods, services, endpoints, configmaps]
  verbs: [get, list, watch]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: halab-prober
  labels: {app.kubernetes.io/managed-by: halab}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: halab-prober}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: "%s"}
"""


def apply_manifest(lab: Lab, provider, text: str, what: str, tries: int = 6,
                   pause: float = 5.0) -> None:
    """`kubectl apply -f -` from the student's laptop, a few tries: an emulated lab's API
    can be slow for a while after it first answers, and a new namespace has no
    ServiceAccount until the controller-manager has made one."""
    for attempt in range(tries):
        r = provider.run("client", [provider.kubectl, f"--kubeconfig={lab.kubeconfig}",
                                    "--request-timeout=30s", "apply", "-f", "-"],
                         timeout=90, input=text)
        if r.returncode == 0:
            return
        time.sleep(pause)
    raise HalabError(f"could not apply {what}: {(r.stderr or r.stdout).strip()[-300:]}",
                     hint="run `halab deploy` again")


def bind_prober(lab: Lab, provider, tries: int = 6) -> None:
    """halab's probes on nodes may read, nothing else."""
    apply_manifest(lab, provider, PROBER_BINDING % pkilib.PROBER_GROUP,
                   "halab's prober its read-only role", tries)


def deploy(lab: Lab, topo: Topology, provider, progress=lambda m: None,
           timeout: float | None = None) -> dict:
    """Start every program of the plan and wait until every access path answers.

    `timeout` defaults to the provider's `ready_timeout` (emulated VMs need minutes).
    """
    timeout = timeout or provider.ready_timeout
    secrets = LabSecrets.load(lab.path / "keys")
    t0 = time.monotonic()
    with lab.step("deploy"):
        pki = load_or_create_pki(lab, topo)
        if "kube-proxy.crt" not in pki:
            raise HalabError(f"lab {lab.name}'s certificates were made by an older halab and "
                             "lack the nodes' kube-proxy identity",
                             hint="halab destroy, then halab up again")
        specs = controlplane.plan_for(provider, topo, pki, secrets)
        nodes = [spec.node for spec in specs if spec.name == "kubelet"]
        taken = provider.ports_taken(specs)
        if taken:
            raise HalabError("; ".join(taken),
                             hint="stop that process, or `halab destroy` and `halab up` again")
        lab.update(deploy={"state": "starting", "deployer": "static", "pid": os.getpid()})
        provider.start(specs, progress)
        write_kubeconfigs(lab, topo, pki, provider)
        progress("waiting for every access path to answer /readyz")
        from lab.deploy import verify
        ready = verify.wait_ready(lab, topo, provider, timeout=timeout, progress=progress)
        bind_prober(lab, provider)
        times: dict = {}
        replicas = verify.workload_replicas(topo) if nodes else 0
        if nodes:
            if replicas:
                apply_manifest(lab, provider, verify.workload_manifest(topo, replicas),
                               f"the workload {verify.WORKLOAD_NAMESPACE}/{verify.WORKLOAD}")
            else:
                progress("no workers: no workload (the control planes are tainted NoSchedule)")
            progress(f"waiting for {len(nodes)} nodes to be Ready")
            times = verify.wait_nodes(lab, topo, provider, nodes, replicas, timeout, progress)
        else:
            progress("no kubemark program beside the Kubernetes binaries: this lab has no "
                     "nodes (kubelet, kube-proxy); `bash tools/build-k8s.sh` builds it")
    seconds = round(time.monotonic() - t0, 1)
    lab.update(deploy={"state": "deployed", "deployer": "static", "seconds": seconds,
                       "ready_paths": ready, "nodes": nodes, "workload_replicas": replicas,
                       **times})
    return {"seconds": seconds}
