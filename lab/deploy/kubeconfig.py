"""The lab's kubeconfig: one context per access path, and merging into ~/.kube/config."""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import yaml

from lab.errors import HalabError
from lab.state import write_atomically
from lab.model.topology import API_PORT, Topology


def _b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def contexts(topo: Topology) -> list[tuple[str, str]]:
    """(context name, server URL): `<lab>-lb` through the LB/VIP, `<lab>-<node>` per control plane."""
    out = []
    if topo.lb_address is not None:
        out.append((f"{topo.name}-lb", f"https://{topo.lb_address}:{API_PORT}"))
    for cp in topo.control_planes:
        out.append((f"{topo.name}-{cp.name}", f"https://{cp.ip}:{API_PORT}"))
    return out


def default_context(topo: Topology) -> str:
    """The context the Case intends for external users: the LB in Cases 2/3, else node1."""
    return contexts(topo)[0][0]


def build(topo: Topology, ca_pem: bytes, cert_pem: bytes, key_pem: bytes,
          user: str | None = None, only: list[tuple[str, str]] | None = None,
          current: str | None = None) -> dict:
    """A kubeconfig dict with embedded credentials and one cluster+context per access path."""
    return config(only if only is not None else contexts(topo), user or f"{topo.name}-admin",
                  ca_pem, cert_pem, key_pem, current)


def config(ctxs: list[tuple[str, str]], user: str, ca_pem: bytes, cert_pem: bytes,
           key_pem: bytes, current: str | None = None) -> dict:
    """A kubeconfig with one cluster+context per (name, server URL), one embedded user."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": name, "cluster": {"server": server,
                                                 "certificate-authority-data": _b64(ca_pem)}}
                     for name, server in ctxs],
        "users": [{"name": user, "user": {"client-certificate-data": _b64(cert_pem),
                                          "client-key-data": _b64(key_pem)}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": user}}
                     for name, _ in ctxs],
        "current-context": current or (ctxs[0][0] if ctxs else ""),
    }


def dump(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)


PROBER_KUBECONFIG = "prober.kubeconfig"   # on a worker, next to its kubelet's kubeconfig


def worker(topo: Topology, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, node,
           user: str | None = None) -> dict:
    """A kubeconfig on a worker that goes its kubelet's way: its Case's path (localhost
    proxy in Cases 1/2, the LB name in Case 3)."""
    path = topo.worker_path(node)
    return config([(f"{topo.name}-{node.name}-kubelet", path.server)],
                  user or f"{node.name}-kubelet", ca_pem, cert_pem, key_pem)


def dump_for_node(config: dict) -> str:
    """A kubeconfig as JSON (kubectl reads JSON as well as YAML): the drill prober on a
    node reads it with Python's standard library alone, as a VM may lack PyYAML."""
    return json.dumps(config, indent=2) + "\n"


def put_worker_kubeconfigs(topo: Topology, provider, ca_pem: bytes, prober: tuple[bytes, bytes],
                           nodes: dict | None = None) -> None:
    """On each worker, along its kubelet's path: `prober.kubeconfig` for halab's checks
    and drill probes (`prober`: a read-only identity's certificate and key), and, when
    halab runs the cluster, `kubeconfig` with the node's own identity (`nodes`:
    {node: (cert, key)} for CN=system:node:<node>), as its kubelet uses it."""
    for w in topo.workers:
        lay = provider.layout(w.name)
        provider.put_file(w.name, lay.p(PROBER_KUBECONFIG), dump_for_node(
            worker(topo, ca_pem, *prober, w, user="halab-prober")), 0o600)
        if nodes and w.name in nodes:
            provider.put_file(w.name, lay.p("kubeconfig"), dump_for_node(
                worker(topo, ca_pem, *nodes[w.name], w)), 0o600)


def write(path: Path, config: dict) -> None:
    """Write a kubeconfig atomically, through a symlink to its target, keeping the
    target's owner and mode (a new file is 0600 from its first byte)."""
    target = Path(os.path.realpath(path))
    try:
        st = target.stat()
        mode, owner = st.st_mode & 0o777, (st.st_uid, st.st_gid)
    except FileNotFoundError:
        mode, owner = 0o600, None
    write_atomically(target, dump(config), mode=mode)
    if owner is not None and os.geteuid() == 0 and owner != (0, 0):
        os.chown(target, *owner)      # `sudo halab` must not hand a user's file to root


def user_kubeconfig_path() -> Path:
    env = os.environ.get("KUBECONFIG")
    if env:
        return Path(env.split(os.pathsep)[0]).expanduser()
    return Path.home() / ".kube" / "config"


def merge(into: dict, lab_config: dict) -> tuple[dict, list[str]]:
    """Merge a lab's clusters/users/contexts into another kubeconfig (pure).

    Entries with the same name are replaced (they belong to this lab); everything
    else is kept. The current context is left alone unless the file had none.
    Returns (merged config, names added).
    """
    out = dict(into) if into else {"apiVersion": "v1", "kind": "Config", "preferences": {}}
    added = []
    for section in ("clusters", "users", "contexts"):
        ours = {e["name"]: e for e in lab_config.get(section, [])}
        theirs = [e for e in (out.get(section) or []) if e.get("name") not in ours]
        out[section] = theirs + list(ours.values())
        added += [f"{section}/{n}" for n in ours]
    if not out.get("current-context"):
        out["current-context"] = lab_config.get("current-context", "")
    return out, added


def unmerge(config: dict, names: list[str]) -> dict:
    """Remove the entries `merge` added (names like 'contexts/case2-lb')."""
    out = dict(config)
    for section in ("clusters", "users", "contexts"):
        drop = {n.split("/", 1)[1] for n in names if n.startswith(section + "/")}
        out[section] = [e for e in (out.get(section) or []) if e.get("name") not in drop]
    if out.get("current-context") and out["current-context"] not in {
            c["name"] for c in out.get("contexts", [])}:
        out["current-context"] = ""
    return out


def load(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise HalabError(f"{path} is not valid YAML{line}",
                         hint="fix it or point KUBECONFIG elsewhere before merging") from None
    if not isinstance(data, dict) or any(
            not isinstance(data.get(s) or [], list) or
            not all(isinstance(e, dict) for e in data.get(s) or [])
            for s in ("clusters", "users", "contexts")):
        raise HalabError(f"{path} is not a kubeconfig (clusters, users and contexts must be "
                         "lists of entries)", hint="fix it before merging")
    return data


def credentials(config: dict, path: str = "kubeconfig") -> tuple[bytes, bytes, bytes, str]:
    """(CA PEM, client cert PEM, client key PEM, server) of a kubeconfig's current context.

    Only embedded credentials (``*-data``) are accepted: the file came from
    another machine, so paths in it would name files that are not here.
    """
    def pick(section: str, name: str | None) -> dict:
        entries = config.get(section) or []
        for e in entries:
            if name is None or e.get("name") == name:
                return e
        raise HalabError(f"{path}: no {section[:-1]} {name!r}" if name else f"{path}: no {section}",
                         hint="the file is incomplete; run the deploy again")

    if not isinstance(config, dict) or not config.get("clusters"):
        raise HalabError(f"{path} is not a kubeconfig (no clusters)",
                         hint="the file is incomplete; run the deploy again")
    current = config.get("current-context")
    ctx = pick("contexts", current or None).get("context") or {}
    cluster = pick("clusters", ctx.get("cluster")).get("cluster") or {}
    user = pick("users", ctx.get("user")).get("user") or {}
    fields = {"certificate-authority-data": cluster.get("certificate-authority-data"),
              "client-certificate-data": user.get("client-certificate-data"),
              "client-key-data": user.get("client-key-data")}
    missing = [k for k, v in fields.items() if not v]
    if missing:
        raise HalabError(f"{path} has no embedded {', '.join(missing)}",
                         hint="halab needs the credentials inside the file, not paths to them")
    try:
        ca, cert, key = (base64.b64decode(fields[k], validate=True) for k in fields)
    except ValueError as exc:
        raise HalabError(f"{path}: credentials are not valid base64 ({exc})") from exc
    return ca, cert, key, str(cluster.get("server", ""))
