#!/usr/bin/env bash
# Shared helpers of halab's provisioning scripts (sourced; lab settings already loaded).
# shellcheck disable=SC2034  # NODE_NAME/NODE_IP are set by the sourcing script

step() { echo "[halab] $NODE_NAME: $*"; }
warn() { echo "[halab] $NODE_NAME: WARNING: $*" >&2; }

pkg_install() {
  # pkg_install CMD:PACKAGE...: installs only packages whose command is missing,
  # so offline re-runs work
  local missing=() pair cmd pkg
  for pair in "$@"; do
    cmd=${pair%%:*}; pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  step "installing ${missing[*]}"
  if [ "$LAB_OS_FAMILY" = rhel ]; then
    dnf install -y -q "${missing[@]}"
  else
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; }
  fi
}

lab_iface() {
  # the NIC that holds this node's lab address (its name differs per provider and OS)
  ip -o -4 addr show | awk -v ip="$NODE_IP" '{split($4, a, "/"); if (a[1] == ip) print $2}' | head -n1
}
