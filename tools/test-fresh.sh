#!/usr/bin/env bash
# make test-fresh:  tools/test-fresh.sh [SOURCE_TREE]
#
# Does a brand-new Debian 12 machine build and test this checkout with tools/setup.sh alone?
# A minimal Debian 12 root (mmdebstrap) gets the files git would ship (the tracked files of
# SOURCE_TREE's working tree, default: this checkout), then, inside it by chroot, as a new
# user would: tools/setup.sh (apt part and venv), then `make bpf-objects test-unit`.
# A missing install step in setup.sh fails here, whatever the host has installed by hand.
#
# Caches (~/.cache/anycast-edge/, like the lab image of lab/labctl.py):
#   fresh-root/<recipe hash>/root.tar  the base root, rebuilt when the recipe changes;
#   fresh-apt/{archives,lists}         apt's .debs and lists, bind-mounted into the root;
#   fresh-pip/                          pip's download cache, bind-mounted as /root/.cache/pip.
# So a warm run downloads nothing; it still installs every package and pin, as a fresh
# machine does. Needs root (mmdebstrap --mode=root, mount, chroot).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source_tree=$(cd "${1:-$repo_root}" && pwd)

SUITE=bookworm
# --variant=important: Debian's Priority required + important, i.e. what the Debian 12
# installer leaves with no task ticked (a minimal server). It has no python3, make, git or
# clang; "standard" adds python3 only as a dependency of reportbug and apt-listchanges, and
# a cloud image as one of cloud-init. The smallest real install is the strictest test:
# whatever the project needs beyond it, tools/setup.sh must install.
VARIANT=important
# Bump when the way the root is assembled changes in a way the variables above do not show.
BUILDER_VERSION=1
CACHE_ROOT=${ANYCAST_FRESH_CACHE:-$HOME/.cache/anycast-edge}
# Where the checkout sits in the root: a user's clone in root's home.
CHECKOUT=/root/anycast-edge

log() { printf 'test-fresh: %s\n' "$*"; }

if ((EUID != 0)); then
    echo "test-fresh: needs root (mmdebstrap --mode=root, mount, chroot)" >&2
    exit 1
fi
started=$SECONDS

# The host tool this tier needs, installed by it like labctl installs the lab's.
if ! command -v mmdebstrap >/dev/null; then
    log "installing mmdebstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
fi

# The host's apt sources are part of the recipe: with no mirror argument mmdebstrap uses
# them (the only registry reached), as lab/labctl.py's apt_sources_text() says for the lab.
apt_sources() {
    local path
    for path in /etc/apt/sources.list /etc/apt/sources.list.d/*; do
        [[ -f $path ]] && printf '%s\n' "$path" && cat "$path"
    done
    return 0
}
recipe=$({
    printf 'builder %s suite %s variant %s\n' "$BUILDER_VERSION" "$SUITE" "$VARIANT"
    apt_sources
} | sha256sum | cut -c1-16)
tarball=$CACHE_ROOT/fresh-root/$recipe/root.tar
if [[ -f $tarball ]]; then
    log "base root cached: $tarball"
else
    log "building the base root ($SUITE, --variant=$VARIANT)"
    mkdir -p "$(dirname "$tarball")"
    # mmdebstrap picks the output format from the name's ending: .tar it must be.
    mmdebstrap --mode=root --variant="$VARIANT" --quiet "$SUITE" "${tarball%.tar}.part.tar"
    mv "${tarball%.tar}.part.tar" "$tarball"
    # Keep only the root of the current recipe.
    find "$CACHE_ROOT/fresh-root" -mindepth 1 -maxdepth 1 -type d ! -name "$recipe" -exec rm -rf {} +
fi

# The root lives on its own tmpfs: dpkg's many fsyncs cost nothing, and the cleanup is one
# umount, never an rm -rf over a tree that might still hold a bind mount.
work=$(mktemp -d /tmp/anycast-fresh.XXXXXX)
root=$work/root
cleanup() {
    local rc=$? pid
    set +e
    # Whatever still runs inside the root (a daemon a package started) would hold its mounts.
    for pid in /proc/[0-9]*; do
        [[ $(readlink "$pid/root" 2>/dev/null) == "$root"* ]] && kill -9 "${pid#/proc/}" 2>/dev/null
    done
    if mountpoint -q "$root"; then
        umount -R "$root" || umount -R -l "$root"
    fi
    rmdir "$root" "$work" 2>/dev/null || log "left $work behind (still mounted?)"
    log "finished in $((SECONDS - started)) s (exit $rc)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir "$root"
mount -t tmpfs -o size=6G,mode=0755 tmpfs "$root"
tar -C "$root" --numeric-owner -xpf "$tarball"
# A chroot has no init: no package may start its service in there.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"

log "copying the tracked files of $source_tree"
mkdir -p "$root$CHECKOUT"
# Tracked files as they are in the working tree (edits included, untracked files not);
# a tracked file deleted in the working tree is left out, as the next commit would.
git -C "$source_tree" ls-files -z |
    (cd "$source_tree" && while IFS= read -r -d '' file; do
        [[ -e $file || -L $file ]] && printf '%s\0' "$file"
    done) |
    tar -C "$source_tree" --null -T - -c | tar -C "$root$CHECKOUT" -x

# /proc, /dev, /sys for apt, dpkg and pip; the download caches, kept between runs.
mkdir -p "$CACHE_ROOT/fresh-apt/archives/partial" "$CACHE_ROOT/fresh-apt/lists/partial" "$CACHE_ROOT/fresh-pip"
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
mount -t sysfs -o ro sysfs "$root/sys"
mount --bind "$CACHE_ROOT/fresh-apt/archives" "$root/var/cache/apt/archives"
mount --bind "$CACHE_ROOT/fresh-apt/lists" "$root/var/lib/apt/lists"
mkdir -p "$root/root/.cache/pip"
mount --bind "$CACHE_ROOT/fresh-pip" "$root/root/.cache/pip"

# The network is the host's, and so is its trust: where the host's pip trusts a CA bundle of
# its own (PIP_CERT, e.g. a TLS-inspecting proxy's), the root gets that file and setting.
net_env=()
if [[ -n ${PIP_CERT:-} && -f $PIP_CERT ]]; then
    mkdir -p "$root/etc/anycast-fresh"
    cp "$PIP_CERT" "$root/etc/anycast-fresh/ca.pem"
    net_env+=(PIP_CERT=/etc/anycast-fresh/ca.pem)
fi
for var in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_DEFAULT_TIMEOUT; do
    [[ -n ${!var:-} ]] && net_env+=("$var=${!var}")
done

log "running tools/setup.sh, then make bpf-objects test-unit, in the fresh root"
# A clean environment: nothing of the host's (its pip config, PATH, venv) leaks in.
chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${net_env[@]}" \
    /bin/bash -c "cd $CHECKOUT && tools/setup.sh && make bpf-objects test-unit"
log "passed"
