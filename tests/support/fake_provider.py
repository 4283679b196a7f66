"""One fake provider for unit tests, built on the written contract (lab.providers.base).

It implements every method of `Provider`, records each call in `calls`, and answers
commands from a table (`answers`: argv[0] -> (exit code, stdout)), in the spirit of
invoke's MockContext. Unlike a fake that answers any attribute, a method the
contract lacks fails here as it would on a real provider.
"""
from __future__ import annotations

import subprocess
import sys

from lab.model.services import Layout
from lab.providers.base import Capabilities


class FakeProvider:
    name = "fake"
    lab_iface = "lab0"
    ready_timeout = 5.0

    def __init__(self, capabilities: Capabilities | None = None, drill_waits: dict | None = None,
                 answers: dict | None = None, base: str = "/nodes"):
        self.capabilities = capabilities or Capabilities(supervised=False, provisioning=False,
                                                         ssh=False)
        self.drill_waits = dict(drill_waits or {})
        self.answers = dict(answers or {})
        self.base = base
        self.calls: list[tuple] = []
        self.ran: list[tuple[str, list[str]]] = []

    def _call(self, name, *args):
        self.calls.append((name, *args))

    # machines
    def up(self, progress=lambda m: None):
        self._call("up")

    def destroy(self, progress=lambda m: None) -> list[str]:
        self._call("destroy")
        return []

    def leftovers(self) -> list[str]:
        return []

    def machine_state(self, node: str) -> str:
        return "running"

    def halt(self, node=None) -> str:
        self._call("halt", node)
        return "halted"

    def service_states(self, node: str) -> dict:
        return {}

    # commands and files
    def run(self, node, argv, timeout=60, input=None):
        self.ran.append((node, list(argv)))
        rc, out = self.answers.get(argv[0] if argv else "", (0, ""))
        return subprocess.CompletedProcess(list(argv), rc, out, "")

    def popen(self, node, argv, **kw):
        raise NotImplementedError("the fake provider starts no processes")

    def shell_argv(self, node, command):
        return ["true"]

    def client_argv(self, argv):
        return list(argv)

    def prober_argv(self, node):
        return [sys.executable, "-m", "lab.drill.prober"]

    def put_file(self, node, path, data, mode=0o644):
        self._call("put_file", node, path)

    def layout(self, node: str) -> Layout:
        return Layout(base=f"{self.base}/{node}", k8s_bin="/k8s")

    @property
    def kubectl(self) -> str:
        return "kubectl"

    # services
    def ports_taken(self, specs):
        return []

    def start(self, specs, progress=lambda m: None):
        self._call("start", list(specs))

    def dead_services(self, specs=None):
        return []

    def stop_service(self, spec, hard=False):
        self._call("stop_service", spec.node, spec.name)

    def haproxy_stat(self, lb, timeout=2.0):
        return []

    # faults
    def power_off(self, node):
        self._call("power_off", node)

    def power_on(self, node, specs=()):
        self._call("power_on", node)

    def freeze(self, node):
        self._call("freeze", node)
        return []

    def thaw(self, node):
        self._call("thaw", node)
        return []

    def partition(self, node):
        self._call("partition", node)

    def heal(self, node):
        self._call("heal", node)
