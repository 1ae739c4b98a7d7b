"""``anycast-edge-agent --config /etc/anycast-edge/agent.json``: the POP agent's service.

One thread per service probes (and refreshes the A2S cache); one puts the ``auto`` services under
attack and out of it (attack.py); one shares punches, bans and verified players with the other
POPs over NATS JetStream (fleet_sync.py, with ``fleet_sync`` set); the main thread checks the data
plane and decides, every ``probe_interval_sec``, whether the POP announces; the exporter answers
scrapes on ``listen_address:listen_port`` from its own thread.
"""

from __future__ import annotations

import argparse
import logging
import signal
import ssl
import sys
import threading

from prometheus_client import CollectorRegistry

from ansible_collections.anycast.edge.plugins.module_utils._birdc import Birdc

from . import config as config_module
from . import control
from . import health
from .attack import AttackController
from .exporter import EdgeCollector, serve
from .fleet_sync import FleetSync
from .maps import EdgeMaps, dataplane_attached
from .refresher import ServiceWatch
from .tls import client_ssl_context, server_ssl_context

LOG = logging.getLogger("anycast_edge_agent")


class Agent:
    def __init__(self, config, birdc=None):
        self.config = config
        self.edge_maps = EdgeMaps(config.pin_root, config.iface)
        self.watches = [ServiceWatch(service, config, self.edge_maps) for service in config.services]
        self.dataplane = health.RiseFall(config.rise, config.fall)
        self.stopping = threading.Event()
        self.announcer = None
        self.pop_name = config.pop_name
        if config.bird_manage:
            peers_context = None
            if any(url.startswith("https://") for url in config.fleet_peers):
                peers_context = client_ssl_context(config.tls_ca_file, config.tls_cert_file, config.tls_key_file)
            guard = health.FleetGuard(config.fleet_peers, config.min_announcing_peers,
                                      timeout=config.fleet_timeout_sec, name=config.pop_name,
                                      settle_sec=config.fleet_settle_sec, jitter_sec=config.fleet_jitter_sec,
                                      ssl_context=peers_context)
            self.announcer = health.Announcer(birdc or Birdc(config.bird_socket), config.bird_protocol,
                                              config.drain_state_file, guard)
        self.attack = AttackController(config.services, self.edge_maps)
        # Punches, bans and verified players shared with the fleet (off without fleet_sync).
        self.fleet_sync = None
        # Hand-made bans (the control socket's, and the fleet's with the sync on): the exporter lists them.
        self.manual_bans = control.ManualBans()
        if config.fleet_sync is not None:
            self.fleet_sync = FleetSync(config.fleet_sync, config.pop_name, self.edge_maps, self.manual_bans)
        self.control = control.Control(self.edge_maps, config.pop_name, self.manual_bans, self.fleet_sync)
        self.registry = CollectorRegistry()
        self.collector = EdgeCollector(self.edge_maps, config.top_clients, self.watches, agent=self,
                                       clients_interval_sec=config.top_clients_interval_sec,
                                       state_interval_sec=config.state_maps_interval_sec, attack=self.attack)
        self.registry.register(self.collector)
        self._threads = []

    @property
    def announced(self):
        return None if self.announcer is None else self.announcer.announced

    def published(self):
        """(announced, withdraw intent): what the exporter tells the fleet, read consistently."""
        return (None, False) if self.announcer is None else self.announcer.published()

    def check_dataplane(self) -> None:
        if not self.config.check_dataplane:
            self.dataplane.state = health.UP
            return
        try:
            evidence = health.UP if dataplane_attached(self.config.pin_root, self.config.iface) else health.DOWN
        except Exception as exc:  # pylint: disable=broad-except
            LOG.error("cannot tell whether the XDP program is attached to %s: %s", self.config.iface, exc)
            return
        if self.dataplane.feed(evidence):
            LOG.warning("XDP program on %s: %s", self.config.iface,
                        "attached" if self.dataplane.state == health.UP else "NOT attached")

    def decide_once(self) -> str | None:
        self.check_dataplane()
        states = {}
        for watch in self.watches:
            with watch.lock:
                states[watch.service.name] = watch.health.state
        decision = health.decide(self.dataplane.state, states)
        if self.announcer is not None:
            self.announcer.apply(decision)
        return decision

    def start(self) -> None:
        for watch in self.watches:
            thread = threading.Thread(target=watch.run, args=(self.stopping,), name="probe-" + watch.service.name,
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        # Attack mode of the auto services, every attack.TICK_SEC (whatever the probes do).
        thread = threading.Thread(target=self.attack.run, args=(self.stopping,), name="attack-mode", daemon=True)
        thread.start()
        self._threads.append(thread)
        # The fleet sync in its own thread and event loop: the bus never holds up the rest.
        if self.fleet_sync is not None:
            thread = threading.Thread(target=self.fleet_sync.run, args=(self.stopping,), name="fleet-sync", daemon=True)
            thread.start()
            self._threads.append(thread)

    def serve_metrics(self):
        config = self.config
        context = None
        if config.tls_cert_file:
            context = server_ssl_context(config.tls_cert_file, config.tls_key_file, config.tls_ca_file,
                                         config.tls_client_auth)
        return serve(self.registry, config.listen_address, config.listen_port, context)

    def serve_control(self):
        """The local control socket (hand-made bans), from its own thread; None without one."""
        if not self.config.control_socket:
            return None
        return control.serve(self.control, self.config.control_socket)

    def run(self) -> None:
        self.start()
        while not self.stopping.is_set():
            try:
                self.decide_once()
            except Exception:  # pylint: disable=broad-except
                LOG.exception("health decision failed; keeping the last state")
            self.stopping.wait(self.config.probe_interval_sec)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="anycast-edge-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="/etc/anycast-edge/agent.json")
    parser.add_argument("--check", action="store_true", help="validate the configuration and exit")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    # systemd's journal adds the time and the unit: print level and text only.
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        config = config_module.load(args.config)
    except (OSError, ValueError) as exc:
        LOG.error("configuration %s: %s", args.config, exc)
        return 2
    if args.check:
        print("configuration OK: %d services" % len(config.services))
        return 0
    agent = Agent(config)
    signal.signal(signal.SIGTERM, lambda *dummy: agent.stopping.set())
    signal.signal(signal.SIGINT, lambda *dummy: agent.stopping.set())
    try:
        agent.serve_metrics()
    except (OSError, ssl.SSLError) as exc:
        LOG.error("cannot listen on %s:%d: %s", config.listen_address, config.listen_port, exc)
        return 1
    LOG.info("serving metrics on %s://%s:%d; %d services", "https" if config.tls_cert_file else "http",
             config.listen_address, config.listen_port, len(config.services))
    try:
        agent.serve_control()
    except OSError as exc:
        LOG.error("cannot listen on the control socket %s: %s", config.control_socket, exc)
        return 1
    agent.run()
    agent.stop()
    return 0
