#!/usr/bin/env bash
# Install everything the build and the test tiers need, idempotently:
#   1. Debian packages (toolchain for the BPF programs, runtime tools the tests drive),
#      installed only when dpkg says one is missing, so a ready machine never touches apt;
#   2. the project virtualenv .venv/ with the exact pins of requirements.txt, rebuilt only
#      when requirements.txt (or the interpreter) changed since the last successful install.
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
# prometheus (its server and promtool) checks what playbooks/monitoring.yml renders.
# python3-venv (with python3), make and git: a fresh Debian 12 install has none of them
# (make test-fresh checks this list on one).
APT_PACKAGES=(python3 python3-venv make clang llvm libbpf-dev libbpf1 bpftool xdp-tools iproute2 tcpdump bird2 shellcheck git python3-pyroute2 prometheus)

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

install_apt_packages
install_venv
