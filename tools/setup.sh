#!/usr/bin/env bash
# Install everything the build and the test tiers need, idempotently:
#   1. Debian packages (toolchain for the BPF programs, runtime tools the tests drive),
#      installed only when dpkg says one is missing, so a ready machine never touches apt;
#   2. the project virtualenv .venv/ with the exact pins of requirements.txt, rebuilt only
#      when requirements.txt (or the interpreter) changed since the last successful install;
#   3. the collections the roles call (ansible.posix), into that venv, when missing.
# A second run on a ready machine is a no-op that takes well under a second.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

PYTHON=${PYTHON:-python3}
VENV_DIR=${VENV_DIR:-.venv}
# The stamp records what the venv was built from; it is written last, so a failed or
# interrupted install leaves no stamp and the next run installs again.
STAMP="$VENV_DIR/.requirements.sha256"

# clang/llvm/libbpf-dev build the BPF objects; libbpf1 is loaded via ctypes at run time;
# bpftool, xdp-tools, iproute2, tcpdump and bird2 are driven by the bpf/integration tiers;
# ansible-test's sanity run lints tools/*.sh with the ShellCheck package; python3-pyroute2
# is the pyroute2 0.7 a Debian POP runs the modules with (the tests check both it and PyPI's);
# prometheus (its server and promtool) checks what playbooks/monitoring.yml renders;
# nats-server (with JetStream) is the fleet's state bus the agents' sync is tested against.
# nftables and ethtool: bench/pps.py's kernel baseline (an nftables drop rule) and its veth's GRO.
# wireguard-tools (wg) is what anycast.edge.wireguard_interface drives; wireguard-go is userspace
# WireGuard, which the integration tests run in namespaces (this host's kernel has no wireguard).
# tshark reads the lab's merged capture (molecule verify's check 14) and filters playbooks/capture.yml's.
# python3-venv (with python3), make and git: a fresh Debian 12 install has none of them
# (make test-fresh checks this list on one).
APT_PACKAGES=(python3 python3-venv make clang llvm libbpf-dev libbpf1 bpftool xdp-tools iproute2 tcpdump bird2 shellcheck git python3-pyroute2 prometheus nats-server nftables ethtool wireguard-tools wireguard-go tshark)

log() { printf 'setup: %s\n' "$*"; }

missing_apt_packages() {
    local pkg status
    for pkg in "${APT_PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        [[ $status == installed ]] || printf '%s\n' "$pkg"
    done
}

install_apt_packages() {
    local -a missing
    mapfile -t missing < <(missing_apt_packages)
    if ((${#missing[@]} == 0)); then
        log "apt packages present"
        return
    fi
    local -a as_root=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || {
            log "missing apt packages (${missing[*]}) and not root without sudo; install them as root"
            exit 1
        }
        as_root=(sudo)
    fi
    log "installing apt packages: ${missing[*]}"
    "${as_root[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

requirements_fingerprint() {
    # The interpreter version is part of the fingerprint: a venv built by another Python
    # (e.g. after a pyenv switch) is stale even with the same requirements.txt.
    {
        sha256sum requirements.txt
        "$PYTHON" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
}

install_venv() {
    local wanted
    wanted=$(requirements_fingerprint)
    if [[ -x $VENV_DIR/bin/python && -f $STAMP && $(<"$STAMP") == "$wanted" ]]; then
        log "$VENV_DIR up to date with requirements.txt"
        return
    fi
    if [[ ! -x $VENV_DIR/bin/python ]]; then
        log "creating $VENV_DIR with $("$PYTHON" --version)"
        "$PYTHON" -m venv "$VENV_DIR"
    fi
    rm -f "$STAMP"
    log "installing requirements.txt into $VENV_DIR"
    # The machine-wide pip config adds local wheel indexes, some of whose folders are
    # absent; pip warns about each one on every run. Those warnings are noise, errors are not.
    "$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r requirements.txt 2> >(grep -v "is neither a file nor a directory" >&2)
    printf '%s\n' "$wanted" >"$STAMP"
    log "$VENV_DIR ready"
}

# ansible.posix, whose sysctl module the roles set the kernel's settings with. Our machines reach
# PyPI but not Galaxy; the `ansible` package on PyPI bundles the collection. Only that collection
# is taken from its wheel (the whole package is 210 MB of collections we do not use), into the
# venv's site-packages, where ansible-core finds collections (COLLECTIONS_SCAN_SYS_PATH): every
# ansible-playbook, ansible-lint and molecule run from .venv sees it. ansible 12.x is the bundle
# made for ansible-core 2.19.x (requirements.txt pins 2.19).
ANSIBLE_BUNDLE=ansible==12.3.0
ANSIBLE_POSIX_VERSION=2.1.0

installed_collection_version() {  # site-packages, namespace.name -> its version, or nothing
    "$VENV_DIR/bin/python" - "$1" "$2" <<'EOF' 2>/dev/null || true
import json, os, sys
site, name = sys.argv[1:]
with open(os.path.join(site, "ansible_collections", *name.split("."), "MANIFEST.json")) as manifest:
    print(json.load(manifest)["collection_info"]["version"])
EOF
}

install_collections() {
    local site download
    site=$("$VENV_DIR/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    if [[ $(installed_collection_version "$site" ansible.posix) == "$ANSIBLE_POSIX_VERSION" ]]; then
        log "ansible.posix $ANSIBLE_POSIX_VERSION present"
        return
    fi
    log "installing ansible.posix $ANSIBLE_POSIX_VERSION from the $ANSIBLE_BUNDLE wheel"
    download=$(mktemp -d)
    "$VENV_DIR/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary :all: --dest "$download" "$ANSIBLE_BUNDLE" \
        2> >(grep -v "is neither a file nor a directory" >&2)
    # Unpacked beside its place and moved in whole: an interrupted run leaves no half collection.
    "$VENV_DIR/bin/python" - "$download" "$site" "$ANSIBLE_POSIX_VERSION" <<'EOF'
import glob, json, os, shutil, sys, zipfile
download, site, version = sys.argv[1:]
prefix = "ansible_collections/ansible/posix/"
(wheel,) = glob.glob(os.path.join(download, "ansible-*.whl"))
with zipfile.ZipFile(wheel) as bundle:
    found = json.loads(bundle.read(prefix + "MANIFEST.json"))["collection_info"]["version"]
    if found != version:
        sys.exit("setup: %s holds ansible.posix %s, not %s" % (os.path.basename(wheel), found, version))
    bundle.extractall(download, [name for name in bundle.namelist() if name.startswith(prefix)])
target = os.path.join(site, prefix)
os.makedirs(os.path.dirname(target.rstrip("/")), exist_ok=True)
shutil.rmtree(target, ignore_errors=True)
shutil.move(os.path.join(download, prefix), target)
EOF
    rm -rf "$download"
    if [[ $(installed_collection_version "$site" ansible.posix) != "$ANSIBLE_POSIX_VERSION" ]]; then
        log "ansible.posix $ANSIBLE_POSIX_VERSION did not install"
        exit 1
    fi
    log "ansible.posix $ANSIBLE_POSIX_VERSION ready"
}

install_apt_packages
install_venv
install_collections
