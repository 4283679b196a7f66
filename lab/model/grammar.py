"""The grammar of every free-text scenario field: an allow-list, matched in full.

Scenario files are shared (an instructor's repository, a classmate's `extends:`, a
file from a chat), so every value that reaches a rendered file (Vagrantfile,
haproxy.cfg, keepalived.conf, nginx.conf, exports, systemd units, shell, hosts)
must be one that file can only read as data. Each pattern is matched with
`re.fullmatch` (a `$` would let a trailing newline through) and describes what the
value is, never what it must not contain. Free text (`description`) reaches no
config file. The README's scenario table lists the same grammars.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

@dataclass(frozen=True)
class Grammar:
    pattern: str
    says: str        # what the value must be, for the error message
    example: str

    def ok(self, value) -> bool:
        return isinstance(value, str) and re.fullmatch(self.pattern, value) is not None


# `name`: names VMs, namespaces, libvirt domains, kubeconfig contexts
LAB_NAME = Grammar(r"[a-z][a-z0-9-]{0,19}",
                   "1-20 lowercase letters, digits or '-', starting with a letter",
                   "case2-alice")
NODE_PREFIX = Grammar(r"[a-z][a-z0-9-]{0,12}", "1-13 lowercase letters, digits or '-', "
                      "starting with a letter", "k8s-node")
# a DNS name of lowercase labels (lb_name, and hosts-file entries built from it)
DNS_NAME = Grammar(r"(?=.{1,253}\Z)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
                   r"(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*",
                   "a DNS name: dot-separated labels of lowercase letters, digits and '-'",
                   "k8s-api.lab")
# Vagrant Cloud box `org/name`, or an https URL of a .box file
BOX_NAME = Grammar(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}/[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
                   r"|https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%+-]+)+",
                   "a box `org/name` (Vagrant Cloud) or an https:// URL of a .box file",
                   "bento/rockylinux-9")
BOX_VERSION = Grammar(r"[0-9]+(\.[0-9]+){0,3}", "a version of digits and dots",
                      "202510.26.0")
OS_NAME = Grammar(r"[a-z]+-[0-9]+(\.[0-9]+)?", "an OS name and version", "rockylinux-9")
DURATION = Grammar(r"[0-9]{1,7}(ms|s|m|h)?", "a duration", "500ms, 2s, 1m or 1h")
# an HTTP path: segments of unreserved characters (no spaces, quotes, '#', '?', '%')
HTTP_PATH = Grammar(r"(/[A-Za-z0-9._~-]+)+/?|/", "an HTTP path of letters, digits and "
                    "'._~-' segments", "/readyz")
# an absolute path for a folder the lab creates (NFS share, ...): no spaces,
# no control characters, no '..' and no shell or exports syntax
ABS_PATH = Grammar(r"(/[A-Za-z0-9._-]+)+", "an absolute path of letters, digits and '._-' "
                   "segments", "/srv/nfs/share")
# a program or file on the host (emulator, kernel, initrd)
HOST_PATH = Grammar(r"(/[A-Za-z0-9._+-]+)+", "an absolute path of letters, digits and "
                    "'._+-' segments", "/usr/bin/qemu-system-x86_64")
# a git URL kubespray is cloned from
GIT_URL = Grammar(r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~-]+)+(\.git)?/?",
                  "an https:// git URL", "https://github.com/kubernetes-sigs/kubespray.git")
# a local kubespray checkout or tarball (the host reads it; it is uploaded, never run)
LOCAL_SOURCE = Grammar(r"(~|\.{1,2})?(/[A-Za-z0-9._+-]+)+/?|[A-Za-z0-9._+-]+(/[A-Za-z0-9._+-]+)*/?",
                       "a path of letters, digits and '._+-' segments", "./kubespray-2.29.1")
VBOX_GROUP = Grammar(r"(/[A-Za-z0-9._-]+)+", "a VirtualBox group like /halab", "/halab")
LIBVIRT_NAME = Grammar(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", "a libvirt name of letters, "
                       "digits and '._-'", "default")
KERNEL_CMDLINE = Grammar(r"[A-Za-z0-9._,:=/+-]+( [A-Za-z0-9._,:=/+-]+)*",
                         "kernel arguments of letters, digits and '._,:=/+-', "
                         "separated by single spaces", "console=ttyS0 root=/dev/vda1")
IPV4_CIDR = Grammar(r"[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}", "an IPv4 network",
                    "192.168.121.0/24")
LINUX_IFNAME = Grammar(r"[A-Za-z0-9_-]{1,15}", "an interface name (1-15 letters, digits, "
                       "'_' or '-')", "br0")
TIMEZONE = Grammar(r"[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}", "an IANA time zone name",
                   "Europe/Berlin")
VAR_NAME = Grammar(r"[a-z_][a-z0-9_]{0,63}", "an Ansible variable name", "kube_version")

# system folders a lab must never export or create a share in
SYSTEM_FOLDERS = ("/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt",
                  "/proc", "/root", "/run", "/sbin", "/sys", "/tmp", "/usr", "/var")

# ports a node's own services hold: a scenario port must not take them
NODE_PORTS = {22: "SSH", 111: "rpcbind (NFS)", 2049: "NFS", 2379: "etcd clients",
              2380: "etcd peers", 6443: "the Kubernetes API", 10250: "kubelet",
              10256: "kube-proxy health", 10257: "kube-controller-manager",
              10259: "kube-scheduler", 9100: "node exporter"}


def in_system_folder(path: str) -> bool:
    """`/etc`, `/usr/share`, ... : a lab's share must live in a folder of its own."""
    norm = "/" + "/".join(p for p in path.split("/") if p)
    if norm in SYSTEM_FOLDERS:
        return True
    # directly inside a system folder other than the usual share roots
    top = "/" + norm.split("/")[1]
    return top in ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/root",
                   "/run", "/sbin", "/sys", "/usr")


# the faults a scenario's `drills:` may name (lab.drill.faults defines what each does)
FAULT_NAMES = ("kill", "stop-apiserver", "freeze", "stop-etcd", "stop-lb", "partition")
ETCD_ROLES = ("etcd-leader", "etcd-follower")
