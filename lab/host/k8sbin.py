"""Where the Kubernetes control-plane binaries of the "local" provider come from.

Resolution order (first one set wins; a location that is set but incomplete is
an error, never silently skipped):
  1. the explicit directory (CLI `--k8s-bin-dir`)
  2. $HALAB_K8S_BIN_DIR
  3. the cache: ${HALAB_CACHE:-~/.cache/halab}/k8s/default (filled by
     `bash tools/build-k8s.sh` or `halab fetch-k8s VERSION`)

`fetch_k8s` downloads official release binaries (with sha256 verification);
it needs internet access to dl.k8s.io (or a mirror given as base_url).
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lab.errors import HalabError

BINARY_NAMES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
ENV_BIN_DIR = "HALAB_K8S_BIN_DIR"
ENV_CACHE = "HALAB_CACHE"
DEFAULT_BASE_URL = "https://dl.k8s.io"
BUILD_HINT = "build them from Debian's source with `bash tools/build-k8s.sh` " \
             "(~10 min; needs only the Debian mirror) or download with `halab fetch-k8s VERSION`"

_VERSION_RE = re.compile(r"v\d+\.\d+\.\d+[0-9A-Za-z.+-]*")


@dataclass(frozen=True)
class K8sBinaries:
    directory: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    version: str
    source: str = ""          # which rule found them: "--k8s-bin-dir", "$HALAB_K8S_BIN_DIR", "cache"

    def path(self, name: str) -> Path:
        return getattr(self, name.replace("-", "_"))


def cache_root() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "halab").expanduser()


def cache_k8s_dir(version: str | None = None) -> Path:
    """<cache>/k8s/default, or <cache>/k8s/<version>."""
    return cache_root() / "k8s" / (version or "default")


def _candidates(explicit_dir) -> list[tuple[str, Path]]:
    if explicit_dir:
        return [("--k8s-bin-dir", Path(explicit_dir).expanduser())]
    env = os.environ.get(ENV_BIN_DIR)
    if env:
        return [(f"${ENV_BIN_DIR}", Path(env).expanduser())]
    return [("cache", cache_k8s_dir())]


def binary_version(path: Path, timeout: float = 15.0) -> str:
    """The version a binary reports (v1.20.2); HalabError if it does not run."""
    args = [str(path), "version", "--client", "--short"] if path.name == "kubectl" \
        else [str(path), "--version"]
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HalabError(f"{path} does not run ({exc})", hint=BUILD_HINT) from exc
    m = _VERSION_RE.search(out.stdout + out.stderr)
    if out.returncode != 0 or not m:
        raise HalabError(f"{path} does not report a version "
                         f"(exit {out.returncode}: {(out.stderr or out.stdout).strip()[:200]})",
                         hint=BUILD_HINT)
    return m.group(0)


def find_k8s_binaries(explicit_dir=None, check_version: bool = True) -> K8sBinaries:
    """Locate kube-apiserver, kube-controller-manager, kube-scheduler and kubectl.

    Raises HalabError naming the missing binaries, the directory looked in (and
    why that one) and how to get them.
    """
    (source, directory), = _candidates(explicit_dir)
    if source == "cache":
        looked = (f"{directory} (the cache; --k8s-bin-dir not given, "
                  f"${ENV_BIN_DIR} not set)")
    else:
        looked = f"{directory} (from {source})"
    if not directory.is_dir():
        what = "does not exist" if not directory.exists() else "is not a directory"
        raise HalabError(
            f"Kubernetes binaries not found: looked in {looked}, which {what}; "
            f"fix: {_fix(source)}", hint=_hint(source))
    missing = [n for n in BINARY_NAMES
               if not (directory / n).is_file() or not os.access(directory / n, os.X_OK)]
    if missing:
        raise HalabError(
            f"Kubernetes binaries missing: {', '.join(missing)} not found (or not executable) "
            f"in {looked}; fix: {_fix(source)}", hint=_hint(source))
    resolved = directory.resolve()
    version = ""
    if check_version:
        version = binary_version(resolved / "kube-apiserver")
    elif resolved.name.startswith("v"):
        version = resolved.name
    return K8sBinaries(resolved, *(resolved / n for n in BINARY_NAMES), version=version,
                       source=source)


def _fix(source: str) -> str:
    if source == "cache":
        return "run `bash tools/build-k8s.sh` or `halab fetch-k8s VERSION`"
    return (f"put {', '.join(BINARY_NAMES)} in that directory (`bash tools/build-k8s.sh` "
            "or `halab fetch-k8s VERSION` fill the cache instead)")


def _hint(source: str) -> str:
    if source == "cache":
        return (f"{BUILD_HINT}; or point --k8s-bin-dir / ${ENV_BIN_DIR} at a directory "
                f"holding {', '.join(BINARY_NAMES)}")
    return f"put {', '.join(BINARY_NAMES)} there, or unset it to use the cache ({BUILD_HINT})"


# ------------------------------------------------------------------ download
def host_arch() -> str:
    m = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
            "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}.get(m, m)


def normalize_version(version: str) -> str:
    v = version.strip()
    if not v.startswith("v"):
        v = "v" + v
    if not re.fullmatch(r"v\d+\.\d+\.\d+(-[0-9A-Za-z.]+)?", v):
        raise HalabError(f"not a Kubernetes release version: {version!r}",
                         hint="use a full version such as v1.20.2")
    return v


def _open(url: str, timeout: float):
    try:
        return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (http/https only)
    except urllib.error.HTTPError as exc:
        raise HalabError(f"download failed: {url}: HTTP {exc.code} {exc.reason}",
                         hint="check the version exists (e.g. v1.20.2)") from exc
    except (urllib.error.URLError, OSError, socket.timeout) as exc:
        reason = getattr(exc, "reason", exc)
        raise HalabError(f"download failed: cannot reach {url}: {reason}",
                         hint=f"no internet access? {BUILD_HINT}") from exc


def _expected_sha256(url: str, timeout: float) -> str:
    with _open(url, timeout) as resp:
        try:
            text = resp.read(4096).decode("ascii", "replace")
        except (OSError, socket.timeout) as exc:
            raise HalabError(f"download failed: {url}: {exc}") from exc
    m = re.match(r"\s*([0-9a-fA-F]{64})\b", text)
    if not m:
        raise HalabError(f"download failed: {url} does not hold a sha256 checksum")
    return m.group(1).lower()


def fetch_k8s(version: str, dest_dir=None, arch: str | None = None,
              base_url: str = DEFAULT_BASE_URL, names=BINARY_NAMES,
              timeout: float = 5.0, make_default: bool = True) -> K8sBinaries:
    """Download official release binaries into dest_dir (default: the cache).

    URL: {base_url}/release/{version}/bin/linux/{arch}/{name} and `.sha256`.
    Each binary is verified against its sha256 before it is made executable
    and renamed into place, so dest_dir never holds a partial or corrupt
    binary. `timeout` bounds connecting and each network read (not the whole
    download). With the default dest_dir and make_default, <cache>/k8s/default
    is pointed at the new version.
    """
    version = normalize_version(version)
    arch = arch or host_arch()
    use_cache = dest_dir is None
    dest = cache_k8s_dir(version) if use_cache else Path(dest_dir).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    base = base_url.rstrip("/")
    for name in names:
        url = f"{base}/release/{version}/bin/linux/{arch}/{name}"
        want = _expected_sha256(url + ".sha256", timeout)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest)
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, _open(url, timeout) as resp:
                while True:
                    try:
                        chunk = resp.read(1 << 20)
                    except (OSError, socket.timeout) as exc:
                        raise HalabError(f"download failed: {url}: {exc}",
                                         hint="retry; the connection stalled or dropped") from exc
                    if not chunk:
                        break
                    h.update(chunk)
                    out.write(chunk)
            got = h.hexdigest()
            if got != want:
                raise HalabError(f"checksum mismatch for {url}: got sha256 {got}, "
                                 f"expected {want}", hint="retry the download; "
                                 "if it persists the mirror is serving a corrupt file")
            os.chmod(tmp, 0o755)
            os.replace(tmp, dest / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    if use_cache and make_default:
        link = cache_k8s_dir()
        tmp_link = link.with_name(f".default.{os.getpid()}")
        if tmp_link.is_symlink() or tmp_link.exists():
            tmp_link.unlink()
        tmp_link.symlink_to(version)
        os.replace(tmp_link, link)
    resolved = dest.resolve()
    return K8sBinaries(resolved, *(resolved / n for n in BINARY_NAMES), version=version,
                       source="fetch")
