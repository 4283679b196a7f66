"""Pure: what a fault should do to every access path of a Case, and why.

The seed's table (LB down: Case 1 unaffected, Case 2 external only, Case 3 the
whole cluster) extended to every fault, every target and every path, with the
failover mechanics of REFERENCE.md section 4 turned into numbers taken from the
scenario (HAProxy check timing, keepalived advert_int, etcd election timeout).

Categories, from mild to severe:
    up        no failed probe (one isolated failure is tolerated)
    blip      failures, but they stop within `within` seconds after injection
              while the fault is still active (the system fails over by itself)
    degraded  intermittent failures for as long as the fault lasts (nothing
              detects it, but other servers still answer)
    down      fails for the whole fault
A milder measurement than a blip or degraded expectation still agrees ("errors
allowed, not required"); `up` and `down` must be met exactly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from lab.deploy import controlplane as cpl
from lab.render import detect_seconds
from lab.model.scenario import duration_seconds
from lab.model.topology import Topology
from lab.drill.faults import APISERVER_LOST, ETCD_LOST, LB_LOST, lost

SEVERITY = {"up": 0, "blip": 1, "degraded": 2, "down": 3}
CATEGORIES = tuple(SEVERITY)

# etcd flags of the static deployer (kubespray's tuning, REFERENCE.md section 4)
ETCD_ELECTION_TIMEOUT = 5.0
# kube-apiserver's etcd client (clientv3 + gRPC) round-robins requests over every
# --etcd-servers member. gRPC keepalive is 30 s / 10 s there, and gRPC sets
# TCP_USER_TIMEOUT to the keepalive timeout: a black-holed member's connection dies
# ~10 s after the first unanswered request (measured: errors end 10-11 s after a kill).
# A frozen member's kernel still ACKs, so only the keepalive ping (30 s idle + 10 s)
# ends it.
# kube-apiserver 1.20 also makes one etcd client per resource type: the ConfigMap
# client of an API server may hold an idle connection to the lost member and find
# out only on first use, or after keepalive (30 s idle + 10 s): writes fail longer.
ETCD_CLIENT_DEAD = 10.0
ETCD_CLIENT_FROZEN = 40.0
# the workers' nginx proxy (templates/nginx-proxy.conf.j2 and nginx's defaults)
NGINX_CONNECT_TIMEOUT = 1.0
NGINX_FAIL_TIMEOUT = 10.0
# keepalived's chk_haproxy (templates/keepalived.conf.j2): interval 1, fall 2
KEEPALIVED_CHECK = 2.0
# how late a probe may still fail after the mechanism has acted (scheduling on a
# busy machine, the probe that was already in flight)
MARGIN = 2.0
# the same on emulated VMs (QEMU without hardware virtualization, 10-20x slower): an API
# server there needs seconds more to give up on a lost etcd member's requests and answer
# again (the VM lab's kill of an etcd follower: errors stopped +10.3 s and +14.95 s after
# the kill on two runs, against the keepalive's 10 s)
EMULATED_MARGIN = 5.0


@dataclass(frozen=True)
class Context:
    """What the lab looked like before the fault (measured by the engine, or unknown)."""

    etcd_leader: str | None = None
    vip_holder: str | None = None
    lease_holders: dict = field(default_factory=dict)
    observer: str | None = None     # the control plane the write probe goes through

    def as_dict(self) -> dict:
        return asdict(self)


ROLE_WORDS = {"leader": "the etcd leader", "follower": "an etcd follower",
              "unknown": "an etcd member (leader unknown)"}


def etcd_roles(topo: Topology, targets: list[str], ctx: Context) -> dict[str, str]:
    """{target: "leader" | "follower" | "unknown"} for the targets that are etcd members:
    killing the leader and killing a follower are different drills."""
    members = {m.name for m in topo.etcd_members}
    return {t: ("unknown" if ctx.etcd_leader in (None, "?") else
                "leader" if t == ctx.etcd_leader else "follower")
            for t in targets if t in members}


@dataclass(frozen=True)
class Expectation:
    path: str
    expect: str                  # up | blip | degraded | down
    reason: str
    within: float | None = None  # blip: the last failure starts within this after injection
    after_restore: str = ""      # what may happen while it recovers
    accept: tuple = ()           # other measurements that still agree (explained in reason)
    causes: tuple = ()           # the reasons one by one (a plan explains each cause once)
    # the mechanisms that end (or keep up) this path's errors, each with the seconds after
    # injection at which it should act: ({"id": ..., "predicted": s | None}, ...)
    mechanisms: tuple = ()

    def as_dict(self) -> dict:
        return asdict(self)


def timing(s) -> dict:
    """The failover clocks of a scenario, in seconds."""
    hc = s.haproxy.healthcheck
    inter = duration_seconds(hc.inter)
    fast = duration_seconds(hc.fastinter)
    check_to = duration_seconds(s.haproxy.timeouts.get("check", "2s"))
    connect_to = duration_seconds(s.haproxy.timeouts.get("connect", "2s"))
    advert = float(s.keepalived.get("advert_int") or 1)
    # a refused or unreachable server fails its check fast (connect timeout bounded by
    # inter); a frozen one accepts the connection and fails only at `timeout check`
    dead = detect_seconds(s)
    hang = (hc.fall - 1) * fast + hc.fall * check_to
    return {
        "haproxy_inter": inter, "haproxy_fall": hc.fall, "haproxy_rise": hc.rise,
        "haproxy_fastinter": fast, "haproxy_timeout_check": check_to,
        "haproxy_timeout_connect": connect_to, "haproxy_retries": s.haproxy.retries,
        "haproxy_detect_dead": round(dead + inter, 1),   # + up to one inter until the next check
        "haproxy_detect_hang": round(hang + inter, 1),
        "vrrp_takeover": round(3 * advert + advert * (256 - 140) / 256, 1),
        "vrrp_check": KEEPALIVED_CHECK, "advert_int": advert,
        "etcd_election": ETCD_ELECTION_TIMEOUT,
        # raft waits a random time in [timeout, 2 x timeout) before it campaigns
        "etcd_election_max": 2 * ETCD_ELECTION_TIMEOUT,
        "haproxy_downinter": duration_seconds(hc.downinter or hc.inter),
        "haproxy_back_up": round(hc.rise * duration_seconds(hc.downinter or hc.inter)
                                 + check_to, 1),
        "nginx_connect_timeout": NGINX_CONNECT_TIMEOUT, "nginx_fail_timeout": NGINX_FAIL_TIMEOUT,
        "margin": EMULATED_MARGIN if emulated(s) else MARGIN,
        **leader_election(s),
    }


def emulated(s) -> bool:
    """Emulated VMs (scenario.emulated) with halab's own control plane, whose timers are
    stretched for them (leader election); the bounds a drill predicts stretch with them."""
    return s.emulated and not s.uses_kubespray


def leader_election(s) -> dict:
    """The controller-manager's and scheduler's leader election as the lab runs it:
    Kubernetes' defaults (lease 15 s, retry 2 s), or the static deployer's slower timers
    on emulated VMs (lab.deploy.controlplane.EMULATED_LEADER_*). A standby
    takes over one lease duration after the last renewal, at its next retry."""
    lease, retry = ((cpl.EMULATED_LEADER_LEASE, cpl.EMULATED_LEADER_RETRY) if emulated(s)
                    else (cpl.LEADER_LEASE, cpl.LEADER_RETRY))
    return {"leader_lease": float(lease), "leader_retry": float(retry),
            "leader_takeover": float(lease + retry)}


@dataclass
class _Effect:
    expect: str
    reason: str
    within: float | None = None
    after_restore: str = ""
    accept: tuple = ()
    causes: tuple = ()
    mech: tuple = ()             # ((mechanism id, predicted seconds | None), ...)


def _worst(effects: list[_Effect]) -> _Effect:
    if not effects:
        return _Effect("up", "nothing this path depends on is touched",
                       causes=("nothing this path depends on is touched",))
    top = max(SEVERITY[e.expect] for e in effects)
    chosen = [e for e in effects if SEVERITY[e.expect] == top]
    within = max((e.within for e in chosen if e.within is not None), default=None)
    reasons = []
    for e in effects:  # milder effects still explain something (e.g. a leader election)
        if e.reason not in reasons and (SEVERITY[e.expect] == top or top < 3):
            reasons.append(e.reason)
    after = "; ".join(dict.fromkeys(e.after_restore for e in effects if e.after_restore))
    accept = tuple(dict.fromkeys(a for e in chosen for a in e.accept))
    # the mechanisms that shape the error window: all of them, unless the path is down
    # for the whole fault (then only what keeps it down)
    mech: dict = {}
    for e in (chosen if top == 3 else effects):
        for mid, sec in e.mech:
            old = mech.get(mid)
            mech[mid] = sec if old is None else max(old, sec if sec is not None else old)
    return _Effect(chosen[0].expect, "; ".join(reasons), within if top == 1 else None, after,
                   accept, tuple(reasons), tuple(mech.items()))


def _hows(fault: str, node: str) -> str:
    return {"kill": f"{node} is powered off: packets to it vanish, clients wait for a timeout",
            "partition": f"{node} is cut off the network: packets to it are dropped",
            "freeze": f"{node}'s processes are frozen: its kernel still accepts TCP connections "
                      "but nothing ever answers, so requests hang",
            "stop-apiserver": f"no kube-apiserver listens on {node}: connections are refused "
                              "at once",
            "stop-lb": f"HAProxy on {node} is stopped: connections are refused at once",
            "stop-etcd": f"etcd on {node} is stopped"}[fault]


def _apiserver_words(topo: Topology) -> str:
    """halab's own control plane is 1.20; kubespray deploys its release's version."""
    return "kube-apiserver (as of 1.20)" if topo.scenario.uses_kubespray else "kube-apiserver 1.20"


PAUSED = "is paused in the hypervisor (its kernel too: no ACK, no RST)"


def expectations(topo: Topology, fault: str, targets: list[str],
                 ctx: Context | None = None) -> dict[str, Expectation]:
    """{path key: Expectation} for every access path, plus `write` (a ConfigMap).

    A frozen VM is paused in the hypervisor: unlike SIGSTOPped processes, whose kernel
    still accepts connections, nothing answers at all, so to every client it looks like
    a power-off that ends without a boot."""
    if fault == "freeze" and topo.scenario.provider != "local":
        return {k: _as_paused(e) for k, e in _expectations(topo, "kill", targets, ctx).items()}
    return _expectations(topo, fault, targets, ctx)


def _as_paused(e: Expectation) -> Expectation:
    def words(text: str) -> str:
        return text.replace("is powered off", PAUSED).replace("powered off", "paused")
    return replace(e, reason=words(e.reason), after_restore=words(e.after_restore),
                   causes=tuple(words(c) for c in e.causes))


def _expectations(topo: Topology, fault: str, targets: list[str],
                  ctx: Context | None = None) -> dict[str, Expectation]:
    ctx = ctx or Context()
    tm = timing(topo.scenario)
    faults = {t: fault for t in targets}
    etcd_down, api_down = lost(topo, faults)
    n_etcd = len(topo.etcd_members)
    no_quorum = n_etcd and n_etcd - len(etcd_down) < n_etcd // 2 + 1
    no_api = bool(topo.control_planes) and len(api_down) == len(topo.control_planes)
    out = {}
    common = _common_effects(topo, fault, targets, ctx, tm, no_quorum)
    for p in topo.access_paths():
        effects = list(common)
        if no_api:
            effects.append(_Effect("down", "no API server is left", mech=(("no_failover", None),)))
        if p.key.startswith("direct:"):
            effects += _direct(topo, fault, targets, p.key.split(":", 1)[1], tm)
        elif p.key == "external":
            if topo.case == 1:
                effects += _direct(topo, fault, targets, topo.control_planes[0].name, tm,
                                   external=True)
            else:
                effects += _via_haproxy(topo, fault, targets, ctx, tm)
        else:
            worker = p.key.split(":", 1)[1]
            if worker in targets:
                effects.append(_worker_down(topo, fault, worker))
            elif topo.workers_use_local_proxy:
                effects += _via_nginx(topo, fault, targets, worker, tm)
            else:
                effects += _via_haproxy(topo, fault, targets, ctx, tm)
        e = _worst(effects)
        out[p.key] = Expectation(p.key, e.expect, e.reason, e.within, e.after_restore, e.accept,
                                 e.causes, _mechs(e))
    # the write probe goes straight to a control plane the fault does not touch
    obs = ctx.observer or next((c.name for c in topo.control_planes if c.name not in targets),
                               topo.control_planes[0].name)
    effects = list(common) + _direct(topo, fault, targets, obs, tm)
    if no_api:
        effects.append(_Effect("down", "no API server is left", mech=(("no_failover", None),)))
    if no_quorum:
        effects.append(_Effect("down", "no etcd quorum: etcd refuses every write (the API "
                                       "answers reads only from its cache, if at all)",
                               mech=(("etcd_quorum", None),)))
    members_hit = any(t in {m.name for m in topo.etcd_members} for t in targets)
    if fault == "freeze" and members_hit and not no_quorum:
        effects.append(_Effect("degraded", "a write needs several etcd requests (create, then "
                                           "get+delete), so most writes meet the frozen member",
                               accept=("down",), mech=(("etcd_keepalive", ETCD_CLIENT_FROZEN),)))
    elif fault in ("kill", "partition") and members_hit and not no_quorum:
        effects.append(_Effect(
            "degraded", f"{_apiserver_words(topo)} keeps one etcd client per resource type: the "
                        "ConfigMap client may hold an idle connection to the lost member and "
                        "find out only when it uses it, or after gRPC keepalive (30 s idle + "
                        f"{ETCD_CLIENT_DEAD:g} s), so writes may keep failing longer than reads",
            accept=("blip",), mech=(("etcd_keepalive", ETCD_CLIENT_FROZEN),)))
    e = _worst(effects)
    out["write"] = Expectation("write", e.expect,
                               f"create+delete a ConfigMap directly on {obs}: " + e.reason,
                               e.within, e.after_restore, e.accept, e.causes, _mechs(e))
    return out


def _mechs(e: _Effect) -> tuple:
    return tuple({"id": mid, "predicted": None if sec is None else round(sec, 1)}
                 for mid, sec in e.mech)


def _worker_down(topo, fault: str, worker: str) -> _Effect:
    """The probe of a worker's own path runs on that worker (where its kubelet would)."""
    proxy = topo.workers_use_local_proxy
    if fault == "freeze" and not proxy:
        return _Effect("up", f"Case {topo.case} workers run no local proxy: nothing on the path "
                             f"from {worker} to the load balancer is frozen (its kubelet would "
                             "be, and simply stop asking)")
    why = {"kill": f"{worker} is powered off" + (", its nginx proxy with it" if proxy else ""),
           "partition": f"{worker} is cut off the network: it reaches no API server",
           "freeze": f"{worker}'s nginx proxy is frozen: the kernel accepts the connection on "
                     "localhost:6443, nothing answers"}[fault]
    return _Effect("down", why, mech=(("no_failover", None),))


def _common_effects(topo, fault, targets, ctx, tm, no_quorum) -> list[_Effect]:
    """Effects every path shares: etcd quorum and etcd leader elections."""
    effects = []
    if no_quorum:
        effects.append(_Effect("down", "etcd has lost its quorum: every API server fails "
                                       "/readyz and every write until the members come back",
                               after_restore="etcd must re-elect a leader before the API "
                                             "answers again", mech=(("etcd_quorum", None),)))
        return effects
    members = {m.name for m in topo.etcd_members}
    hit = [t for t in targets if t in members and fault in ETCD_LOST]
    if not hit:
        return effects
    if fault == "stop-etcd":
        # a stopped member refuses connections: the etcd client skips it at once, and a
        # graceful stop hands leadership over first (etcd's TransferLeadership)
        return effects
    who = ", ".join(hit)
    leader = ctx.etcd_leader
    election = tm["etcd_election"]
    if fault == "freeze":
        first = (f"{leader} held the etcd leader: nothing can be written or quorum-read until "
                 f"the others elect a new one after the election timeout ({election:g} s); "
                 "then: ") if leader in hit else ""
        effects.append(_Effect(
            "degraded", first + f"etcd on {who} is frozen: every kube-apiserver's etcd client "
                        "keeps sending its share of requests (round-robin over --etcd-servers) to "
                        "that member, whose kernel still accepts them; those requests hang, so "
                        "about one in three API calls fails on every API server until gRPC's "
                        f"keepalive gives up on the member (~{ETCD_CLIENT_FROZEN:g} s)",
            accept=("blip",), mech=((("etcd_election", tm["etcd_election_max"]),)
                                    if leader in hit else ())
            + (("etcd_keepalive", ETCD_CLIENT_FROZEN),)))
    else:
        why = (f"etcd on {who} is unreachable: every kube-apiserver's etcd client keeps "
               "sending its share of requests (round-robin over --etcd-servers) there until "
               f"the connection dies ~{ETCD_CLIENT_DEAD:g} s later (gRPC keepalive timeout = "
               "TCP_USER_TIMEOUT), so about one in three API calls hangs meanwhile, on every "
               "access path")
        within = ETCD_CLIENT_DEAD + 2 * tm["margin"]
        mech: tuple = (("etcd_keepalive", ETCD_CLIENT_DEAD),)
        if leader in hit:
            mech = (("etcd_election", tm["etcd_election_max"]),) + mech
            why = (f"{leader} held the etcd leader: nobody can commit or serve a quorum read "
                   f"until the others elect a new one: each waits {election:g}-"
                   f"{tm['etcd_election_max']:g} s without a heartbeat (a random election "
                   "timeout), pre-votes, then campaigns, so every API call that needs etcd "
                   "hangs or fails meanwhile, on every access path; at the same time: " + why)
            within = max(tm["etcd_election_max"], ETCD_CLIENT_DEAD) + 2 * tm["margin"]
        elif leader is None:
            why += (f"; if {who} held the etcd leader, everything fails for the election "
                    f"({election:g}-{tm['etcd_election_max']:g} s) first")
        after = ""
        if fault == "partition":
            after = ("halab runs etcd with --pre-vote (etcd 3.5's default): the healed member "
                     "asks before it campaigns, so its return forces no new election; its "
                     "etcd and API server still need a few seconds to catch up after the heal")
        effects.append(_Effect("blip", why, within, after, mech=mech))
    return effects


def _direct(topo, fault, targets, cp: str, tm, external=False) -> list[_Effect]:
    """A client talking straight to control plane `cp` (or Case 1's external kubectl)."""
    if cp not in targets or fault not in APISERVER_LOST:
        if cp in targets and fault == "stop-etcd":
            return [_Effect("up", f"kube-apiserver on {cp} lists every etcd member in "
                                  "--etcd-servers and moves to another one",
                            mech=(("etcd_refused", 0.0),))]
        return []
    why = _hows(fault, cp)
    if external:
        why += ("; Case 1 has no load balancer: external kubectl is configured with "
                f"{cp} only and fails until someone switches the context by hand")
    return [_Effect("down", why, after_restore=f"fails until kube-apiserver on {cp} is ready "
                                                "again" if fault != "freeze" else "",
                    mech=(("no_failover", None),))]


def _via_haproxy(topo, fault, targets, ctx, tm) -> list[_Effect]:
    effects = []
    lbs = [lb.name for lb in topo.load_balancers]
    hit_lbs = [t for t in targets if t in lbs and fault in LB_LOST]
    if hit_lbs:
        if len(lbs) == 1:
            spof = ("a single point of failure for the whole cluster (Case 3 without a "
                    "keepalived pair)" if topo.case == 3 else
                    f"a single point of failure for external access only (Case {topo.case}: "
                    "the nodes do not use it)")
            effects.append(_Effect("down", _hows(fault, hit_lbs[0]) + "; it is the only load "
                                   "balancer: " + spof, mech=(("no_failover", None),)))
        else:
            holder = ctx.vip_holder
            live = [lb for lb in lbs if lb not in hit_lbs]
            if not live:
                effects.append(_Effect("down", "both load balancers are out",
                                       mech=(("no_failover", None),)))
            elif holder is not None and holder not in hit_lbs:
                effects.append(_Effect("up", f"{', '.join(hit_lbs)} is the keepalived backup; "
                                       f"the VIP {topo.lb_address} stays on {holder}",
                                       after_restore=""))
            else:
                if fault == "stop-lb":
                    within = tm["vrrp_check"] + tm["advert_int"] + 2 * tm["margin"]
                    why = (f"keepalived on {hit_lbs[0]} sees HAProxy gone after its check "
                           f"(interval 1 s, fall 2 = {tm['vrrp_check']:g} s), gives the VIP up "
                           f"and {live[0]} takes it over at once; refused connections until "
                           "then")
                else:
                    within = tm["vrrp_takeover"] + 2 * tm["margin"]
                    why = (_hows(fault, hit_lbs[0]) + f"; its VRRP adverts stop and {live[0]} "
                           f"takes the VIP after 3 x advert_int + skew (~{tm['vrrp_takeover']:g} "
                           "s)")
                effects.append(_Effect("blip", why, within,
                                       after_restore=f"the VIP may move back to {hit_lbs[0]} "
                                                     "(higher priority): a short blip",
                                       mech=(("vrrp", within - 2 * tm["margin"]),)))
    leader = ctx.etcd_leader
    if fault in ("kill", "partition") and leader in targets and \
            leader in {m.name for m in topo.etcd_members}:
        effects.append(_Effect(
            "blip", f"while etcd has no leader, every API server's /readyz fails (its etcd "
                    f"check): if the election outlasts HAProxy's checks (fall "
                    f"{tm['haproxy_fall']}, ~{tm['haproxy_detect_dead']:g} s), HAProxy marks "
                    "every server DOWN and closes new connections at once (clients see EOF in "
                    f"the TLS handshake) until {tm['haproxy_rise']} good checks "
                    f"{tm['haproxy_downinter']:g} s apart after the election "
                    f"(~{tm['haproxy_back_up']:g} s)",
            tm["etcd_election_max"] + tm["haproxy_back_up"] + 2 * tm["margin"],
            mech=(("etcd_election", tm["etcd_election_max"]),
                  ("haproxy_rise", tm["etcd_election_max"] + tm["haproxy_back_up"]))))
    cps = [t for t in targets if t in {c.name for c in topo.control_planes}]
    if cps and fault in APISERVER_LOST:
        if fault == "stop-apiserver":
            effects.append(_Effect("up", f"HAProxy: a refused connection is retried on another "
                                   f"API server (option redispatch, retries "
                                   f"{tm['haproxy_retries']}), and the /readyz check marks "
                                   f"{cps[0]} DOWN within ~{tm['haproxy_detect_dead']:g} s",
                                   mech=(("haproxy_redispatch", 0.0),)))
        elif fault == "freeze":
            effects.append(_Effect(
                "blip", f"{cps[0]} accepts TCP but never answers: HAProxy's /readyz check "
                        f"times out (timeout check {tm['haproxy_timeout_check']:g} s, fall "
                        f"{tm['haproxy_fall']}) and marks it DOWN after ~"
                        f"{tm['haproxy_detect_hang']:g} s, closing the hung sessions "
                        "(on-marked-down shutdown-sessions); requests sent there until then "
                        "hang", tm["haproxy_detect_hang"] + tm["margin"],
                mech=(("haproxy_check", tm["haproxy_detect_hang"]),)))
        else:
            effects.append(_Effect(
                "blip", f"{_hows(fault, cps[0])}; HAProxy's check fails and marks it DOWN after "
                        f"~{tm['haproxy_detect_dead']:g} s (inter {tm['haproxy_inter']:g} s, "
                        f"fastinter {tm['haproxy_fastinter']:g} s, fall {tm['haproxy_fall']}); "
                        "until then new connections sent there wait for timeout connect "
                        f"({tm['haproxy_timeout_connect']:g} s)",
                tm["haproxy_detect_dead"] + tm["margin"],
                after_restore=f"HAProxy sends traffic to {cps[0]} again only after "
                              f"{tm['haproxy_rise']} good /readyz checks",
                mech=(("haproxy_check", tm["haproxy_detect_dead"]),)))
    return effects


def _via_nginx(topo, fault, targets, worker, tm) -> list[_Effect]:
    cps = [t for t in targets if t in {c.name for c in topo.control_planes}]
    if not cps or fault not in APISERVER_LOST:
        return []
    cp = cps[0]
    if fault == "stop-apiserver":
        return [_Effect("up", f"nginx on {worker} gets 'connection refused' from {cp} and "
                              "tries the next API server at once (passive check)",
                        after_restore=f"nginx may send requests to {cp} while its API server "
                                      "is still starting", mech=(("nginx_refused", 0.0),))]
    if fault == "freeze":
        return [_Effect("degraded", f"nginx has passive checks only and the frozen {cp} "
                                    "still accepts TCP: nginx sees no error and keeps sending "
                                    "its share of new connections there, which hang (its "
                                    "proxy_timeout is 10 min)", mech=(("nginx_frozen", None),))]
    return [_Effect("degraded", f"{_hows(fault, cp)}; nginx has passive checks only: a "
                                f"connection sent to {cp} waits proxy_connect_timeout "
                                f"({tm['nginx_connect_timeout']:g} s) before nginx tries the "
                                f"next server, and nginx tries {cp} again every fail_timeout "
                                f"({tm['nginx_fail_timeout']:g} s): a slow or failed request "
                                "now and then, for as long as the fault lasts",
                        after_restore=f"nginx may send requests to {cp} while its API server "
                                      "is still starting",
                        mech=(("nginx_connect_timeout", tm["nginx_connect_timeout"]),))]


def plan_table(topo: Topology, fault: str, targets: list[str],
               ctx: Context | None = None) -> list[tuple[str, Expectation]]:
    exps = expectations(topo, fault, targets, ctx)
    return [(k, exps[k]) for k in exps]


# ------------------------------------------------------------------ the nodes' kubelets

# kube-controller-manager's node lifecycle controller (1.20 defaults; halab sets neither):
# a node whose kubelet has not renewed its Lease nor posted its status for the grace
# period is marked NotReady (Unknown) and tainted unreachable; it looks every 5 s
NODE_MONITOR_GRACE = 40.0
NODE_MONITOR_PERIOD = 5.0
KUBELET_RENEW = 10.0          # a kubelet renews its Lease every 10 s


@dataclass(frozen=True)
class NodeExpectation:
    node: str
    heartbeats: str            # "continue", "stop" or "may pause"
    not_ready: bool | None     # will the node controller mark it NotReady? None: can't say
    reason: str
    within: float | None = None   # NotReady this long after injection, at the latest
    mechanisms: tuple = ()        # as Expectation.mechanisms

    def as_dict(self) -> dict:
        return asdict(self)


def node_expectations(topo: Topology, fault: str, targets: list[str], paths: dict,
                      duration: float, nodes: list[str]) -> dict[str, NodeExpectation]:
    """What each node's kubelet should live through: whether its Lease renewals go on
    and whether the node controller marks it NotReady before the restore. `paths` are
    the access paths' expectations (a worker's kubelet goes its path's way)."""
    grace = NODE_MONITOR_GRACE + NODE_MONITOR_PERIOD
    faults = {t: fault for t in targets}
    etcd_down, api_down = lost(topo, faults)
    n_etcd = len(topo.etcd_members)
    no_quorum = bool(n_etcd) and n_etcd - len(etcd_down) < n_etcd // 2 + 1
    # the controller-manager that marks nodes may itself be on a target: its standby takes
    # over after its lease runs out, and starts every node's grace period afresh
    cm_hit = fault in ("kill", "freeze", "partition", "stop-apiserver") and any(
        t in {c.name for c in topo.control_planes} for t in targets)
    takeover = leader_election(topo.scenario)["leader_takeover"]
    late = takeover if cm_hit else 0.0
    out = {}
    for name in nodes:
        node = next(n for n in topo.nodes if n.name == name)
        if name in targets and fault in ("kill", "freeze", "partition"):
            beat, why = "stop", {"kill": f"{name} is powered off: its kubelet with it",
                                 "freeze": f"{name} is frozen: its kubelet too",
                                 "partition": f"{name} is cut off: its kubelet reaches no API "
                                              "server"}[fault]
        elif node.is_control_plane and name in api_down:
            beat, why = "stop", (f"{name}'s kubelet talks to its own API server "
                                 "(https://127.0.0.1:6443), which is down")
        elif no_quorum:
            beat, why = "stop", "no etcd quorum: no Lease renewal can be written"
        elif node.is_control_plane:
            beat, why = "continue", (f"{name}'s kubelet talks to its own API server, which "
                                     "the fault leaves alone")
        else:
            e = paths.get(f"worker:{name}")
            kind = e.expect if e else "up"
            beat = {"up": "continue", "down": "stop"}.get(kind, "may pause")
            why = (f"{name}'s kubelet goes its Case {topo.case} path, worker:{name}, "
                   f"which is {kind} in this drill (see that path's causes)")
            if beat == "may pause":
                why += (f"; a renewal that meets the failing server waits up to {KUBELET_RENEW:g}"
                        " s (the kubelet's heartbeat timeout), then the kubelet closes its "
                        "connections and dials again, and the next one gets through: far from "
                        f"the {NODE_MONITOR_GRACE:g} s without one that make a node NotReady")
        if beat == "continue":
            nr, when = False, None
        elif beat == "may pause":
            nr, when = False, None
        elif duration >= grace + late + 2 * MARGIN + KUBELET_RENEW:
            nr, when = True, round(grace + late + MARGIN, 1)
        elif duration < NODE_MONITOR_GRACE - MARGIN:
            nr, when = False, None
        else:
            nr, when = None, None
        words = {True: f"; it stays away longer than node-monitor-grace-period "
                       f"({NODE_MONITOR_GRACE:g} s, checked every {NODE_MONITOR_PERIOD:g} s): "
                       f"NotReady by +{when:g} s" if when else "",
                 False: "; it stays Ready" + (
                     f" (the fault lasts {duration:g} s, less than node-monitor-grace-period "
                     f"{NODE_MONITOR_GRACE:g} s)" if beat == "stop" else ""),
                 None: f"; NotReady or not depends on timing: the fault lasts {duration:g} s, "
                       f"the node controller waits {NODE_MONITOR_GRACE:g} s (+{NODE_MONITOR_PERIOD:g}"
                       " s)"}[nr]
        if nr is not False and cm_hit:
            words += (f"; the controller-manager that marks nodes may be on {', '.join(targets)}"
                      f": its standby takes over after ~{takeover:g} s and starts the "
                      "grace period afresh")
        mech = [{"continue": ("kubelet_renew", KUBELET_RENEW),
                 "may pause": ("kubelet_retry", 2 * KUBELET_RENEW),
                 "stop": ("no_failover", None)}[beat]]
        if nr:
            mech.append(("node_monitor_grace", when))
        if nr is not False and cm_hit:
            mech.append(("leader_election", takeover))
        out[name] = NodeExpectation(name, beat, nr, why + words, when, tuple(
            {"id": m, "predicted": sec} for m, sec in mech))
    return out
