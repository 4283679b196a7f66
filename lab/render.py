"""Pure: Scenario -> {relative path: text}. Jinja2 with StrictUndefined; no disk writes here."""
from __future__ import annotations

import json
import secrets as _secrets
import shlex
from dataclasses import dataclass
from pathlib import Path

import jinja2
import yaml

from lab.resources import resource_dir
from lab.state import write_atomically
from lab.model import kubespray_releases
from lab.model.scenario import Scenario, duration_seconds
from lab.model.services import Layout
from lab.model.topology import API_PORT, MachineNames, Node, Topology

LAB_IFACE_PLACEHOLDER = "@LAB_IFACE@"  # admin-lb.sh puts the NIC holding the lab address here
NGINX_HEALTHCHECK_PORT = 8081


@dataclass(frozen=True)
class LabSecrets:
    """Per-lab secrets, generated once when a lab is created (never fixed in templates)."""

    public_key: str
    private_key: str
    vrrp_password: str

    @classmethod
    def generate(cls, comment: str = "halab") -> "LabSecrets":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()).decode()
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
        # VRRP PASS authentication carries at most 8 characters
        return cls(f"{public} {comment}\n", private, _secrets.token_hex(4))

    @classmethod
    def load(cls, keys_dir: Path) -> "LabSecrets":
        return cls((keys_dir / "id_ed25519.pub").read_text(),
                   (keys_dir / "id_ed25519").read_text(),
                   (keys_dir / "vrrp_password").read_text().strip())


@dataclass(frozen=True)
class HAProxyRuntime:
    """What may differ between the VM and the local provider's haproxy.cfg."""

    stats_socket: str = "/var/lib/haproxy/admin.sock"  # survives reboots, unlike /run
    pidfile: str = "/run/haproxy.pid"
    chroot: str | None = "/var/lib/haproxy"
    user: str | None = "haproxy"
    group: str | None = "haproxy"
    log: str = "/dev/log"


@dataclass(frozen=True)
class NginxRuntime:
    error_log: str = "stderr"
    pidfile: str = "/run/nginx.pid"
    daemon: bool = True
    modules: tuple = ()
    temp_dir: str | None = None


def _rb(value) -> str:
    """A Ruby literal for strings, numbers, booleans and nil.

    Strings become single-quoted literals, where Ruby interpolates nothing (`#{...}`,
    `%x(...)` and backslash sequences stay text); only `\\` and `'` need escaping.
    Vagrant evaluates the Vagrantfile on every `vagrant` call, so a double-quoted
    string built from a scenario value would run whatever `#{}` it carried.
    """
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"not a finite number: {value!r}")
        return repr(value)
    text = str(value)
    if all(c.isprintable() for c in text):
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    # Ruby reads CR LF in its source as LF, inside literals too: a text with control
    # characters becomes a double-quoted literal with every one of them escaped, and
    # every `#` too (so `#{`, `#@`, `#$` cannot interpolate)
    out = []
    for c in text:
        if c in '\\"#':
            out.append("\\" + c)
        elif c.isprintable():
            out.append(c)
        else:
            out.append(f"\\u{{{ord(c):x}}}")
    return '"' + "".join(out) + '"'


def _comment(value) -> str:
    """Text for a one-line comment in any rendered file: no line breaks or other control
    characters (a newline would end the comment and start code)."""
    return "".join(c if c.isprintable() else "?" for c in str(value))


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resource_dir("templates"))),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    env.filters["rb"] = _rb
    env.filters["comment"] = _comment
    return env


def detect_seconds(s: Scenario) -> float:
    """How long HAProxy takes, after a failed check, to mark a server DOWN (REFERENCE 4)."""
    hc = s.haproxy.healthcheck
    check = min(duration_seconds(s.haproxy.timeouts.get("check", "2s")),
                duration_seconds(hc.inter))
    return round((hc.fall - 1) * duration_seconds(hc.fastinter) + hc.fall * check, 1)


def haproxy_cfg(topo: Topology, lb: Node, runtime: HAProxyRuntime = HAProxyRuntime()) -> str:
    s = topo.scenario
    binds = [str(lb.ip)]
    if topo.lb_address is not None and topo.lb_address != lb.ip:
        binds.append(str(topo.lb_address))  # the VIP (needs net.ipv4.ip_nonlocal_bind=1)
    return _env().get_template("haproxy.cfg.j2").render(
        lab=s.name, case=s.case, node=lb, scenario_file=Path(s.source).name,
        hc=s.haproxy.healthcheck, detect_seconds=detect_seconds(s), runtime=runtime,
        retries=s.haproxy.retries, timeouts=s.haproxy.timeouts, bind_addresses=binds,
        api_port=API_PORT, control_planes=topo.control_planes, stats_port=s.haproxy.stats_port,
        stats_path=s.haproxy.stats_path, prometheus_port=s.haproxy.prometheus_port)


def keepalived_conf(topo: Topology, lb: Node, secrets: LabSecrets,
                    interface: str = LAB_IFACE_PLACEHOLDER, check_command: str | None = None,
                    script_user: str = "root") -> str:
    s = topo.scenario
    peers = [n for n in topo.load_balancers if n.name != lb.name]
    if check_command is None:
        check_command = "/bin/sh -c 'kill -0 $(cat /run/haproxy.pid)'"
    return _env().get_template("keepalived.conf.j2").render(
        lab=s.name, node=lb, vip=topo.lb_address, prefixlen=s.network.subnet.prefixlen,
        interface=interface, virtual_router_id=s.keepalived["virtual_router_id"],
        advert_int=s.keepalived["advert_int"], priority=150 - 10 * (lb.index - 1),
        peers=peers, auth_pass=secrets.vrrp_password, check_command=check_command,
        script_user=script_user)


def nginx_proxy_conf(topo: Topology, worker: Node, runtime: NginxRuntime = NginxRuntime()) -> str:
    s = topo.scenario
    return _env().get_template("nginx-proxy.conf.j2").render(
        lab=s.name, case=s.case, node=worker, api_port=API_PORT, runtime=runtime,
        control_planes=topo.control_planes, connect_timeout="1s",
        healthcheck_port=NGINX_HEALTHCHECK_PORT)


# ------------------------------------------------------------------ kubespray

EMULATED_PKG_INSTALL_TIMEOUT = 45 * 60


def kubespray_vars(topo: Topology) -> dict[str, dict]:
    """group_vars per group for the chosen Case (REFERENCE.md sections 2-3).

    Returns {"all": {...}, "k8s_cluster": {...}}. The Case is decided here and
    nowhere else, so the pitfalls are handled in one place:
    - Case 2 does NOT define `loadbalancer_apiserver`: in kubespray v2.29.1 that
      variable wins over `loadbalancer_apiserver_localhost` and turns Case 2 into
      Case 3 with a useless worker proxy. The external LB enters the certificate
      through `supplementary_addresses_in_ssl_keys` instead.
    - Case 3 sets `apiserver_loadbalancer_domain_name` to a name halab writes into
      every /etc/hosts: kubespray >= 2.29.0 no longer writes /etc/hosts and the
      default name does not resolve.
    """
    s = topo.scenario
    all_vars: dict = {
        "kubeconfig_localhost": True,
        "kubectl_localhost": False,
        "loadbalancer_apiserver_port": API_PORT,
        "loadbalancer_apiserver_healthcheck_port": NGINX_HEALTHCHECK_PORT,
        "loadbalancer_apiserver_type": s.kubespray.worker_proxy,
        # download each file once on the runner side and copy it to the nodes
        "download_run_once": True,
        "download_localhost": False,
        # kubespray hides a failed download's message behind no_log unless this is
        # set; halab's failure report must say why (no route out, a wrong mirror ...).
        # Its "unsafe" part is download credentials, which halab never sets.
        "unsafe_show_logs": True,
    }
    if s.emulated:
        # software-emulated VMs install packages 10-20x slower: kubespray (v2.31.0 and
        # later) gives its package task 5 min and stops the run after that (seen here:
        # "failed to execute in the expected time frame (300)"); its own CI gives slow
        # distributions 15 min
        all_vars["pkg_install_timeout"] = EMULATED_PKG_INSTALL_TIMEOUT
    sans = topo.api_sans()
    if s.case in (1, 2):
        all_vars["loadbalancer_apiserver_localhost"] = True
    else:
        all_vars["loadbalancer_apiserver_localhost"] = False
        all_vars["loadbalancer_apiserver"] = {"address": str(topo.lb_address), "port": API_PORT}
        all_vars["apiserver_loadbalancer_domain_name"] = topo.lb_name
    if sans:
        all_vars["supplementary_addresses_in_ssl_keys"] = sans
    cluster = {
        "kube_network_plugin": s.kubespray.network_plugin,
        "kube_service_addresses": s.service_cidr,
        "kube_pods_subnet": s.pod_cidr,
        "cluster_name": "cluster.local",
    }
    return {"all": all_vars, "k8s_cluster": cluster}


def _vars_file(title: str, data: dict) -> str:
    header = (f"# {title}\n# Rendered by halab. The `zz-` prefix makes Ansible load this file after\n"
              "# kubespray's sample files in the same folder, so these values win.\n")
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def inventory_files(topo: Topology) -> dict[str, str]:
    s = topo.scenario
    ini = _env().get_template("inventory.ini.j2").render(
        lab=s.name, case=s.case, kubespray_version=s.kubespray.version,
        control_planes=topo.control_planes, workers=topo.workers,
        etcd_topology=s.etcd_topology, etcd_nodes=topo.role("etcd"))
    v = kubespray_vars(topo)
    extra = ("# scenario kubespray.extra_vars, passed as `-e @extra-vars.yml` (highest precedence)\n"
             + yaml.safe_dump(dict(s.kubespray.extra_vars), sort_keys=False))
    return {
        "inventory/inventory.ini": ini,
        "inventory/group_vars/all/zz-halab.yml": _vars_file(
            f"Lab {s.name}: Case {s.case} access paths and runner settings", v["all"]),
        "inventory/group_vars/k8s_cluster/zz-halab.yml": _vars_file(
            f"Lab {s.name}: cluster network", v["k8s_cluster"]),
        "inventory/extra-vars.yml": extra,
    }


# ------------------------------------------------------------------ node files

def controller_python_of(s: Scenario) -> tuple[str, str]:
    """(command, package) of the Python that builds kubespray's venv on admin-lb: the
    newest the box's OS offers within the release's range; python3 when halab knows no
    better (validation has warned about the pair)."""
    rel = kubespray_releases.release(s.kubespray.version)
    found = kubespray_releases.controller_python(rel, s.box.os) if rel else None
    return (found[0], found[1]) if found else ("python3", "python3")


def lab_env(topo: Topology) -> str:
    """Settings the provisioning scripts source (shell-quoted)."""
    s = topo.scenario
    values = {
        "LAB_NAME": s.name,
        "LAB_CASE": str(s.case),
        "LAB_SUBNET": str(s.network.subnet),
        "LAB_TIMEZONE": s.timezone,
        "LAB_OS_FAMILY": s.box.os_family,
        "LAB_LB_NAME": topo.lb_name if topo.lb_address else "",
        "LAB_LB_ADDRESS": str(topo.lb_address or ""),
        "LAB_HA_LB": "yes" if len(topo.load_balancers) > 1 else "no",
        "LAB_LOAD_BALANCER": "yes" if topo.load_balancers else "no",
        "LAB_NFS": "yes" if s.nfs_enabled else "no",
        "LAB_NFS_PATH": s.nfs_path,
        "LAB_ADMIN_TOOLS": " ".join(s.admin_tools),
        "LAB_KUBESPRAY_VERSION": s.kubespray.version,
        "LAB_KUBESPRAY_SOURCE": "git" if s.kubespray.source == "git" else "upload",
        "LAB_KUBESPRAY_REPO": s.kubespray.repo,
        # kubespray's requirements as uploaded wheels (installed with --no-index)
        "LAB_KUBESPRAY_WHEELS": "no" if s.kubespray.wheels == "pypi" else "yes",
        "LAB_DEPLOYER": s.deployer,
        "LAB_NODES": " ".join(n.name for n in topo.nodes),
        "LAB_RUNNER": runner_of(topo),   # runs kubespray and serves NFS (one per lab)
        # the Python kubespray's Ansible runs on (Rocky/Alma 9's python3 is 3.9: too old)
        **dict(zip(("LAB_CONTROLLER_PYTHON", "LAB_CONTROLLER_PYTHON_PKG"),
                   controller_python_of(s))),
    }
    lines = ["# Lab settings for the provisioning scripts, rendered by halab."]
    lines += [f"{k}={shlex.quote(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def hosts_file(topo: Topology) -> str:
    lines = [f"# halab lab {topo.name}: every node and the API load balancer name"]
    lines += [f"{ip} {names}" for ip, names in topo.hosts_entries()]
    return "\n".join(lines) + "\n"


def scenario_ref(source: str) -> str:
    """How `halab` finds the scenario again: a bundled one by name, any other by its path.

    The name (not the absolute path of the bundled file) keeps lab.json the same on
    every machine and valid after halab is reinstalled elsewhere.
    """
    path = Path(source)
    if path.suffix == ".yaml" and path.resolve().parent == resource_dir("scenarios").resolve():
        return path.stem
    return source


def lab_json(topo: Topology) -> str:
    """A snapshot of the topology for commands that run later (status, drills, reports)."""
    s = topo.scenario
    data = {
        "name": s.name, "case": s.case, "provider": s.provider, "deployer": s.deployer,
        "scenario": scenario_ref(s.source), "subnet": str(s.network.subnet),
        "lb_address": str(topo.lb_address) if topo.lb_address else None,
        "lb_name": topo.lb_name if topo.lb_address else None,
        "nodes": [{"name": n.name, "role": n.role, "ip": str(n.ip), "cpus": n.cpus,
                   "memory": n.memory} for n in topo.nodes],
        "access_paths": [p.__dict__ for p in topo.access_paths()],
    }
    return json.dumps(data, indent=2) + "\n"


def _vagrant_boxes(s: Scenario) -> dict:
    boxes = {}
    for provider in ("virtualbox", "libvirt"):
        override = s.box.providers.get(provider, {})
        boxes[provider] = {"name": override.get("name", s.box.name),
                           "version": override.get("version", s.box.version)}
    return boxes


def runner_of(topo: Topology) -> str:
    """The admin-lb that runs kubespray and serves NFS (the first of an HA pair)."""
    return topo.admin_lbs[0].name if topo.admin_lbs else ""


KUBESPRAY_UPLOAD = "kubespray.tar.gz"   # in the lab folder: a local kubespray.source, packed


def write_kubespray_source(s: Scenario, dest: Path) -> Path | None:
    """A local `kubespray.source` (a folder or a .tar.gz) as the tarball the runner
    unpacks (one top folder, as GitHub's release archives have). Side effect."""
    if not s.uses_kubespray or s.kubespray.source == "git":
        return None
    import shutil
    import tarfile
    src = Path(s.kubespray.source).expanduser()
    out = dest / KUBESPRAY_UPLOAD
    if src.is_file():
        shutil.copyfile(src, out)
    else:
        with tarfile.open(out, "w:gz") as tar:
            tar.add(src, arcname="kubespray",
                    filter=lambda info: None if "/.git/" in info.name + "/" else info)
    return out


WHEELS_UPLOAD = "kubespray-wheels"     # in the lab folder: kubespray's requirements
ADMIN_TOOLS_UPLOAD = "admin-tools"      # in the lab folder: admin_tools_dir's programs


def uploaded_tools(s: Scenario) -> list[str]:
    """The admin tools halab uploads from `admin_tools_dir` (the upstream programs)."""
    if not s.admin_tools_dir:
        return []
    from lab.model.scenario import UPSTREAM_TOOLS
    return [t for t in s.admin_tools if t in UPSTREAM_TOOLS]


def write_uploads(s: Scenario, dest: Path, wheels: Path | None) -> list[str]:
    """Copy what the VMs get besides the rendered files into the lab folder (side
    effect): the wheels for kubespray's venv and the admin tools. Each folder is
    replaced as a whole; returns one line per folder, for the user."""
    import shutil
    said = []
    for name, src, files, mode in (
            (WHEELS_UPLOAD, wheels, sorted(wheels.glob("*.whl")) if wheels else [], 0o644),
            (ADMIN_TOOLS_UPLOAD, Path(s.admin_tools_dir or ".").expanduser(),
             [Path(s.admin_tools_dir).expanduser() / t for t in uploaded_tools(s)], 0o755)):
        out = dest / name
        if out.exists():
            shutil.rmtree(out)
        if not files:
            continue
        out.mkdir(mode=0o700)
        for f in files:
            shutil.copyfile(f, out / f.name)
            (out / f.name).chmod(mode)
        size = sum(f.stat().st_size for f in files) / 1e6
        said.append(f"{name}: {len(files)} files ({size:.0f} MB) from {src}")
    return said


def vagrantfile(topo: Topology) -> str:
    s = topo.scenario
    provider = s.provider if s.provider in ("virtualbox", "libvirt") else "virtualbox"
    return _env().get_template("Vagrantfile.j2").render(
        lab=s.name, case=s.case, scenario_file=Path(s.source).name, nodes=topo.nodes,
        names=MachineNames(s.name), runner=runner_of(topo),
        upload_kubespray=s.uses_kubespray and s.kubespray.source != "git",
        upload_wheels=s.uses_kubespray and s.kubespray.wheels != "pypi",
        upload_tools=bool(uploaded_tools(s)),
        boxes=_vagrant_boxes(s), provider=provider,
        libvirt=s.provider_options["libvirt"], virtualbox=s.provider_options["virtualbox"])


def scripts() -> dict[str, str]:
    """The provisioning scripts; their shared helpers travel with the lab files."""
    folder = resource_dir("scripts")
    out = {f"scripts/{p.name}": p.read_text() for p in sorted(folder.glob("*.sh"))
           if p.name != "lib.sh"}
    out["files/lib.sh"] = (folder / "lib.sh").read_text()
    return out


def render(s: Scenario, secrets: LabSecrets) -> dict[str, str]:
    """The whole rendered lab: relative path -> text (private key excluded)."""
    topo = Topology.of(s)
    out: dict[str, str] = {
        "Vagrantfile": vagrantfile(topo),
        "lab.json": lab_json(topo),
        "files/lab.env": lab_env(topo),
        "files/hosts": hosts_file(topo),
        "files/authorized_keys": secrets.public_key,
        "keys/id_ed25519.pub": secrets.public_key,
    }
    out.update(scripts())
    for lb in topo.load_balancers:
        out[f"files/{lb.name}/haproxy.cfg"] = haproxy_cfg(topo, lb)
        if len(topo.load_balancers) > 1:
            out[f"files/{lb.name}/keepalived.conf"] = keepalived_conf(topo, lb, secrets)
    if s.nfs_enabled:
        out["files/exports"] = (f"# NFS share for the lab, limited to the lab subnet\n"
                                f"{s.nfs_path} {s.network.subnet}(rw,sync,root_squash,"
                                "no_subtree_check)\n")
    out.update(inventory_files(topo))
    return out


# rendered files that carry a secret (keepalived's VRRP password)
SECRET_SUFFIXES = ("keepalived.conf",)


def write(files: dict[str, str], secrets: LabSecrets, dest: Path) -> None:
    """Write a rendered lab into `dest` (side effect; private key 0600)."""
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    dest.chmod(0o700)          # the lab's keys and passwords live in here
    for rel, text in files.items():
        mode = 0o755 if rel.startswith("scripts/") else \
            0o600 if rel.endswith(SECRET_SUFFIXES) else 0o644
        write_atomically(dest / rel, text, mode=mode)   # 0600 from the first byte
    (dest / "keys").mkdir(exist_ok=True, mode=0o700)
    write_atomically(dest / "keys" / "id_ed25519", secrets.private_key, mode=0o600)
    write_atomically(dest / "keys" / "vrrp_password", secrets.vrrp_password + "\n", mode=0o600)


LOCAL_STATS_SOCKET = "haproxy.sock"   # in the node's folder (the local provider)


def haproxy_runtime(lay: "Layout") -> HAProxyRuntime:
    """The VM's packaged HAProxy, or the local provider's: its socket and pidfile in the
    node's folder, logs on stdout, and its workers as the unprivileged `nobody` (the
    master binds and opens what it needs as root first)."""
    if not lay.local:
        return HAProxyRuntime()
    user, group = _unprivileged()
    # relative to the node's folder (HAProxy runs there): a UNIX socket path has room
    # for 107 bytes, and HAProxy binds `<path>.<pid>.tmp` first, so a lab folder deep
    # in a home directory (or a test's tmp folder) would not fit
    return HAProxyRuntime(stats_socket=f"unix@{LOCAL_STATS_SOCKET}", pidfile=lay.p("haproxy.pid"),
                          chroot=None, user=user, group=group, log="stdout format raw")


def _unprivileged() -> tuple[str, str]:
    """`nobody` and its primary group (nogroup on Debian, nobody on Fedora)."""
    import grp
    import pwd
    try:
        nobody = pwd.getpwnam("nobody")
        return "nobody", grp.getgrgid(nobody.pw_gid).gr_name
    except KeyError:
        return "nobody", "nogroup"
