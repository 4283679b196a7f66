"""doctor's rules on recorded host facts (no machine state is read)."""
import json

import pytest

from lab.host import doctor
from lab.model import scenario
from lab.host.doctor import HostFacts

# `ip -j addr` / `ip -j route` as recorded on a laptop with VirtualBox's vboxnet0 and a VPN
IP_ADDR = json.loads("""[
 {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
 {"ifname": "wlp2s0", "addr_info": [{"family": "inet", "local": "192.168.1.23", "prefixlen": 24},
                                     {"family": "inet6", "local": "fe80::1", "prefixlen": 64}]},
 {"ifname": "vboxnet0", "addr_info": [{"family": "inet", "local": "192.168.10.1", "prefixlen": 24}]},
 {"ifname": "tun0", "addr_info": [{"family": "inet", "local": "10.8.0.6", "prefixlen": 24}]}
]""")
IP_ROUTE = json.loads("""[
 {"dst": "default", "gateway": "192.168.1.1", "dev": "wlp2s0"},
 {"dst": "192.168.1.0/24", "dev": "wlp2s0"},
 {"dst": "192.168.10.0/24", "dev": "vboxnet0"},
 {"dst": "10.8.0.0/24", "dev": "tun0"}
]""")
VAGRANT_PLUGINS = "vagrant-libvirt (0.11.2, system)\n"


def facts(**kw):
    base = dict(vagrant_version="Vagrant 2.3.4", vboxmanage_version="7.0.20r163906",
                virsh_version="9.0.0", vagrant_plugins=VAGRANT_PLUGINS, kvm=True,
                memory_mib=32000, cpus=8, arch="x86_64",
                vbox_networks_conf="* 192.168.10.0/24\n",
                addresses=doctor.parse_ip_addr(IP_ADDR), routes=doctor.parse_ip_route(IP_ROUTE),
                free_disk_gib=200)
    base.update(kw)
    return HostFacts(**base)


def by_check(findings):
    return {f.check: f for f in findings}


def test_all_ok_on_a_prepared_laptop():
    found = doctor.evaluate(scenario.load("case2"), facts())
    assert [f for f in found if f.level == "FAIL"] == []
    assert by_check(found)["subnet"].level == "OK"  # vboxnet0 holding .1 is the lab's own network


def test_missing_vagrant_and_virtualbox_fail_with_a_fix():
    found = by_check(doctor.evaluate(scenario.load("case2"),
                                     facts(vagrant_version=None, vboxmanage_version=None)))
    assert found["vagrant"].level == "FAIL" and "install" in found["vagrant"].fix
    assert found["VirtualBox"].level == "FAIL" and "--provider local" in found["VirtualBox"].fix


def test_virtualbox_hostonly_range_prints_the_line_to_add():
    found = by_check(doctor.evaluate(scenario.load("case2"), facts(vbox_networks_conf=None)))
    f = found["host-only range"]
    assert f.level == "FAIL"
    assert "* 192.168.10.0/24" in f.fix and "/etc/vbox/networks.conf" in f.fix


def test_vbox_networks_conf_parsing():
    nets = doctor.vbox_allowed_ranges("# comment\n* 10.0.0.0/8 192.168.0.0/16\n* 2001::/64\n")
    assert [str(n) for n in nets if n.version == 4] == ["10.0.0.0/8", "192.168.0.0/16"]
    assert [str(n) for n in doctor.vbox_allowed_ranges(None)] == ["192.168.56.0/21"]


def test_memory_fail_suggests_mini(tmp_path):
    found = by_check(doctor.evaluate(scenario.load("case2"), facts(memory_mib=10000)))
    assert found["memory"].level == "FAIL"
    assert "mini" in found["memory"].fix


def test_memory_tight_warns_and_suggests_dropping_a_worker_when_mini_is_too_big():
    found = by_check(doctor.evaluate(scenario.load("case2"), facts(memory_mib=12000)))
    assert found["memory"].level == "WARN"
    found = by_check(doctor.evaluate(scenario.load("case2"), facts(memory_mib=8000)))
    assert "worker: {count: 1}" in found["memory"].fix


def test_subnet_collision_with_a_host_interface(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("extends: case2\nname: clash\nnetwork: {subnet: 192.168.1.0/24}\n")
    found = by_check(doctor.evaluate(scenario.load(str(p)), facts(vbox_networks_conf="* 0.0.0.0/0\n")))
    assert found["subnet"].level == "FAIL"
    assert "wlp2s0" in found["subnet"].detail


def test_libvirt_without_kvm_fails_unless_qemu(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("extends: case2\nname: lv\nprovider: libvirt\n")
    found = by_check(doctor.evaluate(scenario.load(str(p)), facts(kvm=False, vagrant_plugins="")))
    assert found["acceleration"].level == "FAIL" and "driver: qemu" in found["acceleration"].fix
    assert found["vagrant-libvirt"].level == "FAIL"
    p.write_text("extends: case2\nname: lv\nprovider: libvirt\n"
                 "provider_options: {libvirt: {driver: qemu}}\n")
    found = by_check(doctor.evaluate(scenario.load(str(p)), facts(kvm=False)))
    assert found["acceleration"].level == "WARN"


def test_apple_silicon_box_warning(tmp_path):
    found = by_check(doctor.evaluate(scenario.load("case2"), facts(arch="arm64")))
    assert found["box architecture"].level == "OK"  # bento publishes arm64 boxes
    p = tmp_path / "s.yaml"
    p.write_text("extends: case2\nname: amd\nbox: {name: generic/rocky9}\n")
    found = by_check(doctor.evaluate(scenario.load(str(p)), facts(arch="aarch64")))
    assert found["box architecture"].level == "WARN"
    assert "arm64" in found["box architecture"].fix


def test_low_disk_fails():
    found = by_check(doctor.evaluate(scenario.load("case2"), facts(free_disk_gib=5)))
    assert found["disk"].level == "FAIL"


def test_run_doctor_raises_on_fail_and_names_the_fix():
    from lab.errors import HalabError
    lines = []
    with pytest.raises(HalabError) as exc:
        doctor.run_doctor(scenario.load("case2"), echo=lines.append, fail_on_error=True,
                          facts=facts(vbox_networks_conf=None))
    assert "host-only range" in exc.value.message
    assert any("FAIL host-only range" in l for l in lines)
