"""The kubespray releases halab knows, and the box each one can run with.

Read from the kubespray repository at each tag (requirements.txt, meta/runtime.yml,
docs/ansible/ansible.md, README's OS list, kubelet_checksums, kubespray_defaults);
v2.32.0 from its release notes only (not read from a tag here): `verified=False`.
A pair outside this table may still work; `halab validate` says so as a warning.
"""
from __future__ import annotations

from dataclasses import dataclass

Version = tuple[int, int]


@dataclass(frozen=True)
class Release:
    version: str
    date: str
    ansible: str                  # what requirements.txt pins
    ansible_core: str
    python: tuple[Version, Version]   # the controller (admin-lb) Python range, inclusive
    kubernetes: tuple[str, str]   # oldest and default (newest) Kubernetes it deploys
    supported_os: frozenset
    experimental_os: frozenset
    lb_domain_default: str        # `apiserver_loadbalancer_domain_name` when unset
    extra_vars_as_json: bool      # booleans in `-e key=value` arrive as strings
    verified: bool = True

    def python_ok(self, version: Version) -> bool:
        low, high = self.python
        return low <= version <= high

    def python_words(self) -> str:
        (a, b), (c, d) = self.python
        return f"{a}.{b}-{c}.{d}"


_EL8 = {f"{d}-8" for d in ("rockylinux", "almalinux", "oraclelinux", "centos", "rhel")}
_EL9 = {f"{d}-9" for d in ("rockylinux", "almalinux", "oraclelinux", "centos", "rhel")}
_EL10 = {f"{d}-10" for d in ("rockylinux", "almalinux", "oraclelinux", "centos", "rhel")}
_DEB = {"debian-11", "debian-12", "debian-13", "ubuntu-22.04", "ubuntu-24.04"}

RELEASES = {r.version: r for r in (
    Release("v2.29.1", "2025-12", "10.7.0", "2.17", ((3, 10), (3, 12)), ("1.31.0", "1.33.7"),
            frozenset(_EL8 | _EL9 | _DEB), frozenset(),
            "lb-apiserver.kubernetes.local", False),
    Release("v2.30.0", "2026-01", "10.7.0", "2.17", ((3, 10), (3, 12)), ("1.32.0", "1.34.3"),
            frozenset(_EL9 | _EL10 | _DEB), frozenset({"rockylinux-10"}),
            "localhost with the local LB, else the LB address", False),
    Release("v2.31.0", "2026-04", "11.13.0", "2.18", ((3, 11), (3, 13)), ("1.33.0", "1.35.4"),
            frozenset(_EL9 | _EL10 | _DEB), frozenset({"rockylinux-10"}),
            "localhost with the local LB, else the LB address", False),
    Release("v2.32.0", "2026-09", "(core 2.19)", "2.19", ((3, 11), (3, 13)), ("?", "1.36"),
            frozenset(_EL9 | _EL10 | _DEB), frozenset({"rockylinux-10"}),
            "localhost with the local LB, else the LB address", True, verified=False),
)}

# The Pythons each OS offers a controller: its python3, then newer ones its own
# repositories carry (AppStream on EL 8/9), as (version, command, package).
OS_PYTHONS: dict[str, list[tuple[Version, str, str]]] = {
    **{os: [((3, 6), "python3", "python3"), ((3, 11), "python3.11", "python3.11"),
            ((3, 12), "python3.12", "python3.12")] for os in _EL8},
    **{os: [((3, 9), "python3", "python3"), ((3, 11), "python3.11", "python3.11"),
            ((3, 12), "python3.12", "python3.12")] for os in _EL9},
    **{os: [((3, 12), "python3", "python3")] for os in _EL10},
    "debian-11": [((3, 9), "python3", "python3")],
    "debian-12": [((3, 11), "python3", "python3")],
    "debian-13": [((3, 13), "python3", "python3")],
    "ubuntu-22.04": [((3, 10), "python3", "python3")],
    "ubuntu-24.04": [((3, 12), "python3", "python3")],
}


# The C library each OS ships (glibc major.minor): it decides which manylinux wheels
# its Python can install (PEP 600: manylinux_2_X runs on glibc >= 2.X).
OS_GLIBC: dict[str, Version] = {
    **{os: (2, 28) for os in _EL8}, **{os: (2, 34) for os in _EL9},
    **{os: (2, 39) for os in _EL10},
    "debian-11": (2, 31), "debian-12": (2, 36), "debian-13": (2, 41),
    "ubuntu-22.04": (2, 35), "ubuntu-24.04": (2, 39),
}
ARCH = "x86_64"   # the boxes halab knows are x86-64 (VirtualBox, libvirt on PCs)


def wheel_target(rel: Release, os_name: str) -> tuple[Version, list[str]] | None:
    """(Python version, pip platform tags) for the wheels kubespray's venv on admin-lb
    installs, newest platform first; None when halab does not know the OS."""
    py = controller_python(rel, os_name)
    glibc = OS_GLIBC.get(os_name)
    if py is None or glibc is None:
        return None
    major, minor = glibc
    tags = [f"manylinux_{major}_{m}_{ARCH}" for m in range(minor, 16, -1)]
    tags += [f"manylinux2014_{ARCH}", f"manylinux2010_{ARCH}", f"manylinux1_{ARCH}"]
    return py[2], tags


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.lstrip("v").split("."))


def release(version: str) -> Release | None:
    """The release, also for a patch release of a known minor (v2.32.1 -> v2.32.0's facts)."""
    if version in RELEASES:
        return RELEASES[version]
    minor = ".".join(version.split(".")[:2])
    same = [r for v, r in RELEASES.items() if v.startswith(minor + ".")]
    return same[-1] if same else None


def controller_python(rel: Release, os_name: str) -> tuple[str, str, Version] | None:
    """(command, package, version) of the newest Python on `os_name` that `rel`'s Ansible
    runs on, or None: kubespray's venv on admin-lb is built with it."""
    for version, command, package in sorted(OS_PYTHONS.get(os_name, []), reverse=True):
        if rel.python_ok(version):
            return command, package, version
    return None


def pair_problems(version: str, os_name: str) -> list[tuple[str, str]]:
    """Why this kubespray release and this box's OS may not work together, as
    (what it is about: "os" or "release", why); [] if they do."""
    rel = release(version)
    if rel is None:
        return [("release", f"halab knows kubespray {', '.join(RELEASES)}; check {version}'s README for "
                "its supported OS list and its requirements.txt for the Ansible it needs")]
    out = []
    if os_name not in rel.supported_os:
        later = [r.version for r in RELEASES.values()
                 if os_name in r.supported_os and _key(r.version) > _key(rel.version)]
        out.append(("os", f"kubespray {rel.version} does not list {os_name} as supported"
                    + (f"; it is listed from {later[0]}" if later else "")))
    elif os_name in rel.experimental_os:
        out.append(("os", f"kubespray {rel.version} lists {os_name} as experimental"))
    if OS_PYTHONS.get(os_name) and controller_python(rel, os_name) is None:
        have = ", ".join(f"{v[0]}.{v[1]}" for v, _, _ in OS_PYTHONS[os_name])
        out.append(("os", f"kubespray {rel.version}'s Ansible {rel.ansible} needs Python "
                           f"{rel.python_words()} on admin-lb; {os_name} offers {have}"))
    if not rel.verified:
        out.append(("release", f"halab's facts about {rel.version} come from its release "
                               "notes, not its source"))
    return out
