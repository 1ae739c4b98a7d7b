#!/usr/bin/env bash
# make test-fresh: build the BPF objects and run the unit tier inside a minimal Debian 12 root,
# set up by nothing but tools/setup.sh - so a missing install step fails here even on a machine
# where someone once installed the package by hand.
#
#   tools/test-fresh.sh [TREE]     TREE = the checkout to test (default: this one)
#
# The root is mmdebstrap's "minbase" variant (essential + apt): less than a fresh Debian 12
# server has (no python3, no make), so whatever the project needs beyond it must be installed by
# tools/setup.sh. The machine's own settings are copied in as a fresh machine of this kind would
# have them: apt options (apt.conf.d), the CA bundle and pip's configuration (the registries are
# reached through them), resolv.conf.
#
# Caches (under ~/.cache/anycast-edge/fresh-root, override with ANYCAST_FRESH_CACHE): the base
# tarball, keyed by a hash of this script and the host's apt sources (like the lab image), and
# the .debs and pip downloads, bind-mounted into the root so that a warm run downloads nothing.
# The root itself is thrown away after every run.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tree=$(cd "${1:-$repo_root}" && pwd)
cache=${ANYCAST_FRESH_CACHE:-$HOME/.cache/anycast-edge/fresh-root}
suite=bookworm
started=$SECONDS

log() { printf 'test-fresh: %s\n' "$*"; }

((EUID == 0)) || { log "needs root (mmdebstrap --mode=root, chroot, mounts)"; exit 1; }

if ! command -v mmdebstrap >/dev/null; then
    log "installing mmdebstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
fi

recipe_hash() {
    {
        sha256sum "${BASH_SOURCE[0]}"
        cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null || true
    } | sha256sum | cut -c1-16
}

base_tarball() {
    local tarball partial
    tarball="$cache/base-$(recipe_hash).tar"
    if [[ -f $tarball ]]; then
        log "base root cached: $tarball" >&2
    else
        mkdir -p "$cache"
        partial=$(mktemp "$cache/partial-XXXXXX.tar")
        log "building the base root ($suite, minbase) into $tarball" >&2
        # No mirror argument: the host's apt sources, the only registry this machine reaches.
        # ca-certificates: every fresh Debian machine has it, and PyPI is reached over TLS.
        mmdebstrap --mode=root --variant=minbase --quiet --include=ca-certificates \
            "$suite" "$partial" >&2
        # Older bases of another recipe are of no more use.
        find "$cache" -maxdepth 1 -name 'base-*.tar' -delete
        mv "$partial" "$tarball"
    fi
    printf '%s\n' "$tarball"
}

root=$(mktemp -d /var/tmp/anycast-fresh-XXXXXX)
mounts=()
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    local i
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        umount -l "${mounts[i]}" 2>/dev/null || true
    done
    rm -rf --one-file-system "$root"
}
trap cleanup EXIT

bind() { # bind SOURCE TARGET-inside-root
    mkdir -p "$root$2"
    mount --bind "$1" "$root$2"
    mounts+=("$root$2")
}

tar -C "$root" -xf "$(base_tarball)"

# The machine's own settings (not install steps of the project).
cp -a /etc/apt/apt.conf.d/. "$root/etc/apt/apt.conf.d/"
rm -f "$root"/etc/apt/apt.conf.d/docker-clean  # keep the .debs in the bind-mounted cache
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
[[ -f /etc/pip.conf ]] && cp /etc/pip.conf "$root/etc/pip.conf"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"

# The checkout as git would ship it: tracked and untracked-but-not-ignored files of the work tree.
mkdir -p "$root/work/anycast-edge"
# (--ignore-failed-read: a tracked file deleted in the work tree is simply not there.)
(cd "$tree" && git ls-files -z --cached --others --exclude-standard |
    tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -C "$root/work/anycast-edge" -xf -

mkdir -p "$cache/apt-archives/partial" "$cache/pip"
mount -t proc proc "$root/proc"; mounts+=("$root/proc")
bind /sys /sys
bind /dev /dev
bind "$cache/apt-archives" /var/cache/apt/archives
bind "$cache/pip" /root/.cache/pip

log "running tools/setup.sh, then make bpf-objects test-unit, inside the fresh root"
status=0
chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c 'cd /work/anycast-edge && tools/setup.sh && make bpf-objects test-unit' || status=$?
log "$( ((status == 0)) && echo passed || echo "FAILED (exit $status)") in $((SECONDS - started)) s"
exit "$status"
