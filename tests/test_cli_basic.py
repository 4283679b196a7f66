"""The scenario verbs of the CLI: scenarios, show, validate, render."""
from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from lab.cli import main

BUNDLED = ["case1", "case2", "case3", "case3-ha", "mini"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def halab(*args: str, ok: bool = True):
    result = CliRunner(env={"HALAB_DEBUG": None}).invoke(main, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"halab {' '.join(args)} crashed: {result.exception!r}") \
            from result.exception
    if ok:
        assert result.exit_code == 0, f"halab {' '.join(args)}:\n{result.stderr}"
    return result


def _table(text: str, header: str) -> list[list[str]]:
    """Rows of the plain-text table whose header line starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(header))
    rows = []
    for ln in lines[start + 2:]:  # header, then the dashes
        if not ln.strip():
            break
        rows.append(re.split(r"\s{2,}", ln.strip()))
    return rows


def _access_paths(show_output: str) -> dict[str, str]:
    return {row[0]: row[1] for row in _table(show_output, "CLIENT")}


# ------------------------------------------------------------------ scenarios

def test_scenarios_lists_every_bundled_one_per_line():
    out = halab("scenarios").stdout
    lines = out.splitlines()
    assert [ln.split()[0] for ln in lines] == BUNDLED
    for ln in lines:
        assert len(ln.split(None, 1)) == 2, f"no description on {ln!r}"
    assert "hybrid" in lines[1]


# ------------------------------------------------------------------ show

def test_show_case2_nodes_addresses_totals_and_access_paths():
    out = halab("show", "case2").stdout
    assert out.startswith("Lab case2: Case 2, provider virtualbox, deployer kubespray, "
                          "subnet 192.168.10.0/24")
    nodes = _table(out, "NODE")
    assert [(r[0], r[2]) for r in nodes] == [
        ("admin-lb", "192.168.10.10"), ("k8s-node1", "192.168.10.11"),
        ("k8s-node2", "192.168.10.12"), ("k8s-node3", "192.168.10.13"),
        ("k8s-node4", "192.168.10.14"), ("k8s-node5", "192.168.10.15")]
    assert [r[1] for r in nodes] == ["admin-lb (HAProxy, NFS, kubespray runner)"] + \
        ["control plane + etcd"] * 3 + ["worker + nginx API proxy"] * 2
    assert [(r[3], r[4]) for r in nodes] == [("2", "1024 MiB")] + [("4", "2048 MiB")] * 5
    assert "Total: 22 vCPU, 11264 MiB RAM" in out
    assert "API load balancer: 192.168.10.10:6443 (k8s-api.case2.lab)" in out
    assert _access_paths(out) == {
        "external kubectl": "https://192.168.10.10:6443",
        "control-plane components": "https://127.0.0.1:6443",
        "worker kubelet/kube-proxy": "https://localhost:6443",
    }


@pytest.mark.parametrize("name, provider, admin_lb, worker", [
    ("case1", None, "admin-lb (NFS, kubespray runner)", "worker + nginx API proxy"),
    ("case1", "local", "admin-lb (admin tools only)", "worker + nginx API proxy"),
    ("case3", None, "admin-lb (HAProxy, NFS, kubespray runner)", "worker"),
    ("case3-ha", None, "admin-lb (HAProxy, keepalived VIP, NFS, kubespray runner)", "worker"),
])
def test_show_labels_what_each_node_really_runs(name, provider, admin_lb, worker):
    out = halab("show", name, *(["--provider", provider] if provider else [])).stdout
    roles = {r[0]: r[1] for r in _table(out, "NODE")}
    lb = "admin-lb1" if name == "case3-ha" else "admin-lb"
    assert roles[lb] == admin_lb
    workers = [r[1] for r in _table(out, "NODE") if r[1].startswith("worker")]
    assert workers and set(workers) == {worker}


def test_show_says_when_vcpus_are_overcommitted(monkeypatch):
    from lab.host import hostinfo
    monkeypatch.setattr(hostinfo, "cpus", lambda: 2)
    assert "CPUs are overcommitted 11.0x" in halab("show", "case2").stdout
    monkeypatch.setattr(hostinfo, "cpus", lambda: 32)
    assert "overcommitted" not in halab("show", "case2").stdout


@pytest.mark.parametrize("name, external, workers, via_external", [
    ("case1", "https://192.168.10.11:6443", "https://localhost:6443", "direct to k8s-node1"),
    ("case2", "https://192.168.10.10:6443", "https://localhost:6443", "HAProxy on admin-lb"),
    ("case3", "https://192.168.10.10:6443", "https://k8s-api.case3.lab:6443",
     "HAProxy on admin-lb"),
    ("case3-ha", "https://192.168.10.10:6443", "https://k8s-api.case3-ha.lab:6443",
     "VIP 192.168.10.10 (keepalived)"),
    ("mini", "https://192.168.10.10:6443", "https://localhost:6443", "HAProxy on admin-lb"),
])
def test_show_access_paths_per_case(name, external, workers, via_external):
    out = halab("show", name).stdout
    paths = _access_paths(out)
    assert paths["external kubectl"] == external
    assert paths["worker kubelet/kube-proxy"] == workers
    assert paths["control-plane components"] == "https://127.0.0.1:6443"
    external_row = next(r for r in _table(out, "CLIENT") if r[0] == "external kubectl")
    assert external_row[2].startswith(via_external)
    if name == "case1":
        assert "API load balancer" not in out


# ------------------------------------------------------------------ render

CASE2_FILES = {
    "Vagrantfile", "lab.json", "files/lab.env", "files/lib.sh", "files/hosts", "files/authorized_keys",
    "files/exports", "files/admin-lb/haproxy.cfg", "keys/id_ed25519", "keys/id_ed25519.pub",
    "keys/vrrp_password", "scripts/admin-lb.sh", "scripts/common.sh", "inventory/inventory.ini",
    "inventory/group_vars/all/zz-halab.yml", "inventory/group_vars/k8s_cluster/zz-halab.yml",
    "inventory/extra-vars.yml", ".halab-render",
}


def _tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_render_case2_writes_the_whole_lab(tmp_path):
    out = tmp_path / "lab"
    r = halab("render", "case2", "--out", str(out))
    assert _tree(out) == CASE2_FILES
    assert f"wrote {len(CASE2_FILES) - 1} files for lab case2 into {out}" in r.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert not list(tmp_path.glob(".lab.*")), "temporary folder left behind"

    for secret in ("keys/id_ed25519", "keys/vrrp_password"):
        assert stat.S_IMODE((out / secret).stat().st_mode) == 0o600, secret
    for script in ("scripts/admin-lb.sh", "scripts/common.sh"):
        assert (out / script).stat().st_mode & stat.S_IXUSR, script

    # a fresh key pair per lab: the private key matches the public one handed to nodes
    from cryptography.hazmat.primitives import serialization
    key = serialization.load_ssh_private_key((out / "keys/id_ed25519").read_bytes(), None)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    assert (out / "keys/id_ed25519.pub").read_text().startswith(public + " ")
    assert (out / "files/authorized_keys").read_text() == (out / "keys/id_ed25519.pub").read_text()
    assert len((out / "keys/vrrp_password").read_text().strip()) <= 8  # VRRP PASS limit

    lab = json.loads((out / "lab.json").read_text())
    assert (lab["name"], lab["case"], lab["scenario"]) == ("case2", 2, "case2")
    assert [n["ip"] for n in lab["nodes"]] == [f"192.168.10.{i}" for i in range(10, 16)]


def test_render_generates_new_secrets_per_lab(tmp_path):
    halab("render", "case2", "--out", "a")
    halab("render", "case2", "--out", "b")
    assert Path("a/keys/id_ed25519").read_text() != Path("b/keys/id_ed25519").read_text()


def test_render_never_deletes_what_it_did_not_write(tmp_path):
    out = tmp_path / "lab"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for extra in ([], ["--force"]):
        r = halab("render", "case2", "--out", str(out), *extra, ok=False)
        assert r.exit_code == 1
        assert f"halab: error: {out} already has files that halab did not render" in r.stderr
        assert "Traceback" not in r.stderr
        assert _tree(out) == {"notes.txt"}
    # `--out .` in a folder of notes (how a user once lost them), and its parents
    (tmp_path / "mine.txt").write_text("notes")
    for where in (".", "..", str(tmp_path)):
        r = halab("render", "case2", "--out", where, "--force", ok=False)
        assert r.exit_code == 1 and "is the current folder" in r.stderr, r.stderr
    assert (tmp_path / "mine.txt").read_text() == "notes"


def test_render_replaces_an_earlier_render_only_with_force(tmp_path):
    out = tmp_path / "lab"
    halab("render", "case2", "--out", str(out))
    first = (out / "keys/id_ed25519").read_text()
    r = halab("render", "case2", "--out", str(out), ok=False)
    assert r.exit_code == 1 and "holds an earlier render" in r.stderr and "--force" in r.stderr
    halab("render", "case2", "--out", str(out), "--force")
    assert _tree(out) == CASE2_FILES and (out / "keys/id_ed25519").read_text() != first


def test_render_into_an_existing_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    halab("render", "case3-ha", "--out", "empty")
    assert {"files/admin-lb1/keepalived.conf", "files/admin-lb2/keepalived.conf"} <= \
        _tree(tmp_path / "empty")


# ------------------------------------------------------------------ validate and extends

def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_validate_a_bundled_name_and_a_file(tmp_path):
    r = halab("validate", "case2")
    assert r.stdout.strip().endswith("OK: lab case2, Case 2, provider virtualbox")
    path = _write(tmp_path / "mine.yaml", "extends: case2\nname: mine\n")
    r = halab("validate", str(path))
    assert r.stdout.strip() == f"{path}: OK: lab mine, Case 2, provider virtualbox"


@pytest.mark.parametrize("parent, subnet, lb, first_node", [
    ("case2", "192.168.56.0/24", "192.168.56.10", "192.168.56.10"),
    ("case3-ha", "10.77.3.0/24", "10.77.3.10", "10.77.3.11"),
])
def test_extends_with_another_subnet_moves_every_address(tmp_path, parent, subnet, lb, first_node):
    path = _write(tmp_path / "moved.yaml", f"""
        extends: {parent}
        name: moved
        network: {{subnet: {subnet}}}
    """)
    r = halab("validate", str(path))
    assert "OK: lab moved" in r.stdout and r.stderr == ""

    out = halab("show", str(path)).stdout
    net = ipaddress.ip_network(subnet)
    addresses = [row[2] for row in _table(out, "NODE")]
    assert addresses[0] == first_node
    assert all(ipaddress.ip_address(a) in net for a in addresses), addresses
    assert len(set(addresses)) == len(addresses)
    assert f"API load balancer: {lb}:6443 (k8s-api.moved.lab)" in out

    halab("render", str(path), "--out", "lab")
    lab = json.loads(Path("lab/lab.json").read_text())
    assert lab["subnet"] == subnet and lab["lb_address"] == lb
    assert all(ipaddress.ip_address(n["ip"]) in net for n in lab["nodes"])
    assert lab["scenario"] == str(path)  # not bundled: the file itself
    assert "192.168.10." not in Path("lab/files/hosts").read_text()


def test_extends_a_file_next_to_the_scenario(tmp_path, monkeypatch):
    folder = tmp_path / "course"
    _write(folder / "base.yaml", """
        extends: case2
        name: base
        worker: {count: 1}
        timezone: Asia/Seoul
    """)
    child = _write(folder / "child.yaml", """
        extends: base.yaml
        name: child
        network: {first_address: 192.168.10.20}
    """)
    _write(folder / "grandchild.yaml", "extends: ./child.yaml\nname: grandchild\n")
    # run from elsewhere: `extends` is relative to the file, not the working folder
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    for name, lab in (("child.yaml", "child"), ("grandchild.yaml", "grandchild")):
        r = halab("validate", str(folder / name))
        assert f"OK: lab {lab}, Case 2" in r.stdout
    out = halab("show", str(child)).stdout
    nodes = _table(out, "NODE")
    assert [(r[0], r[2]) for r in nodes] == [
        ("admin-lb", "192.168.10.20"), ("k8s-node1", "192.168.10.21"),
        ("k8s-node2", "192.168.10.22"), ("k8s-node3", "192.168.10.23"),
        ("k8s-node4", "192.168.10.24")]


def test_ssh_command_is_one_shell_line_or_an_argv_on_every_provider():
    """`halab ssh NODE -- sudo sh -c "a; b"` must not become `sh -c a` then `b` on a VM."""
    import shlex
    from lab.providers.local.provider import local_command
    from lab.providers.vagrant.provider import remote_command
    argv = ["sudo", "sh", "-c", "cat /etc/hosts; sshd -T | grep -i '^pass'"]
    (line,) = remote_command(argv)
    assert shlex.split(line) == argv          # what the VM's shell runs is that argv
    assert remote_command(["journalctl | tail"]) == ["journalctl | tail"]
    assert local_command(["journalctl | tail"]) == ["sh", "-c", "journalctl | tail"]
    assert local_command(argv) == argv and remote_command([]) == local_command([]) == []


@pytest.mark.parametrize("verb", [["status"], ["ssh", "k8s-node1", "--", "true"], ["destroy"],
                                  ["drill", "plan"], ["verify"]])
def test_a_verb_outside_any_lab_says_so_in_one_line_with_the_fix(verb, tmp_path, monkeypatch):
    """Finding the lab is part of the verb: no traceback when there is none."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HALAB_LABS_DIR", raising=False)
    result = subprocess.run([sys.executable, "-m", "lab.cli", *verb], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "HALAB_DEBUG": ""})
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert f"halab: error: no lab in {tmp_path / '.halab'}" in result.stderr
    assert "halab: fix: create one with `halab up SCENARIO`" in result.stderr


def _lab_verbs(group=None, prefix=()):
    """Every verb that acts on an existing lab (it takes --lab), found in the command
    tree itself, so a verb added later is covered too."""
    import click
    group = group or main
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _lab_verbs(cmd, (*prefix, name))
        elif any(p.name == "lab_name" for p in cmd.params):
            yield (*prefix, name)


def _args_for(verb: tuple) -> list[str]:
    import click
    cmd = main
    for part in verb:
        cmd = cmd.commands[part]
    needs = [p for p in cmd.params if isinstance(p, click.Argument) and p.required]
    return [*verb, *("k8s-node1" for _ in needs)]


def test_every_lab_verb_in_an_empty_folder_is_two_lines_and_no_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HALAB_LABS_DIR", raising=False)
    verbs = list(_lab_verbs())
    assert len(verbs) >= 15, verbs   # status, verify, destroy, deploy, ..., drill kill, ...
    for verb in verbs:
        result = CliRunner(env={"HALAB_DEBUG": None}).invoke(main, _args_for(verb))
        assert isinstance(result.exception, SystemExit), (verb, result.exception)
        assert result.exit_code != 0, verb
        lines = result.output.strip().splitlines()
        assert "Traceback" not in result.output and len(lines) <= 3, (verb, result.output)
        assert "halab: error: no lab in" in result.output, (verb, result.output)
        assert not (tmp_path / ".halab").exists(), verb      # nothing was written


def test_bare_halab_prints_help_on_stdout_and_exits_0():
    cp = subprocess.run([sys.executable, "-m", "lab.cli"], capture_output=True, text=True,
                        timeout=60)
    assert cp.returncode == 0 and cp.stderr == ""
    assert cp.stdout.startswith("Usage:") and "Commands:" in cp.stdout
    # whole summaries: none cut off with "..."
    commands = cp.stdout.split("Commands:", 1)[1]
    assert "..." not in commands, commands


def test_drill_plan_takes_the_scenario_positionally_like_every_verb():
    res = halab("drill", "plan", "case2")
    assert "Expectations for scenario case2 (Case 2)" in res.output
    one = halab("drill", "plan", "case3", "stop-lb")
    assert "halab drill stop-lb" in one.output and "Case 3" in one.output


def test_a_refused_drill_in_a_plan_exits_2():
    res = halab("drill", "plan", "case2", "kill", "k8s-node1", "k8s-node2", ok=False)
    assert res.exit_code == 2, res.output
    assert "refused unless --allow-quorum-loss" in res.output
    bad = halab("drill", "plan", "case2", "kill", "no-such-node", ok=False)
    assert bad.exit_code == 2 and "refused:" in bad.output
    typo = halab("drill", "plan", "case2", "kil", ok=False)
    assert typo.exit_code == 2, typo.output


def test_drill_plan_fits_a_terminal_and_explains_each_cause_once(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    out = halab("drill", "plan", "case2").output
    assert max(len(line) for line in out.splitlines()) <= 100
    table = _table(out, "FAULT")
    assert [r[0] for r in table][:2] == ["kill etcd-leader", "kill etcd-follower"]
    one = halab("drill", "plan", "case2", "kill", "etcd-leader").output
    causes = re.findall(r"^  \[(\d+)\] ", one, re.M)
    assert causes == [str(i) for i in range(1, len(causes) + 1)]
    refs = re.findall(r"^  (?:external|direct:\S+|worker:\S+|write)\s+\S+(?: <\d+s)?\s+"
                      r"((?:\[\d+\] ?)+)(.*)$", one, re.M)
    assert len(refs) == 7, one            # every path names its causes by number ...
    # ... and the mechanisms that end its errors, with the lab's numbers
    named = [rest for _, rest in refs if rest.strip()]
    assert len(named) == 6 and all("etcd leader election ~10s" in r for r in named), one
    assert one.count("elect a new one") == 1   # ... and the election is explained once


def test_drill_plan_wording_follows_the_provider_and_deployer():
    vm = halab("drill", "plan", "case2", "freeze", "k8s-node1").output
    assert "kernel still accepts" not in vm and "paused in the hypervisor" in vm
    local = halab("drill", "plan", "case2", "freeze", "k8s-node1", "--provider", "local").output
    assert "kernel still accepts" in local
    kubespray = halab("drill", "plan", "case2", "kill", "k8s-node1").output
    assert "kube-apiserver 1.20" not in kubespray
    static = halab("drill", "plan", "case2", "kill", "k8s-node1", "--provider", "local").output
    assert "kube-apiserver 1.20" in static


def _all_commands(group=None, prefix=()):
    import click
    group = group or main
    for name, cmd in sorted(group.commands.items()):
        yield (*prefix, name), cmd
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, (*prefix, name))


def test_every_option_has_help_and_a_metavar_saying_what_it_takes():
    import click
    problems = []
    for path, cmd in _all_commands():
        for p in cmd.params:
            if not isinstance(p, click.Option):
                continue
            if not p.help:
                problems.append(f"{' '.join(path)} {p.opts[0]}: no help")
            elif not p.is_flag and not isinstance(p.type, click.Choice) and \
                    not (p.metavar and p.metavar.isupper()):
                problems.append(f"{' '.join(path)} {p.opts[0]}: metavar {p.metavar!r}")
    assert not problems, "\n".join(problems)


def test_a_local_kubespray_source_is_packed_for_the_runner_alone(tmp_path):
    """Offline classrooms: a kubespray folder is uploaded to the runner (the first
    admin-lb of an HA pair), never cloned; only the runner gets the key and NFS."""
    import tarfile
    src = tmp_path / "kubespray-2.30.0"
    (src / "inventory" / "sample").mkdir(parents=True)
    (src / "cluster.yml").write_text("- hosts: all\n")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref\n")
    scen = tmp_path / "ha.yaml"
    scen.write_text(f"extends: case3-ha\nname: haoff\nkubespray: {{source: {src}}}\n")
    out = tmp_path / "lab"
    halab("render", str(scen), "--out", str(out))
    with tarfile.open(out / "kubespray.tar.gz") as tar:
        names = tar.getnames()
    assert "kubespray/cluster.yml" in names and not any(".git" in n for n in names)
    vf = (out / "Vagrantfile").read_text()
    assert "if node[:name] == 'admin-lb1'" in vf and "kubespray.tar.gz" in vf
    env = (out / "files" / "lab.env").read_text()
    assert "LAB_RUNNER=admin-lb1" in env and "LAB_KUBESPRAY_SOURCE=upload" in env
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAGRANT_")}
    env.update(VAGRANT_HOME=str(tmp_path / "vagrant-home"), VAGRANT_CHECKPOINT_DISABLE="1",
               VAGRANT_BOX_UPDATE_CHECK_DISABLE="1")
    r = subprocess.run(["vagrant", "validate"], cwd=out, capture_output=True, text=True,
                       timeout=180, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
