"""The lab's record: the scenario it was built from, what it created, and its lock."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from lab.app import lab as commands
from lab.model import scenario
from lab.errors import HalabError
from lab.state import Lab, write_atomically

SCENARIO = textwrap.dedent("""\
    extends: case2
    name: rec
    description: first version
    """)


def _built_lab(tmp_path, text: str = SCENARIO):
    """A lab whose record holds the scenario of `text`, as `up` writes it."""
    path = tmp_path / "rec.yaml"
    path.write_text(text)
    s = scenario.load(str(path))
    lab = Lab(tmp_path / ".halab" / s.name)
    lab.update(name=s.name, provider=s.provider, case=s.case, scenario_file=str(path),
               scenario=scenario.as_record(s))
    return lab, s, path


def test_a_lab_opens_from_its_record_after_the_yaml_is_deleted_or_edited(tmp_path):
    lab, built, path = _built_lab(tmp_path)
    path.write_text(SCENARIO.replace("case2", "case3"))      # edited ...
    assert commands.scenario_of(lab) == built
    path.unlink()                                            # ... then deleted
    again = commands.scenario_of(lab)
    assert again == built and again.case == 2 and again.name == "rec"


def test_up_again_names_every_change_and_refuses_one_that_changes_the_lab(tmp_path):
    lab, built, path = _built_lab(tmp_path)
    path.write_text(SCENARIO.replace("case2", "case3") + "network: {subnet: 192.168.57.0/24}\n")
    with pytest.raises(HalabError) as err:
        commands._compare_with_record(lab, lab.record(), scenario.load(str(path)))
    msg = err.value.message
    assert "case: 2 -> 3" in msg and "network.subnet" in msg and err.value.code == 2
    assert "halab destroy --lab rec" in err.value.hint


def test_up_again_takes_over_a_changed_description(tmp_path, capsys):
    lab, built, path = _built_lab(tmp_path)
    path.write_text(SCENARIO.replace("first version", "second version"))
    s = commands._compare_with_record(lab, lab.record(), scenario.load(str(path)))
    assert s.description == "second version"
    assert "description: 'first version' -> 'second version'" in capsys.readouterr().out


def test_unchanged_scenario_is_silent(tmp_path, capsys):
    lab, built, path = _built_lab(tmp_path)
    commands._compare_with_record(lab, lab.record(), scenario.load(str(path)))
    assert capsys.readouterr().out == ""


HOLD = """
import sys, time
from lab.state import Lab
with Lab(sys.argv[1]).lock("drill kill"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_verb_on_a_busy_lab_is_refused_with_who_holds_it(tmp_path):
    lab = Lab(tmp_path / "busy")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lab.path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(HalabError) as err:
            with lab.lock("destroy"):
                pass
        assert f"`halab drill kill` (pid {holder.pid})" in err.value.message
        assert err.value.code == 2
        assert lab.holder()["verb"] == "drill kill"
    finally:
        holder.kill()
        holder.wait(10)
    # the kernel drops the lock with its holder: the lab is free again
    with lab.lock("destroy"):
        with lab.lock("deploy"):       # re-entrant within one process (`up` deploys)
            pass
    assert lab.holder() is None


def test_resources_are_listed_once_each_and_dropped(tmp_path):
    lab = Lab(tmp_path / "r")
    lab.add_resources("namespace", ["halab-r.net", "halab-r-a"])
    lab.add_resources("namespace", ["halab-r-a", "halab-r-b"])
    assert lab.record().names("namespace") == ["halab-r.net", "halab-r-a", "halab-r-b"]
    lab.drop_resources("namespace", ["halab-r-a"])
    assert lab.record().names("namespace") == ["halab-r.net", "halab-r-b"]
    with pytest.raises(ValueError):
        lab.add_resources("volume-typo", ["x"])


def test_atomic_write_never_follows_a_planted_temp_symlink(tmp_path):
    target = tmp_path / "state.json"
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "state.tmp").symlink_to(victim)      # the old fixed temp name
    write_atomically(target, json.dumps({"a": 1}), mode=0o600)
    assert victim.read_text() == "keep"
    assert json.loads(target.read_text()) == {"a": 1}
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.tmp", "victim"]


def test_both_providers_and_the_tests_fake_keep_the_written_contract(tmp_path):
    from lab.model import scenario as scen
    from lab.model.topology import Topology
    from lab.providers.base import Provider
    from lab.providers.local.provider import LocalProvider
    from lab.providers.vagrant.provider import VagrantProvider
    from tests.support.fake_provider import FakeProvider
    lab = Lab(tmp_path / "c")
    local = LocalProvider(lab, Topology.of(scen.load("case2", provider="local")))
    vms = VagrantProvider(lab, Topology.of(scen.load("case2", provider="libvirt")))
    for prov in (local, vms, FakeProvider()):
        assert isinstance(prov, Provider), type(prov)
        missing = [m for m in dir(Provider) if not m.startswith("_") and not hasattr(prov, m)]
        assert not missing, (type(prov).__name__, missing)
    assert local.capabilities.supervised and not vms.capabilities.supervised
    assert vms.capabilities.ssh and vms.capabilities.provisioning
    assert vms.drill_waits["recovery_timeout"] >= 600 and local.drill_waits == {}


def test_drill_run_on_a_vm_lab_uses_the_vm_waits(tmp_path, monkeypatch):
    """`halab drill run` leaves unset settings to the provider (a VM boots in minutes),
    and what the user gives wins."""
    from lab.app import drills
    from lab.drill import engine, runbook
    from lab.model.topology import Topology
    from lab.providers.vagrant.provider import VagrantProvider
    path = tmp_path / "vms.yaml"
    path.write_text("extends: case2\nname: vms\nprovider: libvirt\n"
                    "provider_options: {libvirt: {driver: qemu}}\n"
                    "drills: [{fault: kill, target: k8s-node1}]\n")
    s = scenario.load(str(path))
    topo = Topology.of(s)
    lab = Lab(tmp_path / ".halab" / "vms")
    prov = VagrantProvider(lab, topo)
    seen = []

    def fake_run(self):
        seen.append(self.s)
        raise HalabError("stop here", code=3)
    monkeypatch.setattr(engine.Drill, "run", fake_run)
    runbook.run(lab, s, topo, prov, drills.settings_of(None, None, None, None, 2.0), 0, True,
                lambda *a, **k: None)
    runbook.run(lab, s, topo, prov, drills.settings_of(None, 0.5, None, 90, 2.0), 0, True,
                lambda *a, **k: None)
    fitted, given = seen
    assert fitted.recovery_timeout == 600 and fitted.probe_timeout == 15
    assert fitted.probe_interval == 1.0 and fitted.state_poll_interval == 1.0
    assert given.recovery_timeout == 90 and given.probe_interval == 0.5


def _kc(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Config", "current-context": name,
            "clusters": [{"name": name, "cluster": {"server": "https://127.0.0.9:6443"}}],
            "users": [{"name": name, "user": {}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}]}


def test_kubeconfig_merge_follows_a_symlink_and_keeps_the_mode(tmp_path):
    from lab.deploy import kubeconfig as kc
    real = tmp_path / "dotfiles" / "kubeconfig"
    real.parent.mkdir()
    kc.write(real, _kc("work"))
    real.chmod(0o640)
    link = tmp_path / "config"
    link.symlink_to(real)
    merged, added = kc.merge(kc.load(link), _kc("lab-lb"))
    kc.write(link, merged)
    assert link.is_symlink() and link.resolve() == real          # still a link
    assert real.stat().st_mode & 0o777 == 0o640
    names = {c["name"] for c in kc.load(real)["contexts"]}
    assert names == {"work", "lab-lb"}
    kc.write(link, kc.unmerge(kc.load(link), added))
    assert {c["name"] for c in kc.load(real)["contexts"]} == {"work"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config", "dotfiles"]   # no temp
    fresh = tmp_path / "new" / "config"
    kc.write(fresh, _kc("x"))
    assert fresh.stat().st_mode & 0o777 == 0o600


def test_a_malformed_kubeconfig_is_a_clear_error(tmp_path):
    from lab.deploy import kubeconfig as kc
    bad = tmp_path / "config"
    for text in ("clusters: [oops\n", "clusters: {a: 1}\n", "- just\n- a list\n", "\xff\xfe"):
        bad.write_bytes(text.encode("latin-1"))
        with pytest.raises(HalabError) as err:
            kc.load(bad)
        assert str(bad) in err.value.message and err.value.hint


def test_a_lab_opens_when_its_local_kubespray_source_is_gone(tmp_path):
    src = tmp_path / "kubespray-2.29.1"
    src.mkdir()
    lab, built, path = _built_lab(tmp_path, SCENARIO + f"kubespray: {{source: {src}}}\n")
    src.rmdir()
    path.unlink()
    assert commands.scenario_of(lab).kubespray.source == str(src)


def test_destroy_works_from_the_record_when_its_scenario_no_longer_validates(tmp_path, monkeypatch):
    """A record an older halab wrote may fail today's checks; its lab must still go."""
    from lab.app import lab as app
    from lab.providers import local
    lab, built, path = _built_lab(tmp_path)
    rec = lab.record()
    broken = dict(rec.scenario, nfs={"enabled": True, "path": "/etc"})   # refused now
    lab.update(scenario=broken, provider="local",
               resources={"namespace": ["halab-rec.net", "halab-rec-k8s-node1"]})
    deleted = []
    monkeypatch.setattr(local.provider, "destroy_namespaces",
                        lambda names, progress: deleted.extend(names) or [])
    app.destroy(lab)
    assert deleted == ["halab-rec.net", "halab-rec-k8s-node1"]   # exactly the record's
    assert not lab.path.exists()


def test_a_record_from_before_the_resource_lists_still_destroys_exact_names(tmp_path):
    from lab.model.topology import Topology
    from lab.providers.local.provider import LocalProvider
    lab, built, path = _built_lab(tmp_path)
    prov = LocalProvider(lab, Topology.of(built.with_provider("local")))
    assert "namespace" not in lab.record().resources
    assert prov.recorded_namespaces() == prov.namespaces()
    assert "halab-rec.net" in prov.namespaces() and "halab-rec-k8s-node1" in prov.namespaces()
    lab.add_resources("namespace", ["halab-rec.net"])
    assert prov.recorded_namespaces() == ["halab-rec.net"]
