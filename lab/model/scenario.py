"""Scenario files: YAML -> `extends` merged -> defaults -> validated, frozen dataclasses.

Every problem is collected and reported at once (`ScenarioError`), each naming the
file, the field, the bad value and the fix. Nothing here touches the machine
beyond reading the scenario files themselves.
"""
from __future__ import annotations

import copy
import difflib
import ipaddress
import math
import re
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lab.errors import MISSING, HalabError, Problem, ScenarioError
from lab.model import grammar, kubespray_releases
from lab.resources import resource_dir

CASES = (1, 2, 3)
PROVIDERS = ("virtualbox", "libvirt", "local")
DEPLOYERS = ("kubespray", "static")
WORKER_PROXIES = ("nginx", "haproxy")
ETCD_TOPOLOGIES = ("stacked", "external")
NETWORK_PLUGINS = ("calico", "flannel", "cilium", "kube-ovn", "kube-router", "macvlan", "cni")
ADMIN_TOOLS = ("kubectl", "helm", "k9s", "kubecolor", "jq", "git", "tmux")
OS_FAMILIES = {"rockylinux": "rhel", "almalinux": "rhel", "rhel": "rhel", "centos": "rhel",
               "oraclelinux": "rhel", "ubuntu": "debian", "debian": "debian"}

# which kubespray release runs on which box: lab/model/kubespray_releases.py

# kubespray's preinstall checks (roles/kubernetes/preinstall/defaults/main.yml):
# minimal_master_memory_mb 1500, minimal_node_memory_mb 1024, compared with the
# guest's MemTotal, which is ~8-12 % below the RAM given to the VM.
KUBESPRAY_MIN_MEMORY = {"control_plane": 1500, "worker": 1024, "etcd": 1024}
MEMTOTAL_MARGIN = 1.15

# The schema: every key a scenario may set, with its default. A dict is a
# section; `_ANY_MAP` marks a free-form mapping (its keys are not checked).
_ANY_MAP = object()
_REQUIRED = object()

SCHEMA: dict[str, Any] = {
    "name": _REQUIRED,
    "description": "",
    "extends": None,
    "case": _REQUIRED,
    "provider": "virtualbox",
    "deployer": "kubespray",
    "timezone": "UTC",
    "node_prefix": "k8s-node",
    "box": {
        "name": "bento/rockylinux-9",
        "version": None,
        "os": "rockylinux-9",
        "providers": _ANY_MAP,
    },
    "network": {
        "subnet": "192.168.10.0/24",
        "first_address": None,
        "vip": None,
        "lb_name": None,
        "addresses": _ANY_MAP,
    },
    "admin_lb": {"count": 1, "cpus": 2, "memory": 1024, "load_balancer": None},
    "control_plane": {"count": 3, "cpus": 4, "memory": 2048},
    "worker": {"count": 2, "cpus": 4, "memory": 2048},
    "etcd": {"topology": "stacked", "count": 3, "cpus": 2, "memory": 1024},
    "kubernetes": {"service_cidr": "10.233.0.0/18", "pod_cidr": "10.233.64.0/18"},
    "kubespray": {
        "version": "v2.30.0",
        "source": "git",
        "repo": "https://github.com/kubernetes-sigs/kubespray.git",
        "network_plugin": "calico",
        "worker_proxy": "nginx",
        # kubespray's Python requirements: `pypi` (admin-lb installs them from PyPI),
        # `host` (halab downloads wheels on this machine for admin-lb's Python and
        # installs them there with --no-index) or a folder of wheels
        "wheels": "pypi",
        "extra_vars": _ANY_MAP,
    },
    "haproxy": {
        "healthcheck": {"path": "/readyz", "inter": "1s", "fastinter": "500ms",
                        "downinter": "1s", "fall": 2, "rise": 2},
        "timeouts": {"connect": "2s", "client": "10m", "server": "10m", "check": "2s"},
        "retries": 3,
        "stats_port": 9000,
        "stats_path": "/haproxy_stats",
        "prometheus_port": 8405,
    },
    "keepalived": {"virtual_router_id": 51, "advert_int": 1},
    "nfs": {"enabled": True, "path": "/srv/nfs/share"},
    "admin_tools": ["kubectl", "helm", "k9s"],
    # a folder on this machine with the upstream tools (kubectl, helm, k9s, kubecolor:
    # Linux x86-64 programs); halab uploads them to admin-lb
    "admin_tools_dir": None,
    "provider_options": {
        "virtualbox": {"group": "/halab", "linked_clone": True, "nic_promiscuous": True},
        "libvirt": {"driver": "kvm", "emulator_path": None, "kernel": None, "initrd": None,
                    "cmd_line": None, "management_network_address": None,
                    "storage_pool_name": None},
        "local": {"bridge": None},
    },
    "drills": [],
}



_VERSION = re.compile(r"v(\d+)\.(\d+)\.(\d+)")
_CASE_VARS = ("loadbalancer_apiserver", "loadbalancer_apiserver_localhost",
              "apiserver_loadbalancer_domain_name", "loadbalancer_apiserver_type")


# ---------------------------------------------------------------- dataclasses

@dataclass(frozen=True)
class NodeGroup:
    count: int
    cpus: int
    memory: int


@dataclass(frozen=True)
class Box:
    name: str
    version: str | None
    os: str
    os_family: str
    providers: dict


@dataclass(frozen=True)
class Network:
    subnet: ipaddress.IPv4Network
    first_address: ipaddress.IPv4Address
    vip: ipaddress.IPv4Address | None
    lb_name: str
    addresses: dict


@dataclass(frozen=True)
class HealthCheck:
    path: str
    inter: str
    fastinter: str
    downinter: str
    fall: int
    rise: int


@dataclass(frozen=True)
class HAProxy:
    healthcheck: HealthCheck
    timeouts: dict
    retries: int
    stats_port: int
    stats_path: str
    prometheus_port: int


@dataclass(frozen=True)
class Kubespray:
    version: str
    source: str
    repo: str
    network_plugin: str
    worker_proxy: str
    extra_vars: dict
    wheels: str = "pypi"          # pypi | host | a folder of wheels


@dataclass(frozen=True)
class Scenario:
    """A validated scenario; `source` is the file it came from (for messages)."""

    name: str
    description: str
    case: int
    provider: str
    deployer: str
    timezone: str
    node_prefix: str
    box: Box
    network: Network
    admin_lb: NodeGroup
    load_balancer: bool
    control_plane: NodeGroup
    worker: NodeGroup
    etcd_topology: str
    etcd: NodeGroup
    service_cidr: str
    pod_cidr: str
    kubespray: Kubespray
    haproxy: HAProxy
    keepalived: dict
    nfs_enabled: bool
    nfs_path: str
    admin_tools: tuple
    provider_options: dict
    drills: tuple
    source: str
    admin_tools_dir: str | None = None
    warnings: tuple = field(default=(), compare=False)
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def uses_kubespray(self) -> bool:
        """Kubespray deploys this lab (the local provider always runs halab's own)."""
        return self.deployer == "kubespray" and self.provider != "local"

    @property
    def emulated(self) -> bool:
        """The VMs run without hardware virtualization (libvirt with driver qemu: TCG),
        10-20x slower: package installs, timers and drill bounds are stretched for it."""
        return self.provider == "libvirt" and \
            self.provider_options.get("libvirt", {}).get("driver") == "qemu"

    @property
    def ha_lb(self) -> bool:
        return self.load_balancer and self.admin_lb.count > 1

    def with_provider(self, provider: str) -> "Scenario":
        """The same scenario on another provider (`halab up --provider local`)."""
        raw = copy.deepcopy(self.raw)
        raw["provider"] = provider
        return build(raw, self.source, {})


# ---------------------------------------------------------------- loading

def bundled_scenarios() -> dict[str, Path]:
    """Bundled scenario names -> files."""
    return {p.stem: p for p in sorted(resource_dir("scenarios").glob("*.yaml"), key=lambda p: p.stem)}


def resolve(ref: str, relative_to: Path | None = None) -> Path:
    """A bundled name (`case2`) or a path to a YAML file -> the file."""
    candidates = []
    as_path = Path(ref).expanduser()
    if relative_to is not None and not as_path.is_absolute():
        candidates.append(relative_to / as_path)
    candidates.append(as_path)
    for c in candidates:
        if c.is_file():
            return c
    bundled = bundled_scenarios()
    if ref in bundled:
        return bundled[ref]
    if relative_to is not None and f"{ref}.yaml" in {p.name for p in relative_to.glob("*.yaml")}:
        return relative_to / f"{ref}.yaml"
    close = difflib.get_close_matches(ref, list(bundled), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise HalabError(
        f"scenario {ref!r} is neither a file nor a bundled scenario; {hint}"
        f"bundled: {', '.join(bundled)} (see `halab scenarios`)", code=2)


MAX_FILE_BYTES = 256 * 1024   # a scenario is a page of YAML; this is generous
MAX_ALIASES = 64               # `*ref` uses; an alias bomb needs thousands


class _StrictLoader(yaml.SafeLoader):
    """YAML with duplicate keys refused (the last one would win silently) and a bound
    on aliases (nested aliases multiply: a small file can expand to billions of nodes)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise _YamlRefused(f"line {mark.line + 1}: more than {MAX_ALIASES} aliases "
                                   "(`*name`)", "write the values out; a scenario needs few "
                                   "or no aliases")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue          # reported by the base class
            if key in seen:
                raise _YamlRefused(f"line {key_node.start_mark.line + 1}: key {key!r} appears "
                                   f"twice (first on line {seen[key] + 1}); YAML would keep "
                                   "only the last one", "remove one of them")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


class _YamlRefused(Exception):
    def __init__(self, message: str, fix: str):
        super().__init__(message)
        self.message, self.fix = message, fix


def _read_yaml(path: Path) -> dict:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise HalabError(f"{path}: cannot read scenario file: {exc.strerror}", code=2) from exc
    if len(raw) > MAX_FILE_BYTES:
        raise HalabError(f"{path}: {len(raw)} bytes is too large for a scenario "
                         f"(at most {MAX_FILE_BYTES}); fix: is this the right file?", code=2)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise HalabError(f"{path}: line {line}: not UTF-8 (byte 0x{raw[exc.start]:02X}); "
                         "fix: save the file as UTF-8 (in Notepad: Save as, Encoding UTF-8)",
                         code=2) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _YamlRefused as exc:
        raise HalabError(f"{path}: {exc.message}; fix: {exc.fix}", code=2) from None
    except RecursionError:
        raise HalabError(f"{path}: nested too deeply to be a scenario; fix: is this the "
                         "right file?", code=2) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise HalabError(f"{path}:{where}: not valid YAML: {problem}; fix the syntax there",
                         code=2) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise HalabError(f"{path}: a scenario must be a YAML mapping (key: value), "
                         f"found {type(data).__name__}", code=2)
    return data


def _merge(base: dict, over: dict, origins: dict, over_file: str, prefix: str = "") -> dict:
    """Deep-merge `over` into a copy of `base`; mappings merge, everything else replaces."""
    out = dict(base)
    for key, value in over.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, origins, over_file, path + ".")
        else:
            out[key] = copy.deepcopy(value)
            for k in [k for k in origins if k == path or k.startswith(path + ".")]:
                del origins[k]
            _record_origins(value, origins, over_file, path)
    return out


def _record_origins(value, origins, file, path):
    origins[path] = file
    if isinstance(value, dict):
        for k, v in value.items():
            _record_origins(v, origins, file, f"{path}.{k}")


def load_raw(ref: str, _chain: tuple = ()) -> tuple[dict, dict, Path]:
    """Read a scenario and everything it extends; return (merged data, origins, file)."""
    path = resolve(ref, _chain[-1].parent if _chain else None).resolve()
    if path in _chain:
        cycle = " -> ".join(str(p.name) for p in (*_chain, path))
        raise HalabError(f"{path}: extends: cycle {cycle}; fix: remove one of the `extends`",
                         code=2)
    data = _read_yaml(path)
    parent = data.get("extends")
    origins: dict[str, str] = {}
    if parent is None:
        _record_origins(data, origins, str(path), "")
        origins = {k.lstrip("."): v for k, v in origins.items() if k}
        return data, origins, path
    if not isinstance(parent, str):
        raise HalabError(f"{path}: extends = {parent!r}: must be a bundled scenario name or a "
                         f"path; fix: e.g. `extends: case2`", code=2)
    try:
        base, origins, _ = load_raw(parent, (*_chain, path))
    except HalabError as exc:
        if "neither a file nor a bundled" in exc.message:
            raise HalabError(f"{path}: extends = {parent!r}: {exc.message}", code=2) from exc
        raise
    own = {k: v for k, v in data.items() if k != "extends"}
    merged = _merge(base, own, origins, str(path))
    _rebase_addresses(base, own, merged)
    merged.pop("extends", None)
    # a child that extends another keeps its own name unless it sets one
    return merged, origins, path


def _rebase_addresses(base: dict, own: dict, merged: dict) -> None:
    """A child that moves the lab to another subnet takes the inherited addresses along.

    `extends: case2` plus `network: {subnet: 192.168.56.0/24}` (VirtualBox's default
    host-only range) should just work: every address the child does not set itself
    (first_address, vip, addresses) keeps its host part (.10 stays .10) in the new
    subnet. Addresses that do not fit are left alone for validation to report.
    """
    own_net, base_net, net = own.get("network"), base.get("network"), merged.get("network")
    if not (isinstance(own_net, dict) and "subnet" in own_net and isinstance(net, dict)):
        return
    base_net = base_net if isinstance(base_net, dict) else {}
    try:
        old = ipaddress.IPv4Network(str(base_net.get("subnet", SCHEMA["network"]["subnet"])))
        new = ipaddress.IPv4Network(str(own_net["subnet"]))
    except ValueError:
        return
    if old == new:
        return

    def move(value):
        try:
            ip = ipaddress.IPv4Address(str(value))
        except ValueError:
            return value
        offset = int(ip) - int(old.network_address)
        if ip not in old or offset >= new.num_addresses:
            return value
        return str(new.network_address + offset)

    for key in ("first_address", "vip"):
        if key not in own_net and net.get(key) is not None:
            net[key] = move(net[key])
    addresses = net.get("addresses")
    if isinstance(addresses, dict):
        mine = own_net.get("addresses") if isinstance(own_net.get("addresses"), dict) else {}
        net["addresses"] = {node: value if node in mine else move(value)
                            for node, value in addresses.items()}


def load(ref: str, provider: str | None = None) -> Scenario:
    """Load, merge, validate and freeze a scenario. Raises ScenarioError with every problem."""
    data, origins, path = load_raw(ref)
    if provider is not None:
        data = dict(data, provider=provider)
        origins["provider"] = "--provider"
    return build(data, str(path), origins)


# ---------------------------------------------------------------- validation

class _Checker:
    def __init__(self, source: str, origins: dict):
        self.source = source
        self.origins = origins
        self.problems: list[Problem] = []

    def file_of(self, path: str) -> str:
        while path:
            if path in self.origins:
                return _short(self.origins[path])
            path = path.rpartition(".")[0]
        return _short(self.source)

    def error(self, path, value, message, fix, blame=None):
        """`blame`: the field whose file caused a problem with a field that is not set."""
        self.problems.append(Problem(self.file_of(blame or path), path, value, message, fix))

    def warn(self, path, value, message, fix):
        self.problems.append(Problem(self.file_of(path), path, value, message, fix, "warning"))


def _short(file: str) -> str:
    try:
        return str(Path(file).resolve().relative_to(Path.cwd()))
    except ValueError:
        return file


def _check_keys(data: dict, schema: dict, chk: _Checker, prefix: str = "") -> dict:
    """Unknown keys (with did-you-mean) and defaults filled in; returns the full tree."""
    out = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str) or key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=1, cutoff=0.6)
            fix = f"did you mean {prefix + close[0]!r}?" if close else \
                f"remove it; known keys here: {', '.join(schema)}"
            chk.error(path, value, "unknown key", fix)
            continue
        sub = schema[key]
        if isinstance(sub, dict):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                chk.error(path, value, "must be a mapping", f"write it as `{key}:` with "
                          f"indented keys ({', '.join(sub)})")
                value = {}
            out[key] = _check_keys(value, sub, chk, path + ".")
        elif sub is _ANY_MAP:
            if value is None:
                value = {}
            if not isinstance(value, dict):
                chk.error(path, value, "must be a mapping", f"write `{key}:` with indented "
                          "`key: value` lines")
                value = {}
            out[key] = value
        else:
            out[key] = value
    for key, sub in schema.items():
        if key in out:
            continue
        if sub is _REQUIRED:
            chk.error(f"{prefix}{key}", MISSING, "is required", f"add `{key}:` to the scenario")
            out[key] = None
        elif isinstance(sub, dict):
            out[key] = _check_keys({}, sub, chk, f"{prefix}{key}.")
        elif sub is _ANY_MAP:
            out[key] = {}
        else:
            out[key] = copy.deepcopy(sub)
    return out


def _int(chk, path, value, low, high, fix=None):
    if isinstance(value, bool) or not isinstance(value, int):
        chk.error(path, value, "must be a whole number", fix or f"use a number from {low} to {high}")
        return None
    if not low <= value <= high:
        chk.error(path, value, f"must be between {low} and {high}",
                  fix or f"use a number from {low} to {high}")
        return None
    return value


def _choice(chk, path, value, choices):
    if value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        chk.error(path, value, "is not one of " + ", ".join(map(str, choices)),
                  f"{hint}use one of: {', '.join(map(str, choices))}")
        return None
    return value


def _str(chk, path, value, fix):
    if not isinstance(value, str) or not value:
        chk.error(path, value, "must be a non-empty text", fix)
        return None
    return value


def _grammar(chk, path, value, g):
    """`value` if it is a text `g` accepts in full, else an error naming what it must be."""
    if not g.ok(value):
        chk.error(path, value, f"must be {g.says}", f"e.g. {g.example}")
        return None
    return value


def _duration(chk, path, value):
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"{value}ms"
    if not grammar.DURATION.ok(value):
        chk.error(path, value, "is not a duration", "write it like 500ms, 2s, 1m or 1h")
        return None
    return value


def duration_seconds(value: str) -> float:
    """'500ms' -> 0.5, '2s' -> 2.0, '1m' -> 60.0; a bare number is milliseconds (HAProxy)."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    if not m:
        raise ValueError(value)
    n, unit = int(m.group(1)), m.group(2) or "ms"
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def os_family(os_name: str) -> str | None:
    return OS_FAMILIES.get(os_name.split("-")[0])


def build(data: dict, source: str, origins: dict, recorded: bool = False) -> Scenario:
    """Validate merged scenario data and freeze it. Raises ScenarioError.

    One check per section, in the order the file reads; every problem is collected
    (`chk`), so the user sees all of them at once.

    `recorded`: the data comes from a lab's record, validated when the lab was built;
    files it names (a local kubespray source) may be gone since, and a lab must still
    open (to be destroyed, at least)."""
    chk = _Checker(source, origins)
    raw = copy.deepcopy(data)
    d = _check_keys(data, SCHEMA, chk)

    name, case, provider, deployer, timezone, prefix = _check_identity(chk, d, data)
    groups, etcd_topology, load_balancer, lb_count = _check_nodes(chk, d, case, provider, deployer)
    box, box_name, os_name, family = _check_box(chk, d, provider)
    kube, version, ks_source, network_plugin, worker_proxy = _check_kubespray(
        chk, d, deployer, provider, os_name, family, recorded)
    subnet, first, vip, explicit, lb_name = _check_network(chk, d, name, lb_count, load_balancer)
    health, timeouts, retries, ports, stats_path, vrid, advert = _check_haproxy(chk, d)
    k8s = _check_kubernetes(chk, d, subnet)
    nfs, tools, popts = _check_rest(chk, d)
    tools_dir = _check_admin_tools_dir(chk, d, tools, recorded)
    _check_memory(chk, groups, deployer, provider, etcd_topology, lb_count)

    provisional = None
    if not [p for p in chk.problems if p.severity == "error"]:
        provisional = Scenario(
            name=name, description=str(d["description"] or ""), case=case, provider=provider,
            deployer=deployer, timezone=timezone, node_prefix=prefix,
            box=Box(box_name, box["version"], os_name, family or "rhel",
                    copy.deepcopy(box["providers"])),
            network=Network(subnet, first, vip, lb_name, explicit),
            admin_lb=groups["admin_lb"], load_balancer=load_balancer and lb_count > 0,
            control_plane=groups["control_plane"], worker=groups["worker"],
            etcd_topology=etcd_topology, etcd=groups["etcd"],
            service_cidr=str(k8s["service_cidr"]), pod_cidr=str(k8s["pod_cidr"]),
            kubespray=Kubespray(version, ks_source, kube["repo"], network_plugin, worker_proxy,
                                copy.deepcopy(kube["extra_vars"]), kube["wheels"]),
            haproxy=HAProxy(health, timeouts, retries, ports["stats_port"], stats_path,
                            ports["prometheus_port"]),
            keepalived={"virtual_router_id": vrid, "advert_int": advert},
            nfs_enabled=nfs["enabled"], nfs_path=nfs["path"], admin_tools=tuple(tools),
            provider_options=copy.deepcopy(popts), drills=tuple(d["drills"]),
            source=source, admin_tools_dir=tools_dir,
            raw=raw,
        )
        # address plan problems need the node list: the topology reports them
        from lab.model.topology import plan_problems
        for p in plan_problems(provisional):
            chk.problems.append(Problem(chk.file_of(p.field), p.field, p.value, p.message,
                                        p.fix, p.severity))
    errors = [p for p in chk.problems if p.severity == "error"]
    if errors:
        raise ScenarioError(chk.problems)
    warnings = tuple(p for p in chk.problems if p.severity != "error")
    return _replace(provisional, warnings=warnings)


def _check_identity(chk, d, data):
    """The lab's name, its Case, provider, deployer, time zone and node names."""
    name = d["name"]
    if name is None and "name" in data:
        chk.error("name", MISSING, "is empty", "give the lab a name, e.g. `name: case2-alice`")
    elif name is not None and not grammar.LAB_NAME.ok(name):
        chk.error("name", name, "must be 1-20 characters: lowercase letters, digits, '-', "
                  "starting with a letter (it names VMs, namespaces and kubeconfig contexts)",
                  "e.g. `name: case2-alice`")
        name = None
    case = d["case"]
    if case is None and "case" in data:
        chk.error("case", MISSING, "is empty", "choose `case: 1`, `2` or `3`")
    elif case is not None and (isinstance(case, bool) or not isinstance(case, int)):
        chk.error("case", case, "must be the number 1, 2 or 3", "write e.g. `case: 2`")
        case = None
    elif case is not None:
        case = _choice(chk, "case", case, CASES)
    provider = _choice(chk, "provider", d["provider"], PROVIDERS)
    deployer = _choice(chk, "deployer", d["deployer"], DEPLOYERS)
    if provider == "local" and deployer == "kubespray":
        deployer = "static"  # the local provider has no VMs for kubespray; see README
    timezone = d["timezone"]
    try:
        if not grammar.TIMEZONE.ok(timezone):
            raise ValueError(timezone)
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        chk.error("timezone", timezone, "is not a known time zone",
                  "use an IANA name such as UTC, Europe/Berlin or Asia/Seoul")
    prefix = d["node_prefix"]
    if not grammar.NODE_PREFIX.ok(prefix):
        chk.error("node_prefix", prefix, "must be 1-13 lowercase letters, digits or '-'",
                  "e.g. `node_prefix: k8s-node`")
        prefix = "k8s-node"
    return name, case, provider, deployer, timezone, prefix


def _check_nodes(chk, d, case, provider, deployer):
    """Node groups, etcd's topology and quorum, and the load balancer each Case needs."""
    groups = {}
    for role, low in (("admin_lb", 0), ("control_plane", 1), ("worker", 0), ("etcd", 1)):
        g = d[role]
        count = _int(chk, f"{role}.count", g["count"], low, 50)
        cpus = _int(chk, f"{role}.cpus", g["cpus"], 1, 64)
        memory = _int(chk, f"{role}.memory", g["memory"], 128, 262144,
                      "give the RAM in MiB, e.g. 2048")
        groups[role] = NodeGroup(count if count is not None else low,
                                 cpus or 1, memory or 1024)

    etcd_topology = _choice(chk, "etcd.topology", d["etcd"]["topology"], ETCD_TOPOLOGIES)
    members = groups["etcd"].count if etcd_topology == "external" else groups["control_plane"].count
    member_field = "etcd.count" if etcd_topology == "external" else "control_plane.count"
    if members and members % 2 == 0:
        chk.error(member_field, members,
                  f"etcd needs an odd number of members ({members} members survive only "
                  f"{(members - 1) // 2} failure(s), like {members - 1}, and need a larger quorum)",
                  f"use {members - 1} or {members + 1}")

    lb_flag = d["admin_lb"]["load_balancer"]
    if lb_flag is not None and not isinstance(lb_flag, bool):
        chk.error("admin_lb.load_balancer", lb_flag, "must be true or false",
                  "write `load_balancer: true` or leave it out")
        lb_flag = None
    load_balancer = (case != 1) if lb_flag is None else lb_flag
    lb_count = groups["admin_lb"].count
    if case in (2, 3) and (lb_count == 0 or not load_balancer):
        chk.error("admin_lb.count" if lb_count == 0 else "admin_lb.load_balancer",
                  lb_count if lb_count == 0 else lb_flag,
                  f"Case {case} sends {'external kubectl' if case == 2 else 'every client'} "
                  "through the HAProxy load balancer on admin-lb, so it needs one",
                  "set `admin_lb: {count: 1}` (2 with a network.vip for an HA pair), or use case 1")
    if case == 1 and load_balancer and lb_count > 0:
        chk.error("admin_lb.load_balancer", lb_flag, "Case 1 has no external load balancer "
                  "(workers use their local proxy, kubectl a control plane directly)",
                  "remove `load_balancer: true`, or use case 2 to add HAProxy in front")
    if case == 1 and lb_count > 1:
        chk.error("admin_lb.count", lb_count, "Case 1 has no load balancer to make highly "
                  "available; one admin node runs kubespray", "use `admin_lb: {count: 1}`")
    if deployer == "kubespray" and lb_count == 0 and provider != "local":
        chk.error("admin_lb.count", 0, "kubespray runs on the admin-lb node", "use count 1")
    return groups, etcd_topology, load_balancer, lb_count


def _check_box(chk, d, provider):
    """The Vagrant box and its OS (a provider's override may name another box and OS);
    returns the OS of the scenario's provider."""
    # box and OS
    box = d["box"]
    box_name = _grammar(chk, "box.name", box["name"], grammar.BOX_NAME)
    os_name = _grammar(chk, "box.os", box["os"], grammar.OS_NAME)
    family = None
    if os_name:
        family = os_family(os_name)
        if family is None:
            chk.error("box.os", os_name, "halab knows no such OS family",
                      "use rockylinux-N, almalinux-N, ubuntu-YY.MM or debian-N")
    if box["version"] is not None and not isinstance(box["version"], str):
        chk.error("box.version", box["version"], "must be text", 'quote it: version: "202510.26.0"')
    elif box["version"] is not None:
        _grammar(chk, "box.version", box["version"], grammar.BOX_VERSION)
    for prov, override in box["providers"].items():
        if prov not in PROVIDERS:
            _choice(chk, f"box.providers.{prov}", prov, PROVIDERS)
        elif not isinstance(override, dict):
            chk.error(f"box.providers.{prov}", override, "must map to {name, version}",
                      "e.g. `libvirt: {name: generic/rocky9}`")
        else:
            # per key, so that the message names the file that added it (not the parent's)
            if "name" in override:
                _grammar(chk, f"box.providers.{prov}.name", override["name"], grammar.BOX_NAME)
            if override.get("version") is not None:
                _grammar(chk, f"box.providers.{prov}.version", override["version"],
                         grammar.BOX_VERSION)
            if "os" in override:
                own = _grammar(chk, f"box.providers.{prov}.os", override["os"], grammar.OS_NAME)
                if own and os_family(own) is None:
                    chk.error(f"box.providers.{prov}.os", own, "halab knows no such OS family",
                              "use rockylinux-N, almalinux-N, ubuntu-YY.MM or debian-N")
                elif own and prov == provider:
                    os_name, family = own, os_family(own)
            for key in sorted(set(override) - {"name", "version", "os"}, key=str):
                close = difflib.get_close_matches(str(key), ["name", "version", "os"], n=1)
                chk.error(f"box.providers.{prov}.{key}", override[key], "unknown key",
                          (f"did you mean 'box.providers.{prov}.{close[0]}'? " if close else "")
                          + "a box override has only `name`, `version` and `os`")
    return box, box_name, os_name, family


def _check_kubespray(chk, d, deployer, provider, os_name, family, recorded):
    """The kubespray release, where it comes from, and its variables."""
    kube = d["kubespray"]
    version = kube["version"]
    vm = _VERSION.fullmatch(version) if isinstance(version, str) else None
    if not vm:
        chk.error("kubespray.version", version, "is not a kubespray release tag",
                  "write it like v2.29.1")
    elif os_name and family and deployer == "kubespray" and provider != "local":
        os_field = f"box.providers.{provider}.os" if os_name != d["box"]["os"] else "box.os"
        for about, why in kubespray_releases.pair_problems(version, os_name):
            chk.warn(os_field if about == "os" else "kubespray.version",
                     os_name if about == "os" else version, why,
                     "pick a box and a kubespray release that go together (the README's "
                     "kubespray table), and test the pair before the workshop")
    _grammar(chk, "kubespray.repo", kube["repo"], grammar.GIT_URL)
    for var in kube["extra_vars"]:
        if not grammar.VAR_NAME.ok(var):
            chk.error(f"kubespray.extra_vars.{var}", kube["extra_vars"][var],
                      f"{var!r} is not {grammar.VAR_NAME.says}", "e.g. `kube_version: ...`")
    ks_source = kube["source"]
    if ks_source != "git" and not grammar.LOCAL_SOURCE.ok(ks_source):
        chk.error("kubespray.source", ks_source, f"must be `git` or {grammar.LOCAL_SOURCE.says}",
                  f"e.g. `source: {grammar.LOCAL_SOURCE.example}`")
    elif ks_source != "git" and not recorded:
        if not Path(ks_source).expanduser().exists():
            chk.error("kubespray.source", ks_source, "is neither `git` nor an existing local "
                      "kubespray folder or .tar.gz", "use `git`, or a path to a kubespray "
                      "checkout downloaded once for the classroom")
    _check_wheels(chk, kube, deployer, provider, version if vm else None, os_name, recorded)
    network_plugin = _choice(chk, "kubespray.network_plugin", kube["network_plugin"],
                             NETWORK_PLUGINS)
    worker_proxy = _choice(chk, "kubespray.worker_proxy", kube["worker_proxy"], WORKER_PROXIES)
    for var in _CASE_VARS:
        if var in kube["extra_vars"]:
            chk.error(f"kubespray.extra_vars.{var}", kube["extra_vars"][var],
                      "is set by halab from `case` (overriding it silently changes the Case)",
                      "remove it and choose `case: 1`, `2` or `3`")
    return kube, version, ks_source, network_plugin, worker_proxy


def _check_wheels(chk, kube, deployer, provider, version, os_name, recorded):
    """Where kubespray's Python requirements come from (`pypi`, `host` or a folder)."""
    wheels = kube["wheels"]
    if wheels in ("pypi", "host"):
        pass
    elif not isinstance(wheels, str) or not grammar.LOCAL_SOURCE.ok(wheels):
        chk.error("kubespray.wheels", wheels, f"must be `pypi`, `host` or "
                  f"{grammar.LOCAL_SOURCE.says}", "e.g. `wheels: host` (halab downloads "
                  "them here) or `wheels: ./kubespray-wheels`")
        return
    elif not recorded:
        folder = Path(wheels).expanduser()
        if not folder.is_dir() or not any(folder.glob("*.whl")):
            chk.error("kubespray.wheels", wheels, "is not a folder with .whl files",
                      "use `host` to let halab download them, or fill the folder with "
                      "`pip download -d FOLDER --only-binary=:all: --python-version X.Y "
                      "--platform manylinux2014_x86_64 -r kubespray/requirements.txt`")
    if wheels != "host" or deployer != "kubespray" or provider == "local":
        return
    if kube["source"] == "git":
        chk.error("kubespray.wheels", wheels, "`host` reads kubespray's requirements.txt "
                  "from a local kubespray.source, and kubespray.source is `git`",
                  "set kubespray.source to a local copy (`git clone -b "
                  f"{version or 'vX.Y.Z'} https://github.com/kubernetes-sigs/kubespray`), "
                  "or use `wheels: pypi`")
    rel = kubespray_releases.release(version) if version else None
    if rel and os_name and kubespray_releases.controller_python(rel, os_name) is None:
        chk.error("kubespray.wheels", wheels, f"halab does not know a Python of {os_name} "
                  f"that kubespray {version} runs on, so it cannot pick the wheels",
                  "use a box halab knows (the README's kubespray table) or give a folder "
                  "of wheels built for the box's Python")
    if os_name and os_name not in kubespray_releases.OS_GLIBC:
        chk.error("kubespray.wheels", wheels, f"halab does not know the C library of "
                  f"{os_name}, which decides the wheels' platform",
                  "give a folder of wheels made for the box, or `wheels: pypi`")


# the admin tools upstream publishes as single programs (no OS package)
UPSTREAM_TOOLS = ("kubectl", "helm", "k9s", "kubecolor")


def _linux_x86_64_problem(path: Path) -> str | None:
    """Why `path` is no Linux x86-64 program, or None when it is one (ELF header)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(20)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if head[:4] == b"\x7fELF":
        return None if head[18:20] == b"\x3e\x00" else "is a Linux program for another CPU"
    if head[:4] in (b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe"):
        return "is a macOS program"
    if head[:2] == b"MZ":
        return "is a Windows program"
    if head[:2] == b"\x1f\x8b":
        return "is a .tar.gz, not the program itself"
    return "is not a Linux program"


def _check_admin_tools_dir(chk, d, tools, recorded):
    folder = d["admin_tools_dir"]
    if folder is None:
        return None
    if not isinstance(folder, str) or not grammar.LOCAL_SOURCE.ok(folder):
        chk.error("admin_tools_dir", folder, f"must be {grammar.LOCAL_SOURCE.says}",
                  "e.g. `admin_tools_dir: ./admin-tools`")
        return None
    if recorded:
        return folder
    path = Path(folder).expanduser()
    if not path.is_dir():
        chk.error("admin_tools_dir", folder, "is not a folder", "make it and put the "
                  "programs there (kubectl, helm, k9s: Linux x86-64)")
        return folder
    for tool in tools:
        if tool not in UPSTREAM_TOOLS:
            continue
        prog = path / tool
        if not prog.is_file():
            chk.error("admin_tools_dir", folder, f"has no {tool} (admin_tools lists it)",
                      f"put the {tool} program (Linux x86-64) there, or remove {tool} "
                      "from admin_tools")
        elif (why := _linux_x86_64_problem(prog)):
            chk.error("admin_tools_dir", f"{folder}/{tool}", why,
                      f"download the Linux x86-64 build of {tool} (for a .tar.gz: unpack "
                      "it and keep the program)")
    return folder


def _check_network(chk, d, name, lb_count, load_balancer):
    """The lab subnet, the address plan's fixed points, the VIP and the LB's name."""
    # network and addresses
    net = d["network"]
    subnet = None
    try:
        subnet = ipaddress.IPv4Network(str(net["subnet"]), strict=True)
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError) as exc:
        chk.error("network.subnet", net["subnet"], f"is not an IPv4 network ({exc})",
                  "write it like 192.168.10.0/24 (host bits zero)")
    if subnet is not None:
        kind = ("a loopback" if subnet.is_loopback else "a multicast" if subnet.is_multicast
                else "a link-local" if subnet.is_link_local else "a reserved"
                if subnet.is_reserved or subnet.is_unspecified else "a public"
                if not subnet.is_private else None)
        if kind is None and subnet.prefixlen < 16:
            chk.error("network.subnet", str(subnet), "is larger than a lab network needs "
                      "(VirtualBox and libvirt take the whole range)",
                      "use a /24, e.g. 192.168.10.0/24")
            subnet = None
        elif kind is not None:
            chk.error("network.subnet", str(subnet), f"is {kind} range, not one a "
                      "host-only lab network can use", "use a private /24 such as "
                      "192.168.10.0/24 (VirtualBox allows 192.168.56.0/21 by default)")
            subnet = None
    def address(path, value):
        try:
            ip = ipaddress.IPv4Address(str(value))
        except ipaddress.AddressValueError:
            chk.error(path, value, "is not an IPv4 address", "write it like 192.168.10.10")
            return None
        if subnet is not None and ip not in subnet:
            chk.error(path, value, f"is outside the lab subnet {subnet}",
                      f"use an address in {subnet} or change network.subnet")
            return None
        if subnet is not None and ip in (subnet.network_address, subnet.broadcast_address):
            chk.error(path, value, "is the network or broadcast address of the subnet",
                      "use a host address")
            return None
        if subnet is not None and ip == next(subnet.hosts()):
            chk.error(path, value, "is the first host address, which the host side of the "
                      "lab network (VirtualBox/libvirt) takes", "start at .2 or later")
            return None
        return ip
    first = None
    if subnet is not None:
        if net["first_address"] is None:
            if subnet.num_addresses > 16:
                first = subnet.network_address + 10
            else:
                first = subnet.network_address + 2
        else:
            first = address("network.first_address", net["first_address"])
    vip = address("network.vip", net["vip"]) if net["vip"] is not None else None
    if lb_count > 1 and load_balancer and vip is None and net["vip"] is None:
        chk.error("network.vip", MISSING, f"{lb_count} load balancers need a virtual IP that "
                  "keepalived moves between them", "add `vip: <free address in the subnet>`",
                  blame="admin_lb.count")
    if vip is not None and not (lb_count > 1 and load_balancer):
        chk.warn("network.vip", str(vip), "a virtual IP is only used with two or more "
                 "load balancers (keepalived)", "remove it or set admin_lb.count: 2")
    explicit = {}
    for node, value in net["addresses"].items():
        ip = address(f"network.addresses.{node}", value)
        if ip is not None:
            explicit[str(node)] = ip
    lb_name = net["lb_name"]
    if lb_name is None and isinstance(name, str):
        lb_name = f"k8s-api.{name}.lab"
    elif lb_name is not None and not grammar.DNS_NAME.ok(lb_name):
        chk.error("network.lb_name", lb_name, f"is not {grammar.DNS_NAME.says}",
                  "e.g. `lb_name: k8s-api.lab`")
        lb_name = None
    return subnet, first, vip, explicit, lb_name


def _check_haproxy(chk, d):
    """HAProxy's checks, timeouts and ports, and keepalived's VRRP settings."""
    # haproxy
    hp = d["haproxy"]
    hc = hp["healthcheck"]
    hpath = hc["path"]
    if not grammar.HTTP_PATH.ok(hpath):
        chk.error("haproxy.healthcheck.path", hpath, f"must be {grammar.HTTP_PATH.says}",
                  "use /readyz (fails when the API server cannot reach etcd)")
        hpath = "/readyz"
    if hpath in ("/healthz", "/livez"):
        chk.warn("haproxy.healthcheck.path", hpath, "stays OK when the API server has lost "
                 "etcd, so HAProxy keeps sending requests to a broken server", "use /readyz")
    health = HealthCheck(
        path=hpath if isinstance(hpath, str) else "/readyz",
        inter=_duration(chk, "haproxy.healthcheck.inter", hc["inter"]) or "1s",
        fastinter=_duration(chk, "haproxy.healthcheck.fastinter", hc["fastinter"]) or "500ms",
        downinter=_duration(chk, "haproxy.healthcheck.downinter", hc["downinter"]) or "1s",
        fall=_int(chk, "haproxy.healthcheck.fall", hc["fall"], 1, 100) or 2,
        rise=_int(chk, "haproxy.healthcheck.rise", hc["rise"], 1, 100) or 2,
    )
    timeouts = {k: _duration(chk, f"haproxy.timeouts.{k}", v) or "1s"
                for k, v in hp["timeouts"].items()}
    ports = {}
    for key in ("stats_port", "prometheus_port"):
        p = _int(chk, f"haproxy.{key}", hp[key], 1, 65535)
        if p is not None:
            if p in grammar.NODE_PORTS:
                chk.error(f"haproxy.{key}", p, f"is taken on admin-lb by "
                          f"{grammar.NODE_PORTS[p]}", "choose a free port, e.g. 9000 / 8405")
            elif p in ports.values():
                chk.error(f"haproxy.{key}", p, "is also the other HAProxy port",
                          "choose two different ports, e.g. 9000 and 8405")
            ports[key] = p
    retries = _int(chk, "haproxy.retries", hp["retries"], 0, 10) or 0
    stats_path = hp["stats_path"]
    if not grammar.HTTP_PATH.ok(stats_path):
        chk.error("haproxy.stats_path", stats_path, f"must be {grammar.HTTP_PATH.says}",
                  "e.g. /haproxy_stats")
        stats_path = "/haproxy_stats"
    ka = d["keepalived"]
    vrid = _int(chk, "keepalived.virtual_router_id", ka["virtual_router_id"], 1, 255)
    advert = _int(chk, "keepalived.advert_int", ka["advert_int"], 1, 60)
    return health, timeouts, retries, ports, stats_path, vrid, advert


def _check_kubernetes(chk, d, subnet):
    """Service and pod ranges: clear of the lab subnet and each other."""
    # kubernetes networks must not overlap the lab subnet, nor each other
    k8s = d["kubernetes"]
    k8s_nets: dict[str, ipaddress.IPv4Network] = {}
    for key in ("service_cidr", "pod_cidr"):
        try:
            k8s_nets[key] = ipaddress.IPv4Network(str(k8s[key]))
        except ValueError:
            chk.error(f"kubernetes.{key}", k8s[key], "is not an IPv4 network",
                      "write it like 10.233.0.0/18")
    for key, cidr in k8s_nets.items():
        other = k8s_nets.get("pod_cidr" if key == "service_cidr" else "service_cidr")
        if subnet is not None and cidr.overlaps(subnet):
            free = free_k8s_range(key, [subnet] + ([other] if other else []))
            chk.error(f"kubernetes.{key}", k8s[key], f"overlaps the lab subnet {subnet}",
                      f"set kubernetes.{key}: {free}, or move network.subnet out of {cidr}",
                      blame=None if f"kubernetes.{key}" in chk.origins else "network.subnet")
        elif key == "pod_cidr" and other is not None and cidr.overlaps(other):
            free = free_k8s_range(key, [other] + ([subnet] if subnet else []))
            chk.error("kubernetes.pod_cidr", k8s[key],
                      f"overlaps kubernetes.service_cidr {other}",
                      f"use separate ranges, e.g. pod_cidr: {free}")
    return k8s


def _check_rest(chk, d):
    """The NFS share, admin tools, provider options and the runbook's shape."""
    nfs = d["nfs"]
    if not isinstance(nfs["enabled"], bool):
        chk.error("nfs.enabled", nfs["enabled"], "must be true or false", "write true or false")
    if not grammar.ABS_PATH.ok(nfs["path"]) or ".." in nfs["path"].split("/"):
        chk.error("nfs.path", nfs["path"], f"must be {grammar.ABS_PATH.says}",
                  "e.g. /srv/nfs/share")
    elif grammar.in_system_folder(nfs["path"]):
        chk.error("nfs.path", nfs["path"], "is a system folder (or directly in one): the "
                  "whole lab subnet could write there", "use a folder of its own, e.g. "
                  "/srv/nfs/share")
    tools = d["admin_tools"]
    if not isinstance(tools, list):
        chk.error("admin_tools", tools, "must be a list", "e.g. `admin_tools: [helm, k9s]`")
        tools = []
    for i, tool in enumerate(tools):
        _choice(chk, f"admin_tools[{i}]", tool, ADMIN_TOOLS)

    popts = d["provider_options"]
    lv = popts["libvirt"]
    _choice(chk, "provider_options.libvirt.driver", lv["driver"], ("kvm", "qemu"))
    for key in ("emulator_path", "kernel", "initrd"):
        if lv[key] is not None:
            _grammar(chk, f"provider_options.libvirt.{key}", lv[key], grammar.HOST_PATH)
    if lv["cmd_line"] is not None:
        _grammar(chk, "provider_options.libvirt.cmd_line", lv["cmd_line"], grammar.KERNEL_CMDLINE)
    if lv["storage_pool_name"] is not None:
        _grammar(chk, "provider_options.libvirt.storage_pool_name", lv["storage_pool_name"],
                 grammar.LIBVIRT_NAME)
    if lv["management_network_address"] is not None:
        mgmt = _grammar(chk, "provider_options.libvirt.management_network_address",
                        lv["management_network_address"], grammar.IPV4_CIDR)
        try:
            if mgmt is not None:
                ipaddress.IPv4Network(mgmt)
        except ValueError as exc:
            chk.error("provider_options.libvirt.management_network_address", mgmt,
                      f"is not an IPv4 network ({exc})", "e.g. 192.168.121.0/24")
    vb = popts["virtualbox"]
    _grammar(chk, "provider_options.virtualbox.group", vb["group"], grammar.VBOX_GROUP)
    for key in ("linked_clone", "nic_promiscuous"):
        if not isinstance(vb[key], bool):
            chk.error(f"provider_options.virtualbox.{key}", vb[key], "must be true or false",
                      "write true or false")
    if popts["local"]["bridge"] is not None:
        _grammar(chk, "provider_options.local.bridge", popts["local"]["bridge"],
                 grammar.LINUX_IFNAME)
    if not isinstance(d["drills"], list):
        chk.error("drills", d["drills"], "must be a list of drill steps",
                  "e.g. `drills: [{fault: kill, target: k8s-node1}]`")
    return nfs, tools, popts


def _check_memory(chk, groups, deployer, provider, etcd_topology, lb_count):
    """RAM against what kubespray's preinstall checks demand."""
    # memory against what the deployer needs
    if deployer == "kubespray" and provider != "local":
        for role in ("control_plane", "worker") + (("etcd",) if etcd_topology == "external" else ()):
            g = groups[role]
            if role != "control_plane" and g.count == 0:
                continue
            need = KUBESPRAY_MIN_MEMORY[role]
            if g.memory < need:
                chk.error(f"{role}.memory", g.memory, f"is below kubespray's minimum for "
                          f"{role.replace('_', ' ')} nodes ({need} MiB, checked against the "
                          "guest's MemTotal)",
                          f"use at least {math.ceil(need * MEMTOTAL_MARGIN)} MiB or the `mini` "
                          "scenario")
            elif g.memory < need * MEMTOTAL_MARGIN:
                chk.warn(f"{role}.memory", g.memory, f"is close to kubespray's minimum of {need}"
                         " MiB; the guest's MemTotal is ~10 % lower than the VM's RAM and the "
                         "preinstall check may fail",
                         f"use at least {math.ceil(need * MEMTOTAL_MARGIN)}")
        if lb_count and groups["admin_lb"].memory < 768:
            chk.error("admin_lb.memory", groups["admin_lb"].memory, "admin-lb runs kubespray "
                      "(ansible) and HAProxy and needs at least 768 MiB", "use 1024")


K8S_RANGES = {"service_cidr": ("10.233.0.0/18", "10.96.0.0/16", "172.30.0.0/16"),
              "pod_cidr": ("10.233.64.0/18", "10.244.0.0/16", "172.31.0.0/16")}


def free_k8s_range(key: str, taken: list) -> str:
    """A conventional range for `key` that overlaps none of `taken` (for a fix hint)."""
    for cand in K8S_RANGES[key]:
        if not any(ipaddress.IPv4Network(cand).overlaps(t) for t in taken):
            return cand
    return K8S_RANGES[key][-1]


def _replace(s: Scenario, **kw) -> Scenario:
    from dataclasses import replace
    return replace(s, **kw)


# ---------------------------------------------------------------- the lab's record

def from_record(raw: dict, source: str) -> Scenario:
    """The scenario a lab was built from, rebuilt from its record (not from the YAML,
    which may have been edited or deleted since)."""
    return build(copy.deepcopy(raw), source, {}, recorded=True)


def as_record(s: Scenario) -> dict:
    """The resolved scenario as plain JSON data (what the lab's record keeps)."""
    import json
    return json.loads(json.dumps(s.raw, default=str))


# fields whose change does not change what `up` builds
LIVE_FIELDS = ("description", "drills")


def changes(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted field, old value, new value) for every difference of two resolved scenarios."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        path = f"{prefix}{key}"
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += changes(a, b, path + ".")
        elif a != b:
            out.append((path, a, b))
    return out
