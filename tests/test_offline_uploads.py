"""Offline-ready admin-lb: kubespray's wheels made on this machine, admin tools from a folder.

The wheels are a real `pip download` for another machine's Python and platform (a
small requirements file: the whole of kubespray's is 60 MB); the rendered lab is
judged by the real `vagrant validate`; the admin tools' folder by what its programs
really are (their ELF header).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from lab.cli import main
from lab.errors import HalabError, ScenarioError
from lab.host import wheels
from lab.model import kubespray_releases as kr
from lab.model import scenario


def halab(*args: str, ok: bool = True):
    res = CliRunner().invoke(main, list(args), catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


def _kubespray_tree(root: Path, requirements: str) -> Path:
    src = root / "kubespray-2.29.1"
    (src / "inventory" / "sample").mkdir(parents=True)
    (src / "cluster.yml").write_text("- hosts: all\n")
    (src / "requirements.txt").write_text(requirements)
    return src


def _scenario(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "lab.yaml"
    path.write_text("extends: case2\nname: offline\n" + body)
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(ScenarioError) as err:
        scenario.load(str(path))
    return [f"{p.field} {p.value} {p.message} {p.fix}" for p in err.value.problems
            if p.severity == "error"]


def test_the_wheels_target_follows_the_controller_python_and_the_os_glibc():
    py, tags = kr.wheel_target(kr.release("v2.29.1"), "rockylinux-9")
    assert py == (3, 12) and tags[0] == "manylinux_2_34_x86_64"   # AppStream's 3.12, glibc 2.34
    py, tags = kr.wheel_target(kr.release("v2.31.0"), "debian-12")
    assert py == (3, 11) and tags[0] == "manylinux_2_36_x86_64"
    assert "manylinux2014_x86_64" in tags and "manylinux_2_17_x86_64" in tags
    assert not any(t.startswith("linux_") for t in tags)   # not portable: never downloaded
    assert kr.wheel_target(kr.release("v2.31.0"), "ubuntu-22.04") is None   # 3.10 < 3.11
    assert kr.wheel_target(kr.release("v2.29.1"), "plan9-4") is None


def test_pip_download_fetches_wheels_for_the_vms_python_not_this_one(tmp_path):
    """A real `pip download` (PyPI, or the index pip.conf names), for Python 3.12 on
    glibc 2.34 from this machine's Python; the second call is served from the cache."""
    req = "markupsafe==3.0.2\njmespath==1.0.1\n"
    _, tags = kr.wheel_target(kr.release("v2.29.1"), "rockylinux-9")
    folder = wheels.download(req, (3, 12), tags, cache=tmp_path)
    names = sorted(p.name.lower() for p in folder.glob("*.whl"))
    assert len(names) == 2 and names[0].startswith("jmespath-1.0.1-py3-none-any"), names
    assert names[1].startswith("markupsafe-3.0.2-cp312-cp312-manylinux"), names

    def no_pip(*a, **k):
        raise AssertionError("pip ran again")
    assert wheels.download(req, (3, 12), tags, cache=tmp_path, run=no_pip) == folder


def test_a_failed_download_names_the_target_and_the_way_out(tmp_path):
    with pytest.raises(HalabError) as err:
        wheels.download("no-such-package-halab==0.0.1\n", (3, 11), ["manylinux_2_36_x86_64"],
                        cache=tmp_path)
    assert "Python 3.11 (manylinux_2_36_x86_64)" in err.value.message
    assert "kubespray.wheels" in err.value.hint
    assert not list((tmp_path / "wheels").glob("[!.]*"))   # nothing half-made in the cache


def test_requirements_come_from_the_local_source_folder_or_tarball(tmp_path):
    src = _kubespray_tree(tmp_path, "ansible==10.7.0\n")
    assert wheels.requirements_of(str(src)) == "ansible==10.7.0\n"
    tgz = tmp_path / "ks.tar.gz"
    subprocess.run(["tar", "-czf", str(tgz), "-C", str(tmp_path), src.name], check=True)
    assert wheels.requirements_of(str(tgz)) == "ansible==10.7.0\n"
    (src / "requirements.txt").unlink()
    with pytest.raises(HalabError, match="has no requirements.txt"):
        wheels.requirements_of(str(src))


def test_wheels_and_tools_fields_refuse_what_cannot_work(tmp_path):
    got = _problems(_scenario(tmp_path, "kubespray: {wheels: host}\n"))
    assert any(p.startswith("kubespray.wheels host `host` reads kubespray's requirements.txt")
               and "git clone -b v2.30.0" in p for p in got), got
    got = _problems(_scenario(tmp_path, f"kubespray: {{wheels: {tmp_path}/none}}\n"))
    assert any("is not a folder with .whl files" in p for p in got), got
    got = _problems(_scenario(tmp_path, "kubespray: {wheels: 'x; rm -rf /'}\n"))
    assert any(p.startswith("kubespray.wheels") for p in got), got

    tools = tmp_path / "tools"
    tools.mkdir()
    shutil.copy("/bin/true", tools / "kubectl")                    # a Linux x86-64 program
    (tools / "helm").write_bytes(b"\xcf\xfa\xed\xfe" + bytes(40))   # a macOS one
    got = _problems(_scenario(tmp_path, f"admin_tools_dir: {tools}\n"))
    assert any(p.startswith(f"admin_tools_dir {tools}/helm is a macOS program") for p in got), got
    assert any("has no k9s (admin_tools lists it)" in p and "remove k9s" in p for p in got), got
    assert not any("kubectl" in p for p in got), got
    got = _problems(_scenario(tmp_path, f"admin_tools_dir: {tmp_path}/nowhere\n"))
    assert any("is not a folder" in p for p in got), got


def test_render_uploads_wheels_to_the_runner_and_tools_to_every_admin_lb(tmp_path):
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    (wheel_dir / "jmespath-1.0.1-py3-none-any.whl").write_bytes(b"PK")
    (wheel_dir / "notes.txt").write_text("not a wheel")
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("kubectl", "helm"):
        shutil.copy("/bin/true", tools / tool)
    src = _kubespray_tree(tmp_path, "jmespath==1.0.1\n")
    scen = tmp_path / "ha.yaml"
    scen.write_text(f"extends: case3-ha\nname: haoff\nadmin_tools: [kubectl, helm, jq]\n"
                    f"admin_tools_dir: {tools}\n"
                    f"kubespray: {{source: {src}, wheels: {wheel_dir}}}\n")
    out = tmp_path / "lab"
    halab("render", str(scen), "--out", str(out))
    assert sorted(p.name for p in (out / "kubespray-wheels").iterdir()) == \
        ["jmespath-1.0.1-py3-none-any.whl"]
    assert sorted(p.name for p in (out / "admin-tools").iterdir()) == ["helm", "kubectl"]
    assert os.stat(out / "admin-tools" / "helm").st_mode & 0o777 == 0o755
    vf = (out / "Vagrantfile").read_text()
    runner_block = vf.split("if node[:name] == 'admin-lb1'")[1].split("    end\n")[0]
    assert 'source: "kubespray-wheels"' in runner_block
    assert 'if node[:role] == "admin_lb"\n        # kubectl, helm' in vf
    env = (out / "files" / "lab.env").read_text()
    assert "LAB_KUBESPRAY_WHEELS=yes" in env
    venv = {k: v for k, v in os.environ.items() if not k.startswith("VAGRANT_")}
    venv.update(VAGRANT_HOME=str(tmp_path / "vagrant-home"), VAGRANT_CHECKPOINT_DISABLE="1",
                VAGRANT_BOX_UPDATE_CHECK_DISABLE="1")
    r = subprocess.run(["vagrant", "validate"], cwd=out, capture_output=True, text=True,
                       timeout=180, env=venv)
    assert r.returncode == 0, r.stdout + r.stderr


def test_without_uploads_the_vagrantfile_names_no_such_folder(tmp_path):
    out = tmp_path / "lab"
    halab("render", "case2", "--out", str(out))
    vf = (out / "Vagrantfile").read_text()
    assert "kubespray-wheels" not in vf and "admin-tools" not in vf
    assert "LAB_KUBESPRAY_WHEELS=no" in (out / "files" / "lab.env").read_text()
