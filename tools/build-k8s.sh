#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and
# kubemark (hollow nodes: the real kubelet and kube-proxy code with a fake container
# runtime) from Debian's `kubernetes` source package (1.20.x, fully vendored) and
# install them into ${HALAB_CACHE:-$HOME/.cache/halab}/k8s/<version>/, with the
# symlink .../k8s/default pointing at that directory.
#
# Usage: bash tools/build-k8s.sh [--force] [--keep-work]
#   --force      rebuild even if the cached binaries are present and run
#   --keep-work  do not delete the work directory afterwards (debugging)
#
# Environment:
#   HALAB_CACHE       cache root (default: $HOME/.cache/halab)
#   HALAB_BUILD_TMP   parent of the temporary work dir (default: ${TMPDIR:-/tmp})
#
# Needs root (or passwordless apt) for the apt steps; about 7 minutes and
# 1.5 GB of RAM on 2 cores, ~3 GB of temporary disk.
set -euo pipefail

BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubemark)
CACHE_ROOT="${HALAB_CACHE:-$HOME/.cache/halab}"
K8S_CACHE="$CACHE_ROOT/k8s"
FORCE=0
KEEP_WORK=0

for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --keep-work) KEEP_WORK=1 ;;
    -h | --help)
      sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "build-k8s: unknown argument: $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

log() { printf '[build-k8s] %s\n' "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

SCRIPT_START=$SECONDS
STAGE_NAME=""
STAGE_START=0
stage() {
  stage_end
  STAGE_NAME="$1"
  STAGE_START=$SECONDS
  log "stage: $STAGE_NAME ..."
}
stage_end() {
  if [[ -n "$STAGE_NAME" ]]; then
    log "stage: $STAGE_NAME took $((SECONDS - STAGE_START))s"
    STAGE_NAME=""
  fi
}

# Print the version of a binary ("v1.20.2"), or fail.
binary_version() {
  local bin="$1" out
  case "$(basename "$bin")" in
    kubectl) out="$("$bin" version --client --short 2>/dev/null)" || return 1 ;;
    *) out="$("$bin" --version 2>/dev/null)" || return 1 ;;
  esac
  # "Kubernetes v1.20.2" / "Client Version: v1.20.2"
  out="$(grep -oE 'v[0-9]+\.[0-9]+\.[0-9]+[^ ]*' <<<"$out" | head -n1)"
  [[ -n "$out" ]] || return 1
  printf '%s\n' "$out"
}

# Succeeds if $1 holds all binaries, all runnable and all of one version.
cache_dir_ok() {
  local dir="$1" b v first=""
  for b in "${BINARIES[@]}"; do
    [[ -x "$dir/$b" ]] || return 1
    v="$(binary_version "$dir/$b")" || return 1
    if [[ -z "$first" ]]; then first="$v"; elif [[ "$v" != "$first" ]]; then return 1; fi
  done
  printf '%s\n' "$first"
}

if [[ $FORCE -eq 0 ]] && ver="$(cache_dir_ok "$K8S_CACHE/default")"; then
  log "cached binaries OK: $K8S_CACHE/default -> $(readlink "$K8S_CACHE/default" || true) ($ver); nothing to do (use --force to rebuild)"
  exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || die "not root and no sudo: cannot install build dependencies"
  SUDO=(sudo)
fi

# apt-get with retries while another apt/dpkg holds the locks.
apt_retry() {
  local i
  for i in $(seq 1 60); do
    if "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=60 "$@"; then
      return 0
    fi
    log "apt-get $* failed (attempt $i); retrying in 10s (apt lock busy?)"
    sleep 10
  done
  return 1
}

# ---------------------------------------------------------------------------
stage "build dependencies"
DEPS=(golang-go dpkg-dev make rsync jq diffutils findutils xz-utils)
missing=()
for p in "${DEPS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
  log "installing: ${missing[*]}"
  # first try with the current package lists; on failure refresh them and retry
  if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 \
    install -y -q --no-install-recommends "${missing[@]}" >/dev/null; then
    apt_retry update -q >/dev/null || log "apt-get update reported errors; trying anyway"
    apt_retry install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
export PATH="/usr/lib/go/bin:$PATH"
command -v go >/dev/null || die "go not found after installing golang-go"
log "$(go version)"

# ---------------------------------------------------------------------------
stage "deb-src source entry"
SRC_LIST=/etc/apt/sources.list.d/halab-deb-src.sources
have_kubernetes_src() { apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Package: kubernetes'; }

# Write a deb-src entry mirroring the entry apt uses for "bookworm main"
# binaries (same URI, same Signed-By, so apt does not see conflicting values).
write_deb_src_entry() {
  local codename entry file line tmp
  # shellcheck source=/dev/null
  codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
  # shellcheck disable=SC2016  # $(SOURCESENTRY) is an apt format field
  entry="$(apt-get indextargets --format '$(SOURCESENTRY)' \
    "Identifier: Packages" "Release: $codename" "Component: main" 2>/dev/null | head -n1)"
  tmp="$(mktemp)"
  if [[ "$entry" =~ ^(.+):([0-9]+)$ ]]; then
    file="${BASH_REMATCH[1]}"
    line="${BASH_REMATCH[2]}"
  else
    file=""
    line=0
  fi
  if [[ -n "$file" && "$file" == *.sources ]]; then
    # deb822 stanza starting at $line: copy URIs and Signed-By (incl. continuation lines).
    awk -v start="$line" -v suite="$codename" '
      NR < start { next }
      /^[[:space:]]*$/ { exit }
      /^[A-Za-z-]+:/ { key = tolower($1); keep = (key == "uris:" || key == "signed-by:") }
      keep { print; next }
      END { }
    ' "$file" >"$tmp.body"
    {
      echo "# added by halab tools/build-k8s.sh (Debian source packages)"
      echo "Types: deb-src"
      cat "$tmp.body"
      echo "Suites: $codename"
      echo "Components: main"
    } >"$tmp"
    rm -f "$tmp.body"
    SRC_LIST=/etc/apt/sources.list.d/halab-deb-src.sources
  elif [[ -n "$file" && -r "$file" ]]; then
    # one-line format: turn "deb [opts] URI suite comps" into "deb-src [opts] URI suite main"
    sed -n "${line}p" "$file" |
      awk -v suite="$codename" '{ $1 = "deb-src"; for (i = 2; i <= NF; i++) if ($i == suite) { NF = i; break }; print $0, "main" }' >"$tmp"
    SRC_LIST=/etc/apt/sources.list.d/halab-deb-src.list
  else
    log "could not find the apt entry for $codename main; using deb.debian.org"
    echo "deb-src http://deb.debian.org/debian $codename main" >"$tmp"
    SRC_LIST=/etc/apt/sources.list.d/halab-deb-src.list
  fi
  "${SUDO[@]}" install -m 0644 "$tmp" "$SRC_LIST"
  rm -f "$tmp"
  log "wrote $SRC_LIST:"
  sed 's/^/    /' "$SRC_LIST" >&2
}

if have_kubernetes_src; then
  log "deb-src already configured (apt-cache showsrc kubernetes works)"
else
  if ! grep -rqsE '^[[:space:]]*(deb-src[[:space:]]|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    write_deb_src_entry
    # refresh only the new entry (other configured repositories may be unreachable)
    apt_retry update -q -o Dir::Etc::sourcelist="$SRC_LIST" -o Dir::Etc::sourceparts=- \
      -o APT::Get::List-Cleanup=0 >/dev/null
  else
    apt_retry update -q >/dev/null || true
  fi
  have_kubernetes_src || die "apt-cache showsrc kubernetes still finds nothing after adding deb-src"
fi

# ---------------------------------------------------------------------------
stage "download source package"
WORK="$(mktemp -d "${HALAB_BUILD_TMP:-${TMPDIR:-/tmp}}/halab-k8s-build.XXXXXX")"
cleanup() {
  local rc=$?
  if [[ $KEEP_WORK -eq 1 ]]; then
    log "keeping work dir $WORK"
  else
    # go's module/build caches are read-only files; make them writable first
    chmod -R u+w "$WORK" 2>/dev/null || true
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log "work dir: $WORK"
cd "$WORK"
# apt's _apt sandbox user cannot write into a root-only mktemp dir
chmod 0755 "$WORK"
apt-get source --download-only kubernetes 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true
dsc="$(find "$WORK" -maxdepth 1 -name 'kubernetes_*.dsc' | head -n1)"
[[ -n "$dsc" ]] || die "apt-get source --download-only kubernetes did not produce a .dsc"
log "source: $(basename "$dsc")"

# ---------------------------------------------------------------------------
stage "unpack (dpkg-source -x)"
dpkg-source -x "$dsc" "$WORK/src" >/dev/null
rm -f "$WORK"/kubernetes_*.{dsc,tar.gz,tar.xz}

export GOPATH="$WORK/gopath"
export GOCACHE="$WORK/gocache"
export GO111MODULE=off
export GOFLAGS=""
export CGO_ENABLED=0
export GOLDFLAGS="-s -w"
mkdir -p "$GOPATH/src/k8s.io"
ln -s "$WORK/src" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"

# ---------------------------------------------------------------------------
stage "make generated_files"
make generated_files >"$WORK/generated_files.log" 2>&1 ||
  {
    tail -n 40 "$WORK/generated_files.log" >&2
    die "make generated_files failed"
  }

# ---------------------------------------------------------------------------
# hack/make-rules/build.sh (what Debian's rules use too) embeds the version
# from the tarball's git-archive metadata (gitVersion v1.20.2 etc.).
stage "go build ${BINARIES[*]}"
WHAT=""
for b in "${BINARIES[@]}"; do WHAT+="cmd/$b "; done
make WHAT="${WHAT% }" GOLDFLAGS="$GOLDFLAGS" >"$WORK/build.log" 2>&1 ||
  {
    tail -n 60 "$WORK/build.log" >&2
    die "build failed"
  }

# ---------------------------------------------------------------------------
stage "install into cache"
OUT="$GOPATH/src/k8s.io/kubernetes/_output/bin"
version="$(binary_version "$OUT/kube-apiserver")" || die "built kube-apiserver does not report a version"
dest="$K8S_CACHE/$version"
mkdir -p "$K8S_CACHE"
staging="$(mktemp -d "$K8S_CACHE/.staging.XXXXXX")"
for b in "${BINARIES[@]}"; do
  install -m 0755 "$OUT/$b" "$staging/$b"
done
v="$(cache_dir_ok "$staging")" || die "installed binaries do not all run/report one version"
[[ "$v" == "$version" ]] || die "version mismatch: $v vs $version"
chmod 0755 "$staging"
if [[ -e "$dest" ]]; then
  rm -rf "$dest.old"
  mv "$dest" "$dest.old"
fi
mv "$staging" "$dest"
rm -rf "$dest.old"
ln -sfn "$version" "$K8S_CACHE/default.tmp"
mv -T "$K8S_CACHE/default.tmp" "$K8S_CACHE/default"
stage_end

log "installed ${BINARIES[*]} $version into $dest"
log "symlink: $K8S_CACHE/default -> $version"
log "total: $((SECONDS - SCRIPT_START))s"
