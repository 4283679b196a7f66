"""Real kubespray on the emulated VM test bed, as far as an offline machine allows.

Opt-in (marker `kubespray`): HALAB_KUBESPRAY_SRC names a kubespray source tree (a
release's folder: cluster.yml, requirements.txt), which halab uploads as the lab's
`kubespray.source`; halab never clones it and CI never has it. The lab: admin-lb, one
control plane, one worker, the Debian 12 test box, QEMU emulation, in the test bed's
namespace (tests/support/vmtestbed.py). kubespray's Python requirements are wheels
halab downloads on this machine (`kubespray.wheels: host`); kubectl comes from a
folder (`admin_tools_dir`). The nodes get the OS packages kubespray installs from a
package mirror this test serves on the lab network (tests/support/apt_mirror.py),
as an offline classroom would.

What must happen: `halab up` provisions admin-lb with no internet (venv from the
wheels with --no-index, kubectl installed), then runs the real cluster.yml: through
kubespray's boilerplate and inventory validation, bootstrap-os with its packages,
the network facts and the preinstall checks, with no task failing, until the first
download from the internet (a binary from GitHub or dl.k8s.io), which fails; halab's
failure report names that task, the host, the message and the resume command. Then
`halab deploy --reset-only`: the real reset.yml runs to the end.

    HALAB_KUBESPRAY_SRC=/path/to/kubespray-2.29.1 python3 -m pytest -m kubespray -s
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from lab.deploy.ansible_progress import AnsibleProgress
from tests.support import apt_mirror
from tests.support.drill_labs import ARTIFACTS
from tests.support.vmtestbed import CACHE, vm_testbed  # noqa: F401

SRC = os.environ.get("HALAB_KUBESPRAY_SRC", "")
pytestmark = [
    pytest.mark.vm, pytest.mark.kubespray,
    pytest.mark.skipif(not SRC or not (Path(SRC) / "cluster.yml").is_file(),
                       reason="HALAB_KUBESPRAY_SRC does not name a kubespray source tree "
                              "(a folder with cluster.yml); set it to run real kubespray"),
]
LAB = "ksr"
SUBNET = "192.168.125"
KUBECTL = CACHE / "k8s" / "default" / "kubectl"   # tools/build-k8s.sh: a real Linux program
NODES = ("k8s-node1", "k8s-node2")


def _version(src: str) -> str:
    """The release a tree is (`galaxy.yml`'s version), e.g. v2.29.1."""
    galaxy = Path(src) / "galaxy.yml"
    m = re.search(r"^version:\s*(\S+)", galaxy.read_text(), re.M) if galaxy.is_file() else None
    return f"v{m.group(1)}" if m else "v2.29.1"


def _scenario(tools: Path) -> str:
    return f"""\
name: {LAB}
description: "real kubespray {_version(SRC)} on admin-lb + 1 control plane + 1 worker (QEMU)"
case: 2
provider: libvirt
deployer: kubespray
box:
  name: halab/debian12
  os: debian-12
network:
  subnet: {SUBNET}.0/24
admin_lb: {{count: 1, cpus: 1, memory: 1536}}
control_plane: {{count: 1, cpus: 1, memory: 2048}}
worker: {{count: 1, cpus: 1, memory: 1280}}
nfs: {{enabled: true}}
kubespray:
  version: {_version(SRC)}
  source: {SRC}
  wheels: host
admin_tools: [kubectl]
admin_tools_dir: {tools}
provider_options:
  libvirt:
    driver: qemu
    management_network_address: 192.168.253.0/24
"""


TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def lab_dir(vm_testbed, tmp_path_factory):
    work = tmp_path_factory.mktemp("kubespray-real")
    tools = work / "tools"
    tools.mkdir()
    if not KUBECTL.is_file():
        pytest.skip(f"no {KUBECTL}: run `bash tools/build-k8s.sh` first")
    shutil.copy(KUBECTL, tools / "kubectl")
    (work / f"{LAB}.yaml").write_text(_scenario(tools))
    # the test bed's namespace has no way out, like an offline classroom: the wheels
    # are fetched beforehand on this machine, as an instructor would before class
    # (`halab render` downloads them into halab's cache, where `halab up` finds them)
    import subprocess
    import sys
    subprocess.run([sys.executable, "-m", "lab.cli", "render", str(work / f"{LAB}.yaml"),
                    "--out", str(work / "render")], check=True, timeout=900)
    yield work
    vm_testbed.run(["halab", "destroy", "--force"], cwd=work, timeout=900, check=False)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = ARTIFACTS / f"kubespray-real-{_version(SRC)}.json"
    out.write_text(json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}) + "\n")
    print(f"\nkubespray {_version(SRC)} timings ({out}): {TIMINGS}")


def _record(lab_dir: Path) -> dict:
    return json.loads((lab_dir / ".halab" / LAB / "state.json").read_text())


def _failures(log: Path) -> tuple[AnsibleProgress, list]:
    progress = AnsibleProgress().feed_all(log.read_text(errors="replace").splitlines())
    return progress, progress.failures


DOWNLOAD_TASK = re.compile(r"download", re.I)
NO_INTERNET = re.compile(r"name resolution|Name or service not known|urlopen error|"
                         r"Failed to (connect|download)|Network is unreachable|timed out", re.I)


def _assert_stopped_at_the_first_download(cp, record: dict, lab_dir: Path) -> dict:
    out = cp.stdout
    assert cp.returncode == 1, out[-3000:]
    failure = record["deploy"]["failure"]
    assert failure, record["deploy"]
    assert DOWNLOAD_TASK.search(failure["task"]), failure
    assert NO_INTERNET.search(failure["msg"]), failure
    assert failure["host"] in NODES, failure
    # halab's report: one line with host, task and message, the log, and the resume command
    assert f"kubespray cluster.yml failed: {failure['host']}" in out, out[-3000:]
    assert f"halab deploy --lab {LAB}" in out, out[-3000:]
    log = Path(record["deploy"]["runs"][-1]["log"])
    progress, failures = _failures(log)
    # nothing failed before: every failure is this one download task (on any node)
    assert {f.task for f in failures} == {failure["task"]}, [(f.host, f.task) for f in failures]
    text = log.read_text(errors="replace")
    for reached in ("validate_inventory", "bootstrap_os", "system_packages : Manage packages",
                    "network_facts", "kubernetes/preinstall : Stop if"):
        assert reached in text, f"cluster.yml never ran {reached!r}"
    return {"tasks": progress.tasks_started, "task": failure["task"], "host": failure["host"],
            "msg": failure["msg"][:200]}


def test_real_kubespray_runs_until_its_first_download(vm_testbed, lab_dir):
    tb = vm_testbed
    scen = str(lab_dir / f"{LAB}.yaml")
    cp, TIMINGS["up --no-deploy"] = tb.halab(["up", scen, "--no-deploy"], lab_dir, timeout=3600)
    assert "kubespray-wheels:" in cp.stdout and "admin-tools: 1 files" in cp.stdout, cp.stdout
    # provisioned offline: kubespray's venv from the wheels, kubectl from the folder
    cp, _ = tb.halab(["ssh", "admin-lb", "--", "sudo", "sh", "-c",
                      "/root/kubespray-venv/bin/ansible --version | head -1; "
                      "kubectl version --client 2>&1 | head -1; "
                      "test -f /root/kubespray/cluster.yml && echo tree-ok"], lab_dir)
    assert "ansible [core 2." in cp.stdout and "Client Version" in cp.stdout, cp.stdout
    assert "tree-ok" in cp.stdout

    # the classroom's package mirror, on the lab network
    status, _ = tb.halab(["ssh", NODES[0], "--", "cat", "/var/lib/dpkg/status"], lab_dir)
    repo = apt_mirror.build_repo(apt_mirror.KUBESPRAY_DEBIAN12, status.stdout, CACHE)
    gateway = apt_mirror.lab_gateway(tb.netns, SUBNET + ".")
    with apt_mirror.served(repo, tb.netns, gateway) as url:
        for node in NODES:
            tb.halab(["ssh", node, "--", "sudo", "sh", "-c", apt_mirror.use_mirror_script(url)],
                     lab_dir)
        cp, TIMINGS["deploy (cluster.yml)"] = tb.halab(["deploy"], lab_dir, timeout=5400,
                                                       check=False)
        first = _assert_stopped_at_the_first_download(cp, _record(lab_dir), lab_dir)
        print(f"\nfirst cluster.yml: {first}")

        # kubespray's reset.yml, to its end: the cluster is wiped, the machines stay
        cp, TIMINGS["deploy --reset-only"] = tb.halab(["deploy", "--reset-only"], lab_dir,
                                                      timeout=5400, check=False)
        assert cp.returncode == 0, cp.stdout[-3000:]
        assert "reset.yml finished OK" in cp.stdout, cp.stdout[-3000:]
        rec = _record(lab_dir)["deploy"]
        assert rec["state"] == "reset" and rec["runs"][-1]["status"] == "ok", rec
        TIMINGS["reset.yml tasks"] = rec["runs"][-1]["tasks"]
    TIMINGS["cluster.yml tasks"] = first["tasks"]
