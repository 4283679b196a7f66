"""Golden files: every bundled scenario renders to exactly the files in tests/golden/<name>/.

A golden file shows a change in rendered output; whether the output is *right* is
checked by the real consumers (tests/test_render_consumers.py). After an intended
change, regenerate and review the diff before committing:

    HALAB_UPDATE_GOLDEN=1 python3 -m pytest -q tests/test_render_golden.py
    git diff tests/golden
"""
from __future__ import annotations

import difflib
import os
import shutil
from pathlib import Path

import pytest

from lab import render
from lab.model import scenario

GOLDEN = Path(__file__).resolve().parent / "golden"
ROOT = Path(__file__).resolve().parent.parent
UPDATE = os.environ.get("HALAB_UPDATE_GOLDEN") == "1"
BUNDLED = sorted(scenario.bundled_scenarios())

# Constant fake secrets: real ones are generated per lab, which would change every file
# that carries them (authorized_keys, keepalived.conf) on every run.
SECRETS = render.LabSecrets(
    public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGhhbGFiLWdvbGRlbi1maWxlcy1ub3QtYS1yZWFsLWtleQ "
               "halab-golden\n",
    private_key="-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n"
                "-----END OPENSSH PRIVATE KEY-----\n",
    vrrp_password="g0ldenpw",
)


def _golden_tree(folder: Path) -> dict[str, str]:
    if not folder.is_dir():
        return {}
    return {p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _update(folder: Path, files: dict[str, str]) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


STATIC = set(render.scripts())  # copied verbatim from scripts/: checked by shellcheck, not goldens


@pytest.mark.parametrize("name", BUNDLED)
def test_render_matches_golden(name):
    files = {k: v for k, v in render.render(scenario.load(name), SECRETS).items()
             if k not in STATIC}
    folder = GOLDEN / name
    if UPDATE:
        _update(folder, files)
    expected = _golden_tree(folder)

    report = []
    for rel in sorted(set(files) - set(expected)):
        report.append(f"{rel}: rendered but has no golden file")
    for rel in sorted(set(expected) - set(files)):
        report.append(f"{rel}: golden file exists but halab no longer renders it")
    for rel in sorted(set(files) & set(expected)):
        if files[rel] != expected[rel]:
            report.append("".join(difflib.unified_diff(
                expected[rel].splitlines(keepends=True), files[rel].splitlines(keepends=True),
                fromfile=f"golden/{name}/{rel}", tofile=f"rendered/{name}/{rel}")))
    if report:
        pytest.fail(f"rendered lab {name} differs from tests/golden/{name}/ "
                    "(if intended: HALAB_UPDATE_GOLDEN=1, then review `git diff tests/golden`):\n"
                    + "\n".join(report), pytrace=False)


@pytest.mark.parametrize("name", BUNDLED)
def test_render_is_deterministic_and_machine_independent(name):
    s = scenario.load(name)
    first = render.render(s, SECRETS)
    assert render.render(scenario.load(name), SECRETS) == first
    for rel, text in first.items():
        # the checkout's location must not leak into a file (goldens would differ per machine)
        assert str(ROOT) not in text, f"{rel} contains the checkout path {ROOT}"
    # the private key is written by render.write() only, never part of the rendered text
    assert all(SECRETS.private_key not in text for text in first.values())


# after the renders above, so that HALAB_UPDATE_GOLDEN=1 has created the folders
def test_bundled_scenarios_are_the_golden_set():
    assert BUNDLED == ["case1", "case2", "case3", "case3-ha", "mini"]
    if UPDATE:
        for stale in GOLDEN.iterdir() if GOLDEN.is_dir() else ():
            if stale.is_dir() and stale.name not in BUNDLED:
                shutil.rmtree(stale)
    golden_dirs = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())
    assert golden_dirs == BUNDLED, "tests/golden/ must hold one folder per bundled scenario; " \
        "run with HALAB_UPDATE_GOLDEN=1 to regenerate"
