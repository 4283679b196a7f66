"""halab's own control-plane deployment ("static" deployer), as a pure plan.

`plan()` turns a topology into the programs each node runs (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, HAProxy, keepalived, the workers' nginx
proxy, and on every node a kubelet and a kube-proxy), with their files and flags.
The local provider runs the plan in network namespaces; the VM provider runs the
same plan over SSH as systemd units.

The nodes' kubelet and kube-proxy are Kubernetes' own kubemark "hollow" ones: the
real kubelet and kube-proxy code (registration, node status, the Lease renewed every
10 s, pod sync, the informers' long-lived watches, client-go's HTTP/2 health check)
with a fake container runtime and fake iptables, so a pod "runs" without a container.
They are the clients an HA control plane is for, and reach the API the way the Case
says: a control plane its own API server, a worker its nginx proxy (Cases 1, 2) or
the load balancer (Case 3).
"""
from __future__ import annotations

from lab.deploy import kubeconfig
from lab import render
from dataclasses import replace

from lab.model.services import PROVISIONED_SERVICES, Layout, ServiceSpec
from lab.render import haproxy_runtime
from lab.model.topology import API_PORT, Node, Topology

ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
# Under emulation an API server's start takes minutes and its own loopback requests
# queue behind it: the service IP/nodePort repair checks then hit the 1 min request
# timeout, which is fatal for them (the API server exits and starts over). More time
# for every request, and no priority-and-fairness bookkeeping, let it finish.
# Without the watch cache an idle API server uses a third of the CPU (measured natively:
# 1.3 % -> 0.4 % of a core): on 2 host cores, the CPU the next emulated control plane
# needs to start. Reads without a resourceVersion go to etcd either way (the drills'
# probes), so the failover behaviour stays the same.
EMULATED_APISERVER_FLAGS = ("--request-timeout=5m0s", "--enable-priority-and-fairness=false",
                            "--watch-cache=false")
# Leader election of controller-manager and scheduler on emulated VMs. The defaults
# (lease 15 s, renew deadline 10 s, retry every 2 s) make a component exit when one
# renewal takes longer than 10 s, and a request took 16 s on a busy emulated control
# plane: seen there, kube-scheduler lost its lease, exited with a goroutine dump,
# started over (28 % of the VM's CPU, journald 5-8 % more), again and again. Renewals
# every 10 s with 45 s to get through, and a lease of 60 s: a fifth of the lease
# traffic, and a standby takes over after at most 60 s instead of 15 s.
LEADER_LEASE, LEADER_RETRY = 15, 2                    # Kubernetes' defaults (seconds)
EMULATED_LEADER_LEASE, EMULATED_LEADER_RETRY = 60, 10
EMULATED_LEADER_ELECTION_FLAGS = (f"--leader-elect-lease-duration={EMULATED_LEADER_LEASE}s",
                                  "--leader-elect-renew-deadline=45s",
                                  f"--leader-elect-retry-period={EMULATED_LEADER_RETRY}s")
# controller-manager and scheduler start once their node's API server answers (a
# kubelet starts them together and lets them crash-loop, which costs an emulated VM
# the CPU its API server needs to come up)
LOCAL_API_HEALTHZ = f"https://127.0.0.1:{API_PORT}/healthz"


def etcd_initial_cluster(topo: Topology) -> str:
    return ",".join(f"etcd{i}=https://{m.ip}:{ETCD_PEER_PORT}"
                    for i, m in enumerate(topo.etcd_members, 1))


def etcd_endpoints(topo: Topology) -> str:
    return ",".join(f"https://{m.ip}:{ETCD_CLIENT_PORT}" for m in topo.etcd_members)


def _pki_files(lay: Layout, pki: dict, names: list[str]) -> dict:
    return {lay.p("pki", n): pki[n] for n in names}


def etcd_spec(topo: Topology, node: Node, lay: Layout, pki: dict) -> ServiceSpec:
    index = topo.etcd_members.index(node) + 1
    name = f"etcd{index}"
    files = _pki_files(lay, pki, ["etcd-ca.crt", f"etcd/{node.name}-server.crt",
                                  f"etcd/{node.name}-server.key", f"etcd/{node.name}-peer.crt",
                                  f"etcd/{node.name}-peer.key"])
    argv = (
        lay.etcd, f"--name={name}", f"--data-dir={lay.p('etcd')}",
        f"--listen-client-urls=https://{node.ip}:{ETCD_CLIENT_PORT},https://127.0.0.1:{ETCD_CLIENT_PORT}",
        f"--advertise-client-urls=https://{node.ip}:{ETCD_CLIENT_PORT}",
        f"--listen-peer-urls=https://{node.ip}:{ETCD_PEER_PORT}",
        f"--initial-advertise-peer-urls=https://{node.ip}:{ETCD_PEER_PORT}",
        f"--initial-cluster={etcd_initial_cluster(topo)}",
        f"--initial-cluster-token=halab-{topo.name}", "--initial-cluster-state=new",
        f"--cert-file={lay.p('pki', 'etcd', node.name + '-server.crt')}",
        f"--key-file={lay.p('pki', 'etcd', node.name + '-server.key')}",
        f"--trusted-ca-file={lay.p('pki', 'etcd-ca.crt')}", "--client-cert-auth=true",
        f"--peer-cert-file={lay.p('pki', 'etcd', node.name + '-peer.crt')}",
        f"--peer-key-file={lay.p('pki', 'etcd', node.name + '-peer.key')}",
        f"--peer-trusted-ca-file={lay.p('pki', 'etcd-ca.crt')}", "--peer-client-cert-auth=true",
        # kubespray's tuning (REFERENCE.md section 4)
        "--heartbeat-interval=250", "--election-timeout=5000",
        # etcd 3.5 (kubespray's) pre-votes by default: a member back from a partition
        # must not force a new election. Debian's 3.4 needs it said.
        "--pre-vote=true",
        "--logger=zap", "--log-outputs=stderr",
    )
    return ServiceSpec(node.name, "etcd", argv, files)


def apiserver_spec(topo: Topology, node: Node, lay: Layout, pki: dict) -> ServiceSpec:
    s = topo.scenario
    files = _pki_files(lay, pki, ["ca.crt", "etcd-ca.crt", "sa.key", "sa.pub",
                                  f"apiserver/{node.name}.crt", f"apiserver/{node.name}.key",
                                  "apiserver-etcd-client.crt", "apiserver-etcd-client.key"])
    pk = lambda *n: lay.p("pki", *n)  # noqa: E731
    argv = (
        f"{lay.k8s_bin}/kube-apiserver",
        f"--advertise-address={node.ip}", "--bind-address=0.0.0.0", f"--secure-port={API_PORT}",
        f"--etcd-servers={etcd_endpoints(topo)}",
        f"--etcd-cafile={pk('etcd-ca.crt')}", f"--etcd-certfile={pk('apiserver-etcd-client.crt')}",
        f"--etcd-keyfile={pk('apiserver-etcd-client.key')}",
        f"--client-ca-file={pk('ca.crt')}",
        f"--tls-cert-file={pk('apiserver', node.name + '.crt')}",
        f"--tls-private-key-file={pk('apiserver', node.name + '.key')}",
        f"--service-account-key-file={pk('sa.pub')}",
        f"--service-account-signing-key-file={pk('sa.key')}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-cluster-ip-range={s.service_cidr}",
        "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
        "--allow-privileged=true", "--anonymous-auth=true", "--profiling=false",
        "--endpoint-reconciler-type=lease",
        # kubespray sets no --shutdown-delay-duration either (REFERENCE.md section 3)
    ) + EMULATED_APISERVER_FLAGS * lay.emulated
    return ServiceSpec(node.name, "kube-apiserver", argv, files,
                       ready_url=f"https://{node.ip}:{API_PORT}/readyz")


def _component_kubeconfig(topo: Topology, pki: dict, who: str) -> str:
    ctx = [(f"{topo.name}-local", f"https://127.0.0.1:{API_PORT}")]
    cfg = kubeconfig.build(topo, pki["ca.crt"], pki[f"{who}.crt"], pki[f"{who}.key"],
                           user=who, only=ctx)
    return kubeconfig.dump(cfg)


def controller_manager_spec(topo: Topology, node: Node, lay: Layout, pki: dict) -> ServiceSpec:
    s = topo.scenario
    kc = lay.p("controller-manager.kubeconfig")
    files = {kc: _component_kubeconfig(topo, pki, "controller-manager"),
             **_pki_files(lay, pki, ["ca.crt", "ca.key", "sa.key"])}
    argv = (
        f"{lay.k8s_bin}/kube-controller-manager",
        f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
        f"--authorization-kubeconfig={kc}",
        "--leader-elect=true", "--leader-elect-resource-lock=leases",
        "--bind-address=127.0.0.1", "--secure-port=10257", "--port=0",
        f"--service-account-private-key-file={lay.p('pki', 'sa.key')}",
        f"--root-ca-file={lay.p('pki', 'ca.crt')}",
        f"--cluster-signing-cert-file={lay.p('pki', 'ca.crt')}",
        f"--cluster-signing-key-file={lay.p('pki', 'ca.key')}",
        "--use-service-account-credentials=true",
        # otherwise it creates /usr/libexec/kubernetes/... on the host
        f"--flex-volume-plugin-dir={lay.p('flexvolume')}",
        f"--service-cluster-ip-range={s.service_cidr}",
    ) + EMULATED_LEADER_ELECTION_FLAGS * lay.emulated
    return ServiceSpec(node.name, "kube-controller-manager", argv, files,
                       after_url=LOCAL_API_HEALTHZ)


def scheduler_spec(topo: Topology, node: Node, lay: Layout, pki: dict) -> ServiceSpec:
    kc = lay.p("scheduler.kubeconfig")
    files = {kc: _component_kubeconfig(topo, pki, "scheduler")}
    argv = (
        f"{lay.k8s_bin}/kube-scheduler", f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
        "--leader-elect=true", "--leader-elect-resource-lock=leases",
        "--bind-address=127.0.0.1", "--secure-port=10259", "--port=0",
    ) + EMULATED_LEADER_ELECTION_FLAGS * lay.emulated
    return ServiceSpec(node.name, "kube-scheduler", argv, files, after_url=LOCAL_API_HEALTHZ)


def haproxy_spec(topo: Topology, node: Node, lay: Layout) -> ServiceSpec:
    cfg = lay.p("haproxy.cfg")
    text = render.haproxy_cfg(topo, node, haproxy_runtime(lay))
    return ServiceSpec(node.name, "haproxy", (lay.haproxy, "-W", "-db", "-f", cfg),
                       {cfg: text}, cwd=lay.base if lay.local else "")


def keepalived_spec(topo: Topology, node: Node, lay: Layout, secrets, iface: str) -> ServiceSpec:
    cfg = lay.p("keepalived.conf")
    pidfile = haproxy_runtime(lay).pidfile
    text = render.keepalived_conf(topo, node, secrets, interface=iface,
                                  check_command=f"/bin/sh -c 'kill -0 $(cat {pidfile})'")
    argv = (lay.keepalived, "--dont-fork", "--log-console", "--log-detail", "--vrrp",
            "-f", cfg, "-p", lay.p("keepalived.pid"), "-r", lay.p("keepalived-vrrp.pid"))
    return ServiceSpec(node.name, "keepalived", argv, {cfg: text})


def nginx_spec(topo: Topology, node: Node, lay: Layout) -> ServiceSpec:
    conf = lay.p("nginx", "nginx.conf")
    runtime = render.NginxRuntime(error_log="stderr", pidfile=lay.p("nginx", "nginx.pid"),
                                  daemon=False, modules=lay.nginx_modules,
                                  temp_dir=lay.p("nginx"))
    text = render.nginx_proxy_conf(topo, node, runtime)
    return ServiceSpec(node.name, "nginx-proxy",
                       (lay.nginx, "-p", lay.p("nginx"), "-c", conf), {conf: text})


KUBELET_PORT = 10250
# kubespray's control planes carry this taint: the workload goes to the workers
CONTROL_PLANE_TAINT = "node-role.kubernetes.io/master=:NoSchedule"


def agent_env(lay: Layout) -> dict:
    """The node agents' environment. Locally every node's kubelet and kube-proxy share
    this machine's cores with the whole control plane; one Go thread each halves the
    wake-ups of their many short timers (measured with benchmarks/local_up.py: the five
    nodes' agents idle at 1.5-1.9 % of a core instead of 2.5-2.6 %). On a VM a node has
    its cores to itself and its agents keep Go's default, as a real kubelet does."""
    return {"GOMAXPROCS": "1"} if lay.local else {}


def node_api_server(topo: Topology, node: Node) -> str:
    """Where a node's kubelet and kube-proxy reach the API: a control plane its own API
    server (as kubespray's do), a worker its Case's path."""
    if node.is_control_plane:
        return f"https://127.0.0.1:{API_PORT}"
    return topo.worker_path(node).server


def node_agent_kubeconfig(topo: Topology, node: Node, pki: dict, cred: str, user: str) -> str:
    server = node_api_server(topo, node)
    return kubeconfig.dump(kubeconfig.config([(f"{topo.name}-{node.name}", server)], user,
                                             pki["ca.crt"], pki[f"{cred}.crt"],
                                             pki[f"{cred}.key"]))


def kubelet_spec(topo: Topology, node: Node, lay: Layout, pki: dict) -> ServiceSpec:
    """The node's hollow kubelet, with the node's own identity (system:node:<node>, which
    the API server's Node authorizer and NodeRestriction hold to its own objects)."""
    kc = lay.p("kubelet.kubeconfig")
    files = {kc: node_agent_kubeconfig(topo, node, pki, f"nodes/{node.name}",
                                       f"system:node:{node.name}")}
    argv = (lay.kubemark, "--morph=kubelet", f"--name={node.name}", f"--kubeconfig={kc}",
            f"--kubelet-port={KUBELET_PORT}", "--kubelet-read-only-port=0")
    if node.is_control_plane:
        argv += (f"--register-with-taints={CONTROL_PLANE_TAINT}",)
    return ServiceSpec(node.name, "kubelet", argv, files, env=agent_env(lay),
                       private_tmp=lay.p("tmp", "kubelet"),
                       after_url=f"{node_api_server(topo, node)}/healthz")


def kube_proxy_spec(topo: Topology, node: Node, lay: Layout, pki: dict) -> ServiceSpec:
    """The node's hollow kube-proxy: the real informers on services and endpoint slices
    (long-lived watches), rules written to a fake iptables."""
    kc = lay.p("kube-proxy.kubeconfig")
    files = {kc: node_agent_kubeconfig(topo, node, pki, "kube-proxy", "system:kube-proxy")}
    argv = (lay.kubemark, "--morph=proxy", f"--name={node.name}", f"--kubeconfig={kc}",
            "--use-real-proxier=false")
    return ServiceSpec(node.name, "kube-proxy", argv, files, env=agent_env(lay),
                       after_url=f"{node_api_server(topo, node)}/healthz")


def node_agent_specs(topo: Topology, layout_of, pki: dict) -> list[ServiceSpec]:
    """kubelet and kube-proxy on every node of the cluster (none where the provider has
    no kubemark program for it)."""
    specs: list[ServiceSpec] = []
    for n in (*topo.control_planes, *topo.workers):
        lay = layout_of(n.name)
        if lay.kubemark:
            specs += [kubelet_spec(topo, n, lay, pki), kube_proxy_spec(topo, n, lay, pki)]
    return specs


def plan(topo: Topology, pki: dict, layout_of, secrets, iface: str = "lab0") -> list[ServiceSpec]:
    """Every program of the lab, in start order (etcd, API servers, components, LBs,
    proxies, then every node's kubelet and kube-proxy)."""
    specs: list[ServiceSpec] = []
    for m in topo.etcd_members:
        specs.append(etcd_spec(topo, m, layout_of(m.name), pki))
    for cp in topo.control_planes:
        specs.append(apiserver_spec(topo, cp, layout_of(cp.name), pki))
    for cp in topo.control_planes:
        lay = layout_of(cp.name)
        specs += [controller_manager_spec(topo, cp, lay, pki),
                  scheduler_spec(topo, cp, lay, pki)]
    for lb in topo.load_balancers:
        specs.append(haproxy_spec(topo, lb, layout_of(lb.name)))
        if len(topo.load_balancers) > 1:
            specs.append(keepalived_spec(topo, lb, layout_of(lb.name), secrets, iface))
    if topo.workers_use_local_proxy:
        for w in topo.workers:
            specs.append(nginx_spec(topo, w, layout_of(w.name)))
    return specs + node_agent_specs(topo, layout_of, pki)


def plan_for(provider, topo: Topology, pki: dict, secrets) -> list[ServiceSpec]:
    """halab's own control plane on a provider's layout, each spec saying who runs it:
    on VMs HAProxy and keepalived are the distribution's services (provisioning
    installed them); halab only stops and starts those. (A kubespray lab's services
    are kubespray's: `kubespray_specs`.)"""
    specs = plan(topo, pki, provider.layout, secrets, provider.lab_iface)
    if provider.capabilities.supervised:
        return specs
    return [replace(s, unit=s.name) if s.name in PROVISIONED_SERVICES else s for s in specs]


def kubespray_specs(topo: Topology) -> list[ServiceSpec]:
    """A kubespray lab's services, by name and by how they are controlled: etcd as a
    systemd unit on its members, kube-apiserver as a static pod on each control plane,
    HAProxy and keepalived as the distribution's units on the load balancers."""
    specs = [ServiceSpec(m.name, "etcd", (), unit="etcd") for m in topo.etcd_members]
    specs += [ServiceSpec(cp.name, "kube-apiserver", (), manifest="kube-apiserver.yaml")
              for cp in topo.control_planes]
    for lb in topo.load_balancers:
        specs.append(ServiceSpec(lb.name, "haproxy", (), unit="haproxy"))
        if len(topo.load_balancers) > 1:
            specs.append(ServiceSpec(lb.name, "keepalived", (), unit="keepalived"))
    return specs
