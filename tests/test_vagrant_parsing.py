"""Parsing Vagrant's output, on output recorded from a real `vagrant up` of a 3-VM libvirt
lab (tests/data/vagrant/up-libvirt-3vms.log, from tests/test_vm_lab.py's run)."""
from pathlib import Path

from lab.providers.vagrant.machines import ProgressTracker, parse_status

DATA = Path(__file__).parent / "data" / "vagrant"


def test_progress_follows_every_vm_through_boot_and_provisioning():
    tracker = ProgressTracker(["admin-lb", "k8s-node1", "k8s-node2"])
    seen = {n: [] for n in tracker.vms}
    for i, line in enumerate((DATA / "up-libvirt-3vms.log").read_text().splitlines()):
        vm = tracker.feed(line, now=float(i))
        if vm is not None and (not seen[vm.name] or seen[vm.name][-1] != vm.state):
            seen[vm.name].append(vm.state)
    for name, states in seen.items():
        # the order a student sees: created, booted, provisioned
        assert states.index("creating") < states.index("waiting for IP") < states.index("booted")
        assert states.index("booted") < states.index("provisioning"), states
    # the current step is halab's own provisioning step, not Vagrant's noise
    assert tracker.vms["admin-lb"].step == "done"
    assert not any(vm.step.startswith("-- ") for vm in tracker.vms.values())
    tracker.finish(now=1000.0)
    assert all(vm.state == "running" for vm in tracker.vms.values())
    assert all(vm.elapsed() > 0 for vm in tracker.vms.values())


def test_lines_of_other_machines_are_ignored():
    tracker = ProgressTracker(["k8s-node1"])
    assert tracker.feed("==> other: Booting VM...") is None
    assert tracker.feed("Bringing machine 'k8s-node1' up with 'libvirt' provider...") is None


# `vagrant status --machine-readable` as printed by Vagrant 2.3.4 for a half-up lab
STATUS = """\
1795309033,admin-lb,metadata,provider,libvirt
1795309033,admin-lb,provider-name,libvirt
1795309033,admin-lb,state,running
1795309033,admin-lb,state-human-short,running
1795309033,k8s-node1,metadata,provider,libvirt
1795309033,k8s-node1,state,shutoff
1795309033,k8s-node2,state,not_created
1795309033,,ui,info,Current machine states:
"""


def test_parse_status():
    assert parse_status(STATUS) == {"admin-lb": "running", "k8s-node1": "shutoff",
                                    "k8s-node2": "not_created"}
