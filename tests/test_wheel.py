"""The wheel carries templates, scripts and scenarios, and an installed halab renders a lab.

The checkout finds its data at the project root; a wheel must find it inside the
package (`lab/_data/...`, pyproject's force-include). This builds the real wheel,
installs it into a fresh venv and renders from a folder outside the checkout.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ("templates", "scripts", "scenarios")


def _run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=300, **kw)
    assert proc.returncode == 0, f"$ {' '.join(map(str, cmd))}\n{proc.stdout}{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", dist, ROOT]
    if importlib.util.find_spec("hatchling") is not None:
        cmd.insert(4, "--no-build-isolation")  # offline and faster when hatchling is at hand
    _run(cmd, cwd=ROOT)
    wheels = list(dist.glob("halab-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contains_the_bundled_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in DATA:
        expected = {f"lab/_data/{folder}/{p.name}" for p in (ROOT / folder).iterdir()
                    if p.is_file()}
        assert expected, folder
        inside = {n for n in names if n.startswith(f"lab/_data/{folder}/")}
        assert inside == expected, folder
    # every module of the source tree, subpackages included
    source = {str(p.relative_to(ROOT)) for p in (ROOT / "lab").rglob("*.py")
              if "__pycache__" not in p.parts}
    assert source and source <= set(names), sorted(source - set(names))
    # the drill view's page: its script and stylesheet come from the wheel, not the web
    assert {"lab/drill/assets/view.js", "lab/drill/assets/view.css"} <= names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "halab = lab.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    # nothing from the test suite or the checkout's tooling leaks into the wheel
    assert not [n for n in names if n.startswith(("tests/", "tools/", "lab/_data/tests"))]


def test_installed_wheel_renders_a_lab_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    # system site packages provide the dependencies (no downloads); the wheel itself goes
    # into the venv, whose site-packages come before the editable checkout on sys.path
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall",
          "--no-index", "--disable-pip-version-check", wheel])

    work = tmp_path / "elsewhere"
    work.mkdir()
    probe = ("import json, lab, lab.resources as r; print(json.dumps([lab.__file__, "
             "str(r.resource_dir('templates')), str(r.resource_dir('scenarios'))]))")
    where = _run([python, "-c", probe], cwd=work)
    lab_file, templates, scenarios = json.loads(where.stdout)
    for path in (lab_file, templates, scenarios):
        assert Path(path).resolve().is_relative_to(venv.resolve()), path
        assert not Path(path).resolve().is_relative_to(ROOT), path
    assert templates.endswith("lab/_data/templates")

    halab = venv / "bin" / "halab"
    listed = _run([halab, "scenarios"], cwd=work).stdout.split("\n")
    assert [ln.split()[0] for ln in listed if ln] == ["case1", "case2", "case3", "case3-ha", "mini"]

    out = work / "lab"
    _run([halab, "render", "case2", "--out", out], cwd=work)
    for rel in ("Vagrantfile", "files/admin-lb/haproxy.cfg", "scripts/common.sh",
                "scripts/admin-lb.sh", "inventory/inventory.ini", "keys/id_ed25519"):
        assert (out / rel).is_file(), rel
    # the same bytes as the checkout's own copies
    assert (out / "scripts/common.sh").read_text() == (ROOT / "scripts/common.sh").read_text()
    assert json.loads((out / "lab.json").read_text())["scenario"] == "case2"
