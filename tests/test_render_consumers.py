"""Every rendered artifact, for every bundled scenario, accepted by the program that consumes it.

vagrant (validate + status), haproxy -c, keepalived -t (inside a network namespace
that has the interface), bash -n + shellcheck, nginx -t, ansible-inventory --list.
None of these start a VM or send a packet: vagrant runs with update checks off and
a private VAGRANT_HOME, keepalived only parses its config.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from lab import render
from lab.model import scenario
from lab.model.topology import API_PORT, Topology

BUNDLED = sorted(scenario.bundled_scenarios())
SECRETS = render.LabSecrets(
    public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGhhbGFiLWNvbnN1bWVyLXRlc3RzLW5vdC1hLWtleQ "
               "halab-test\n",
    private_key="-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n"
                "-----END OPENSSH PRIVATE KEY-----\n",
    vrrp_password="t3stpass",
)
NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", 120)
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _explain(proc: subprocess.CompletedProcess) -> str:
    return f"$ {' '.join(map(str, proc.args))}\nexit {proc.returncode}\n{proc.stdout}{proc.stderr}"


@pytest.fixture(scope="module")
def labs(tmp_path_factory):
    """name -> (topology, rendered files, folder written with render.write)."""
    cache = {}

    def get(name):
        if name not in cache:
            s = scenario.load(name)
            files = render.render(s, SECRETS)
            dest = tmp_path_factory.mktemp(f"lab-{name}")
            render.write(files, SECRETS, dest)
            cache[name] = (Topology.of(s), files, dest)
        return cache[name]
    return get


@pytest.fixture(scope="session")
def vagrant_env(tmp_path_factory):
    """A private VAGRANT_HOME (shared by the session: its first use is the slow one)."""
    env = dict(os.environ)
    env.update(VAGRANT_HOME=str(tmp_path_factory.mktemp("vagrant-home")),
               VAGRANT_CHECKPOINT_DISABLE="1",       # no update check over the network
               VAGRANT_BOX_UPDATE_CHECK_DISABLE="1",
               VAGRANT_NO_COLOR="1")
    env.pop("VAGRANT_CWD", None)
    env.pop("VAGRANT_VAGRANTFILE", None)
    return env


# ------------------------------------------------------------------ vagrant

@pytest.mark.parametrize("name", BUNDLED)
def test_vagrant_validates_and_lists_every_node(name, labs, vagrant_env):
    _need("vagrant")
    topo, _, lab_dir = labs(name)
    proc = _run(["vagrant", "validate"], cwd=lab_dir, env=vagrant_env)
    assert proc.returncode == 0, _explain(proc)
    assert "validated successfully" in proc.stdout, _explain(proc)

    proc = _run(["vagrant", "status", "--machine-readable"], cwd=lab_dir, env=vagrant_env)
    assert proc.returncode == 0, _explain(proc)
    states = {}
    for line in proc.stdout.splitlines():
        fields = line.split(",", 3)
        if len(fields) == 4 and fields[2] == "state":
            states[fields[1]] = fields[3]
    # the Vagrantfile defines exactly the topology's nodes, in its order, none created
    assert list(states) == [n.name for n in topo.nodes], _explain(proc)
    assert set(states.values()) == {"not_created"}


# ------------------------------------------------------------------ haproxy

@pytest.mark.parametrize("name", BUNDLED)
def test_haproxy_accepts_every_lb_config(name, labs):
    _need("haproxy")
    topo, files, lab_dir = labs(name)
    configs = sorted(rel for rel in files if rel.endswith("/haproxy.cfg"))
    assert configs == sorted(f"files/{lb.name}/haproxy.cfg" for lb in topo.load_balancers)
    if topo.case == 1:
        assert configs == []  # Case 1 has no external load balancer
    for rel in configs:
        proc = _run(["haproxy", "-c", "-f", str(lab_dir / rel)])
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, _explain(proc)
        assert "WARNING" not in out and "ALERT" not in out, _explain(proc)


# ------------------------------------------------------------------ keepalived

@pytest.fixture
def lab_netns():
    """A network namespace holding a veth pair lab0 <-> lab1 (no `dummy` module here).

    Each end gets one admin-lb's address in the namespace, nothing in the root
    namespace is touched and no traffic leaves the pair.
    """
    _need("ip")
    ns = f"halab-ka-{uuid.uuid4().hex[:8]}"
    proc = _run(["ip", "netns", "add", ns])
    if proc.returncode != 0:
        pytest.skip(f"cannot create a network namespace (needs root): {proc.stderr.strip()}")
    try:
        for cmd in (["ip", "-n", ns, "link", "add", "lab0", "type", "veth", "peer", "name", "lab1"],
                    ["ip", "-n", ns, "link", "set", "lo", "up"],
                    ["ip", "-n", ns, "link", "set", "lab0", "up"],
                    ["ip", "-n", ns, "link", "set", "lab1", "up"]):
            proc = _run(cmd)
            assert proc.returncode == 0, _explain(proc)
        yield ns
    finally:
        _run(["ip", "netns", "delete", ns])


def test_keepalived_accepts_both_configs_of_the_ha_pair(labs, lab_netns, tmp_path):
    _need("keepalived")
    topo, files, _ = labs("case3-ha")
    lbs = topo.load_balancers
    assert [lb.name for lb in lbs] == ["admin-lb1", "admin-lb2"]
    prefix = topo.scenario.network.subnet.prefixlen
    for lb, iface in zip(lbs, ("lab0", "lab1")):
        proc = _run(["ip", "-n", lab_netns, "addr", "add", f"{lb.ip}/{prefix}", "dev", iface])
        assert proc.returncode == 0, _explain(proc)
        text = files[f"files/{lb.name}/keepalived.conf"]
        assert render.LAB_IFACE_PLACEHOLDER in text  # admin-lb.sh fills in the real NIC
        assert str(topo.scenario.network.vip) in text and SECRETS.vrrp_password in text
        conf = tmp_path / f"{lb.name}.conf"
        conf.write_text(text.replace(render.LAB_IFACE_PLACEHOLDER, iface))
        proc = _run(["ip", "netns", "exec", lab_netns, "keepalived", "-t", "-f", str(conf)])
        assert proc.returncode == 0, _explain(proc)
        assert "WARNING" not in proc.stdout + proc.stderr, _explain(proc)

    # the check is not vacuous: an interface the namespace lacks is rejected
    bad = tmp_path / "bad.conf"
    bad.write_text(files["files/admin-lb1/keepalived.conf"].replace(
        render.LAB_IFACE_PLACEHOLDER, "nosuch0"))
    proc = _run(["ip", "netns", "exec", lab_netns, "keepalived", "-t", "-f", str(bad)])
    assert proc.returncode != 0, _explain(proc)


# ------------------------------------------------------------------ shell

@pytest.mark.parametrize("name", BUNDLED)
def test_scripts_pass_bash_n_and_shellcheck(name, labs):
    _need("shellcheck")
    topo, files, lab_dir = labs(name)
    scripts = sorted(rel for rel in files if rel.startswith("scripts/"))
    assert scripts, "no provisioning scripts rendered"
    for rel in scripts:
        assert os.access(lab_dir / rel, os.X_OK), f"{rel} is not executable"
        proc = _run(["bash", "-n", str(lab_dir / rel)])
        assert proc.returncode == 0, _explain(proc)
    # the helpers they source travel in files/ (uploaded, then moved to a root-only folder)
    proc = _run(["bash", "-n", str(lab_dir / "files/lib.sh")])
    assert proc.returncode == 0, _explain(proc)
    proc = _run(["shellcheck", "--shell=bash", *scripts, "files/lib.sh"], cwd=lab_dir)
    assert proc.returncode == 0, _explain(proc)

    # lab.env is what the scripts `source`: bash must read back exactly the values
    env_file = lab_dir / "files/lab.env"
    proc = _run(["bash", "-c", 'set -eu; source "$1"; printf "%s\\n" "$LAB_NAME" "$LAB_CASE" '
                 '"$LAB_NODES" "$LAB_LB_ADDRESS"', "bash", str(env_file)], env={})
    assert proc.returncode == 0, _explain(proc)
    assert proc.stdout.splitlines() == [
        topo.name, str(topo.case), " ".join(n.name for n in topo.nodes),
        str(topo.lb_address or "")]


# ------------------------------------------------------------------ nginx

@pytest.mark.parametrize("name", BUNDLED)
def test_nginx_accepts_the_worker_proxy(name, labs, tmp_path):
    nginx = _need("nginx")
    topo, _, _ = labs(name)
    worker = topo.workers[0]
    temp = tmp_path / "temp"
    temp.mkdir()
    runtime = render.NginxRuntime(
        error_log=str(tmp_path / "error.log"), pidfile=str(tmp_path / "nginx.pid"),
        daemon=False, temp_dir=str(temp),
        # Debian's nginx-light builds the stream module as a dynamic module
        modules=(str(NGINX_STREAM_MODULE),) if NGINX_STREAM_MODULE.exists() else ())
    conf = tmp_path / "nginx.conf"
    text = render.nginx_proxy_conf(topo, worker, runtime)
    conf.write_text(text)
    for cp in topo.control_planes:
        assert f"server {cp.ip}:{API_PORT};" in text
    # -t parses and opens files but binds nothing; -e keeps the startup log out of /var/log
    proc = _run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf),
                 "-e", str(tmp_path / "error.log")])
    assert proc.returncode == 0, _explain(proc)
    assert "test is successful" in proc.stderr, _explain(proc)
    assert "[warn]" not in proc.stderr and "[emerg]" not in proc.stderr, _explain(proc)


# ------------------------------------------------------------------ ansible

def _ansible_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_HOME=str(tmp / "ansible-home"), ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-tmp"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_INVENTORY_UNPARSED_FAILED="1")
    return env


def _inventory(inv_dir: Path, tmp: Path) -> dict:
    proc = _run(["ansible-inventory", "-i", "inventory/inventory.ini", "--list"],
                cwd=inv_dir, env=_ansible_env(tmp))
    assert proc.returncode == 0, _explain(proc)
    assert "WARNING" not in proc.stderr, _explain(proc)
    return json.loads(proc.stdout)


def _hosts_map(hosts_text: str) -> dict[str, str]:
    """name -> address, as /etc/hosts resolves it."""
    out = {}
    for line in hosts_text.splitlines():
        fields = line.split("#", 1)[0].split()
        for name in fields[1:]:
            out.setdefault(name, fields[0])
    return out


@pytest.mark.parametrize("name", BUNDLED)
def test_ansible_inventory_gives_kubespray_the_case(name, labs, tmp_path):
    _need("ansible-inventory")
    topo, files, lab_dir = labs(name)
    s = topo.scenario
    inv = _inventory(lab_dir, tmp_path)
    hostvars = inv["_meta"]["hostvars"]

    # groups: etcd stacked on the control planes through children
    assert inv["kube_control_plane"]["hosts"] == [n.name for n in topo.control_planes]
    assert inv["kube_node"]["hosts"] == [n.name for n in topo.workers]
    assert s.etcd_topology == "stacked"
    assert inv["etcd"]["children"] == ["kube_control_plane"]
    assert "hosts" not in inv["etcd"]
    assert set(hostvars) == {n.name for n in topo.control_planes + topo.workers}

    # host vars: the lab address (not Vagrant's NAT one) and stable etcd member names
    for i, cp in enumerate(topo.control_planes, 1):
        hv = hostvars[cp.name]
        assert (hv["ip"], hv["access_ip"], hv["ansible_host"]) == (str(cp.ip),) * 3
        assert hv["etcd_member_name"] == f"etcd{i}"
    for w in topo.workers:
        hv = hostvars[w.name]
        assert (hv["ip"], hv["access_ip"]) == (str(w.ip),) * 2
        assert "etcd_member_name" not in hv

    # group_vars/all per Case (REFERENCE.md sections 2 and 3), seen by every host
    hosts = _hosts_map(files["files/hosts"])
    for host, hv in hostvars.items():
        where = f"{name}: {host}"
        assert hv["loadbalancer_apiserver_port"] == API_PORT, where
        assert hv["loadbalancer_apiserver_healthcheck_port"] == 8081, where
        if s.case in (1, 2):
            assert hv["loadbalancer_apiserver_localhost"] is True, where
            # defined at all, it wins over localhost and silently makes Case 3
            assert "loadbalancer_apiserver" not in hv, where
        if s.case == 1:
            assert topo.lb_address is None
        if s.case == 2:
            sans = hv["supplementary_addresses_in_ssl_keys"]
            assert str(topo.lb_address) in sans and topo.lb_name in sans, where
            assert str(topo.lb_address) == str(topo.admin_lbs[0].ip)
        if s.case == 3:
            assert hv["loadbalancer_apiserver_localhost"] is False, where
            assert hv["loadbalancer_apiserver"] == {"address": str(topo.lb_address),
                                                    "port": API_PORT}, where
            domain = hv["apiserver_loadbalancer_domain_name"]
            # kubespray >= 2.29 writes no /etc/hosts: the name must be in halab's
            assert domain != "lb-apiserver.kubernetes.local", where
            assert hosts.get(domain) == str(topo.lb_address), where
            if topo.scenario.ha_lb:
                assert hv["loadbalancer_apiserver"]["address"] == str(s.network.vip), where
                assert str(s.network.vip) not in {str(lb.ip) for lb in topo.admin_lbs}
            else:
                assert hv["loadbalancer_apiserver"]["address"] == str(topo.admin_lbs[0].ip)

    # group_vars/k8s_cluster: kubespray builds that group at runtime (group_by in its
    # boilerplate play), so the rendered inventory rightly has no such group and
    # ansible-inventory would not apply the file. A copy with the group added here,
    # only for this check, shows the values each cluster host will get.
    copy_dir = tmp_path / "with-k8s-cluster"
    shutil.copytree(lab_dir / "inventory", copy_dir / "inventory")
    with open(copy_dir / "inventory/inventory.ini", "a") as f:
        f.write("\n[k8s_cluster:children]\nkube_control_plane\nkube_node\n")
    hostvars = _inventory(copy_dir, tmp_path)["_meta"]["hostvars"]
    for node in topo.control_planes + topo.workers:
        hv = hostvars[node.name]
        assert hv["kube_network_plugin"] == s.kubespray.network_plugin
        assert hv["kube_service_addresses"] == s.service_cidr
        assert hv["kube_pods_subnet"] == s.pod_cidr
