"""The VM provider: Vagrant with VirtualBox or libvirt. Commands on VMs go through Fabric."""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from lab.model.services import NGINX_STREAM_MODULE, Layout
from lab.providers.base import Capabilities
from lab.providers.vagrant import remote as remotelib
from lab.errors import HalabError
from lab.state import Lab
from lab.model.topology import MachineNames, Topology
from lab.providers.vagrant.machines import ProgressTracker, Vagrant

VM_BASE = "/var/lib/halab"
VM_BIN = "/opt/halab/bin"
VM_PROBER = "/opt/halab/prober.py"
LAB_IFACE = "@LAB_IFACE@"

# socat starts in milliseconds even on an emulated VM (python3 takes ~1 s there)
SHOW_STAT = ("if command -v socat >/dev/null; then echo 'show stat' | socat -t 2 - "
             "UNIX-CONNECT:{sock}; else python3 -c \"import socket,sys; "
             "s=socket.socket(socket.AF_UNIX); s.connect('{sock}'); s.sendall(b'show stat\\n'); "
             "sys.stdout.write(b''.join(iter(lambda: s.recv(65536), b'')).decode())\"; fi")


_ZSTD_LOCK = threading.Lock()
CRASH_LOOP = 30          # restarts (1 s apart) before a unit counts as crash-looping


def remote_command(command: list[str]) -> list[str]:
    """`halab ssh NODE -- CMD` on a VM: one argument is a shell command line, as with
    ssh; several are an argv, quoted for the VM's shell (ssh joins its arguments with
    spaces, so `sudo sh -c "a; b"` would otherwise run `sh -c a` and then `b`)."""
    return [shlex.join(command)] if len(command) > 1 else command


class VagrantProvider:
    """VMs through Vagrant (VirtualBox or libvirt); commands on them over SSH."""

    name = "vagrant"
    lab_iface = LAB_IFACE
    ready_timeout = 900.0   # emulated VMs start a control plane in minutes, not seconds

    def __init__(self, lab: Lab, topo: Topology, k8s_bin_dir: str | None = None):
        self.lab = lab
        self.topo = topo
        self.k8s_bin_dir = k8s_bin_dir
        self.vagrant = Vagrant(lab.path, topo.scenario.provider, lab.logs)
        self._remotes: dict[str, remotelib.Remote] = {}
        self.fs_root = ""  # prefix for paths on the VMs (tests point it at a folder)

    # ------------------------------------------------------------ machines
    def up(self, progress=lambda m: None, timeout: float = 1800) -> dict:
        """Bring every VM up; VMs already running and provisioned are left alone."""
        states = self.vagrant.status()
        todo = [n.name for n in self.topo.nodes if states.get(n.name) != "running"]
        if not todo:
            progress("every VM is already running")
            return states
        tracker = ProgressTracker([n.name for n in self.topo.nodes])
        t0 = time.monotonic()
        self.record_resources()

        def on_line(line: str) -> None:
            before = {k: (v.state, v.step) for k, v in tracker.vms.items()}
            vm = tracker.feed(line)
            if vm is not None and before[vm.name] != (vm.state, vm.step):
                progress(f"{vm.name:<10} {vm.state:<14} {vm.elapsed():5.0f}s  {vm.step}")

        # libvirt brings VMs up in parallel; VirtualBox cannot (one VM at a time)
        parallel = self.topo.scenario.provider == "libvirt"
        self.lab.update(machines={n: "starting" for n in todo})
        self.vagrant.up(todo, on_line, timeout=timeout, parallel=parallel)
        tracker.finish()
        states = self.vagrant.status()
        self.lab.update(machines=states)
        progress(f"{len(todo)} VM(s) up in {time.monotonic() - t0:.0f} s")
        return states

    def machine_state(self, node: str) -> str:
        if not hasattr(self, "_states"):
            self._states = self.vagrant.status()
        return self._states.get(node, "not_created")

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(supervised=False, provisioning=True, ssh=True,
                            emulated=self.emulated)

    def halt(self, node: str | None = None) -> str:
        self.vagrant.halt(node)
        return f"halted {node or 'every VM'}; `halab up` brings it back"

    def service_states(self, node: str) -> dict[str, str]:
        return {}   # systemd on the VM supervises them; `halab verify` checks the paths

    def shell_argv(self, node: str, command: list[str]) -> list[str]:
        """`vagrant ssh`; run it in the lab folder (where the Vagrantfile is)."""
        return self.ssh_argv(node, remote_command(command))

    def client_argv(self, argv: list[str]) -> list[str]:
        return list(argv)    # the host is the client: it is on the host-only network

    def provision(self, node: str | None = None, progress=print) -> None:
        self.vagrant.provision(node, on_line=lambda l: progress(l.rstrip()))

    def destroy(self, progress=lambda m: None) -> list[str]:
        # vagrant-libvirt keeps the networks it created; they are the lab's
        networks = self.libvirt_networks() if self.topo.scenario.provider == "libvirt" else []
        destroy_vms(self.lab, self.topo.scenario.provider, networks, progress,
                    vagrant=self.vagrant)
        return self.leftovers()

    def record_resources(self) -> None:
        """The names of what `vagrant up` creates, recorded before it runs (the names
        the rendered Vagrantfile gives: `default_prefix` and the network names)."""
        self.lab.add_resources("vm", [n.name for n in self.topo.nodes])
        if self.topo.scenario.provider == "libvirt":
            names = MachineNames(self.topo.name)
            self.lab.add_resources("libvirt_domain", [names.domain(n.name) for n in self.topo.nodes])
            self.lab.add_resources("libvirt_network", names.libvirt_networks)

    def libvirt_networks(self) -> list[str]:
        """The lab's recorded libvirt networks that exist now (exact names, no prefix:
        lab `case3` must not take `case3-ha`'s)."""
        cp = subprocess.run(virsh("net-list", "--all", "--name"), capture_output=True,
                            text=True, timeout=60)
        existing = {n.strip() for n in cp.stdout.splitlines() if n.strip()}
        rec = self.lab.record()
        names = rec.names("libvirt_network") if "libvirt_network" in rec.resources else \
            MachineNames(self.topo.name).libvirt_networks    # a record from before the lists
        return [n for n in names if n in existing]

    def leftovers(self) -> list[str]:
        states = self.vagrant.status()
        left = [f"VM {n} ({s})" for n, s in states.items() if s not in ("not_created",)]
        if self.topo.scenario.provider == "libvirt":
            left += [f"libvirt network {n}" for n in self.libvirt_networks()]
            cp = subprocess.run(virsh("list", "--all", "--name"), capture_output=True, text=True,
                                timeout=60)
            existing = {n.strip() for n in cp.stdout.splitlines() if n.strip()}
            left += [f"libvirt domain {d}" for d in self.lab.record().names("libvirt_domain")
                     if d in existing]
        return left

    # ------------------------------------------------------------ commands on VMs
    def remote(self, node: str) -> remotelib.Remote:
        if node not in self._remotes:
            target = remotelib.ssh_config_for(self.vagrant.ssh_config(node), node)
            # TCG-emulated VMs answer slowly: a generous connect timeout
            self._remotes[node] = remotelib.Remote.from_target(target, connect_timeout=30).open()
        return self._remotes[node]

    def run(self, node: str, argv, timeout: float = 60, input: str | None = None):
        if node == "client":  # the student's laptop is this host
            try:
                return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                      input=input)
            except subprocess.TimeoutExpired as exc:
                return subprocess.CompletedProcess(argv, 124, exc.stdout or "", "timed out")
        cmd = argv if isinstance(argv, str) else shlex.join(argv)
        r = self.remote(node).run(cmd, timeout=timeout, sudo=True)
        return subprocess.CompletedProcess(argv, r.exited, r.stdout, r.stderr)

    def haproxy_stat(self, lb: str, timeout: float = 30) -> list[dict]:
        """`show stat` rows of HAProxy on a load balancer VM (its admin socket, over SSH)."""
        import csv
        import io
        from lab.render import HAProxyRuntime
        # an SSH round trip to an emulated VM takes a while: never less than 5 s
        cp = self.run(lb, SHOW_STAT.format(sock=HAProxyRuntime().stats_socket),
                      timeout=max(timeout, 5.0))
        if cp.returncode != 0 or not cp.stdout.strip():
            raise OSError(cp.stderr.strip() or "cannot read the HAProxy stats socket")
        return list(csv.DictReader(io.StringIO(cp.stdout.lstrip("# "))))

    # ------------------------------------------------------------ long-running workers
    def ssh_config_file(self) -> Path:
        """`vagrant ssh-config` of every VM in one file, for plain `ssh -F` (made once)."""
        path = self.lab.path / "ssh_config"
        if not path.exists():
            text = self.vagrant.run(["ssh-config"], "ssh-config", timeout=300)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
        return path

    def prober_argv(self, node: str) -> list[str]:
        """How a drill's probe worker starts on `node` (the prober is one stdlib-only file)."""
        if node == "client":
            return [sys.executable, "-m", "lab.drill.prober"]
        local = Path(__file__).resolve().parents[2] / "drill" / "prober.py"
        self._upload_file(node, local, VM_PROBER, 0o644)
        return ["python3", VM_PROBER]

    def _ssh_user(self, node: str) -> str | None:
        """The login user of `node` from the lab's ssh_config (no connection needed)."""
        from paramiko import SSHConfig
        return SSHConfig.from_path(str(self.ssh_config_file())).lookup(node).get("user")

    def popen(self, node: str, argv: list[str], **kw) -> subprocess.Popen:
        """A long-running command: on the host for the client, else over one SSH session.

        Ending the ssh process closes the session; the remote worker then exits at its
        next write (a broken stdout), as prober workers do.
        """
        if node == "client":
            return subprocess.Popen(argv, **kw)
        cmd = remotelib.sudo_wrap(shlex.join(argv), self._ssh_user(node))
        # ConnectTimeout: a worker on a VM that is booting again is retried (the drill's
        # collector), not left hanging in TCP's SYN retries for two minutes
        return subprocess.Popen(["ssh", "-F", str(self.ssh_config_file()), "-T",
                                 "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                                 "-o", "ServerAliveInterval=5",
                                 "-o", "ServerAliveCountMax=3", node, cmd], **kw)

    def ssh_argv(self, node: str, command: list[str]) -> list[str]:
        return ["vagrant", "ssh", node, *(["--", *command] if command else [])]

    # ------------------------------------------------------------ static deployer on VMs
    @property
    def kubectl(self) -> str:
        if self.k8s_bin_dir and (Path(self.k8s_bin_dir) / "kubectl").exists():
            return str(Path(self.k8s_bin_dir) / "kubectl")
        return shutil.which("kubectl") or "kubectl"

    def layout(self, node: str) -> Layout:
        # nginx runs with halab's own nginx.conf: the stream module is loaded there
        # the nodes' hollow kubelet and kube-proxy, when tools/build-k8s.sh built kubemark
        has_kubemark = bool(self.k8s_bin_dir) and (Path(self.k8s_bin_dir) / "kubemark").is_file()
        return Layout(base=VM_BASE, k8s_bin=VM_BIN, etcd=f"{VM_BIN}/etcd",
                      nginx="/usr/sbin/nginx", nginx_modules=(NGINX_STREAM_MODULE,),
                      kubemark=f"{VM_BIN}/kubemark" if has_kubemark else "",
                      local=False, emulated=self.emulated)

    @property
    def drill_waits(self) -> dict:
        """A drill's waits: a killed VM boots again (vagrant up) before its units start.
        Emulated VMs get slower probes (each is a TLS handshake, costly there) with more
        time to answer (a busy emulated API server takes a second for a handshake)."""
        waits = {"recovery_timeout": 600.0, "steady_wait": 120.0, "after_wait": 600.0,
                 # HAProxy's states over SSH: a second's resolution is what its checks have
                 "state_poll_interval": 1.0}
        if self.emulated:
            waits.update(probe_interval=1.0, probe_timeout=15.0, write_interval=2.0,
                         lease_interval=2.0)
        return waits

    @property
    def emulated(self) -> bool:
        """libvirt with driver qemu: software emulation (TCG), no hardware virtualization."""
        return self.topo.scenario.emulated

    def ports_taken(self, specs) -> list[str]:
        return []  # fresh VMs; a unit that cannot bind fails and shows in dead_services

    def put_file(self, node: str, path: str, data, mode: int = 0o644) -> None:
        self.put_files(node, {path: (data, mode)})

    def put_files(self, node: str, files: dict) -> None:
        """Many files ({path: (data, mode)}) in one upload: a tar unpacked at / by root."""
        import io
        import tarfile
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for path, (data, mode) in sorted(files.items()):
                data = data.encode() if isinstance(data, str) else data
                info = tarfile.TarInfo(path.lstrip("/"))
                info.size, info.mode, info.mtime = len(data), mode, int(time.time())
                tar.addfile(info, io.BytesIO(data))
        tmp = f"/tmp/halab-files-{hashlib.sha1(buf.getvalue()).hexdigest()[:12]}.tgz"
        _put_bytes(self.remote(node), buf.getvalue(), tmp)
        self._check(node, f"tar -xzpf {tmp} -C {self.fs_root or '/'} --no-same-owner "
                          f"&& rm -f {tmp}")

    def _check(self, node: str, cmd: str, timeout: float = 120) -> str:
        r = self.remote(node).run(cmd, timeout=timeout, sudo=True)
        if not r.ok:
            raise HalabError(f"{node}: `{cmd[:80]}` failed: {(r.stderr or r.stdout).strip()[-300:]}")
        return r.stdout

    def _upload_binary(self, node: str, local: Path) -> bool:
        return self._upload_file(node, local, f"{VM_BIN}/{local.name}", 0o755)

    def _upload_file(self, node: str, local: Path, target: str, mode: int) -> bool:
        """Copy a file once (True). A `<target>.sha256` beside it records what was copied,
        so a second deploy skips it without hashing 100 MB on an emulated VM."""
        digest = hashlib.sha256(local.read_bytes()).hexdigest()
        mark = shlex.quote(f"{target}.sha256")
        have = self.remote(node).run(f"test -e {shlex.quote(target)} && cat {mark}",
                                     sudo=True).stdout.split()
        if have and have[0] == digest:
            return False
        folder = shlex.quote(str(Path(target).parent))
        self._check(node, f"mkdir -p {folder} && chmod 755 {folder} && "
                          f"chown {self.remote(node).user or 'root'} {folder}")
        packed = self._zstd(local, digest) if local.stat().st_size > 1 << 20 and \
            self.remote(node).run("command -v zstd", timeout=30).ok else None
        if packed:
            # a third of the bytes through SSH, which an emulated VM encrypts slowly
            self.remote(node).put(str(packed), f"{target}.zst")
            self._check(node, f"zstd -q -d -f --rm {shlex.quote(target + '.zst')} -o "
                              f"{shlex.quote(target)} && chmod {mode:o} {shlex.quote(target)}",
                        timeout=600)
        else:
            self.remote(node).put(str(local), target, mode=mode)
        self._check(node, f"echo {digest} > {mark}")
        return True

    def _zstd(self, local: Path, digest: str) -> Path | None:
        """A zstd copy of `local`, made once and kept in halab's cache (None: no zstd here)."""
        if not shutil.which("zstd"):
            return None
        from lab.host.k8sbin import cache_root
        out = cache_root() / "zstd" / f"{local.name}-{digest[:16]}.zst"
        with _ZSTD_LOCK:  # the nodes upload in parallel: compress each binary once
            if out.exists():
                return out
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(f".tmp{os.getpid()}")
            subprocess.run(["zstd", "-q", "-3", "-f", "-T0", str(local), "-o", str(tmp)],
                           check=True, timeout=600)
            tmp.replace(out)
        return out

    def start(self, specs, progress=lambda m: None) -> None:
        """Each service becomes a systemd unit with Restart=always (kubelet's job on a real node).

        Services the VM already has (HAProxy and keepalived from provisioning, every
        service of a kubespray cluster) are only started again (a drill's restore).
        """
        existing = [s for s in specs if not s.managed]
        for spec in existing:
            self._check(spec.node, service_command(spec, "start", self.fs_root))
        specs = [s for s in specs if s not in existing]
        binaries = {"etcd": Path(shutil.which("etcd") or "/usr/bin/etcd")}
        for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubemark"):
            binaries[name] = Path(self.k8s_bin_dir or "") / name
        by_node: dict[str, list] = {}
        for spec in specs:
            by_node.setdefault(spec.node, []).append(spec)

        def one_node(node: str, node_specs: list) -> None:
            # (a worker's own path is checked by halab's stdlib prober: no kubectl there)
            needed = {Path(s.argv[0]).name for s in node_specs}
            for name in sorted(needed & set(binaries)):
                t0 = time.monotonic()
                if self._upload_binary(node, binaries[name]):
                    progress(f"{node}: uploaded {name} ({time.monotonic() - t0:.0f} s)")
            # units whose definition changed (new flags) are stopped, then started in order
            units_dir = "/etc/systemd/system"
            have = dict(reversed(line.split(None, 1)) for line in self.remote(node).run(
                f"sha256sum {units_dir}/halab-*.service 2>/dev/null", sudo=True,
                timeout=60).stdout.splitlines() if line.strip())
            changed = [s.name for s in node_specs
                       if f"{units_dir}/halab-{s.name}.service" in have and
                       have[f"{units_dir}/halab-{s.name}.service"] !=
                       hashlib.sha256(systemd_unit(s).encode()).hexdigest()]
            if changed:
                progress(f"{node}: {', '.join(changed)} changed: restarting")
                self._check(node, "systemctl stop " + " ".join(f"halab-{n}" for n in changed))
            files = {}
            for spec in node_specs:
                for path, content in spec.files.items():
                    mode = 0o600 if path.endswith(".key") or "kubeconfig" in path else 0o644
                    files[path] = (content, mode)
                files[f"/etc/systemd/system/halab-{spec.name}.service"] = (systemd_unit(spec),
                                                                           0o644)
            self.put_files(node, files)
            units = " ".join(f"halab-{s.name}" for s in node_specs)
            self._check(node, f"systemctl daemon-reload && systemctl enable {units}")

        # one SSH connection per node, all nodes at once (uploads dominate under emulation)
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=max(1, len(by_node))) as pool:
            futures = [pool.submit(one_node, n, sp) for n, sp in by_node.items()]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]
        self._start_units(specs, progress)

    def _start_units(self, specs, progress) -> None:
        """etcd everywhere first (members need each other), then one API server at a time.

        An API server's start (every informer's TLS handshake over loopback at once)
        starves an emulated VM; three at once on a 2-core host starve each other until
        their loopback clients time out and they exit. Each node's controller-manager
        and scheduler start with its API server and wait for it (ExecStartPre).
        """
        def start(node: str, names: list[str]) -> None:
            units = " ".join(f"halab-{n}" for n in names)
            self._check(node, f"systemctl start --no-block {units}")
            progress(f"{node}: started {units}")

        etcd = [s for s in specs if s.name == "etcd"]
        for spec in etcd:
            start(spec.node, ["etcd"])
        rest = [s for s in specs if s not in etcd]
        api = [s for s in rest if s.name == "kube-apiserver"]
        for i, spec in enumerate(api):
            start(spec.node, [s.name for s in rest if s.node == spec.node])
            if i < len(api) - 1:
                self._wait_url(spec.node, spec.ready_url, progress)
        others = [s for s in rest if s.node not in {a.node for a in api}]
        for node in dict.fromkeys(s.node for s in others):
            start(node, [s.name for s in others if s.node == node])

    def _wait_url(self, node: str, url: str, progress, timeout: float | None = None) -> None:
        """Poll `url` from the node itself until it answers 200 (its own API server)."""
        limit = timeout or self.ready_timeout
        t0 = time.monotonic()
        # one command and one curl process for the whole wait: on an emulated VM a
        # process start costs ~0.8 s of the CPU the API server needs, and a poll of
        # its own every 3 s took a third of it
        r = self.remote(node).run(wait_for_url_command(url, limit), timeout=limit + 60)
        if not r.ok:
            raise HalabError(f"{node}: {url} does not answer after "
                             f"{time.monotonic() - t0:.0f} s",
                             hint=f"`halab ssh {node} -- sudo journalctl -u "
                                  "halab-kube-apiserver` shows why")
        progress(f"{node}: {url} answers after {time.monotonic() - t0:.0f} s")

    def dead_services(self, specs=None) -> list[str]:
        """halab units that failed or keep crashing, each with its last journal line.

        Units restart forever (like static pods), so "dead" means crash-looping:
        more restarts than a cold start under emulation needs (etcd waits for peers).
        """
        if specs is not None and not any(s.managed for s in specs):
            return []    # nothing here is halab's own unit
        dead = []
        faults = self.lab.record().faults
        probe = ("for u in $(systemctl list-units --all --plain --no-legend 'halab-*' "
                 "| awk '{print $1}'); do echo \"$u $(systemctl show -p ActiveState --value $u) "
                 "$(systemctl show -p NRestarts --value $u) $(journalctl -u $u -n 1 -o cat "
                 "--no-pager 2>/dev/null | tail -c 200 | tr '\\n' ' ')\"; done")
        for node in sorted({n.name for n in self.topo.nodes} - set(faults)):
            r = self.remote(node).run(probe, sudo=True, timeout=60)
            for line in r.stdout.splitlines():
                unit, state, restarts, *last = line.split(" ", 3) + [""]
                if state == "failed" or (restarts.isdigit() and int(restarts) >= CRASH_LOOP):
                    dead.append(f"{node}/{unit.removesuffix('.service')}: {state}, "
                                f"{restarts} restarts: {' '.join(last).strip()[:160]}")
        return dead

    def stop_service(self, spec, hard: bool = False) -> None:
        self._check(spec.node, service_command(spec, "kill" if hard else "stop", self.fs_root))

    def freeze(self, node: str) -> list[str]:
        """A hung VM: the hypervisor pauses it (TCP peers see silence, no RST)."""
        self._host(vm_control_argv(self.topo.scenario.provider, self.topo.name, node, "pause"))
        return [node]

    def thaw(self, node: str) -> list[str]:
        self._host(vm_control_argv(self.topo.scenario.provider, self.topo.name, node, "resume"))
        return [node]

    def partition(self, node: str) -> None:
        """Drop everything on the lab NIC; SSH from the host uses the NAT NIC and still works."""
        self._check(node, partition_command(str(self.topo.node(node).ip), cut=True))

    def heal(self, node: str) -> None:
        self._check(node, partition_command(str(self.topo.node(node).ip), cut=False))

    def _host(self, argv: list[str]) -> None:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if cp.returncode != 0:
            raise HalabError(f"{' '.join(argv)} failed: {cp.stderr.strip()}")

    # ------------------------------------------------------------ faults
    def power_off(self, node: str) -> None:
        """A real power-off (not `vagrant halt --force`, which is an ACPI shutdown on libvirt)."""
        self._host(power_off_argv(self.topo.scenario.provider, self.topo.name, node))
        self._remotes.pop(node, None)

    def power_on(self, node: str, specs=()) -> None:
        """Boot the VM again; its units start at boot, and are started again to be sure."""
        self._remotes.pop(node, None)
        self.vagrant.run(["up", node, "--no-provision"], "up", timeout=1200)
        # its management address may have changed with the boot: ask vagrant again
        (self.lab.path / "ssh_config").unlink(missing_ok=True)
        units = [service_unit(s) for s in specs if s.node == node and not s.manifest]
        if units:
            self._check(node, "systemctl start --no-block " + " ".join(units))


def wait_for_url_command(url: str, limit: float | None = None) -> str:
    """One curl that asks `url` every 3 s until it answers 2xx (or `limit` seconds pass).

    -k: a readiness poll that sends nothing; whoever uses the server verifies its CA.
    --retry-all-errors with -f: refused connections and 500s from /readyz are retried
    by the same process (no new process, no new dynamic linking per attempt).
    """
    bound = f" --retry-max-time {int(limit)}" if limit else ""
    return ("curl -skf --max-time 10 --retry 100000 --retry-delay 3 --retry-all-errors"
            f"{bound} -o /dev/null {shlex.quote(url)}")


def systemd_unit(spec) -> str:
    """A unit for one service: restarted after 1 s like a static pod, started at boot."""
    # StartLimitIntervalSec=0: keep retrying, as kubelet does (an API server started
    # before etcd has quorum exits; systemd's default would give up after 5 tries)
    wait = ""
    if spec.after_url:
        loop = f"until {wait_for_url_command(spec.after_url)}; do sleep 2; done"
        wait = f"ExecStartPre=/bin/sh -c {shlex.quote(loop)}\nTimeoutStartSec=infinity\n"
    # a /tmp of its own (the hollow kubelet's fake runtime socket is a fixed /tmp path)
    tmp = "PrivateTmp=yes\n" if spec.private_tmp else ""
    return (f"[Unit]\nDescription=halab {spec.name} on {spec.node}\nAfter=network-online.target\n"
            "StartLimitIntervalSec=0\n\n"
            f"[Service]\n{wait}ExecStart={shlex.join(spec.argv)}\nRestart=always\nRestartSec=2\n"
            f"{tmp}LimitNOFILE=65536\n\n[Install]\nWantedBy=multi-user.target\n")


def _put_bytes(remote, data: bytes, path: str) -> None:
    import tempfile
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        remote.put(f.name, path)


MANIFESTS = "/etc/kubernetes/manifests"
PARKED = "/etc/kubernetes/halab-stopped"
PARTITION_TAG = "halab-partition"


def service_command(spec, action: str, root: str = "") -> str:
    """The shell command that stops ("stop", "kill") or starts a service on a VM.

    A static pod (kubespray's kube-apiserver): moving its manifest out makes kubelet
    stop it, moving it back restores it (`crictl stop` only makes kubelet restart it).
    Everything else is a systemd unit: the one the spec names, or halab's own
    (halab-<service>). `root` prefixes paths (tests).
    """
    if spec.manifest:
        src, dst = f"{root}{MANIFESTS}/{spec.manifest}", f"{root}{PARKED}/{spec.manifest}"
        if action == "start":
            return f"test ! -e {dst} || mv {dst} {src}"
        return f"mkdir -p {root}{PARKED} && {{ test ! -e {src} || mv {src} {dst}; }}"
    unit = service_unit(spec)
    if action == "kill":
        return f"systemctl kill -s KILL {unit} && systemctl stop {unit}"
    return f"systemctl {action} {unit}"


def service_unit(spec) -> str:
    """The systemd unit of a service on a VM: the spec's, or halab's own halab-<name>."""
    return spec.unit or f"halab-{spec.name}"


def partition_command(ip: str, cut: bool) -> str:
    """iptables rules that drop the lab NIC's traffic (added once, removed completely)."""
    iface = f"$(ip -o -4 addr show | awk '$4 ~ /^{re_escape(ip)}\\//{{print $2}}' | head -n1)"
    rules = [f"INPUT -i \"$IF\" -m comment --comment {PARTITION_TAG} -j DROP",
             f"OUTPUT -o \"$IF\" -m comment --comment {PARTITION_TAG} -j DROP"]
    if cut:
        body = "; ".join(f"iptables -C {r} 2>/dev/null || iptables -I {r}" for r in rules)
    else:
        body = "; ".join(f"while iptables -C {r} 2>/dev/null; do iptables -D {r}; done"
                         for r in rules)
    return f"IF={iface}; test -n \"$IF\" && {{ {body}; }}"


def re_escape(ip: str) -> str:
    return ip.replace(".", "\\.")


def libvirt_uri() -> str:
    """The libvirt connection vagrant-libvirt uses for halab's Vagrantfiles (which set no
    connection option): LIBVIRT_DEFAULT_URI if set, else qemu:///system. Without `-c`,
    virsh run by a user talks to qemu:///session and sees none of the lab's VMs."""
    return os.environ.get("LIBVIRT_DEFAULT_URI") or "qemu:///system"


def virsh(*args: str) -> list[str]:
    return ["virsh", "-c", libvirt_uri(), *args]


def vm_control_argv(provider: str, lab: str, node: str, action: str) -> list[str]:
    """Pause/resume a whole VM with the hypervisor (a frozen node)."""
    if provider == "libvirt":
        return virsh("suspend" if action == "pause" else "resume", MachineNames(lab).domain(node))
    return ["VBoxManage", "controlvm", MachineNames(lab).virtualbox_vm(node), action]


def power_off_argv(provider: str, lab: str, node: str) -> list[str]:
    """The provider's hard power-off for one VM (names as the Vagrantfile sets them)."""
    if provider == "libvirt":
        return virsh("destroy", MachineNames(lab).domain(node))
    return ["VBoxManage", "controlvm", MachineNames(lab).virtualbox_vm(node), "poweroff"]


def destroy_vms(lab, provider: str, networks: list[str], progress=lambda m: None,
                vagrant: Vagrant | None = None) -> list[str]:
    """`vagrant destroy` in the lab folder and the given libvirt networks; returns the
    VMs vagrant still knows."""
    vagrant = vagrant or Vagrant(lab.path, provider, lab.logs)
    vagrant.destroy()
    progress("VMs destroyed; vagrant global-status pruned")
    for net in networks:
        for verb in ("net-destroy", "net-undefine"):
            subprocess.run(virsh(verb, net), capture_output=True, timeout=60)
        progress(f"removed libvirt network {net}")
    return [f"VM {n} ({s})" for n, s in vagrant.status().items() if s != "not_created"]
