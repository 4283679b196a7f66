"""Providers turn a topology into machines: `local` (network namespaces) or Vagrant VMs."""
from __future__ import annotations

from lab.state import Lab
from lab.model.topology import Topology


def for_lab(lab: Lab, topo: Topology, k8s_bin_dir: str | None = None):
    """The provider object for a lab's scenario."""
    if topo.scenario.provider == "local":
        from lab.providers.local.provider import LocalProvider
        return LocalProvider(lab, topo, k8s_bin_dir)
    from lab.providers.vagrant.provider import VagrantProvider
    return VagrantProvider(lab, topo, k8s_bin_dir)


def destroy_recorded(lab: Lab, progress=lambda m: None) -> list[str]:
    """Remove what a lab's record lists without opening its scenario (a record an
    older halab wrote may no longer pass today's checks; its lab must still go)."""
    rec = lab.record()
    if rec.provider == "local":
        from lab.providers.local.provider import destroy_namespaces
        return destroy_namespaces(rec.names("namespace"), progress)
    from lab.providers.vagrant.provider import destroy_vms
    return destroy_vms(lab, rec.provider, rec.names("libvirt_network"), progress)
