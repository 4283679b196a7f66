"""kubespray's Python requirements as wheels, downloaded on this machine for admin-lb.

An offline classroom's admin-lb cannot reach PyPI, but the instructor's machine can
(or has a pip index in its pip.conf). With `kubespray.wheels: host` halab runs
``pip download --only-binary=:all:`` for the runner's Python version and platform
(both from lab.model.kubespray_releases: the Python halab builds the venv with, and
the manylinux tags the OS's glibc accepts), once per requirements and target, into
``$HALAB_CACHE/wheels/<key>/``; `halab up` copies them into the lab folder, and
admin-lb installs them with ``pip install --no-index``.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

from lab.errors import HalabError
from lab.host.k8sbin import cache_root
from lab.model import kubespray_releases

DOWNLOAD_TIMEOUT = 900


def requirements_of(source: str) -> str:
    """kubespray's requirements.txt from a local kubespray.source (folder or .tar.gz)."""
    path = Path(source).expanduser()
    if path.is_dir():
        req = path / "requirements.txt"
        if not req.is_file():
            raise HalabError(f"kubespray.source {source} has no requirements.txt",
                             hint="point kubespray.source at the top folder of a kubespray "
                                  "checkout (the one with cluster.yml)")
        return req.read_text()
    try:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                parts = member.name.strip("./").split("/")
                if member.isfile() and parts[-1] == "requirements.txt" and len(parts) <= 2:
                    fh = tar.extractfile(member)
                    if fh is not None:
                        return fh.read().decode()
    except (OSError, tarfile.TarError) as exc:
        raise HalabError(f"cannot read kubespray.source {source}: {exc}") from exc
    raise HalabError(f"kubespray.source {source} has no requirements.txt at its top",
                     hint="use a kubespray release archive or a checkout's folder")


def pip_download_argv(dest: Path, requirements: Path, python: tuple[int, int],
                      platforms: list[str]) -> list[str]:
    """The ``pip download`` for another machine's Python and platform (pure)."""
    major, minor = python
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--dest", str(dest), "--only-binary=:all:",
            "--python-version", f"{major}.{minor}", "--implementation", "cp",
            "--abi", f"cp{major}{minor}"]
    for tag in platforms:
        argv += ["--platform", tag]
    return argv + ["-r", str(requirements)]


def cache_key(requirements: str, python: tuple[int, int], platforms: list[str]) -> str:
    text = "\n".join([requirements, f"{python[0]}.{python[1]}", *platforms])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def download(requirements: str, python: tuple[int, int], platforms: list[str],
             cache: Path | None = None, progress: Callable[[str], None] = lambda m: None,
             run=subprocess.run) -> Path:
    """The folder of wheels for these requirements and this target, downloaded once."""
    root = (cache or cache_root()) / "wheels"
    folder = root / cache_key(requirements, python, platforms)
    if (folder / ".complete").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    py = f"{python[0]}.{python[1]}"
    progress(f"downloading kubespray's Python requirements for Python {py} "
             f"({platforms[0]}) into {folder}")
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(requirements)
        dest = Path(tmp) / "wheels"
        argv = pip_download_argv(dest, req, python, platforms)
        try:
            res = run(argv, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise HalabError(f"pip download of kubespray's requirements took over "
                             f"{DOWNLOAD_TIMEOUT} s", hint=_HINT) from None
        if res.returncode != 0:
            lines = [ln for ln in (res.stderr or res.stdout).splitlines()
                     if ln.strip() and not ln.startswith("WARNING: Location")]
            raise HalabError(f"cannot download kubespray's requirements for Python {py} "
                             f"({platforms[0]}): {' / '.join(lines[-3:]) or 'pip failed'}",
                             hint=_HINT)
        if not any(dest.glob("*.whl")):
            raise HalabError("pip download of kubespray's requirements gave no wheel", hint=_HINT)
        (dest / ".complete").write_text(" ".join(argv[1:]) + "\n")
        if folder.exists():   # an incomplete folder from an interrupted run
            shutil.rmtree(folder)
        dest.rename(folder)
    return folder


_HINT = ("this machine needs PyPI or a pip index (pip.conf); or download the wheels "
         "elsewhere into a folder and set `kubespray.wheels:` to that folder")


def wheels_for(s, progress: Callable[[str], None] = lambda m: None, run=subprocess.run,
               cache: Path | None = None) -> Path | None:
    """The folder whose wheels go to the runner, or None (`wheels: pypi`). Side effect:
    the download for `wheels: host`."""
    if not s.uses_kubespray or s.kubespray.wheels == "pypi":
        return None
    if s.kubespray.wheels != "host":
        return Path(s.kubespray.wheels).expanduser()
    rel = kubespray_releases.release(s.kubespray.version)
    target = kubespray_releases.wheel_target(rel, s.box.os) if rel else None
    if target is None:   # the scenario's checks refuse this; a record may be older
        raise HalabError(f"halab cannot tell which wheels kubespray {s.kubespray.version} "
                         f"needs on {s.box.os}", hint="set `kubespray.wheels:` to a folder of "
                                                      "wheels made for the box, or `pypi`")
    python, platforms = target
    return download(requirements_of(s.kubespray.source), python, platforms, cache,
                    progress, run)
