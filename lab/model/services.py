"""What runs where, as data: a node's file layout and one long-running service.

The deployers decide what runs (`lab.deploy.controlplane` builds ServiceSpecs); the
providers decide how (a supervised process locally, a systemd unit on a VM). Both
sides meet in these types, so neither imports the other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath

# the stream module Debian's nginx-light loads from (the workers' API proxy needs it)
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
# HAProxy and keepalived run as the distribution's services, set up by admin-lb.sh
PROVISIONED_SERVICES = ("haproxy", "keepalived")


@dataclass(frozen=True)
class Layout:
    """Where things are on one node (a folder of the lab dir locally, /var/lib/halab on a VM)."""

    base: str                 # node's own folder: pki/, etcd data, configs
    k8s_bin: str              # folder with kube-apiserver, kube-controller-manager, kube-scheduler
    etcd: str = "etcd"
    haproxy: str = "haproxy"
    nginx: str = "nginx"
    keepalived: str = "keepalived"
    nginx_modules: tuple = ()
    kubemark: str = ""        # the hollow kubelet/kube-proxy program; "" = this lab has no nodes
    local: bool = True        # local provider (runtime paths inside `base`) or a VM
    emulated: bool = False    # a VM without hardware virtualization (QEMU TCG): 10-20x slower

    def p(self, *parts: str) -> str:
        return str(PurePosixPath(self.base, *parts))



@dataclass(frozen=True)
class ServiceSpec:
    """One long-running program on one node."""

    node: str
    name: str
    argv: tuple[str, ...]
    files: dict = field(default_factory=dict)   # absolute path -> bytes/str, written first
    env: dict = field(default_factory=dict)
    ready_url: str | None = None                 # documentation / optional checks
    after_url: str | None = None                 # start only once this answers (VM units)
    # How the service is controlled when something else installed it (the deployer
    # says so; the provider never asks which deployer it was): a systemd unit of that
    # name, or a static pod manifest kubelet runs from /etc/kubernetes/manifests.
    # Both empty: halab runs it itself (a supervised process, or its own unit on a VM).
    unit: str = ""
    manifest: str = ""
    cwd: str = ""             # the folder it runs in (locally; relative paths in its config)
    # a /tmp of its own (kubemark's hollow kubelet keeps its fake runtime's socket at the
    # fixed path /tmp/kubelet_remote.sock): this folder bound over /tmp locally, where
    # every node shares the host's files; systemd's PrivateTmp on a VM
    private_tmp: str = ""

    @property
    def managed(self) -> bool:
        """halab installs and runs this service itself."""
        return not (self.unit or self.manifest)
