#!/usr/bin/env bash
# Self-contained libvirt + Vagrant test bed inside a network namespace.
#
#   tools/vmtest/testbed.sh start        create namespace, start virtlogd/libvirtd in it,
#                                        storage pool, private VAGRANT_HOME + box;
#                                        prints KEY=VALUE lines (the env to use) on stdout
#   tools/vmtest/testbed.sh stop         destroy every halab* domain/network/volume, stop the
#                                        daemons (by PID), delete the namespace, verify
#   tools/vmtest/testbed.sh status       what is running / left (exit 0 running, 3 stopped)
#   tools/vmtest/testbed.sh env          print the env (KEY=VALUE) without starting anything
#   tools/vmtest/testbed.sh exec CMD...  run CMD inside the namespace with that env
#
# Network rule: everything that talks to VM addresses (libvirtd, its dnsmasq,
# vagrant, ssh) runs inside the namespace, which has only a loopback and no
# route out. The libvirt daemons and QEMU run as plain processes (no systemd).
#
# Environment:
#   HALAB_CACHE             cache root (default $HOME/.cache/halab)
#   HALAB_NETNS             namespace name (default halab-vmtest)
#   HALAB_LIBVIRT_PREFIXES  space-separated name prefixes cleaned by stop (default "halab")
#   HALAB_BOX_FILE          box to install (default $HALAB_CACHE/boxes/halab-debian12.box)
#   HALAB_BOX_NAME          box name (default halab/debian12)
set -euo pipefail

NS=${HALAB_NETNS:-halab-vmtest}
CACHE=${HALAB_CACHE:-${HOME:-/root}/.cache/halab}
STATE=$CACHE/testbed
POOL_NAME=default
POOL_DIR=$CACHE/libvirt-pool
VAGRANT_HOME_DIR=$CACHE/vagrant.d
BOX_NAME=${HALAB_BOX_NAME:-halab/debian12}
BOX_FILE=${HALAB_BOX_FILE:-$CACHE/boxes/halab-debian12.box}
read -r -a PREFIXES <<<"${HALAB_LIBVIRT_PREFIXES:-halab}"
URI=qemu:///system
QEMU_CONF=/etc/libvirt/qemu.conf
CONF_BEGIN='# BEGIN halab-vmtest (tools/vmtest/testbed.sh)'
CONF_END='# END halab-vmtest'

log() { printf '[testbed] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

testbed_env() {
    cat <<EOF
HALAB_NETNS=$NS
VAGRANT_HOME=$VAGRANT_HOME_DIR
LIBVIRT_DEFAULT_URI=$URI
VAGRANT_DEFAULT_PROVIDER=libvirt
VAGRANT_CHECKPOINT_DISABLE=1
VAGRANT_BOX_UPDATE_CHECK_DISABLE=1
VAGRANT_NO_COLOR=1
HALAB_BOX_NAME=$BOX_NAME
EOF
}

# Run a command inside the namespace with the test-bed environment.
in_ns() {
    local envs=()
    mapfile -t envs < <(testbed_env)
    ip netns exec "$NS" env "${envs[@]}" "$@"
}

virsh_ns() { in_ns virsh -q -c "$URI" "$@"; }

ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$NS"; }

# PID from a pid file if that process is alive (and is the named program).
pid_alive() {
    local file=$1 name=$2 pid
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/comm && $(</proc/"$pid"/comm) == "$name" ]] || return 1
    echo "$pid"
}

has_prefix() {
    local name=$1 p
    for p in "${PREFIXES[@]}"; do
        [[ $name == "$p"* ]] && return 0
    done
    return 1
}

require_root() { [[ $(id -u) -eq 0 ]] || die "must run as root"; }

require_tools() {
    local c missing=()
    for c in ip virsh libvirtd virtlogd vagrant qemu-system-x86_64 dnsmasq; do
        command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    ((${#missing[@]} == 0)) || die "missing: ${missing[*]} (tools/vmtest/build-box.sh installs them)"
}

configure_qemu_conf() {
    # QEMU runs as root so it can open the kernel, initrd, emulator wrapper and
    # pool under $HOME/.cache (/root is 0700); no cgroup setup (host has cgroup v1
    # without the controllers libvirt expects and no systemd).
    [[ -f $QEMU_CONF ]] || die "$QEMU_CONF missing (libvirt-daemon-driver-qemu not installed?)"
    if ! grep -qxF "$CONF_BEGIN" "$QEMU_CONF"; then
        log "adding a halab block to $QEMU_CONF"
        printf '\n%s\nuser = "root"\ngroup = "root"\ncgroup_controllers = [ ]\n%s\n' \
            "$CONF_BEGIN" "$CONF_END" >>"$QEMU_CONF"
    fi
}

wait_libvirt() {
    for _ in $(seq 1 60); do
        virsh_ns version >/dev/null 2>&1 && return 0
        sleep 1
    done
    return 1
}

start_daemons() {
    local pid
    mkdir -p "$STATE" /run/libvirt
    if ! ns_exists; then
        ip netns add "$NS"
    fi
    ip -n "$NS" link set lo up
    if ! pid_alive "$STATE/virtlogd.pid" virtlogd >/dev/null; then
        # 9>&-: the daemons must not inherit (and hold) the test bed's lock.
        ip netns exec "$NS" virtlogd -d -p "$STATE/virtlogd.pid" 9>&-
    fi
    if ! pid=$(pid_alive "$STATE/libvirtd.pid" libvirtd); then
        # A libvirtd not started by us (e.g. in the root namespace) would own the socket.
        if [[ -S /run/libvirt/libvirt-sock ]] && virsh -c "$URI" version >/dev/null 2>&1; then
            die "a libvirtd not started by this test bed is running; stop it first"
        fi
        ip netns exec "$NS" libvirtd -d -p "$STATE/libvirtd.pid" 9>&-
        sleep 1
        pid=$(pid_alive "$STATE/libvirtd.pid" libvirtd) || die "libvirtd did not start"
    fi
    [[ $(ip netns identify "$pid") == "$NS" ]] || die "libvirtd (pid $pid) is not in namespace $NS"
    wait_libvirt || die "libvirtd is not answering on $URI"
}

setup_libvirt() {
    local state
    # libvirt's stock NAT network (virbr0, 192.168.122.0/24) is not used: keep it down.
    if virsh_ns net-info default >/dev/null 2>&1; then
        virsh_ns net-autostart default --disable >/dev/null 2>&1 || true
        if virsh_ns net-info default 2>/dev/null | grep -Eq '^Active:[[:space:]]+yes'; then
            virsh_ns net-destroy default >/dev/null
        fi
    fi
    mkdir -p "$POOL_DIR"
    if ! virsh_ns pool-info "$POOL_NAME" >/dev/null 2>&1; then
        log "defining storage pool $POOL_NAME at $POOL_DIR"
        virsh_ns pool-define-as "$POOL_NAME" dir --target "$POOL_DIR" >/dev/null
        virsh_ns pool-autostart "$POOL_NAME" >/dev/null
    fi
    state=$(virsh_ns pool-info "$POOL_NAME" | awk -F': *' '$1=="State" {print $2}')
    if [[ $state != running ]]; then
        virsh_ns pool-start "$POOL_NAME" >/dev/null
    fi
    virsh_ns pool-refresh "$POOL_NAME" >/dev/null
}

setup_vagrant() {
    local want have
    mkdir -p "$VAGRANT_HOME_DIR"
    if ! in_ns vagrant plugin list 2>/dev/null | grep -q '^vagrant-libvirt '; then
        die "vagrant-libvirt plugin not visible with VAGRANT_HOME=$VAGRANT_HOME_DIR"
    fi
    [[ -s $BOX_FILE ]] || die "box $BOX_FILE missing: run tools/vmtest/build-box.sh"
    want=$(sed -n 's/^sha256=//p' "$BOX_FILE.stamp" 2>/dev/null || true)
    [[ -n $want ]] || want=$(sha256sum "$BOX_FILE" | cut -d' ' -f1)
    have=$(cat "$VAGRANT_HOME_DIR/.halab-box.sha256" 2>/dev/null || true)
    if [[ $want != "$have" ]] || ! in_ns vagrant box list --machine-readable 2>/dev/null |
        grep -q ",box-name,$BOX_NAME\$"; then
        log "installing box $BOX_NAME from $BOX_FILE"
        in_ns vagrant box add --force --name "$BOX_NAME" "$BOX_FILE" >&2
        echo "$want" >"$VAGRANT_HOME_DIR/.halab-box.sha256"
        # An older base volume of this box in the pool would be reused: drop it.
        remove_volumes "${BOX_NAME//\//-VAGRANTSLASH-}"
    fi
}

remove_volumes() {
    local prefix=$1 vol
    while read -r vol _; do
        [[ -n $vol && $vol == "$prefix"* ]] || continue
        virsh_ns vol-delete --pool "$POOL_NAME" "$vol" >/dev/null && log "deleted volume $vol"
    done < <(virsh_ns vol-list "$POOL_NAME" 2>/dev/null || true)
}

cmd_start() {
    require_root
    require_tools
    mkdir -p "$STATE"
    exec 9>"$STATE/.lock"
    flock 9
    configure_qemu_conf
    start_daemons
    setup_libvirt
    setup_vagrant
    log "test bed up: namespace $NS, libvirtd pid $(<"$STATE/libvirtd.pid")"
    testbed_env
}

# Names of libvirt objects with our prefixes, one per line.
list_domains() { virsh_ns list --all --name 2>/dev/null | sed '/^$/d'; }
list_networks() { virsh_ns net-list --all --name 2>/dev/null | sed '/^$/d'; }
list_volumes() { virsh_ns vol-list "$POOL_NAME" 2>/dev/null | awk 'NF {print $1}'; }

leftover_files() {
    local p
    for p in "${PREFIXES[@]}"; do
        compgen -G "/etc/libvirt/qemu/$p*.xml" || true
        compgen -G "/etc/libvirt/qemu/networks/$p*.xml" || true
        compgen -G "/run/libvirt/qemu/$p*.xml" || true
        compgen -G "/run/libvirt/network/$p*.xml" || true
        compgen -G "$POOL_DIR/$p*" || true
    done
}

clean_libvirt() {
    local name
    while read -r name; do
        if has_prefix "$name"; then
            virsh_ns destroy "$name" >/dev/null 2>&1 || true
            virsh_ns undefine "$name" --managed-save --snapshots-metadata --nvram >/dev/null 2>&1 ||
                virsh_ns undefine "$name" >/dev/null 2>&1 || true
            log "removed domain $name"
        elif virsh_ns domstate "$name" 2>/dev/null | grep -q running; then
            # Not ours to undefine, but its QEMU process must not outlive the namespace.
            virsh_ns destroy "$name" >/dev/null 2>&1 || true
            log "stopped (kept) domain $name"
        fi
    done < <(list_domains)
    while read -r name; do
        if has_prefix "$name" || [[ $name == vagrant-libvirt || $name == vagrant-private-dhcp ]]; then
            virsh_ns net-destroy "$name" >/dev/null 2>&1 || true
            virsh_ns net-undefine "$name" >/dev/null 2>&1 || true
            log "removed network $name"
        else
            virsh_ns net-destroy "$name" >/dev/null 2>&1 || true
        fi
    done < <(list_networks)
    virsh_ns pool-refresh "$POOL_NAME" >/dev/null 2>&1 || true
    while read -r name; do
        has_prefix "$name" || continue
        virsh_ns vol-delete --pool "$POOL_NAME" "$name" >/dev/null 2>&1 || true
        log "deleted volume $name"
    done < <(list_volumes)
}

kill_pid() {
    local pid=$1 what=$2
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 30); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    log "$what (pid $pid) ignored TERM: killing"
    kill -KILL "$pid" 2>/dev/null || true
}

cmd_stop() {
    require_root
    mkdir -p "$STATE"
    exec 9>"$STATE/.lock"
    flock 9
    local pid leftovers rc=0 name
    # Objects can only be removed through libvirtd: start it if leftovers exist.
    if ! pid_alive "$STATE/libvirtd.pid" libvirtd >/dev/null; then
        leftovers=$(leftover_files)
        if [[ -n $leftovers ]]; then
            log "libvirt leftovers without a daemon; starting it to clean up"
            start_daemons
        fi
    fi
    if pid_alive "$STATE/libvirtd.pid" libvirtd >/dev/null && ns_exists; then
        clean_libvirt
        # Verify through libvirt before the daemon goes away.
        while read -r name; do
            has_prefix "$name" && { log "LEFT: domain $name"; rc=1; }
        done < <(list_domains)
        while read -r name; do
            has_prefix "$name" && { log "LEFT: network $name"; rc=1; }
        done < <(list_networks)
        while read -r name; do
            has_prefix "$name" && { log "LEFT: volume $name"; rc=1; }
        done < <(list_volumes)
    fi
    for d in libvirtd virtlogd; do
        if pid=$(pid_alive "$STATE/$d.pid" "$d"); then
            kill_pid "$pid" "$d"
        fi
        rm -f "$STATE/$d.pid"
    done
    if ns_exists; then
        # Whatever still runs in the namespace (QEMU, dnsmasq) was started by us.
        for pid in $(ip netns pids "$NS" 2>/dev/null); do
            log "killing leftover process $pid ($(cat /proc/"$pid"/comm 2>/dev/null || echo '?'))"
            kill_pid "$pid" "process"
        done
        ip netns del "$NS"
    fi
    # Verify.
    ns_exists && { log "LEFT: namespace $NS"; rc=1; }
    for d in libvirtd virtlogd; do
        pid_alive "$STATE/$d.pid" "$d" >/dev/null && { log "LEFT: $d running"; rc=1; }
    done
    leftovers=$(leftover_files | grep -v "^$POOL_DIR/" || true)
    if [[ -n $leftovers ]]; then
        log "LEFT: libvirt files: $(echo "$leftovers" | tr '\n' ' ')"
        rc=1
    fi
    if ((rc)); then
        log "stop: something is left (see LEFT lines)"
    else
        log "test bed stopped; nothing left"
    fi
    return "$rc"
}

cmd_status() {
    local running=1 pid
    if ns_exists; then echo "namespace: $NS"; else echo "namespace: absent"; running=0; fi
    for d in virtlogd libvirtd; do
        if pid=$(pid_alive "$STATE/$d.pid" "$d"); then
            echo "$d: pid $pid"
        else
            echo "$d: stopped"
            running=0
        fi
    done
    if ((running)); then
        echo "domains: $(list_domains | tr '\n' ' ')"
        echo "networks: $(list_networks | tr '\n' ' ')"
        echo "volumes: $(list_volumes | tr '\n' ' ')"
        echo "boxes: $(in_ns vagrant box list 2>/dev/null | tr '\n' ' ')"
        return 0
    fi
    return 3
}

main() {
    local cmd=${1:-}
    shift || true
    case $cmd in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        env) testbed_env ;;
        exec)
            (($#)) || die "usage: $0 exec CMD [ARGS...]"
            ns_exists || die "namespace $NS absent: run '$0 start' first"
            in_ns "$@"
            ;;
        *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
    esac
}

main "$@"
