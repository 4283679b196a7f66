"""A scenario file is data, never code: random and hostile values at every free field.

Property-based (hypothesis): whatever a field holds, halab either refuses it with a
clear one-line problem, or renders it so that the consumer reads exactly that value
as data: no extra lines in any config or script, no control characters, and in the
Vagrantfile a Ruby literal that real `ruby` reads back as the same text.
"""
from __future__ import annotations

import copy
import json
import subprocess

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lab import render
from lab.errors import HalabError, ScenarioError
from lab.model import grammar, scenario

BASE, _, _ = scenario.load_raw("case2")
SECRETS = render.LabSecrets.generate()

# every field whose text reaches a rendered file (or a command) -> a valid example
FREE_FIELDS = {
    ("name",): "case2",
    ("node_prefix",): "k8s-node",
    ("timezone",): "UTC",
    ("box", "name"): "bento/rockylinux-9",
    ("box", "version"): "202510.26.0",
    ("box", "os"): "rockylinux-9",
    ("kubespray", "repo"): "https://github.com/kubernetes-sigs/kubespray.git",
    ("network", "lb_name"): "k8s-api.case2.lab",
    ("haproxy", "healthcheck", "path"): "/readyz",
    ("haproxy", "stats_path"): "/haproxy_stats",
    ("haproxy", "timeouts", "connect"): "2s",
    ("nfs", "path"): "/srv/nfs/share",
    ("provider_options", "virtualbox", "group"): "/halab",
    ("provider_options", "libvirt", "emulator_path"): "/usr/bin/qemu-system-x86_64",
    ("provider_options", "libvirt", "kernel"): "/boot/vmlinuz",
    ("provider_options", "libvirt", "cmd_line"): "console=ttyS0",
    ("provider_options", "libvirt", "storage_pool_name"): "default",
    ("provider_options", "libvirt", "management_network_address"): "192.168.121.0/24",
}

# what a hostile file would put there: shell, Ruby, HAProxy and exports syntax
NASTY = ["#{%x(touch /tmp/halab-pwned)}", "a\nglobal\n  external-check", "x' + `id` + '",
         "/srv/share * (rw,no_root_squash)\n/ *", "--upload-pack=touch /tmp/x", "file:///etc",
         "/etc", "/", "$(id)", "a;b", "a b", "\x00", "é", "a\r\nb", "../../etc/passwd",
         "${HOME}", "'", "\\", '"', "k8s-node1", "-rf"]


def _with(field: tuple, value) -> dict:
    data = copy.deepcopy(BASE)
    node = data
    for key in field[:-1]:
        node = node.setdefault(key, {})
    node[field[-1]] = value
    return data


def _build(data: dict):
    try:
        return scenario.build(data, "hostile.yaml", {})
    except ScenarioError as exc:
        assert exc.problems, "a refusal names at least one problem"
        for p in exc.problems:
            line = p.line()
            assert "\n" not in line and len(line) < 600, line   # one readable line each
        return None


BASELINE = {path: text.count("\n") for path, text in render.render(_build(BASE), SECRETS).items()}


def _check_rendered(s, field, value) -> None:
    files = render.render(s, SECRETS)
    for path, text in files.items():
        assert text.count("\n") == BASELINE.get(path, text.count("\n")), \
            f"{'.'.join(field)}={value!r} changed the line count of {path}"
        bad = [c for c in text if not c.isprintable() and c not in "\n\t"]
        assert not bad, f"{'.'.join(field)}={value!r} put {bad[:3]!r} into {path}"
    assert "#{" not in files["Vagrantfile"] or "'#{" in files["Vagrantfile"]


@pytest.mark.parametrize("field", list(FREE_FIELDS), ids=".".join)
def test_every_free_field_takes_its_example(field):
    s = _build(_with(field, FREE_FIELDS[field]))
    assert s is not None, field


@pytest.mark.parametrize("field", list(FREE_FIELDS), ids=".".join)
def test_hostile_values_are_refused_or_inert(field):
    for value in NASTY:
        s = _build(_with(field, value))
        if s is not None:
            _check_rendered(s, field, value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(list(FREE_FIELDS)), value=st.text(max_size=40))
def test_random_text_in_any_free_field_is_refused_or_rendered_inert(field, value):
    s = _build(_with(field, value))
    if s is not None:
        _check_rendered(s, field, value)


@settings(max_examples=150, deadline=None)
@given(value=st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                       st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5),
                                                                           st.integers(),
                                                                           max_size=2)),
       field=st.sampled_from(list(FREE_FIELDS) + [("case",), ("admin_lb", "count"),
                                                   ("haproxy", "stats_port"), ("drills",)]))
def test_values_of_the_wrong_type_are_refused_not_crashed(field, value):
    try:
        s = _build(_with(field, value))
    except HalabError as exc:     # a whole-file problem is fine too; a traceback is not
        assert exc.message
        return
    if s is not None:
        _check_rendered(s, field, value)


def test_a_bool_or_a_float_is_not_a_case():
    for value in (True, 2.0, "2", None, ""):
        assert _build(_with(("case",), value)) is None, value


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.text(max_size=30), min_size=30, max_size=30))
@example(values=["\r\n", "a\rb", "#{x}\r", "\x00", "\u2028", "#@x\n", "'\\\r"] + [""] * 23)
def test_ruby_reads_every_literal_back_as_the_same_text(values):
    """The Vagrantfile's string literal, judged by real ruby: no interpolation, ever."""
    program = "require 'json'\nputs JSON.generate([" + ", ".join(
        render._rb(v) + ".force_encoding('UTF-8')" for v in values) + "])\n"
    out = subprocess.run(["ruby", "-"], input=program.encode(), capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.decode()) == values


def test_the_grammars_match_in_full():
    """`$` lets a trailing newline through; every grammar refuses one."""
    examples = {g: g.example.split(",")[0].split(" or ")[0] for g in vars(grammar).values()
                if isinstance(g, grammar.Grammar)}
    for g, sample in examples.items():
        if g.ok(sample):
            assert not g.ok(sample + "\n"), g.pattern
            assert not g.ok(sample + "\n#"), g.pattern


def test_the_runbook_names_the_faults_the_drills_know():
    from lab.drill import faults
    assert tuple(faults.FAULTS) == grammar.FAULT_NAMES


# ------------------------------------------------------------------ careless and hostile files

def _validate(tmp_path, text: str | bytes):
    from click.testing import CliRunner
    from lab.cli import main
    path = tmp_path / "s.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    r = CliRunner(env={"HALAB_DEBUG": None}).invoke(main, ["validate", str(path)])
    assert isinstance(r.exception, SystemExit) or r.exception is None, repr(r.exception)
    return r


@pytest.mark.parametrize("text, says", [
    ("extends: case2\nname:\n", "name: is empty"),
    ("extends: case2\nname: x\ncase:\n", "case: is empty"),
    ("extends: case2\nname: x\ncase: true\n", "case = True: must be the number 1, 2 or 3"),
    ("extends: case2\nname: x\ncase: 2.0\n", "case = 2.0: must be the number 1, 2 or 3"),
    ("extends: case2\nname: x\nname: y\n", "key 'name' appears twice"),
    ("extends: case2\nname: x\nnetwork: {subnet: 127.0.0.0/24}\n", "is a loopback range"),
    ("extends: case2\nname: x\nnetwork: {subnet: 224.0.0.0/24}\n", "is a multicast range"),
    ("extends: case2\nname: x\nnetwork: {subnet: 8.8.8.0/24}\n", "is a public range"),
    ("extends: case2\nname: x\nnetwork: {lb_name: k8s-node1}\n", "is the name of a node"),
    ("extends: case2\nname: x\nnode_prefix: etcd\netcd: {topology: external}\n",
     "gives nodes the names other nodes have (etcd1"),
    ("extends: case2\nname: x\ndrills: [{fault: kil, target: k8s-node1}]\n",
     "drills[0].fault = 'kil': is not a fault; fix: did you mean 'kill'?"),
    ("extends: case2\nname: x\ndrills: [{fault: kill, target: k8s-nod1}]\n",
     "drills[0].target = 'k8s-nod1': names no node"),
    ("extends: case2\nname: x\nkubespray: {repo: 'file:///etc'}\n", "must be an https:// git URL"),
    ("extends: case2\nname: x\nkubespray: {repo: '--upload-pack=x'}\n", "must be an https:// git URL"),
    ("extends: case2\nname: x\nprovider_options: {libvirt: {emulator_path: '/usr/bin/qemu;id'}}\n",
     "emulator_path = '/usr/bin/qemu;id': must be an absolute path"),
    ("extends: case2\nname: x\nnfs: {path: /}\n", "nfs.path = '/': must be an absolute path"),
    ("extends: case2\nname: x\nnfs: {path: /etc}\n", "is a system folder"),
    ("extends: case2\nname: x\nnfs: {path: '/srv/a * (rw,no_root_squash)'}\n", "nfs.path"),
    ("extends: case2\nname: x\nhaproxy: {stats_path: \"/s\\nglobal\"}\n", "haproxy.stats_path"),
    ("extends: case2\nname: x\nhaproxy: {healthcheck: {path: \"/readyz\\n  external-check\"}}\n",
     "haproxy.healthcheck.path"),
    ("extends: case2\nname: \"x\\n\"\n", "name = 'x\\n'"),
    ("extends: case2\nname: x\nbox: {name: 'bento/#{%x(touch /tmp/x)}rocky'}\n", "box.name"),
    ("extends: case2\nname: x\nprovider_options: {virtualbox: {group: \"/halab\\\"; system('id')\"}}\n",
     "provider_options.virtualbox.group"),
    ("extends: case2\nname: x\nhaproxy: {stats_port: 22}\n", "is taken on admin-lb by SSH"),
])
def test_a_careless_or_hostile_file_gets_one_clear_line(tmp_path, text, says):
    r = _validate(tmp_path, text)
    assert r.exit_code == 2, r.output
    assert says in r.output, r.output
    assert "Traceback" not in r.output


def test_a_latin1_file_names_the_line_and_the_fix(tmp_path):
    r = _validate(tmp_path, "extends: case2\nname: x\ndescription: caf\xe9\n".encode("latin-1"))
    assert r.exit_code == 2 and "line 3: not UTF-8" in r.output and "UTF-8" in r.output


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    import time
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    t0 = time.monotonic()
    r = _validate(tmp_path, "\n".join(lines) + "\n")
    assert time.monotonic() - t0 < 2
    assert r.exit_code == 2 and "aliases" in r.output


def test_a_huge_unknown_value_is_cut_in_the_message(tmp_path):
    r = _validate(tmp_path, "extends: case2\nname: x\nnotakey: " + "A" * 200_000 + "\n")
    assert r.exit_code == 2 and "unknown key" in r.output
    assert len(r.output) < 2000 and "characters)" in r.output


def test_the_readme_documents_every_grammar():
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name, g in vars(grammar).items():
        if isinstance(g, grammar.Grammar):
            assert g.says in readme, f"README lacks the grammar of {name}: {g.says!r}"
