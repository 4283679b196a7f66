#!/usr/bin/env bash
# Common node setup for every halab node: time zone, hosts, swap, kernel
# modules, sysctl, lab NIC routing and SSH access with the lab's key.
# Usage: common.sh NODE_NAME NODE_IP ROLE   (lab files uploaded to /tmp/halab/files)
# Idempotent: safe to run again (`halab provision`); installs nothing that is present.
set -euo pipefail

NODE_NAME=${1:?node name}
NODE_IP=${2:?node address}
ROLE=${3:?node role}
# the uploaded files move into a root-owned 0700 folder before anything reads them
FILES=/var/lib/halab/provision
install -d -m 0700 -o root -g root /var/lib/halab
rm -rf "$FILES"
install -d -m 0700 -o root -g root "$FILES"
cp -R /tmp/halab/files/. "$FILES/"
chown -R root:root "$FILES"
chmod -R go-rwx "$FILES"
rm -rf /tmp/halab
# shellcheck source=/dev/null
source "$FILES/lab.env"
# shellcheck source=/dev/null
source "$FILES/lib.sh"

step "time zone $LAB_TIMEZONE"
if command -v timedatectl >/dev/null 2>&1 && timedatectl set-timezone "$LAB_TIMEZONE" 2>/dev/null; then
  timedatectl set-local-rtc 0 2>/dev/null || true
else
  ln -sf "/usr/share/zoneinfo/$LAB_TIMEZONE" /etc/localtime
fi

if [ "$LAB_OS_FAMILY" = rhel ]; then
  step "firewalld off, SELinux permissive (kubespray expects both)"
  systemctl disable --now firewalld >/dev/null 2>&1 || true
  if command -v setenforce >/dev/null 2>&1; then setenforce 0 2>/dev/null || true; fi
  if [ -f /etc/selinux/config ]; then
    sed -i 's/^SELINUX=enforcing/SELINUX=permissive/' /etc/selinux/config
  fi
fi

step "hosts file from the lab topology"
hosts_tmp=$(mktemp)
# drop the distribution's 127.0.1.1/127.0.2.1 hostname lines and any earlier halab block
sed -e '/^127\.0\.[12]\.1[[:space:]]/d' -e '/# halab-begin/,/# halab-end/d' /etc/hosts > "$hosts_tmp"
{
  echo "# halab-begin"
  grep -v '^#' "$FILES/hosts"
  echo "# halab-end"
} >> "$hosts_tmp"
cat "$hosts_tmp" > /etc/hosts
rm -f "$hosts_tmp"

if [ "$ROLE" != admin_lb ]; then
  step "swap off"
  swapoff -a
  sed -i -E '/^[^#].*[[:space:]]swap[[:space:]]/s/^/#halab# /' /etc/fstab

  step "kernel modules and sysctl for Kubernetes"
  printf 'overlay\nbr_netfilter\n' > /etc/modules-load.d/halab-k8s.conf
  modprobe overlay 2>/dev/null || true
  modprobe br_netfilter 2>/dev/null || true
  cat > /etc/sysctl.d/90-halab-k8s.conf <<SYSCTL
net.bridge.bridge-nf-call-iptables  = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward                 = 1
SYSCTL
  sysctl --system >/dev/null 2>&1 || true
fi

iface=$(lab_iface)
if [ -z "$iface" ]; then
  echo "[halab] $NODE_NAME: no interface holds $NODE_IP; check the private_network in the Vagrantfile" >&2
  exit 1
fi
step "lab network on $iface ($NODE_IP, $LAB_SUBNET): never the default route"
if command -v nmcli >/dev/null 2>&1 && nmcli -t -f RUNNING general 2>/dev/null | grep -q running; then
  conn=$(nmcli -g GENERAL.CONNECTION device show "$iface" 2>/dev/null || true)
  if [ -n "$conn" ] && [ "$(nmcli -g ipv4.never-default connection show "$conn")" != yes ]; then
    nmcli connection modify "$conn" ipv4.never-default yes
    nmcli connection up "$conn" >/dev/null 2>&1 || true
  fi
fi
while ip route show default dev "$iface" | grep -q default; do
  ip route del default dev "$iface"
done

step "SSH: the lab key for root, no passwords"
install -d -m 700 /root/.ssh
touch /root/.ssh/authorized_keys
chmod 600 /root/.ssh/authorized_keys
key=$(cat "$FILES/authorized_keys")
grep -qxF "$key" /root/.ssh/authorized_keys || echo "$key" >> /root/.ssh/authorized_keys
# sshd keeps the first value it reads: 00- sorts before the distribution's files
sshd_conf=/etc/ssh/sshd_config.d/00-halab.conf
install -d /etc/ssh/sshd_config.d
if ! grep -q '^Include /etc/ssh/sshd_config.d' /etc/ssh/sshd_config; then
  sed -i '1i Include /etc/ssh/sshd_config.d/*.conf' /etc/ssh/sshd_config
fi
new_conf=$(printf 'PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n')
if [ ! -f "$sshd_conf" ] || [ "$(cat "$sshd_conf")" != "$new_conf" ]; then
  echo "$new_conf" > "$sshd_conf"
  sshd -t
  systemctl reload sshd 2>/dev/null || systemctl reload ssh 2>/dev/null || true
fi

if [ "$ROLE" != admin_lb ] && [ "$LAB_NFS" = yes ]; then
  if [ "$LAB_OS_FAMILY" = rhel ]; then pkg_install mount.nfs:nfs-utils; else pkg_install mount.nfs:nfs-common; fi
fi

step "done"
