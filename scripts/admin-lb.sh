#!/usr/bin/env bash
# admin-lb setup: HAProxy (and keepalived for an HA pair), NFS for the lab
# subnet, kubectl and tools, and kubespray pinned in a Python venv with the
# lab's inventory. Usage: admin-lb.sh NODE_NAME NODE_IP
# Idempotent and offline-friendly: what is installed already is not fetched again.
set -euo pipefail

NODE_NAME=${1:?node name}
# shellcheck disable=SC2034  # NODE_IP is used by lib.sh's lab_iface
NODE_IP=${2:?node address}
FILES=/var/lib/halab/provision   # common.sh put the lab files there (root, 0700)
# shellcheck source=/dev/null
source "$FILES/lab.env"
# shellcheck source=/dev/null
source "$FILES/lib.sh"
KUBESPRAY_DIR=/root/kubespray
KUBESPRAY_VENV=/root/kubespray-venv
INVENTORY_DIR=$KUBESPRAY_DIR/inventory/$LAB_NAME

install_if_changed() {
  # install_if_changed SRC DEST [MODE]: copy and report whether the content changed
  if [ -f "$2" ] && cmp -s "$1" "$2"; then return 1; fi
  install -D -m "${3:-644}" "$1" "$2"
  return 0
}

if [ "$LAB_LOAD_BALANCER" = yes ]; then
  step "HAProxy for the Kubernetes API"
  pkg_install haproxy:haproxy
  cfg=$(mktemp)
  cp "$FILES/$NODE_NAME/haproxy.cfg" "$cfg"
  if ! haproxy -vv 2>/dev/null | grep -q 'PROMEX'; then
    warn "this HAProxy has no Prometheus exporter; the :metrics frontend is left out"
    sed -i '/# halab:prometheus-begin/,/# halab:prometheus-end/d' "$cfg"
  fi
  if [ "$LAB_HA_LB" = yes ]; then
    # the VIP is bound on both LBs; only the keepalived master holds it
    echo 'net.ipv4.ip_nonlocal_bind = 1' > /etc/sysctl.d/90-halab-lb.conf
    sysctl -q -p /etc/sysctl.d/90-halab-lb.conf
  fi
  # validate before replacing: a broken config must never reach the running LB
  if ! haproxy -c -q -f "$cfg"; then
    echo "[halab] $NODE_NAME: rendered haproxy.cfg is invalid; kept the current one" >&2
    haproxy -c -f "$cfg" >&2 || true
    exit 1
  fi
  if install_if_changed "$cfg" /etc/haproxy/haproxy.cfg || ! systemctl is-active -q haproxy; then
    systemctl enable haproxy >/dev/null 2>&1 || true
    systemctl restart haproxy
  fi
  rm -f "$cfg"

  if [ "$LAB_HA_LB" = yes ]; then
    step "keepalived for the virtual IP $LAB_LB_ADDRESS"
    pkg_install keepalived:keepalived
    iface=$(lab_iface)
    ka=$(mktemp)
    sed "s/@LAB_IFACE@/$iface/g" "$FILES/$NODE_NAME/keepalived.conf" > "$ka"
    keepalived -t -f "$ka"
    # 0600 from the first byte: it holds the VRRP password
    if install_if_changed "$ka" /etc/keepalived/keepalived.conf 600 || ! systemctl is-active -q keepalived; then
      systemctl enable keepalived >/dev/null 2>&1 || true
      systemctl restart keepalived
    fi
    rm -f "$ka"
  fi
fi

# one runner per lab (the first admin-lb of an HA pair): kubespray, its key and NFS
runner=no
if [ "$NODE_NAME" = "$LAB_RUNNER" ]; then runner=yes; fi

if [ "$LAB_NFS" = yes ] && [ "$runner" = yes ]; then
  step "NFS share $LAB_NFS_PATH for $LAB_SUBNET only"
  if [ "$LAB_OS_FAMILY" = rhel ]; then pkg_install exportfs:nfs-utils; nfs_unit=nfs-server
  else pkg_install exportfs:nfs-kernel-server; nfs_unit=nfs-kernel-server; fi
  install -d -m 755 "$LAB_NFS_PATH"
  chown nobody:nogroup "$LAB_NFS_PATH" 2>/dev/null || chown nobody:nobody "$LAB_NFS_PATH"
  install -D -m 644 "$FILES/exports" /etc/exports.d/halab.exports
  systemctl enable --now "$nfs_unit" >/dev/null 2>&1 || true
  exportfs -ra
fi

if [ "$runner" = yes ]; then
  step "SSH key that kubespray uses to reach the nodes"
  install -d -m 700 /root/.ssh
  if [ -f "$FILES/id_ed25519" ]; then
    install -m 600 "$FILES/id_ed25519" /root/.ssh/id_ed25519
    rm -f "$FILES/id_ed25519"      # one copy of the private key, where ssh uses it
  fi
  install -m 644 "$FILES/authorized_keys" /root/.ssh/id_ed25519.pub
  known=/root/.ssh/known_hosts
  for node in $LAB_NODES; do
    ssh-keygen -F "$node" -f "$known" >/dev/null 2>&1 || ssh-keyscan -T 3 "$node" >> "$known" 2>/dev/null || true
  done
fi

for tool in $LAB_ADMIN_TOOLS; do
  case "$tool" in
    kubectl|helm|k9s|kubecolor)
      # upstream programs, in no OS repository: from the scenario's admin_tools_dir
      if [ -f "$FILES/admin-tools/$tool" ]; then
        if install_if_changed "$FILES/admin-tools/$tool" "/usr/local/bin/$tool" 755; then
          step "$tool installed in /usr/local/bin (from admin_tools_dir)"
        fi
      elif ! command -v "$tool" >/dev/null 2>&1; then
        warn "$tool is not installed: it comes from upstream, not the OS repositories. Put the $tool program (Linux x86-64) in a folder on your machine, name that folder in the scenario as admin_tools_dir, and run: halab provision $NODE_NAME"
      fi ;;
    *) pkg_install "$tool:$tool" ;;
  esac
done

if [ "$LAB_DEPLOYER" = kubespray ] && [ "$runner" = yes ]; then
  step "kubespray $LAB_KUBESPRAY_VERSION in $KUBESPRAY_DIR"
  # kubespray's Ansible needs a newer Python than some boxes' python3 (Rocky/Alma 9: 3.9);
  # halab chose one the OS itself carries (AppStream's python3.12 on EL 9)
  pkg_install git:git "$LAB_CONTROLLER_PYTHON:$LAB_CONTROLLER_PYTHON_PKG"
  if [ -d "$KUBESPRAY_DIR/.git" ]; then
    current=$(git -C "$KUBESPRAY_DIR" describe --tags --exact-match 2>/dev/null || echo unknown)
    if [ "$current" != "$LAB_KUBESPRAY_VERSION" ]; then
      git -C "$KUBESPRAY_DIR" fetch --depth 1 origin tag "$LAB_KUBESPRAY_VERSION"
      git -C "$KUBESPRAY_DIR" checkout -q "$LAB_KUBESPRAY_VERSION"
    fi
  elif [ -f "$FILES/kubespray.tar.gz" ]; then
    install -d "$KUBESPRAY_DIR"
    tar -xzf "$FILES/kubespray.tar.gz" -C "$KUBESPRAY_DIR" --strip-components=1
  elif [ "$LAB_KUBESPRAY_SOURCE" = git ]; then
    git clone -q --depth 1 -b "$LAB_KUBESPRAY_VERSION" "$LAB_KUBESPRAY_REPO" "$KUBESPRAY_DIR"
  elif [ ! -f "$KUBESPRAY_DIR/cluster.yml" ]; then
    echo "[halab] $NODE_NAME: kubespray.source is a local copy but none was uploaded; run halab up again" >&2
    exit 1
  fi
  stamp=$KUBESPRAY_VENV/.halab-requirements
  want=$(mktemp)
  wheels=$FILES/kubespray-wheels
  { cat "$KUBESPRAY_DIR/requirements.txt"; echo "# python: $LAB_CONTROLLER_PYTHON"
    echo "# wheels: $LAB_KUBESPRAY_WHEELS"; } > "$want"
  if [ ! -f "$stamp" ] || ! cmp -s "$want" "$stamp"; then
    step "kubespray's pinned requirements into $KUBESPRAY_VENV ($("$LAB_CONTROLLER_PYTHON" -V 2>&1))"
    if [ "$LAB_OS_FAMILY" != rhel ] && ! "$LAB_CONTROLLER_PYTHON" -c 'import ensurepip' 2>/dev/null; then
      step "installing python3-venv (venv without ensurepip cannot install pip)"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
    fi
    rm -rf "$KUBESPRAY_VENV"
    "$LAB_CONTROLLER_PYTHON" -m venv "$KUBESPRAY_VENV"
    if [ "$LAB_KUBESPRAY_WHEELS" = yes ]; then
      # offline: only the wheels halab uploaded (made for this Python and platform)
      if ! "$KUBESPRAY_VENV/bin/pip" install -q --disable-pip-version-check --no-index \
          --find-links "$wheels" -r "$KUBESPRAY_DIR/requirements.txt"; then
        echo "[halab] $NODE_NAME: the uploaded wheels do not satisfy kubespray's requirements.txt; check kubespray.wheels (they must match kubespray $LAB_KUBESPRAY_VERSION and $("$LAB_CONTROLLER_PYTHON" -V 2>&1))" >&2
        rm -rf "$KUBESPRAY_VENV"
        exit 1
      fi
    else
      "$KUBESPRAY_VENV/bin/pip" install -q -U pip
      "$KUBESPRAY_VENV/bin/pip" install -q -r "$KUBESPRAY_DIR/requirements.txt"
    fi
    cp "$want" "$stamp"
  fi
  rm -f "$want"
  step "inventory $INVENTORY_DIR"
  if [ ! -d "$INVENTORY_DIR" ]; then
    cp -a "$KUBESPRAY_DIR/inventory/sample" "$INVENTORY_DIR"
  fi
  cp -a "$FILES/inventory/." "$INVENTORY_DIR/"
fi

step "done"
