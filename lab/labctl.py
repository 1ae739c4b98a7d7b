"""Build, boot and tear down the local VM lab (see docs/lab.md).

    labctl.py image            build the VM image unless the cached one matches the recipe
    labctl.py up               image, namespaces, taps, VMs (booted in parallel), upstream BIRD
    labctl.py down             kill what `up` started (by recorded pid), remove taps/namespaces
    labctl.py status           what runs, and the upstream's view of BGP
    labctl.py ssh HOST [CMD]   log into a VM with the lab key
    labctl.py playbook ARGS    ansible-playbook -i inventories/lab ARGS (collection on the path)
    labctl.py show             BGP at the upstream, the POPs' data plane, how to log in
    labctl.py molecule ARGS    molecule ARGS with the collection on the path, timed by step

Runs as root (taps, namespaces, mmdebstrap). The wiring is lab/topology.yml; the product's
facts are in inventories/lab/. Run state (pids, overlays, serial logs, the per-lab SSH key)
lives in RUN_DIR; the image cache in CACHE_DIR, keyed by a hash of the image recipe.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

LAB_DIR = Path(__file__).resolve().parent
REPO_DIR = LAB_DIR.parent
sys.path.insert(0, str(REPO_DIR))

from harness import collection  # noqa: E402  pylint: disable=wrong-import-position
IMAGE_RECIPE_DIR = LAB_DIR / "image"
TOPOLOGY_FILE = LAB_DIR / "topology.yml"
INVENTORY_DIR = REPO_DIR / "inventories" / "lab"

CACHE_DIR = Path(os.environ.get("ANYCAST_LAB_CACHE", Path.home() / ".cache" / "anycast-edge" / "lab-images"))
# /run: the run state goes away with a reboot, exactly like the processes it describes.
RUN_DIR = Path(os.environ.get("ANYCAST_LAB_RUN_DIR", "/run/anycast-edge-lab"))
SSH_KEY = RUN_DIR / "ssh" / "id_ed25519"

DEBIAN_SUITE = "bookworm"
ROOT_FS_SIZE = "1536M"
READY_MARKER = "ANYCAST-LAB-READY"
# Written by the image's anycast-lab-net when it cannot configure the VM.
FAILED_MARKER = "ANYCAST-LAB-FAILED"
BOOT_TIMEOUT_SEC = int(os.environ.get("ANYCAST_LAB_BOOT_TIMEOUT", "420"))
HOST_PACKAGES = {  # command -> Debian package providing it
    "mmdebstrap": "mmdebstrap",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "bird": "bird2",
    "mkfs.ext4": "e2fsprogs",
    "ping": "iputils-ping",
}
# Changing how the image is assembled (this file's build steps) must also invalidate the
# cache: bump this when build_image() changes in a way the recipe files do not show.
IMAGE_BUILDER_VERSION = "2"
# Where the game server (lab/game_server.py) lives on its VM.
GAME_SERVER_PATH = "/usr/local/bin/lab-game-server"


class LabError(Exception):
    """A failure with a message meant for the person running the lab."""


def log(message: str) -> None:
    print(f"lab: {message}", flush=True)


def run(*argv: str, check: bool = True, capture: bool = True, timeout: float | None = 120) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(argv, check=False, capture_output=capture, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise LabError(f"timed out after {timeout} s: {' '.join(argv)}") from error
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip() if capture else ""
        raise LabError(f"failed ({result.returncode}): {' '.join(argv)}\n{detail}")
    return result


def load_topology() -> dict:
    return yaml.safe_load(TOPOLOGY_FILE.read_text(encoding="utf-8"))


# ---- host prerequisites ---------------------------------------------------------------------

def ensure_host_tools() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (taps, network namespaces, mmdebstrap --mode=root)")
    missing = sorted({pkg for command, pkg in HOST_PACKAGES.items() if shutil.which(command) is None})
    if missing:
        log(f"installing host packages: {' '.join(missing)}")
        run("apt-get", "update", "-qq", timeout=600)
        env_run = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq", "--no-install-recommends"]
        run(*env_run, *missing, timeout=1200)


# ---- the image --------------------------------------------------------------------------------

def image_packages() -> list[str]:
    packages = []
    for line in (IMAGE_RECIPE_DIR / "packages.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            packages.append(line)
    return packages


def apt_sources_text() -> str:
    """The host's apt sources: mmdebstrap uses them, so they are part of the recipe."""
    texts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if path.is_file():
            texts.append(f"{path}\n{path.read_text(encoding='utf-8', errors='replace')}")
    return "\n".join(texts)


def recipe_hash() -> str:
    """Hash of everything that decides the image's content."""
    digest = hashlib.sha256()
    digest.update(f"builder {IMAGE_BUILDER_VERSION} suite {DEBIAN_SUITE} size {ROOT_FS_SIZE}\n".encode())
    for path in sorted(p for p in IMAGE_RECIPE_DIR.rglob("*") if p.is_file()):
        relative = path.relative_to(IMAGE_RECIPE_DIR)
        # Only the executable bit, as git keeps it: a clone made under another umask must
        # hash the same.
        executable = "x" if path.stat().st_mode & 0o111 else "-"
        digest.update(f"{relative} {executable}\n".encode())
        digest.update(path.read_bytes())
    digest.update(apt_sources_text().encode())
    return digest.hexdigest()[:16]


def image_paths(image_dir: Path) -> dict[str, Path]:
    return {"kernel": image_dir / "vmlinuz", "initrd": image_dir / "initrd.img", "disk": image_dir / "base.qcow2"}


def build_image(image_dir: Path) -> None:
    """mmdebstrap a root filesystem, copy out kernel+initrd, and turn it into a qcow2 base."""
    started = time.monotonic()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE_DIR))
    try:
        rootfs = work / "rootfs"
        customize = IMAGE_RECIPE_DIR / "customize.sh"
        log(f"building the VM image ({len(image_packages())} packages, {DEBIAN_SUITE}) in {work}")
        # No mirror argument: mmdebstrap uses the host's apt sources (the only registry we reach).
        # The files go in before the packages (essential hook) so that the kernel's initramfs is
        # built once, already with our initramfs settings.
        run("mmdebstrap", "--mode=root", "--variant=apt", "--quiet",
            "--include=" + ",".join(image_packages()),
            # owned by root, never group/world-writable, whatever the umask of this clone
            f"--essential-hook=tar -C {IMAGE_RECIPE_DIR / 'rootfs'} --owner=0 --group=0 --mode=go-w -c . | tar -C \"$1\" -x",
            f"--customize-hook={customize} \"$1\"",
            DEBIAN_SUITE, str(rootfs), timeout=1800)
        kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
        initrds = sorted((rootfs / "boot").glob("initrd.img-*"))
        if len(kernels) != 1 or len(initrds) != 1:
            raise LabError(f"expected one kernel and one initrd in the image, found {kernels} {initrds}")
        paths = image_paths(work)
        shutil.copy2(kernels[0], paths["kernel"])
        shutil.copy2(initrds[0], paths["initrd"])
        raw = work / "root.ext4"
        # mkfs.ext4 -d fills the filesystem from the directory: no loop mount needed.
        run("mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(rootfs), str(raw), ROOT_FS_SIZE, timeout=600)
        run("qemu-img", "convert", "-O", "qcow2", str(raw), str(paths["disk"]), timeout=600)
        raw.unlink()
        shutil.rmtree(rootfs)
        if image_dir.exists():
            shutil.rmtree(image_dir)
        work.rename(image_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log(f"image built in {time.monotonic() - started:.0f} s: {image_dir}")


def ensure_image() -> dict[str, Path]:
    image_dir = CACHE_DIR / recipe_hash()
    paths = image_paths(image_dir)
    if all(p.is_file() for p in paths.values()):
        log(f"image cached: {image_dir}")
        return paths
    build_image(image_dir)
    # Keep only the image of the current recipe: each is ~350 MB.
    for other in CACHE_DIR.iterdir():
        if other.is_dir() and other != image_dir and not other.name.startswith("build-"):
            shutil.rmtree(other, ignore_errors=True)
    return paths


# ---- run state --------------------------------------------------------------------------------

def pidfile(name: str) -> Path:
    return RUN_DIR / f"{name}.pid"


def read_pid(name: str) -> int | None:
    try:
        return int(pidfile(name).read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int | None, expected_exe: str) -> bool:
    """True if pid runs expected_exe (a recycled pid of another program does not count)."""
    if not pid:
        return False
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return os.path.basename(exe).startswith(expected_exe)


def stop_process(name: str, expected_exe: str) -> None:
    pid = read_pid(name)
    if pid_alive(pid, expected_exe):
        os.kill(pid, signal.SIGCONT)  # a frozen VM (`labctl.py freeze`) must run to hear SIGTERM
        os.kill(pid, signal.SIGTERM)
        for dummy in range(50):
            if not pid_alive(pid, expected_exe):
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        log(f"stopped {name} (pid {pid})")
    pidfile(name).unlink(missing_ok=True)


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


# ---- consistency of topology and inventory ----------------------------------------------------

def check_inventory(topology: dict) -> None:
    """Fail early when lab/topology.yml and inventories/lab/ disagree on a shared fact."""
    hosts = yaml.safe_load((INVENTORY_DIR / "hosts.yml").read_text(encoding="utf-8"))
    inventory_hosts = {}
    for group in hosts["all"]["children"].values():
        inventory_hosts.update(group.get("hosts") or {})
    problems = []
    if set(inventory_hosts) != set(topology["vms"]):
        problems.append(f"hosts {sorted(inventory_hosts)} in the inventory, VMs {sorted(topology['vms'])} in the topology")
    for name, vm in topology["vms"].items():
        host = inventory_hosts.get(name) or {}
        if host.get("ansible_port") != vm["ssh_port"]:
            problems.append(f"{name}: ansible_port {host.get('ansible_port')} != ssh_port {vm['ssh_port']}")
        host_vars_file = INVENTORY_DIR / "host_vars" / f"{name}.yml"
        host_vars = yaml.safe_load(host_vars_file.read_text(encoding="utf-8")) if host_vars_file.exists() else {}
        tunnel = (host_vars or {}).get("anycast_edge_tunnel_address")
        if tunnel and f"{tunnel}/32" not in vm["loopback"]:
            problems.append(f"{name}: anycast_edge_tunnel_address {tunnel} is not on the VM's loopback {vm['loopback']}")
        for neighbor in (host_vars or {}).get("anycast_edge_bgp_neighbors", []):
            peers = [nic["peer_address"].split("/")[0] for nic in vm["nics"] if "peer_address" in nic]
            if neighbor["address"] not in peers or neighbor["asn"] != topology["upstream"]["asn"]:
                problems.append(f"{name}: BGP neighbor {neighbor} is not the upstream ({peers}, AS {topology['upstream']['asn']})")
    game = topology["game_server"]
    group_vars = yaml.safe_load((INVENTORY_DIR / "group_vars" / "all.yml").read_text(encoding="utf-8"))
    if not any(service.get("address") == game["address"] and service.get("port") == game["port"]
               and service.get("protocol") == "udp" and service.get("backend") == game["vm"]
               for service in group_vars.get("anycast_edge_services", [])):
        problems.append(f"game_server {game}: no UDP service of that address and port with backend {game['vm']}")
    if problems:
        raise LabError("lab/topology.yml and inventories/lab/ disagree:\n  " + "\n  ".join(problems))


# ---- namespaces, taps, upstream BIRD ------------------------------------------------------------

def upstream_bird_config(topology: dict) -> str:
    group_vars = yaml.safe_load((INVENTORY_DIR / "group_vars" / "all.yml").read_text(encoding="utf-8"))
    edge_asn = group_vars["anycast_edge_asn"]
    bfd = group_vars.get("anycast_edge_bfd_timers", {"interval_ms": 300, "multiplier": 3})
    upstream = topology["upstream"]
    lines = [
        "# Generated by lab/labctl.py: the lab's upstream router (stands for the internet).",
        f"router id {upstream['client_link']['address'].split('/')[0]};",
        'log stderr all;',
        "protocol device { scan time 5; }",
        "protocol direct { ipv4; }",
        # The routes learned from the POPs go into the namespace's kernel table so that the
        # players' packets are forwarded to a POP.
        "protocol kernel { ipv4 { export where source = RTS_BGP; }; merge paths on; }",
        "protocol bfd {",
        f"  interface \"*\" {{ interval {bfd['interval_ms']} ms; multiplier {bfd['multiplier']}; }};",
        "}",
    ]
    for vm_name, vm in topology["vms"].items():
        for nic in vm["nics"]:
            if nic.get("netns") != upstream["netns"]:
                continue
            password = neighbor_password(vm_name, nic["peer_address"].split("/")[0])
            lines += [
                f"protocol bgp {vm_name.replace('-', '_')} {{",
                f"  local {nic['peer_address'].split('/')[0]} as {upstream['asn']};",
                f"  neighbor {nic['address'].split('/')[0]} as {edge_asn};",
                # The session's TCP MD5 password is the POP's (inventories/lab/host_vars), so the
                # lab runs the product with BGP passwords set (verify's secrets check greps for it).
                *([f'  password "{password}";'] if password else []),
                "  hold time 9; keepalive time 3; connect retry time 5;",
                "  error wait time 1, 5;",
                "  bfd on;",
                # Honours GRACEFUL_SHUTDOWN (RFC 8326) as a well-run upstream does: a draining
                # POP's routes lose to the others' while they still exist (playbooks/drain.yml).
                "  ipv4 { import filter { if (65535, 0) ~ bgp_community then bgp_local_pref = 0; accept; };"
                " export none; };",
                "}",
            ]
    return "\n".join(lines) + "\n"


def neighbor_password(vm_name: str, upstream_address: str) -> str | None:
    """The BGP password the POP's inventory gives its neighbour at upstream_address, if any."""
    host_vars_file = INVENTORY_DIR / "host_vars" / f"{vm_name}.yml"
    if not host_vars_file.exists():
        return None
    host_vars = yaml.safe_load(host_vars_file.read_text(encoding="utf-8")) or {}
    for neighbor in host_vars.get("anycast_edge_bgp_neighbors", []):
        if neighbor.get("address") == upstream_address:
            return neighbor.get("password")
    return None


def setup_namespaces(topology: dict) -> None:
    upstream, client = topology["upstream"], topology["client"]
    for ns in (upstream["netns"], client["netns"]):
        if netns_exists(ns):
            raise LabError(f"network namespace {ns} exists: a lab is up (or was not torn down); run `make lab-down`")
        run("ip", "netns", "add", ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")
    run("ip", "netns", "exec", upstream["netns"], "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0")
    run("ip", "-n", client["netns"], "link", "add", "eth0", "type", "veth", "peer", "name", "to-client", "netns", upstream["netns"])
    run("ip", "-n", upstream["netns"], "address", "add", upstream["client_link"]["address"], "dev", "to-client")
    run("ip", "-n", upstream["netns"], "link", "set", "to-client", "up")
    run("ip", "-n", client["netns"], "address", "add", client["address"], "dev", "eth0")
    run("ip", "-n", client["netns"], "link", "set", "eth0", "up")
    run("ip", "-n", client["netns"], "route", "add", "default", "via", client["gateway"])


def create_taps(topology: dict) -> None:
    for vm in topology["vms"].values():
        for nic in vm["nics"]:
            if "tap" in nic:
                if link_exists(nic["tap"]):
                    raise LabError(f"tap {nic['tap']} exists: run `make lab-down` first")
                run("ip", "tuntap", "add", "name", nic["tap"], "mode", "tap")


def move_taps_into_namespaces(topology: dict) -> None:
    """QEMU holds the tap open; the tap itself moves into the namespace it joins."""
    for vm in topology["vms"].values():
        for nic in vm["nics"]:
            if "tap" not in nic:
                continue
            run("ip", "link", "set", nic["tap"], "netns", nic["netns"])
            run("ip", "-n", nic["netns"], "link", "set", nic["tap"], "name", nic["peer_name"])
            run("ip", "-n", nic["netns"], "address", "add", nic["peer_address"], "dev", nic["peer_name"])
            run("ip", "-n", nic["netns"], "link", "set", nic["peer_name"], "up")


def start_upstream_bird(topology: dict) -> None:
    upstream_dir = RUN_DIR / "upstream"
    upstream_dir.mkdir(parents=True, exist_ok=True)
    config = upstream_dir / "bird.conf"
    # It holds the BGP passwords: readable by root only, from its creation on.
    config.touch(mode=0o600)
    config.chmod(0o600)
    config.write_text(upstream_bird_config(topology), encoding="utf-8")
    run("bird", "-p", "-c", str(config))
    run("ip", "netns", "exec", topology["upstream"]["netns"], "bird", "-c", str(config),
        "-s", str(upstream_dir / "bird.ctl"), "-P", str(pidfile("upstream-bird")))
    log(f"upstream BIRD (AS {topology['upstream']['asn']}) runs in netns {topology['upstream']['netns']}")


# ---- VMs --------------------------------------------------------------------------------------

def accelerator() -> list[str]:
    """Real KVM only with a hardware module loaded; a nested software KVM (kvm_pvm) hangs stock kernels."""
    hardware_kvm = any(Path("/sys/module", m).exists() for m in ("kvm_intel", "kvm_amd"))
    if hardware_kvm and os.access("/dev/kvm", os.R_OK | os.W_OK):
        return ["-accel", "kvm", "-cpu", "host"]
    # tb-size=128 keeps QEMU's translation cache (and so its RSS) small.
    return ["-accel", "tcg,thread=multi,tb-size=128", "-cpu", "max"]


def kernel_command_line(name: str, vm: dict, public_key: str) -> str:
    addresses = [f"{nic['device']}:{nic['address']}" for nic in vm["nics"]]
    addresses += [f"lo:{address}" for address in vm.get("loopback", [])]
    words = [
        "root=/dev/vda", "rw", "console=ttyS0", "net.ifnames=0", "mitigations=off", "quiet", "panic=-1",
        f"anycast_lab.hostname={name}",
        f"anycast_lab.addr={','.join(addresses)}",
        f"anycast_lab.key={public_key}",
    ]
    if vm.get("routes"):
        words.append(f"anycast_lab.route={','.join(vm['routes'])}")
    return " ".join(words)


def qemu_command(name: str, index: int, vm: dict, image: dict[str, Path], public_key: str) -> list[str]:
    vm_dir = RUN_DIR / name
    command = [
        "qemu-system-x86_64", "-name", f"{name},process=anycast-lab-{name}",
        *accelerator(), "-smp", "1", "-m", str(vm["memory_mb"]),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(image["kernel"]), "-initrd", str(image["initrd"]),
        "-append", kernel_command_line(name, vm, public_key),
        "-drive", f"file={vm_dir / 'disk.qcow2'},if=virtio,format=qcow2,cache=unsafe",
        "-device", "virtio-rng-pci",
        "-serial", f"file:{vm_dir / 'serial.log'}",
        "-monitor", f"unix:{vm_dir / 'monitor.sock'},server,nowait",
        "-pidfile", str(pidfile(name)), "-daemonize",
        # eth0: management, SSH forwarded from 127.0.0.1; restrict=on: no way out.
        "-netdev", f"user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:{vm['ssh_port']}-:22",
        "-device", f"virtio-net-pci,netdev=mgmt,mac=52:54:00:00:{index:02x}:00",
    ]
    for number, nic in enumerate(vm["nics"], start=1):
        netdev = f"n{number}"
        if "tap" in nic:
            command += ["-netdev", f"tap,id={netdev},ifname={nic['tap']},script=no,downscript=no"]
        else:
            command += ["-netdev", f"socket,id={netdev},udp=127.0.0.1:{nic['udp_peer_port']},localaddr=127.0.0.1:{nic['udp_port']}"]
        command += ["-device", f"virtio-net-pci,netdev={netdev},mac=52:54:00:00:{index:02x}:{number:02x}"]
    return command


def start_vms(topology: dict, image: dict[str, Path]) -> None:
    public_key = SSH_KEY.with_suffix(".pub").read_text(encoding="utf-8").split()[1]
    for index, (name, vm) in enumerate(topology["vms"].items(), start=1):
        vm_dir = RUN_DIR / name
        vm_dir.mkdir(parents=True, exist_ok=True)
        run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image["disk"]), str(vm_dir / "disk.qcow2"))
        command = qemu_command(name, index, vm, image, public_key)
        (vm_dir / "qemu.cmdline").write_text(" ".join(command) + "\n", encoding="utf-8")
        run(*command)
        log(f"{name}: started (pid {read_pid(name)}, ssh 127.0.0.1:{vm['ssh_port']}, {vm['memory_mb']} MB)")


def wait_until_ready(topology: dict, started: float) -> None:
    """Wait for every VM's readiness line on its serial console (never poll sshd)."""
    waiting = dict.fromkeys(topology["vms"])
    deadline = time.monotonic() + BOOT_TIMEOUT_SEC
    while waiting:
        for name in list(waiting):
            serial_log = RUN_DIR / name / "serial.log"
            text = serial_log.read_text(encoding="utf-8", errors="replace") if serial_log.exists() else ""
            tail = "\n".join(text.splitlines()[-20:])
            if f"{READY_MARKER} {name}" in text:
                del waiting[name]
                log(f"{name}: ready after {time.monotonic() - started:.0f} s")
            elif FAILED_MARKER in text or re.search(r"FAILED.*anycast-la", text):
                raise LabError(f"{name}: the VM failed to configure itself; serial log ends:\n{tail}")
            elif not pid_alive(read_pid(name), "qemu-system"):
                raise LabError(f"{name}: QEMU exited before the VM was ready; serial log ends:\n{tail}")
        if waiting and time.monotonic() > deadline:
            raise LabError(f"not ready after {BOOT_TIMEOUT_SEC} s: {', '.join(waiting)} (serial logs in {RUN_DIR})")
        time.sleep(1)


def start_game_server(topology: dict) -> None:
    """Copy lab/game_server.py to its VM and run it as a transient unit (a test fixture, not a role)."""
    game = topology["game_server"]
    # Installed as a command (the checkout's copy has no shebang: ansible-test wants none there).
    script = b"#!/usr/bin/python3\n" + (LAB_DIR / "game_server.py").read_bytes()
    command = (f"cat > {GAME_SERVER_PATH} && chmod 0755 {GAME_SERVER_PATH} && "
               f"systemd-run --quiet --unit=lab-game-server --property=Restart=always "
               f"/usr/bin/python3 {GAME_SERVER_PATH} serve --address {game['address']} --port {game['port']}")
    result = subprocess.run(ssh_command(topology, game["vm"]) + [command], input=script, capture_output=True,
                            timeout=120, check=False)
    if result.returncode != 0:
        raise LabError(f"{game['vm']}: starting the game server failed: {result.stderr.decode(errors='replace')}")
    log(f"{game['vm']}: game server on {game['address']}:{game['port']} (udp, tcp)")


def ssh_command(topology: dict, name: str) -> list[str]:
    return ["ssh", "-i", str(SSH_KEY), "-p", str(topology["vms"][name]["ssh_port"]),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=30", "root@127.0.0.1"]


# ---- Ansible ----------------------------------------------------------------------------------

def collections_root() -> Path:
    """A folder holding ansible_collections/anycast/edge -> this checkout (harness/collection.py),
    stable, so that repeated runs reuse it."""
    checkout_id = hashlib.sha256(str(REPO_DIR).encode()).hexdigest()[:12]
    return collection.collections_root(Path.home() / ".cache" / "anycast-edge" / "collections" / checkout_id)


def ansible_environment() -> dict[str, str]:
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env["ANSIBLE_COLLECTIONS_PATH"] = str(collections_root())
    # Under an emulated CPU every round trip counts: pipelining, multiplexed SSH (the default
    # ssh_args keep a ControlPersist master), and no fact gathering unless a play asks.
    env.setdefault("ANSIBLE_PIPELINING", "true")
    env.setdefault("ANSIBLE_FORKS", "10")
    env.setdefault("ANSIBLE_HOST_KEY_CHECKING", "false")
    env.setdefault("ANSIBLE_TIMEOUT", "60")
    # Where the time goes: the time of each role, and the slowest tasks, at the end of every run
    # (make lab, molecule's converge, idempotence and verify), so that CI's logs show it. The task
    # table is the summary only: profile_roles already stamps each task with the time.
    env.setdefault("ANSIBLE_CALLBACKS_ENABLED", "ansible.posix.profile_roles,ansible.posix.profile_tasks")
    env.setdefault("PROFILE_TASKS_SUMMARY_ONLY", "true")
    env.setdefault("PROFILE_TASKS_TASK_OUTPUT_LIMIT", "15")
    if os.environ.get("ANSIBLE_LAB_MITOGEN") == "1":
        env.update(mitogen_environment())
    return env


def mitogen_environment() -> dict[str, str]:
    """The mitogen_linear strategy (optional: `ANSIBLE_LAB_MITOGEN=1`), if mitogen is installed."""
    try:
        import ansible_mitogen  # pylint: disable=import-outside-toplevel
    except ImportError as error:
        raise LabError("ANSIBLE_LAB_MITOGEN=1 but mitogen is not installed in this Python") from error
    strategy_dir = Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"
    return {"ANSIBLE_STRATEGY_PLUGINS": str(strategy_dir), "ANSIBLE_STRATEGY": "mitogen_linear"}


# ---- commands ---------------------------------------------------------------------------------

def cmd_image(dummy_args: argparse.Namespace) -> None:
    ensure_host_tools()
    for role, path in ensure_image().items():
        print(f"{role}: {path}")


def cmd_up(args: argparse.Namespace) -> None:
    ensure_host_tools()
    topology = load_topology()
    check_inventory(topology)
    if (RUN_DIR / "state.json").exists():
        raise LabError(f"a lab is up (or was not torn down): {RUN_DIR}; run `make lab-down` first")
    times = {}
    started = time.monotonic()
    image = ensure_image()
    times["image"] = time.monotonic() - started
    try:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        (RUN_DIR / "state.json").write_text(json.dumps({"started": time.time()}) + "\n", encoding="utf-8")
        SSH_KEY.parent.mkdir(parents=True, exist_ok=True)
        # A fresh key per lab: nothing about access is baked into the shared image.
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "anycast-lab", "-f", str(SSH_KEY))
        setup_namespaces(topology)
        create_taps(topology)
        boot_started = time.monotonic()
        start_vms(topology, image)
        move_taps_into_namespaces(topology)
        start_upstream_bird(topology)
        wait_until_ready(topology, boot_started)
        times["boot"] = time.monotonic() - boot_started
        start_game_server(topology)
    except BaseException:
        if not args.keep_on_failure:
            log("bringing the lab up failed: tearing down what was started")
            teardown(topology)
        raise
    log("times: " + ", ".join(f"{step} {sec:.0f} s" for step, sec in times.items()))


def teardown(topology: dict) -> None:
    for name in topology["vms"]:
        stop_process(name, "qemu-system")
    stop_process("upstream-bird", "bird")
    for ns in (topology["upstream"]["netns"], topology["client"]["netns"]):
        if netns_exists(ns):
            run("ip", "netns", "delete", ns, check=False)
    for vm in topology["vms"].values():
        for nic in vm["nics"]:
            if "tap" in nic and link_exists(nic["tap"]):
                run("ip", "link", "delete", nic["tap"], check=False)
    shutil.rmtree(RUN_DIR, ignore_errors=True)


def cmd_down(dummy_args: argparse.Namespace) -> None:
    teardown(load_topology())
    log("lab is down")


def cmd_status(dummy_args: argparse.Namespace) -> None:
    topology = load_topology()
    for name in topology["vms"]:
        pid = read_pid(name)
        print(f"{name}: {'running, pid %d' % pid if pid_alive(pid, 'qemu-system') else 'not running'}")
    socket = RUN_DIR / "upstream" / "bird.ctl"
    if socket.exists():
        for what in (["show", "protocols"], ["show", "route", "all"]):
            print(run("birdc", "-s", str(socket), *what, check=False).stdout)


def cmd_ssh(args: argparse.Namespace) -> None:
    topology = load_topology()
    if args.host not in topology["vms"]:
        raise LabError(f"no VM {args.host}; VMs: {', '.join(topology['vms'])}")
    os.execvp("ssh", [*ssh_command(topology, args.host), *args.command])


def cmd_playbook(args: argparse.Namespace) -> None:
    command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(INVENTORY_DIR), *args.args]
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO_DIR, env=ansible_environment(), check=False)
    log(f"ansible-playbook {' '.join(args.args)}: {time.monotonic() - started:.0f} s, exit {result.returncode}")
    if result.returncode != 0:
        raise LabError(f"ansible-playbook failed (exit {result.returncode}); the lab stays up: `make lab-down` removes it")


def cmd_molecule(args: argparse.Namespace) -> None:
    """Run molecule, echoing its output, and sum the time spent in each of its actions."""
    command = [str(Path(sys.executable).parent / "molecule"), *args.args]
    started = last_mark = time.monotonic()
    action = "start"
    spent: dict[str, float] = {}
    with subprocess.Popen(command, cwd=REPO_DIR, env=ansible_environment(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            # molecule announces each action as "... <scenario> ➜ <action>: Executing" (26.x).
            plain = re.sub(r"\x1b\[[0-9;]*m", "", line)
            match = re.search(r"\b(dependency|cleanup|destroy|syntax|create|prepare|converge|idempotence|side_effect|verify)\b.{0,20}Executing", plain)
            if match:
                now = time.monotonic()
                spent[action] = spent.get(action, 0.0) + now - last_mark
                action, last_mark = match.group(1), now
        returncode = process.wait()
    now = time.monotonic()
    spent[action] = spent.get(action, 0.0) + now - last_mark
    log("molecule time by action: " + ", ".join(f"{name} {sec:.0f} s" for name, sec in spent.items() if sec >= 0.5)
        + f"; total {now - started:.0f} s")
    if returncode != 0:
        raise LabError(f"molecule {' '.join(args.args)} failed (exit {returncode})")


def cmd_freeze(args: argparse.Namespace) -> None:
    """Stop a VM dead (SIGSTOP to its QEMU): to its neighbours it is a POP that lost power -
    no goodbye, BFD notices. `thaw` lets it run on from where it stopped."""
    topology = load_topology()
    if args.vm not in topology["vms"]:
        raise LabError(f"no VM named {args.vm!r} (the lab has {', '.join(topology['vms'])})")
    pid = read_pid(args.vm)
    if not pid_alive(pid, "qemu-system"):
        raise LabError(f"{args.vm} is not running")
    os.kill(pid, signal.SIGSTOP if args.command == "freeze" else signal.SIGCONT)
    log(f"{args.vm}: {'frozen' if args.command == 'freeze' else 'running again'} (QEMU pid {pid})")


def cmd_show(dummy_args: argparse.Namespace) -> None:
    topology = load_topology()
    socket = RUN_DIR / "upstream" / "bird.ctl"
    if not socket.exists():
        raise LabError("the lab is not up (`make lab`)")
    print("\n== BGP sessions at the upstream router (AS %s)" % topology["upstream"]["asn"])
    print(run("birdc", "-s", str(socket), "show", "protocols", check=False).stdout)
    print("== Routes the upstream learned from the POPs")
    print(run("birdc", "-s", str(socket), "show", "route", "protocol", "pop1", "all", check=False).stdout)
    print(run("birdc", "-s", str(socket), "show", "route", "protocol", "pop2", "all", check=False).stdout)
    game = topology["game_server"]
    player = [sys.executable, str(LAB_DIR / "player.py"), "--target", f"{game['address']}:{game['port']}", "--wait", "5"]
    print(f"== A live A2S_INFO query from a player ({topology['client']['netns']}) to {game['address']}:{game['port']}")
    query = run("ip", "netns", "exec", topology["client"]["netns"], *player, "a2s", check=False, timeout=60)
    print((query.stdout or query.stderr).strip() + "\n")
    for name, vm in topology["vms"].items():
        if not any("tap" in nic for nic in vm["nics"]):
            continue  # only the POPs face the upstream
        print(f"== {name}: the data plane's counters (anycast-edge top, on the POP)")
        print(run(*ssh_command(topology, name), "PYTHONPATH=/usr/local/lib/anycast-edge/agent python3 -m "
                  f"anycast_edge_agent.top --exporter {name}=http://127.0.0.1:9591/metrics --once; "
                  "bpftool net show 2>/dev/null | sed -n '1,4p'", check=False, timeout=60).stdout)
    labctl = f"{os.path.relpath(sys.executable)} {os.path.relpath(__file__)}"
    print("== Using the lab")
    for name in topology["vms"]:
        print(f"  {'log into ' + name + ':':<22}{labctl} ssh {name}")
    print(f"  a player's shell:     ip netns exec {topology['client']['netns']} bash")
    print(f"  the upstream router:  birdc -s {socket} show route all")
    player_cmd = f"ip netns exec {topology['client']['netns']} {os.path.relpath(sys.executable)} lab/player.py"
    print(f"  a flood from a player: {player_cmd} --source 192.0.2.10 flood --count 3000 --rate 1000")
    print(f"  an A2S query:         {player_cmd} a2s   (more: {player_cmd} --help)")
    print(f"  a POP losing power:   {labctl} freeze pop1   (and back: {labctl} thaw pop1)")
    print(f"  drain a POP:          {labctl} playbook playbooks/drain.yml -l pop2   (undrain.yml to undo)")
    print(f"  rerun the rollout:    {labctl} playbook site.yml")
    print("  tear it all down:     make lab-down")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("image").set_defaults(func=cmd_image)
    up = commands.add_parser("up")
    up.add_argument("--keep-on-failure", action="store_true", help="leave what was started for debugging")
    up.set_defaults(func=cmd_up)
    commands.add_parser("down").set_defaults(func=cmd_down)
    commands.add_parser("status").set_defaults(func=cmd_status)
    ssh = commands.add_parser("ssh")
    ssh.add_argument("host")
    ssh.add_argument("command", nargs=argparse.REMAINDER)
    ssh.set_defaults(func=cmd_ssh)
    playbook = commands.add_parser("playbook")
    playbook.add_argument("args", nargs=argparse.REMAINDER)
    playbook.set_defaults(func=cmd_playbook)
    molecule = commands.add_parser("molecule")
    molecule.add_argument("args", nargs=argparse.REMAINDER)
    molecule.set_defaults(func=cmd_molecule)
    commands.add_parser("show").set_defaults(func=cmd_show)
    for name, what in (("freeze", "stop a VM dead, as a power loss would (SIGSTOP to QEMU)"),
                       ("thaw", "let a frozen VM run on")):
        freeze = commands.add_parser(name, help=what)
        freeze.add_argument("vm")
        freeze.set_defaults(func=cmd_freeze)
    # playbook and molecule pass every later word through, options included.
    args, passthrough = parser.parse_known_args()
    if passthrough:
        if args.command not in ("playbook", "molecule"):
            parser.error(f"unrecognized arguments: {' '.join(passthrough)}")
        args.args = [*args.args, *passthrough]
    try:
        args.func(args)
    except LabError as error:
        print(f"lab: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
