"""lab.host.k8sbin: where the Kubernetes binaries come from, and checksum-verified fetch.

Resolution tests use tiny fake executables (only paths are under test). Fetch
tests serve files from a local http.server on 127.0.0.1.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from lab.host import k8sbin
from lab.errors import HalabError

NAMES = k8sbin.BINARY_NAMES


def make_fake_bins(d: Path, version="v1.20.2", skip=(), broken=()):
    d.mkdir(parents=True, exist_ok=True)
    for n in NAMES:
        if n in skip:
            continue
        if n in broken:
            body = "#!/bin/sh\necho boom >&2\nexit 3\n"
        elif n == "kubectl":
            body = f"#!/bin/sh\necho 'Client Version: {version}'\n"
        else:
            body = f"#!/bin/sh\necho 'Kubernetes {version}'\n"
        p = d / n
        p.write_text(body)
        p.chmod(0o755)
    return d


@pytest.fixture
def env(monkeypatch, tmp_path):
    """Isolated environment: no $HALAB_K8S_BIN_DIR, cache under tmp_path."""
    monkeypatch.delenv(k8sbin.ENV_BIN_DIR, raising=False)
    monkeypatch.setenv(k8sbin.ENV_CACHE, str(tmp_path / "cache"))
    return tmp_path


def make_cache(tmp_path: Path, version="v1.20.2") -> Path:
    k8s = tmp_path / "cache" / "k8s"
    make_fake_bins(k8s / version, version)
    (k8s / "default").symlink_to(version)
    return k8s / version


# ------------------------------------------------------------ resolution order
def test_explicit_dir_wins(env, monkeypatch):
    make_cache(env, "v1.20.2")
    envdir = make_fake_bins(env / "envdir", "v1.21.0")
    monkeypatch.setenv(k8sbin.ENV_BIN_DIR, str(envdir))
    explicit = make_fake_bins(env / "explicit", "v1.22.0")
    b = k8sbin.find_k8s_binaries(explicit)
    assert b.directory == explicit.resolve()
    assert b.version == "v1.22.0" and b.source == "--k8s-bin-dir"
    assert b.kube_apiserver == explicit.resolve() / "kube-apiserver"
    assert b.kubectl == explicit.resolve() / "kubectl"
    assert b.path("kube-scheduler") == explicit.resolve() / "kube-scheduler"


def test_env_beats_cache(env, monkeypatch):
    make_cache(env, "v1.20.2")
    envdir = make_fake_bins(env / "envdir", "v1.21.0")
    monkeypatch.setenv(k8sbin.ENV_BIN_DIR, str(envdir))
    b = k8sbin.find_k8s_binaries()
    assert b.directory == envdir.resolve() and b.version == "v1.21.0"
    assert b.source == "$HALAB_K8S_BIN_DIR"


def test_cache_default(env):
    real = make_cache(env, "v1.20.2")
    b = k8sbin.find_k8s_binaries()
    assert b.directory == real.resolve() and b.version == "v1.20.2" and b.source == "cache"
    assert b.kube_controller_manager == real.resolve() / "kube-controller-manager"


def test_cache_without_running_binaries(env):
    make_cache(env, "v1.20.2")
    b = k8sbin.find_k8s_binaries(check_version=False)
    assert b.version == "v1.20.2"  # from the directory name


def test_frozen(env):
    make_cache(env)
    b = k8sbin.find_k8s_binaries()
    with pytest.raises(Exception):
        b.version = "x"


def test_nothing_anywhere(env):
    with pytest.raises(HalabError) as ei:
        k8sbin.find_k8s_binaries()
    msg = str(ei.value)
    assert str(env / "cache" / "k8s" / "default") in msg
    assert "tools/build-k8s.sh" in msg and "halab fetch-k8s" in msg
    assert ei.value.hint and "--k8s-bin-dir" in ei.value.hint


def test_bad_explicit_dir_does_not_fall_through(env):
    make_cache(env)
    with pytest.raises(HalabError) as ei:
        k8sbin.find_k8s_binaries(env / "nope")
    assert str(env / "nope") in ei.value.message and "--k8s-bin-dir" in ei.value.message


def test_missing_binaries_named(env, monkeypatch):
    d = make_fake_bins(env / "partial", skip=("kube-scheduler", "kubectl"))
    monkeypatch.setenv(k8sbin.ENV_BIN_DIR, str(d))
    with pytest.raises(HalabError) as ei:
        k8sbin.find_k8s_binaries()
    msg = ei.value.message
    what = msg.split("; fix:")[0]
    assert "kube-scheduler" in what and "kubectl" in what and "kube-apiserver" not in what
    assert str(d) in what and "HALAB_K8S_BIN_DIR" in what
    assert "tools/build-k8s.sh" in msg


def test_not_executable_counts_as_missing(env):
    d = make_fake_bins(env / "noexec")
    (d / "kube-apiserver").chmod(0o644)
    with pytest.raises(HalabError, match="kube-apiserver"):
        k8sbin.find_k8s_binaries(d)


def test_broken_binary(env):
    d = make_fake_bins(env / "broken", broken=("kube-apiserver",))
    with pytest.raises(HalabError, match="does not report a version"):
        k8sbin.find_k8s_binaries(d)


def test_real_cache_if_built(monkeypatch):
    """The real cache filled by tools/build-k8s.sh, when present."""
    monkeypatch.delenv(k8sbin.ENV_BIN_DIR, raising=False)
    if not (k8sbin.cache_k8s_dir() / "kube-apiserver").exists():
        pytest.skip("no binaries in the cache (run: bash tools/build-k8s.sh)")
    b = k8sbin.find_k8s_binaries()
    assert b.version.startswith("v1.")
    assert k8sbin.binary_version(b.kubectl) == b.version


@pytest.mark.parametrize("raw,norm", [("1.20.2", "v1.20.2"), ("v1.20.2", "v1.20.2"),
                                      ("v1.21.0-rc.1", "v1.21.0-rc.1")])
def test_normalize_version(raw, norm):
    assert k8sbin.normalize_version(raw) == norm


@pytest.mark.parametrize("raw", ["1.20", "latest", "v1.20.2; rm -rf /", ""])
def test_normalize_version_rejects(raw):
    with pytest.raises(HalabError):
        k8sbin.normalize_version(raw)


# ------------------------------------------------------------ fetch
class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path):
    """A local 'dl.k8s.io' on 127.0.0.1 serving tmp_path/www; yields (base_url, bin dir)."""
    www = tmp_path / "www"
    bindir = www / "release" / "v1.20.2" / "bin" / "linux" / "amd64"
    bindir.mkdir(parents=True)
    for n in NAMES:
        data = f"#!/bin/sh\necho 'Kubernetes v1.20.2 {n}'\n".encode() + os.urandom(64 * 1024)
        (bindir / n).write_bytes(data)
        (bindir / f"{n}.sha256").write_text(hashlib.sha256(data).hexdigest())
    handler = functools.partial(_Quiet, directory=str(www))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", bindir
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def test_fetch_good(mirror, tmp_path):
    base, bindir = mirror
    dest = tmp_path / "dest"
    b = k8sbin.fetch_k8s("1.20.2", dest, arch="amd64", base_url=base)
    assert b.version == "v1.20.2" and b.directory == dest.resolve()
    for n in NAMES:
        assert (dest / n).read_bytes() == (bindir / n).read_bytes()
        assert stat.S_IMODE((dest / n).stat().st_mode) == 0o755
    assert sorted(p.name for p in dest.iterdir()) == sorted(NAMES)


def test_fetch_into_cache_sets_default(mirror, env, monkeypatch):
    base, _ = mirror
    k8sbin.fetch_k8s("v1.20.2", arch="amd64", base_url=base)
    default = env / "cache" / "k8s" / "default"
    assert default.is_symlink() and os.readlink(default) == "v1.20.2"
    b = k8sbin.find_k8s_binaries(check_version=False)
    assert b.directory == (env / "cache" / "k8s" / "v1.20.2").resolve()


def test_fetch_corrupted(mirror, tmp_path):
    base, bindir = mirror
    data = bytearray((bindir / "kube-scheduler").read_bytes())
    data[-1] ^= 0xFF
    (bindir / "kube-scheduler").write_bytes(bytes(data))
    dest = tmp_path / "dest"
    with pytest.raises(HalabError, match="checksum mismatch.*kube-scheduler"):
        k8sbin.fetch_k8s("v1.20.2", dest, arch="amd64", base_url=base)
    assert not (dest / "kube-scheduler").exists()
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # no partial files


def test_fetch_missing_version(mirror, tmp_path):
    base, _ = mirror
    with pytest.raises(HalabError, match="HTTP 404"):
        k8sbin.fetch_k8s("v9.9.9", tmp_path / "dest", arch="amd64", base_url=base)


def test_fetch_unreachable_fails_fast(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    t0 = time.monotonic()
    with pytest.raises(HalabError) as ei:
        k8sbin.fetch_k8s("v1.20.2", tmp_path / "dest", arch="amd64",
                         base_url=f"http://127.0.0.1:{port}", timeout=2)
    assert time.monotonic() - t0 < 2.5
    msg = str(ei.value)
    assert "cannot reach" in msg and f"127.0.0.1:{port}" in msg and "\n" not in ei.value.message
    assert "build-k8s.sh" in ei.value.hint
