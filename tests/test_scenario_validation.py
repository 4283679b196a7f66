"""One test per scenario validation rule, through the real CLI (`halab validate`, `halab render`).

Every rejected scenario must: exit non-zero, name the file, the field, the bad value
and a fix on one line, show no traceback (unless --debug), and leave no --out folder.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from lab.cli import main

NOVALUE = object()  # the problem is a missing field: no value is shown


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    # messages name a scenario file relative to the working folder when they can
    monkeypatch.chdir(tmp_path)


def halab(*args: str):
    """Run the CLI in-process; stderr kept apart; HALAB_DEBUG from the caller ignored."""
    result = CliRunner(env={"HALAB_DEBUG": None}).invoke(main, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"halab {' '.join(args)} crashed: {result.exception!r}\n"
                             f"{result.output}") from result.exception
    return result


def write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def _error_lines(stderr: str) -> list[str]:
    return [line.strip()[len("error: "):] for line in stderr.splitlines()
            if line.strip().startswith("error: ")]


def assert_rejected(tmp_path: Path, path: Path, field: str, value, message: str, fix: str,
                    file: str | None = None) -> str:
    """Both verbs refuse `path` with one line naming file, field, value, problem and fix."""
    file = file or path.name
    out = tmp_path / "out"
    stderrs = []
    for args in (["validate", str(path)], ["render", str(path), "--out", str(out)]):
        r = halab(*args)
        where = f"halab {' '.join(args)}:\n{r.stderr}"
        assert r.exit_code != 0, where
        assert "Traceback" not in r.output + r.stderr, where
        assert "nothing was written" in r.stderr, where
        shown = "" if value is NOVALUE else f" = {value!r}"
        lines = [ln for ln in _error_lines(r.stderr)
                 if ln.startswith(f"{file}: {field}{shown}: ") and message in ln]
        assert lines, f"no error line for {file}: {field}{shown} ({message!r})\n{where}"
        assert "; fix: " in lines[0] and fix in lines[0].split("; fix: ", 1)[1], where
        stderrs.append(r.stderr)
    assert not out.exists(), "render created --out for a rejected scenario"
    assert not list(tmp_path.glob(".out.*")), "render left a temporary folder behind"
    return stderrs[0]


def assert_refused(tmp_path: Path, path: Path, *fragments: str) -> str:
    """For whole-file problems (YAML syntax, extends): one `halab: error:` line."""
    out = tmp_path / "out"
    for args in (["validate", str(path)], ["render", str(path), "--out", str(out)]):
        r = halab(*args)
        where = f"halab {' '.join(args)}:\n{r.stderr}"
        assert r.exit_code == 2, where
        assert "Traceback" not in r.output + r.stderr, where
        line = r.stderr.strip()
        assert line.startswith("halab: error: ") and "\n" not in line, where
        for fragment in fragments:
            assert fragment in line, f"{fragment!r} missing\n{where}"
    assert not out.exists()
    return line


# (yaml extending case2, field, bad value, message fragment, fix fragment)
RULES = [
    # keys
    pytest.param("cas: 3", "cas", 3, "unknown key", "did you mean 'case'?", id="unknown-key"),
    pytest.param("haproxy:\n  healthcheck: {paht: /readyz}", "haproxy.healthcheck.paht", "/readyz",
                 "unknown key", "did you mean 'haproxy.healthcheck.path'?",
                 id="unknown-nested-key"),
    pytest.param("colour: blue", "colour", "blue", "unknown key", "known keys here: name,",
                 id="unknown-key-no-match"),
    pytest.param("haproxy: 5", "haproxy", 5, "must be a mapping", "indented keys",
                 id="section-not-a-mapping"),
    # types and ranges
    pytest.param("worker: {count: two}", "worker.count", "two", "must be a whole number",
                 "use a number from 0 to 50", id="count-not-a-number"),
    pytest.param("worker: {count: true}", "worker.count", True, "must be a whole number",
                 "use a number from 0 to 50", id="count-boolean"),
    pytest.param("worker: {cpus: 0}", "worker.cpus", 0, "must be between 1 and 64",
                 "use a number from 1 to 64", id="cpus-out-of-range"),
    pytest.param("control_plane: {memory: 2 GiB}", "control_plane.memory", "2 GiB",
                 "must be a whole number", "in MiB, e.g. 2048", id="memory-with-unit"),
    pytest.param("admin_tools: helm", "admin_tools", "helm", "must be a list",
                 "admin_tools: [helm, k9s]", id="tools-not-a-list"),
    pytest.param("admin_lb: {load_balancer: yes please}", "admin_lb.load_balancer", "yes please",
                 "must be true or false", "load_balancer: true", id="load-balancer-not-bool"),
    pytest.param("nfs: {enabled: maybe}", "nfs.enabled", "maybe", "must be true or false",
                 "true or false", id="nfs-enabled-not-bool"),
    pytest.param("nfs: {path: srv/nfs}", "nfs.path", "srv/nfs", "must be an absolute path",
                 "/srv/nfs/share", id="nfs-path-relative"),
    pytest.param("box: {version: 202510.26}", "box.version", 202510.26, "must be text",
                 'quote it', id="box-version-number"),
    pytest.param("drills: {fault: kill}", "drills", {"fault": "kill"}, "must be a list",
                 "drills: [", id="drills-not-a-list"),
    # choices
    pytest.param("provider: virtualbx", "provider", "virtualbx", "is not one of virtualbox",
                 "did you mean 'virtualbox'?", id="provider-choice"),
    pytest.param("case: 4", "case", 4, "is not one of 1, 2, 3", "use one of: 1, 2, 3",
                 id="case-choice"),
    pytest.param("deployer: kubeadm", "deployer", "kubeadm", "is not one of kubespray, static",
                 "use one of: kubespray, static", id="deployer-choice"),
    pytest.param("kubespray: {network_plugin: calco}", "kubespray.network_plugin", "calco",
                 "is not one of", "did you mean 'calico'?", id="network-plugin-choice"),
    pytest.param("kubespray: {worker_proxy: envoy}", "kubespray.worker_proxy", "envoy",
                 "is not one of nginx, haproxy", "use one of: nginx, haproxy",
                 id="worker-proxy-choice"),
    pytest.param("etcd: {topology: stackd}", "etcd.topology", "stackd", "is not one of",
                 "did you mean 'stacked'?", id="etcd-topology-choice"),
    pytest.param("admin_tools: [kubectl, helmm]", "admin_tools[1]", "helmm", "is not one of",
                 "did you mean 'helm'?", id="admin-tool-choice"),
    pytest.param("provider_options: {libvirt: {driver: xen}}", "provider_options.libvirt.driver",
                 "xen", "is not one of kvm, qemu", "use one of: kvm, qemu", id="libvirt-driver"),
    pytest.param("box: {os: windows-11}", "box.os", "windows-11", "knows no such OS family",
                 "rockylinux-N", id="box-os-family"),
    pytest.param("box: {providers: {hyperv: {name: x}}}", "box.providers.hyperv", "hyperv",
                 "is not one of virtualbox, libvirt, local", "use one of",
                 id="box-provider-choice"),
    pytest.param("box: {providers: {libvirt: {nam: x}}}", "box.providers.libvirt.nam", "x",
                 "unknown key", "did you mean 'box.providers.libvirt.name'?",
                 id="box-provider-override-key"),
    pytest.param("box: {providers: {virtualbox: bento/rockylinux-9}}", "box.providers.virtualbox",
                 "bento/rockylinux-9", "must map to {name, version}", "libvirt: {name:",
                 id="box-provider-override-not-a-mapping"),
    # names
    pytest.param("name: Case_2", "name", "Case_2", "must be 1-20 characters",
                 "name: case2-alice", id="bad-name"),
    pytest.param("name: a-very-long-lab-name-indeed", "name", "a-very-long-lab-name-indeed",
                 "must be 1-20 characters", "name: case2-alice", id="name-too-long"),
    pytest.param("node_prefix: Node_", "node_prefix", "Node_", "must be 1-13 lowercase",
                 "node_prefix: k8s-node", id="bad-node-prefix"),
    pytest.param("network: {lb_name: api_lb.lab}", "network.lb_name", "api_lb.lab",
                 "is not a DNS name", "lb_name: k8s-api.lab", id="bad-lb-name"),
    # etcd quorum
    pytest.param("control_plane: {count: 2}", "control_plane.count", 2,
                 "etcd needs an odd number of members", "use 1 or 3", id="even-etcd-stacked"),
    pytest.param("etcd: {topology: external, count: 4}", "etcd.count", 4,
                 "etcd needs an odd number of members", "use 3 or 5", id="even-etcd-external"),
    # addresses
    pytest.param("network: {subnet: 192.168.10.1/24}", "network.subnet", "192.168.10.1/24",
                 "is not an IPv4 network", "host bits zero", id="subnet-host-bits"),
    pytest.param("network: {first_address: 192.168.11.10}", "network.first_address",
                 "192.168.11.10", "is outside the lab subnet 192.168.10.0/24",
                 "use an address in 192.168.10.0/24", id="address-outside-subnet"),
    pytest.param("network: {first_address: 192.168.10.300}", "network.first_address",
                 "192.168.10.300", "is not an IPv4 address", "like 192.168.10.10",
                 id="address-malformed"),
    pytest.param("network: {first_address: 192.168.10.1}", "network.first_address",
                 "192.168.10.1", "is the first host address", "start at .2 or later",
                 id="first-host-address-reserved"),
    pytest.param("network: {first_address: 192.168.10.255}", "network.first_address",
                 "192.168.10.255", "is the network or broadcast address", "use a host address",
                 id="broadcast-address"),
    pytest.param("network:\n  addresses: {k8s-node1: 192.168.10.50, k8s-node2: 192.168.10.50}",
                 "network.addresses.k8s-node2", "192.168.10.50",
                 "is already used by network.addresses.k8s-node1", "its own address",
                 id="explicit-addresses-collide"),
    pytest.param("network: {subnet: 192.168.10.0/28}", "network.subnet", "192.168.10.0/28",
                 "holds too few addresses from 192.168.10.10 on for 6 nodes",
                 "use a larger subnet", id="too-many-nodes-for-subnet"),
    pytest.param("network:\n  addresses: {k8s-node9: 192.168.10.99}", "network.addresses.k8s-node9",
                 "192.168.10.99", "names no node of this scenario", "nodes: admin-lb, k8s-node1",
                 id="unknown-node-in-addresses"),
    pytest.param("kubernetes: {pod_cidr: 192.168.0.0/16}", "kubernetes.pod_cidr",
                 "192.168.0.0/16", "overlaps the lab subnet 192.168.10.0/24",
                 "set kubernetes.pod_cidr: 10.233.64.0/18, or move network.subnet out of "
                 "192.168.0.0/16", id="pod-cidr-overlaps-lab"),
    pytest.param("kubernetes: {service_cidr: 192.168.10.128/25}", "kubernetes.service_cidr",
                 "192.168.10.128/25", "overlaps the lab subnet", "kubernetes.service_cidr: "
                 "10.233.0.0/18", id="service-cidr-overlaps-lab"),
    # the suggested range is free (not the default that collided)
    pytest.param("network: {subnet: 10.233.0.0/24}", "kubernetes.service_cidr",
                 "10.233.0.0/18", "overlaps the lab subnet 10.233.0.0/24",
                 "set kubernetes.service_cidr: 10.96.0.0/16", id="lab-subnet-in-service-cidr"),
    pytest.param("kubernetes: {pod_cidr: 10.233.0.0/16}", "kubernetes.pod_cidr",
                 "10.233.0.0/16", "overlaps kubernetes.service_cidr 10.233.0.0/18",
                 "pod_cidr: 10.233.64.0/18", id="pod-cidr-overlaps-service-cidr"),
    pytest.param("kubernetes: {service_cidr: ten.233.0.0/18}", "kubernetes.service_cidr",
                 "ten.233.0.0/18", "is not an IPv4 network", "10.233.0.0/18",
                 id="service-cidr-malformed"),
    # load balancer per Case
    pytest.param("admin_lb: {load_balancer: false}", "admin_lb.load_balancer", False,
                 "Case 2 sends external kubectl through the HAProxy load balancer",
                 "admin_lb: {count: 1}", id="case2-without-lb"),
    pytest.param("case: 3\nadmin_lb: {count: 0}", "admin_lb.count", 0,
                 "Case 3 sends every client through the HAProxy load balancer",
                 "admin_lb: {count: 1}", id="case3-without-lb"),
    pytest.param("case: 1\nadmin_lb: {load_balancer: true}", "admin_lb.load_balancer", True,
                 "Case 1 has no external load balancer", "use case 2", id="case1-with-lb"),
    pytest.param("case: 1\nadmin_lb: {count: 2}", "admin_lb.count", 2,
                 "Case 1 has no load balancer to make highly available",
                 "admin_lb: {count: 1}", id="case1-with-two-admin-nodes"),
    pytest.param("case: 1\nadmin_lb: {count: 0}", "admin_lb.count", 0,
                 "kubespray runs on the admin-lb node", "use count 1", id="kubespray-needs-admin"),
    pytest.param("admin_lb: {count: 2}", "network.vip", NOVALUE,
                 "2 load balancers need a virtual IP", "add `vip:", id="ha-lb-without-vip"),
    # memory
    pytest.param("control_plane: {memory: 1024}", "control_plane.memory", 1024,
                 "is below kubespray's minimum for control plane nodes (1500 MiB",
                 "use at least 1725 MiB", id="control-plane-ram-below-minimum"),
    pytest.param("worker: {memory: 768}", "worker.memory", 768,
                 "is below kubespray's minimum for worker nodes (1024 MiB",
                 "use at least 1178 MiB", id="worker-ram-below-minimum"),
    pytest.param("admin_lb: {memory: 512}", "admin_lb.memory", 512,
                 "needs at least 768 MiB", "use 1024", id="admin-lb-ram"),
    # haproxy
    pytest.param("haproxy: {stats_port: 6443}", "haproxy.stats_port", 6443,
                 "is taken on admin-lb by the Kubernetes API", "choose a free port",
                 id="stats-port-is-api-port"),
    pytest.param("haproxy: {stats_port: 22}", "haproxy.stats_port", 22,
                 "is taken on admin-lb by SSH", "choose a free port", id="stats-port-is-ssh"),
    pytest.param("haproxy: {prometheus_port: 2049}", "haproxy.prometheus_port", 2049,
                 "is taken on admin-lb by NFS", "choose a free port", id="prometheus-port-is-nfs"),
    pytest.param("haproxy: {prometheus_port: 9000}", "haproxy.prometheus_port", 9000,
                 "is also the other HAProxy port", "choose two different ports",
                 id="prometheus-port-is-stats-port"),
    pytest.param("haproxy: {stats_port: 70000}", "haproxy.stats_port", 70000,
                 "must be between 1 and 65535", "use a number from 1 to 65535",
                 id="port-out-of-range"),
    pytest.param("haproxy:\n  healthcheck: {inter: fast}", "haproxy.healthcheck.inter", "fast",
                 "is not a duration", "500ms, 2s, 1m or 1h", id="bad-duration"),
    pytest.param("haproxy:\n  timeouts: {client: 10 minutes}", "haproxy.timeouts.client",
                 "10 minutes", "is not a duration", "500ms, 2s, 1m or 1h", id="bad-timeout"),
    pytest.param("haproxy:\n  healthcheck: {path: readyz}", "haproxy.healthcheck.path", "readyz",
                 "must be an HTTP path", "use /readyz", id="healthcheck-path-not-a-path"),
    pytest.param("haproxy: {stats_path: stats}", "haproxy.stats_path", "stats",
                 "must be an HTTP path", "/haproxy_stats", id="stats-path"),
    pytest.param("keepalived: {virtual_router_id: 256}", "keepalived.virtual_router_id", 256,
                 "must be between 1 and 255", "from 1 to 255", id="vrrp-router-id"),
    # time zone and kubespray
    pytest.param("timezone: Mars/Olympus_Mons", "timezone", "Mars/Olympus_Mons",
                 "is not a known time zone", "UTC, Europe/Berlin", id="bad-timezone"),
    pytest.param("kubespray: {version: 2.29.1}", "kubespray.version", "2.29.1",
                 "is not a kubespray release tag", "like v2.29.1", id="kubespray-version-format"),
    pytest.param("kubespray: {version: v2.29}", "kubespray.version", "v2.29",
                 "is not a kubespray release tag", "like v2.29.1", id="kubespray-version-short"),
    pytest.param("kubespray: {source: /nonexistent/kubespray-2.29.1.tar.gz}", "kubespray.source",
                 "/nonexistent/kubespray-2.29.1.tar.gz", "neither `git` nor an existing local",
                 "a path to a kubespray checkout", id="kubespray-source-missing"),
    pytest.param("kubespray:\n  extra_vars: {loadbalancer_apiserver_localhost: false}",
                 "kubespray.extra_vars.loadbalancer_apiserver_localhost", False,
                 "is set by halab from `case`", "choose `case: 1`, `2` or `3`",
                 id="extra-vars-override-case"),
    pytest.param("kubespray:\n  extra_vars:\n"
                 "    loadbalancer_apiserver: {address: 192.168.10.10, port: 6443}",
                 "kubespray.extra_vars.loadbalancer_apiserver",
                 {"address": "192.168.10.10", "port": 6443},
                 "is set by halab from `case`", "remove it", id="extra-vars-lb-apiserver"),
]


@pytest.mark.parametrize("override, field, value, message, fix", RULES)
def test_rule(tmp_path, override, field, value, message, fix):
    name = "" if override.startswith("name:") else "name: bad\n"   # no duplicate key
    path = write(tmp_path, "extends: case2\n" + name + override + "\n")
    assert_rejected(tmp_path, path, field, value, message, fix)


def test_required_keys(tmp_path):
    path = write(tmp_path, "name: lone\n")  # extends nothing: `case` must be given
    assert_rejected(tmp_path, path, "case", NOVALUE, "is required", "add `case:`")


def test_vip_collides_with_an_explicit_address(tmp_path):
    path = write(tmp_path, """
        extends: case3-ha
        name: bad
        network:
          addresses: {k8s-node1: 192.168.10.10}
    """)
    assert_rejected(tmp_path, path, "network.addresses.k8s-node1", "192.168.10.10",
                    "is already used by network.vip", "give every node and the VIP its own")


def test_problem_in_an_inherited_file_names_that_file(tmp_path):
    write(tmp_path, "extends: case2\nname: base\ncontrol_plane: {count: 4}\n", "base.yaml")
    path = write(tmp_path, "extends: base.yaml\nname: child\n", "child.yaml")
    assert_rejected(tmp_path, path, "control_plane.count", 4, "odd number", "use 3 or 5",
                    file="base.yaml")


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, """
        extends: case2
        name: Bad_Name
        provider: virtualbx
        timezone: Nowhere/Town
        worker: {count: two}
        control_plane: {count: 2}
        haproxy:
          healthcheck: {inter: soon}
    """)
    stderr = assert_rejected(tmp_path, path, "provider", "virtualbx", "is not one of",
                             "did you mean")
    lines = _error_lines(stderr)
    fields = [ln.split(": ", 2)[1].split(" = ")[0] for ln in lines]
    assert sorted(fields) == sorted(["name", "provider", "timezone", "worker.count",
                                     "control_plane.count", "haproxy.healthcheck.inter"]), stderr
    assert "halab: 6 problems in the scenario" in stderr


# ------------------------------------------------------------------ whole-file problems

def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, """
        extends: case2
        name: bad
        network:
          subnet: 192.168.20.0/24
           first_address: 192.168.20.10
    """)
    assert_refused(tmp_path, path, str(path), "line 5, column 17", "not valid YAML", "fix")


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = write(tmp_path, "- extends: case2\n- name: bad\n")
    assert_refused(tmp_path, path, str(path), "must be a YAML mapping", "found list")


def test_extends_cycle(tmp_path):
    write(tmp_path, "extends: b.yaml\nname: a\n", "a.yaml")
    path = write(tmp_path, "extends: a.yaml\nname: b\n", "b.yaml")
    assert_refused(tmp_path, path, "extends: cycle b.yaml -> a.yaml -> b.yaml",
                   "fix: remove one of the `extends`")


def test_extends_a_missing_scenario(tmp_path):
    path = write(tmp_path, "extends: cas2\nname: bad\n")
    assert_refused(tmp_path, path, str(path), "extends = 'cas2'",
                   "neither a file nor a bundled scenario", "did you mean 'case2'?",
                   "halab scenarios")


def test_extends_must_be_a_name(tmp_path):
    path = write(tmp_path, "extends: [case2]\nname: bad\n")
    assert_refused(tmp_path, path, str(path), "extends = ['case2']", "e.g. `extends: case2`")


def test_unknown_scenario_reference(tmp_path):
    r = halab("validate", "nosuch")
    assert r.exit_code == 2
    assert "'nosuch' is neither a file nor a bundled scenario" in r.stderr
    assert "case1, case2, case3, case3-ha, mini" in r.stderr


# ------------------------------------------------------------------ the real executable

def _real_halab(tmp_path, *args):
    """The installed `halab` console script, not an in-process call."""
    exe = Path(sys.executable).parent / "halab"
    exe = str(exe) if exe.exists() else shutil.which("halab")
    assert exe, "the halab command is not installed (pip install -e .)"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LC_ALL": "C.UTF-8"}
    return subprocess.run([exe, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_real_cli_one_line_per_problem_and_traceback_only_with_debug(tmp_path):
    path = write(tmp_path, "extends: case2\nname: bad\nprovider: virtualbx\n")
    plain = _real_halab(tmp_path, "validate", str(path))
    assert plain.returncode == 2
    assert "Traceback" not in plain.stderr and plain.stdout == ""
    assert plain.stderr.splitlines() == [
        "halab: 1 problem in the scenario (nothing was written):",
        "  error: bad.yaml: provider = 'virtualbx': is not one of virtualbox, libvirt, local; "
        "fix: did you mean 'virtualbox'? use one of: virtualbox, libvirt, local"]
    debug = _real_halab(tmp_path, "--debug", "validate", str(path))
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr
    assert "ScenarioError" in debug.stderr


# ------------------------------------------------------------------ warnings

def _accepted_with_warning(tmp_path, text, *fragments):
    path = write(tmp_path, text, "warn.yaml")
    r = halab("validate", str(path))
    assert r.exit_code == 0, r.stderr
    assert "OK: lab warn" in r.stdout and "warning" in r.stdout
    warnings = [ln.strip() for ln in r.stderr.splitlines() if ln.strip().startswith("warning: ")]
    assert warnings, r.stderr
    for fragment in fragments:
        assert any(fragment in w for w in warnings), f"{fragment!r} not in\n{r.stderr}"
    # a warning does not stop rendering
    r = halab("render", str(path), "--out", str(tmp_path / "out"))
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "out" / "Vagrantfile").is_file()
    return warnings


def test_rocky10_with_kubespray_2_29_warns_and_names_2_30(tmp_path):
    _accepted_with_warning(tmp_path, """
        extends: case2
        name: warn
        box: {name: bento/rockylinux-10.0, os: rockylinux-10}
        kubespray: {version: v2.29.1}
    """, "warn.yaml: box.os = 'rockylinux-10'", "v2.29.1 does not list rockylinux-10",
        "v2.30", "fix: ")


def test_ram_close_to_the_minimum_warns(tmp_path):
    _accepted_with_warning(tmp_path, """
        extends: case2
        name: warn
        control_plane: {memory: 1600}
    """, "warn.yaml: control_plane.memory = 1600", "close to kubespray's minimum of 1500",
        "use at least 1725")


def test_the_suggested_ram_is_accepted_without_a_warning(tmp_path):
    path = write(tmp_path, """
        extends: case2
        name: enough
        control_plane: {memory: 1725}
        worker: {memory: 1178}
    """)
    r = halab("validate", str(path))
    assert r.exit_code == 0 and r.stderr == "", r.stderr


def test_healthz_health_check_warns(tmp_path):
    _accepted_with_warning(tmp_path, """
        extends: case2
        name: warn
        haproxy:
          healthcheck: {path: /healthz}
    """, "warn.yaml: haproxy.healthcheck.path = '/healthz'", "lost etcd", "use /readyz")


def test_vip_without_a_pair_warns(tmp_path):
    _accepted_with_warning(tmp_path, """
        extends: case2
        name: warn
        network: {vip: 192.168.10.100}
    """, "warn.yaml: network.vip = '192.168.10.100'", "only used with two or more",
        "admin_lb.count: 2")


def test_kubespray_release_halab_does_not_know_warns(tmp_path):
    _accepted_with_warning(tmp_path, """
        extends: case2
        name: warn
        kubespray: {version: v2.40.0}
    """, "kubespray.version = 'v2.40.0'", "halab knows kubespray v2.29.1, v2.30.0")


def test_a_release_whose_ansible_the_box_python_cannot_run_warns(tmp_path):
    _accepted_with_warning(tmp_path, """
        extends: case2
        name: warn
        box: {name: bento/ubuntu-22.04, os: ubuntu-22.04}
        kubespray: {version: v2.31.0}
    """, "box.os = 'ubuntu-22.04'", "needs Python 3.11-3.13 on admin-lb; ubuntu-22.04 "
        "offers 3.10")


def test_a_provider_override_brings_its_own_os(tmp_path):
    """The seed's Rocky 10 for VirtualBox, Rocky 9 for libvirt: each checked as itself."""
    from lab.model import scenario
    path = tmp_path / "two.yaml"
    path.write_text("extends: case2\nname: two\nbox: {name: bento/rockylinux-10.0, "
                    "os: rockylinux-10, providers: {libvirt: {name: generic/rocky9, "
                    "os: rockylinux-9}}}\n")
    vbox = scenario.load(str(path))
    assert vbox.box.os == "rockylinux-10"
    assert any("experimental" in w.message for w in vbox.warnings)
    lv = scenario.load(str(path), provider="libvirt")
    assert lv.box.os == "rockylinux-9" and not lv.warnings


def test_bundled_scenarios_validate_without_warnings():
    for name in ("case1", "case2", "case3", "case3-ha", "mini"):
        r = halab("validate", name)
        assert r.exit_code == 0, r.stderr
        assert r.stderr == "", r.stderr


def test_the_release_table_and_the_controller_python_per_os():
    from lab.model import kubespray_releases as k
    assert list(k.RELEASES) == ["v2.29.1", "v2.30.0", "v2.31.0", "v2.32.0"]
    assert k.RELEASES["v2.29.1"].ansible == "10.7.0" and k.RELEASES["v2.31.0"].ansible == "11.13.0"
    assert k.release("v2.32.3") is k.RELEASES["v2.32.0"] and not k.RELEASES["v2.32.0"].verified
    # Rocky/Alma 9's python3 is 3.9: AppStream's 3.12 builds the venv
    assert k.controller_python(k.RELEASES["v2.30.0"], "rockylinux-9")[:2] == ("python3.12",
                                                                            "python3.12")
    assert k.controller_python(k.RELEASES["v2.30.0"], "ubuntu-22.04")[2] == (3, 10)
    assert k.controller_python(k.RELEASES["v2.31.0"], "ubuntu-22.04") is None
    assert k.controller_python(k.RELEASES["v2.31.0"], "debian-12")[2] == (3, 11)
    assert k.controller_python(k.RELEASES["v2.30.0"], "rockylinux-10")[2] == (3, 12)
    assert "rockylinux-10" not in k.RELEASES["v2.29.1"].supported_os
    assert "rockylinux-10" in k.RELEASES["v2.30.0"].experimental_os


def test_rocky9_admin_lb_builds_kubespray_venv_with_python_3_12(tmp_path):
    """The first `halab up case2` used to stop at kubespray's pins (python3 3.9)."""
    import subprocess
    from lab import render
    from lab.model import scenario
    from lab.model.topology import Topology
    s = scenario.load("case2")
    env = render.lab_env(Topology.of(s))
    (tmp_path / "lab.env").write_text(env)
    out = subprocess.run(["bash", "-c", 'source "$1"; echo "$LAB_CONTROLLER_PYTHON '
                          '$LAB_CONTROLLER_PYTHON_PKG"', "_", str(tmp_path / "lab.env")],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["python3.12", "python3.12"]
    script = (Path(__file__).resolve().parents[1] / "scripts" / "admin-lb.sh").read_text()
    assert '"$LAB_CONTROLLER_PYTHON" -m venv "$KUBESPRAY_VENV"' in script
