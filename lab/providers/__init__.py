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
