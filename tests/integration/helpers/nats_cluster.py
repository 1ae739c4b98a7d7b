"""A real NATS JetStream cluster of Debian's nats-server, one process per server, on loopback ports
of the namespace the calling thread is in (harness/namespace.py: a test inside an EdgeEnv
gets its servers inside the POPs' namespace). Each server has its own store folder; a server can
be killed (SIGKILL: a crashed POP) and started again on the same store and ports (a healed one).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

CONFIG = """\
server_name: {name}
listen: 127.0.0.1:{client_port}
http: 127.0.0.1:{monitor_port}
jetstream {{
  store_dir: "{store}"
  max_memory_store: 64MB
  max_file_store: 256MB
}}
{authorization}
cluster {{
  name: anycast_edge_test
  listen: 127.0.0.1:{route_port}
  routes: [{routes}]
}}
"""


def free_ports(count):
    sockets = [socket.socket() for dummy in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class NatsCluster:
    def __init__(self, workdir: Path, size: int = 3, users=None):
        """users: {name: password} the clients must log in as (none: no authorization)."""
        self.workdir = Path(workdir)
        self.size = size
        self.users = dict(users or {})
        ports = free_ports(3 * size)
        self.client_ports = ports[:size]
        self.route_ports = ports[size:2 * size]
        self.monitor_ports = ports[2 * size:]
        self.processes = [None] * size

    def url(self, index):
        return "nats://127.0.0.1:%d" % self.client_ports[index]

    @property
    def urls(self):
        return [self.url(index) for index in range(self.size)]

    def _config(self, index):
        routes = ", ".join("nats-route://127.0.0.1:%d" % port for other, port in enumerate(self.route_ports)
                           if other != index)
        path = self.workdir / ("n%d.conf" % index)
        path.write_text(CONFIG.format(name="n%d" % index, client_port=self.client_ports[index],
                                      monitor_port=self.monitor_ports[index], route_port=self.route_ports[index],
                                      store=self.workdir / ("store%d" % index), routes=routes,
                                      authorization=self._authorization()))
        return path

    def _authorization(self):
        if not self.users:
            return ""
        users = ", ".join("{user: %s, password: %s}" % (json.dumps(name), json.dumps(password))
                          for name, password in sorted(self.users.items()))
        return "authorization {\n  users: [%s]\n}" % users

    def start(self, index=None):
        for which in range(self.size) if index is None else [index]:
            log = open(self.workdir / ("n%d.log" % which), "ab")  # pylint: disable=consider-using-with
            self.processes[which] = subprocess.Popen(["nats-server", "-c", str(self._config(which))],
                                                     stdout=log, stderr=subprocess.STDOUT)
            log.close()
        return self

    def kill(self, index):
        process = self.processes[index]
        if process is not None:
            process.kill()
            process.wait(timeout=10)
            self.processes[index] = None

    def stop(self):
        for index in range(self.size):
            self.kill(index)

    def jsz(self, index):
        with urllib.request.urlopen("http://127.0.0.1:%d/jsz" % self.monitor_ports[index], timeout=2) as answer:
            return json.load(answer)

    def wait_for_jetstream(self, timeout=30.0):
        """Until a stream can be made on the cluster (the JetStream meta group has its leader)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                asyncio.run(self._probe())
                return
            except Exception as exc:  # pylint: disable=broad-except
                last = exc
                time.sleep(0.3)
        raise AssertionError("the NATS cluster has no JetStream after %.0f s: %s (logs in %s)"
                             % (timeout, last, self.workdir))

    async def _probe(self):
        import nats  # pylint: disable=import-outside-toplevel
        login = {}
        if self.users:
            name, password = sorted(self.users.items())[0]
            login = dict(user=name, password=password)
        client = await nats.connect(self.urls, connect_timeout=1, allow_reconnect=False, **login)
        try:
            js = client.jetstream(timeout=2)
            await js.add_stream(name="probe", subjects=["probe.>"], num_replicas=min(3, self.size))
            await js.delete_stream("probe")
        finally:
            await client.close()

    def log(self, index):
        return (self.workdir / ("n%d.log" % index)).read_text(errors="replace")
