#!/usr/bin/env bash
# Build the halab Vagrant box for the libvirt provider without Vagrant Cloud.
#
#   tools/vmtest/build-box.sh [--force]
#
# Output (in ${HALAB_CACHE:-$HOME/.cache/halab}/boxes/):
#   halab-debian12.box        box tar: metadata.json, box.img (qcow2), Vagrantfile,
#                             vmlinuz, initrd.img, qemu-tcg (emulator wrapper)
#   halab-debian12.box.stamp  recipe hash + sha256 of the box (validity check)
#
# The box is Debian 12 (bookworm) built with debootstrap, booted by direct
# kernel boot (no boot loader, the filesystem sits directly on /dev/vda). It
# pre-installs what halab's provisioning needs, because lab VMs have no
# internet. Its Vagrantfile sets driver "qemu" (TCG: /dev/kvm on these
# machines cannot boot a stock kernel), kernel/initrd/cmd_line, and an
# emulator wrapper that sets QEMU's TCG translation cache (tb-size, 1 GiB).
#
# Idempotent: skips the build when the box exists and matches the recipe.
# Needs root (debootstrap, chroot, file ownership in the image).
#
# Environment:
#   HALAB_CACHE           cache root (default $HOME/.cache/halab)
#   HALAB_DEBIAN_MIRROR   Debian mirror (default: the one apt uses here)
#   HALAB_BOX_DISK_GB     virtual disk size in GiB (default 4; the root
#                         filesystem grows at boot if the disk is larger, e.g.
#                         with vagrant-libvirt's libvirt.machine_virtual_size)
#   HALAB_SKIP_APT=1      do not install the host packages
set -euo pipefail

RECIPE_VERSION=8
SUITE=bookworm
BOX_NAME=halab-debian12
CACHE=${HALAB_CACHE:-${HOME:-/root}/.cache/halab}
BOXDIR=$CACHE/boxes
BOX=$BOXDIR/$BOX_NAME.box
STAMP=$BOX.stamp
DISK_GB=${HALAB_BOX_DISK_GB:-4}
FORCE=0

HOST_PACKAGES=(vagrant vagrant-libvirt libvirt-daemon-system libvirt-daemon-driver-qemu
    libvirt-clients qemu-system-x86 qemu-utils debootstrap dnsmasq-base e2fsprogs
    libarchive-tools)
# Installed by debootstrap itself (boot + vagrant essentials).
BASE_PACKAGES=(linux-image-amd64 systemd-sysv openssh-server sudo ifupdown isc-dhcp-client
    iproute2 iputils-ping python3 udev kmod initramfs-tools zstd)
# Installed with apt inside the chroot (what halab's provisioning uses offline).
EXTRA_PACKAGES=(dbus libpam-systemd haproxy nfs-kernel-server nfs-common keepalived curl
    ca-certificates rsync iptables systemd-timesyncd conntrack socat python3-venv git
    e2fsprogs procps less nginx-light libnginx-mod-stream)

log() { printf '[build-box] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

usage() {
    sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'
}

for arg in "$@"; do
    case $arg in
        --force) FORCE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument: $arg" ;;
    esac
done

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap, chroot)"
[[ $DISK_GB =~ ^[0-9]+$ && $DISK_GB -ge 3 ]] || die "HALAB_BOX_DISK_GB must be an integer >= 3"

recipe_hash() {
    printf '%s\n' "$RECIPE_VERSION" "$SUITE" "$DISK_GB" "${BASE_PACKAGES[*]}" \
        "${EXTRA_PACKAGES[*]}" | sha256sum | cut -d' ' -f1
}

box_is_valid() {
    [[ -s $BOX && -s $STAMP ]] || return 1
    local want_recipe have_recipe have_sum members m
    want_recipe=$(recipe_hash)
    have_recipe=$(sed -n 's/^recipe=//p' "$STAMP")
    [[ $have_recipe == "$want_recipe" ]] || return 1
    have_sum=$(sed -n 's/^sha256=//p' "$STAMP")
    # Size + mtime recorded so the (slow) checksum only runs when they changed.
    [[ $(sed -n 's/^size_mtime=//p' "$STAMP") == "$(stat -c '%s %Y' "$BOX")" ]] || {
        [[ $(sha256sum "$BOX" | cut -d' ' -f1) == "$have_sum" ]] || return 1
    }
    members=$(tar -tf "$BOX" 2>/dev/null) || return 1
    for m in metadata.json box.img Vagrantfile vmlinuz initrd.img qemu-tcg; do
        grep -qx "\(\./\)\{0,1\}$m" <<<"$members" || return 1
    done
}

STAGE_T0=0
stage_start() { STAGE_T0=$SECONDS; log "stage $1 ..."; }
stage_end() { printf '[build-box] stage %-12s %4d s\n' "$1" $((SECONDS - STAGE_T0)) >&2; }

# ---------------------------------------------------------------- host deps
apt_install() {
    local missing=() p try
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null || { log "ERROR: no apt-get; install: ${missing[*]}"; exit 3; }
    log "installing host packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    for try in 1 2 3 4 5 6; do
        # Another process may hold the dpkg lock for a few minutes.
        if apt-get install -y -q -o DPkg::Lock::Timeout=300 "${missing[@]}" >&2; then
            return 0
        fi
        log "apt-get install failed (try $try); running apt-get update and retrying"
        apt-get update -q -o DPkg::Lock::Timeout=300 >&2 || true
        sleep 10
    done
    log "ERROR: could not install: ${missing[*]}"
    exit 3   # tells callers (the pytest fixture) that the host cannot have the tools
}

debian_mirror() {
    if [[ -n ${HALAB_DEBIAN_MIRROR:-} ]]; then
        printf '%s\n' "$HALAB_DEBIAN_MIRROR"
        return
    fi
    local uri
    # deb822 sources first, then one-line sources; first non-security Debian URI.
    uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk 'tolower($1)=="uris:" {for (i = 2; i <= NF; i++) print $i}' |
        grep -E '/debian/?$' | grep -v security | head -n1 || true)
    if [[ -z $uri ]]; then
        uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk '$1=="deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' |
            grep -E '/debian/?$' | grep -v security | head -n1 || true)
    fi
    printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

# ---------------------------------------------------------------- build
chroot_script() {
    # Runs inside the chroot (bash -s). Arguments come through the environment.
    cat <<'CHROOT'
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d   # no service starts in the chroot
chmod 0755 /usr/sbin/policy-rc.d
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $EXTRA_PACKAGES

echo halab >/etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\thalab\n::1\tlocalhost ip6-localhost ip6-loopback\n' >/etc/hosts
printf '/dev/vda\t/\text4\tdefaults,errors=remount-ro\t0\t1\n' >/etc/fstab
cat >/etc/network/interfaces <<'EOF'
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

auto eth0
iface eth0 inet dhcp
EOF
# Vagrant's Debian hostname step runs "systemctl stop/start ifup@IFACE" for
# every NIC; stock ifup@ then fails (system "degraded") for NICs that are not
# allow-hotplug (eth0 here, Vagrant's private networks: auto ethN, brought up
# by networking.service and Vagrant's own ifup). Make ifup@ touch only
# allow-hotplug interfaces.
mkdir -p /etc/systemd/system/ifup@.service.d
cat >/etc/systemd/system/ifup@.service.d/halab.conf <<'EOF'
[Service]
ExecStart=
ExecStart=/bin/sh -ec 'if ifquery --allow=hotplug -l | grep -qx "%I"; then ifup --allow=hotplug "%I"; ifquery --state "%I"; fi'
ExecStop=
ExecStop=/bin/sh -c 'if ifquery --allow=hotplug -l | grep -qx "%I"; then exec /sbin/ifdown "%I"; fi'
EOF

# vagrant user: passwordless sudo + Vagrant's insecure key (replaced at first up).
id vagrant >/dev/null 2>&1 || useradd -m -s /bin/bash -U vagrant
passwd -l root >/dev/null
printf 'vagrant ALL=(ALL) NOPASSWD:ALL\nDefaults:vagrant !requiretty\n' >/etc/sudoers.d/vagrant
chmod 0440 /etc/sudoers.d/vagrant
install -d -m 0700 -o vagrant -g vagrant /home/vagrant/.ssh
install -m 0600 -o vagrant -g vagrant /tmp/vagrant.pub /home/vagrant/.ssh/authorized_keys
rm -f /tmp/vagrant.pub
# ed25519 + ecdsa host keys only: RSA key generation takes ~30 s under TCG.
printf '%s\n' 'HostKey /etc/ssh/ssh_host_ed25519_key' 'HostKey /etc/ssh/ssh_host_ecdsa_key' \
    'UseDNS no' 'PasswordAuthentication no' 'PermitRootLogin no' >/etc/ssh/sshd_config.d/halab.conf

# Per-VM identity: new ssh host keys and machine-id at first boot.
rm -f /etc/ssh/ssh_host_*
cat >/etc/systemd/system/halab-ssh-hostkeys.service <<'EOF'
[Unit]
Description=Generate missing SSH host keys
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
ExecStart=/usr/bin/ssh-keygen -q -t ecdsa -N "" -f /etc/ssh/ssh_host_ecdsa_key

[Install]
WantedBy=multi-user.target
EOF
# The root filesystem sits directly on /dev/vda: grow it online when the disk
# is larger than the image (libvirt.machine_virtual_size).
cat >/etc/systemd/system/halab-growfs.service <<'EOF'
[Unit]
Description=Grow the root filesystem to the disk size
ConditionPathExists=/dev/vda

[Service]
Type=oneshot
ExecStart=/sbin/resize2fs /dev/vda

[Install]
WantedBy=multi-user.target
EOF
systemctl enable halab-ssh-hostkeys.service halab-growfs.service
# Nothing to fetch offline; save CPU under emulation (e2scrub_reap: ~40 s per boot).
systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
    >/dev/null 2>&1 || true
# Installed for offline provisioning but not started at boot on every node: the
# provisioning enables what a node's role needs (systemctl enable --now ...).
# (nginx: the static deployer runs the workers' proxy as its own unit, halab-nginx-proxy)
systemctl disable haproxy.service keepalived.service nfs-server.service nginx.service \
    >/dev/null 2>&1 || true
: >/etc/machine-id
rm -f /var/lib/dbus/machine-id
ln -s /etc/machine-id /var/lib/dbus/machine-id

# Initramfs with only what finds a virtio root disk: with MODULES=most it was 30 MB,
# which the emulated kernel took most of its 32 s of boot to unpack.
sed -i 's/^MODULES=.*/MODULES=list/' /etc/initramfs-tools/initramfs.conf
for m in virtio_pci virtio_blk virtio_net ext4 crc32c_generic; do
    grep -qx "$m" /etc/initramfs-tools/modules || echo "$m" >>/etc/initramfs-tools/modules
done
update-initramfs -u -k all
# Drivers for hardware a lab VM has no use for: each autoloaded module costs an
# emulated VM seconds at boot, and networking.service waits for udev to finish
# them all (ifupdown-pre's settle: 56 s of a 110 s boot). KVM inside an emulated VM,
# the CPU's power and crypto units, floppy, PC speaker, mouse, DRM, USB, IDE.
printf 'blacklist %s\n' kvm kvm_amd kvm_intel ccp intel_rapl_msr intel_rapl_common \
    floppy pcspkr psmouse serio_raw drm bochs efi_pstore i2c_piix4 virtio_balloon \
    usbcore uhci_hcd ehci_hcd ata_piix ata_generic libata >/etc/modprobe.d/halab-unused.conf
# No time server in an offline lab (timesyncd: 17 s of each boot)
systemctl mask systemd-timesyncd.service >/dev/null 2>&1 || true

apt-get clean
rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d /etc/resolv.conf /tmp/* /var/tmp/*
find /var/log -type f -exec truncate -s 0 {} +
CHROOT
}

box_vagrantfile() {
    cat <<'EOF'
# Box Vagrantfile of halab/debian12 (built by halab tools/vmtest/build-box.sh).
# Direct kernel boot from the kernel/initrd shipped in this box, QEMU software
# emulation (TCG) through a wrapper capping the translation cache.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.driver = "qemu"
    libvirt.emulator_path = File.expand_path("qemu-tcg", __dir__)
    libvirt.kernel = File.expand_path("vmlinuz", __dir__)
    libvirt.initrd = File.expand_path("initrd.img", __dir__)
    # tsc=reliable: under emulation on a busy host the kernel's clocksource watchdog
    # sees TSC and HPET drift apart, marks the TSC unstable and switches to HPET, whose
    # every read is an emulated device access. Go programs read the clock all the time:
    # on a VM that switched, kube-apiserver took over 10 minutes to start instead of 3.
    libvirt.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0 tsc=reliable quiet"
  end
end
EOF
}

emulator_wrapper() {
    cat <<'EOF'
#!/bin/sh
# QEMU wrapper for libvirt (libvirt.emulator_path): the size of TCG's translation
# cache in MiB (${HALAB_TCG_TB_SIZE:-1024}). A control plane's Go binaries need
# more than 128 MiB of translated code: with 128 the cache was flushed every ~15 s
# and an API server took minutes to start. (Memory is only used as code is
# translated.)
tb=${HALAB_TCG_TB_SIZE:-1024}
n=$#
i=0
while [ "$i" -lt "$n" ]; do
    a=$1
    shift
    case $a in
        tcg) [ "$prev" = "-accel" ] && a="tcg,tb-size=$tb" ;;
    esac
    set -- "$@" "$a"
    prev=$a
    i=$((i + 1))
done
exec /usr/bin/qemu-system-x86_64 "$@"
EOF
}

build() {
    local work root mirror kver
    mkdir -p "$BOXDIR"
    work=$(mktemp -d "$BOXDIR/.build.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf --one-file-system '$work'" EXIT
    root=$work/root
    mirror=$(debian_mirror)
    log "mirror: $mirror; work dir: $work"

    stage_start debootstrap
    # Private mount namespace: debootstrap's /proc,/sys mounts vanish with it.
    unshare -m --propagation private \
        debootstrap --variant=minbase --include="$(IFS=,; echo "${BASE_PACKAGES[*]}")" \
        "$SUITE" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
        tail -n 30 "$work/debootstrap.log" >&2
        die "debootstrap failed"
    }
    stage_end debootstrap

    stage_start configure
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    cp /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub "$root/tmp/vagrant.pub" 2>/dev/null ||
        cp "$(dpkg -L vagrant | grep '/keys/vagrant.pub$' | head -n1)" "$root/tmp/vagrant.pub"
    chroot_script >"$work/chroot.sh"
    # shellcheck disable=SC2016  # expanded by the inner bash
    EXTRA_PACKAGES="${EXTRA_PACKAGES[*]}" unshare -m --propagation private \
        bash -c 'set -e
            r=$1
            mount -t proc proc "$r/proc"
            mount --rbind /sys "$r/sys"
            mount --rbind /dev "$r/dev"
            chroot "$r" /bin/bash -s <"$2"' _ "$root" "$work/chroot.sh" \
        >"$work/configure.log" 2>&1 || {
        tail -n 40 "$work/configure.log" >&2
        die "chroot configuration failed"
    }
    stage_end configure

    stage_start image
    kver=$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -n1)
    [[ -n $kver && -s $root/boot/initrd.img-$kver ]] || die "no kernel/initrd in the rootfs"
    mkdir "$work/box"
    cp "$root/boot/vmlinuz-$kver" "$work/box/vmlinuz"
    cp "$root/boot/initrd.img-$kver" "$work/box/initrd.img"
    truncate -s "${DISK_GB}G" "$work/root.img"
    mkfs.ext4 -q -F -L halab-root -d "$root" "$work/root.img"
    rm -rf --one-file-system "$root"
    qemu-img convert -c -O qcow2 "$work/root.img" "$work/box/box.img"
    rm -f "$work/root.img"
    stage_end image

    stage_start package
    printf '{"provider":"libvirt","format":"qcow2","virtual_size":%d}\n' "$DISK_GB" >"$work/box/metadata.json"
    box_vagrantfile >"$work/box/Vagrantfile"
    emulator_wrapper >"$work/box/qemu-tcg"
    chmod 0755 "$work/box/qemu-tcg"
    tar -C "$work/box" -cf "$work/$BOX_NAME.box" metadata.json Vagrantfile box.img vmlinuz initrd.img qemu-tcg
    mv -f "$work/$BOX_NAME.box" "$BOX"
    {
        echo "recipe=$(recipe_hash)"
        echo "sha256=$(sha256sum "$BOX" | cut -d' ' -f1)"
        echo "size_mtime=$(stat -c '%s %Y' "$BOX")"
        echo "kernel=$kver"
        echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    } >"$STAMP.tmp"
    mv -f "$STAMP.tmp" "$STAMP"
    stage_end package
}

main() {
    local t0=$SECONDS
    mkdir -p "$BOXDIR"
    exec 9>"$BOXDIR/.build.lock"
    flock 9   # one build at a time
    if [[ $FORCE -eq 0 ]] && box_is_valid; then
        log "box up to date: $BOX"
        echo "$BOX"
        return 0
    fi
    if [[ ${HALAB_SKIP_APT:-0} != 1 ]]; then
        stage_start apt
        apt_install "${HOST_PACKAGES[@]}"
        stage_end apt
    fi
    rm -f "$STAMP"
    build
    log "built $BOX ($(du -h "$BOX" | cut -f1)) in $((SECONDS - t0)) s"
    echo "$BOX"
}

main
