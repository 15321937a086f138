#!/usr/bin/env bash
# Install Prometheus' `prometheus` and `promtool` binaries from Debian's `prometheus` package,
# without installing or starting a service: the .deb is downloaded and unpacked into a cache dir.
#
#   bash deploy/prometheus/install.sh              # install (idempotent), print the versions
#   eval "$(bash deploy/prometheus/install.sh --print-env)"   # install quietly, put them on PATH
#
# Cache: ${STREAMEM_CACHE:-$HOME/.cache/streamem}/prometheus
set -euo pipefail

cache_root="${STREAMEM_CACHE:-$HOME/.cache/streamem}"
dest="$cache_root/prometheus"
bin_dir="$dest/usr/bin"

print_env=false
case "${1:-}" in
    --print-env) print_env=true ;;
    "") ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--print-env]" >&2; exit 2 ;;
esac

log() { echo "install.sh: $*" >&2; }

installed() { [[ -x "$bin_dir/promtool" && -x "$bin_dir/prometheus" ]]; }

download_deb() {
    local work="$1"
    (cd "$work" && apt-get download prometheus >&2) && return 0
    log "apt-get download failed; running apt-get update and retrying"
    apt-get update >&2
    (cd "$work" && apt-get download prometheus >&2)
}

install_prometheus() {
    local work
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' RETURN
    download_deb "$work"
    local deb
    deb="$(ls "$work"/prometheus_*.deb)"
    mkdir -p "$cache_root"
    local staging="$dest.tmp.$$"
    rm -rf "$staging"
    dpkg -x "$deb" "$staging"
    rm -rf "$dest"
    mv "$staging" "$dest"
    log "unpacked $(basename "$deb") into $dest"
}

if ! installed; then
    command -v apt-get >/dev/null || { log "apt-get not found: install prometheus by hand"; exit 1; }
    install_prometheus
fi
"$bin_dir/promtool" --version >/dev/null 2>&1 || { log "promtool in $bin_dir does not run"; exit 1; }

if $print_env; then
    printf 'export PATH=%q:$PATH\n' "$bin_dir"
else
    "$bin_dir/promtool" --version
    "$bin_dir/prometheus" --version
    echo "add to PATH: $bin_dir"
fi
