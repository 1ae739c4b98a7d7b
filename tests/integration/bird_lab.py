"""A two-router BGP lab in network namespaces: a BIRD "POP" and a BIRD "upstream".

    [ns pop]  veth-pop 10.77.0.1/30  <---->  10.77.0.2/30 veth-up  [ns upstream]
    BIRD, AS 64500 (configured by the role)    BIRD, AS 64600 (imports all, exports none)

Each BIRD runs natively with its own config, control socket and pid file in a temp dir, so
nothing touches the host's /etc/bird or /run/bird. ``BirdLab.stop()`` kills exactly the BIRD
processes it started (by their pid files) and deletes the namespaces it created.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

POP_ADDRESS = "10.77.0.1"
UPSTREAM_ADDRESS = "10.77.0.2"
POP_ASN = 64500
UPSTREAM_ASN = 64600

# Short timers so sessions come up (and notice a dead peer) in seconds, not minutes.
UPSTREAM_CONFIG = """\
router id {upstream};
log "{log}" all;
protocol device {{}}
protocol bfd {{
  interface "*" {{ interval 100 ms; multiplier 3; }};
}}
protocol bgp pop {{
  local {upstream} as {upstream_asn};
  neighbor {pop} as {pop_asn};
  hold time 6; keepalive time 2; connect retry time 1;
  # After an error (the test with a wrong ASN) retry at once instead of the default 60 s.
  error wait time 1, 2;
  bfd on;
  ipv4 {{ import all; export none; }};
}}
"""

# What the POP runs before the role first configures it: no sessions at all.
POP_INITIAL_CONFIG = """\
router id {pop};
protocol device {{}}
"""


def run(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)


class BirdLab:
    def __init__(self, workdir: Path, tag: str):
        self.workdir = workdir
        self.pop_ns = "aebird-pop-" + tag
        self.upstream_ns = "aebird-up-" + tag
        self.pop_dir = workdir / "pop"
        self.upstream_dir = workdir / "upstream"
        self._namespaces: list[str] = []
        self._pidfiles: list[Path] = []

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> "BirdLab":
        try:
            for ns in (self.pop_ns, self.upstream_ns):
                run("ip", "netns", "add", ns)
                self._namespaces.append(ns)
                run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", self.pop_ns, "link", "add", "veth-pop", "type", "veth",
                "peer", "name", "veth-up", "netns", self.upstream_ns)
            run("ip", "-n", self.pop_ns, "addr", "add", POP_ADDRESS + "/30", "dev", "veth-pop")
            run("ip", "-n", self.upstream_ns, "addr", "add", UPSTREAM_ADDRESS + "/30", "dev", "veth-up")
            run("ip", "-n", self.pop_ns, "link", "set", "veth-pop", "up")
            run("ip", "-n", self.upstream_ns, "link", "set", "veth-up", "up")
            for folder in (self.pop_dir, self.upstream_dir):
                folder.mkdir(parents=True, exist_ok=True)
            (self.pop_dir / "state").mkdir(exist_ok=True)
            self.pop_config.write_text(POP_INITIAL_CONFIG.format(pop=POP_ADDRESS))
            (self.upstream_dir / "bird.conf").write_text(UPSTREAM_CONFIG.format(
                upstream=UPSTREAM_ADDRESS, pop=POP_ADDRESS, upstream_asn=UPSTREAM_ASN, pop_asn=POP_ASN,
                log=self.upstream_dir / "bird.log"))
            self._start_bird(self.upstream_ns, self.upstream_dir)
            self._start_bird(self.pop_ns, self.pop_dir)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_bird(self, ns: str, folder: Path) -> None:
        pidfile = folder / "bird.pid"
        # bird daemonizes; its pid file is how we find (and later kill) exactly this process.
        run("ip", "netns", "exec", ns, "bird", "-c", str(folder / "bird.conf"),
            "-s", str(folder / "bird.ctl"), "-P", str(pidfile))
        self._pidfiles.append(pidfile)
        deadline = time.monotonic() + 10
        while not (folder / "bird.ctl").exists():
            if time.monotonic() > deadline:
                raise RuntimeError("BIRD in %s did not create its control socket" % ns)
            time.sleep(0.05)

    def stop(self) -> None:
        for pidfile in self._pidfiles:
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._pidfiles.clear()
        for ns in reversed(self._namespaces):
            run("ip", "netns", "del", ns, check=False)
        self._namespaces.clear()

    # ---- paths --------------------------------------------------------------------------

    @property
    def pop_config(self) -> Path:
        return self.pop_dir / "bird.conf"

    @property
    def pop_socket(self) -> Path:
        return self.pop_dir / "bird.ctl"

    @property
    def upstream_socket(self) -> Path:
        return self.upstream_dir / "bird.ctl"

    # ---- looking at the routers ---------------------------------------------------------

    def birdc(self, socket: Path, *command: str) -> str:
        # birdc's exit status is not meaningful (1 for "Network not found"): read the text.
        return run("birdc", "-s", str(socket), *command, check=False).stdout

    def upstream_routes(self) -> str:
        return self.birdc(self.upstream_socket, "show", "route", "all")

    def pop_protocols(self) -> str:
        return self.birdc(self.pop_socket, "show", "protocols")

    def wait_for(self, predicate, what: str, timeout: float = 30, interval: float = 0.25):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError("timed out after %ss waiting for %s; upstream routes:\n%s\nPOP protocols:\n%s"
                             % (timeout, what, self.upstream_routes(), self.pop_protocols()))

    def session_established(self) -> bool:
        return "Established" in self.birdc(self.upstream_socket, "show", "protocols", "pop")
