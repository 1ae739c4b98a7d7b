"""The exporter over TLS, as an operator deploys it: a fleet CA, each POP's certificate, client
certificates required. A scraper with a certificate of that CA reads the metrics (and so does
the fleet guard, reading a peer); without one, or over plain http, it gets nothing; a client
that opens a connection and never finishes its handshake does not stall the others."""

from __future__ import annotations

import importlib
import socket
import ssl
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Gauge

importlib.import_module("a2s_responder")  # puts agent/ on sys.path (see its docstring)
from fleet_pki import make_pki  # noqa: E402  pylint: disable=wrong-import-position

# pylint: disable=wrong-import-position
from anycast_edge_agent import health  # noqa: E402
from anycast_edge_agent import top  # noqa: E402
from anycast_edge_agent.exporter import serve  # noqa: E402
from anycast_edge_agent.tls import client_ssl_context, server_ssl_context  # noqa: E402


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_exporter(pki):
    registry = CollectorRegistry()
    Gauge("anycast_edge_announced", "test", registry=registry).set(1)
    context = server_ssl_context(str(pki / "pop.pem"), str(pki / "pop.key"), str(pki / "ca.pem"), client_auth=True)
    server, thread = serve(registry, "127.0.0.1", 0, context)
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        thread.join()


def fetch(url, context=None):
    with urllib.request.urlopen(url, timeout=5, context=context) as response:
        return response.read().decode()


def test_a_scraper_with_a_fleet_certificate_reads_the_metrics(pki, tls_exporter):
    context = client_ssl_context(str(pki / "ca.pem"), str(pki / "scraper.pem"), str(pki / "scraper.key"))
    assert "anycast_edge_announced 1.0" in fetch("https://127.0.0.1:%d/metrics" % tls_exporter, context)


def test_the_fleet_guard_reads_a_tls_peer_with_its_own_certificate(pki, tls_exporter):
    context = client_ssl_context(str(pki / "ca.pem"), str(pki / "pop.pem"), str(pki / "pop.key"))
    assert health.peer_announces("https://127.0.0.1:%d/metrics" % tls_exporter, 5, context)


@pytest.mark.parametrize("client", [None, "stranger"])
def test_no_certificate_or_another_cas_gets_nothing(pki, tls_exporter, client):
    context = client_ssl_context(str(pki / "ca.pem"), *(
        (str(pki / (client + ".pem")), str(pki / (client + ".key"))) if client else ()))
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        fetch("https://127.0.0.1:%d/metrics" % tls_exporter, context)


def test_plain_http_gets_nothing(tls_exporter):
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        fetch("http://127.0.0.1:%d/metrics" % tls_exporter)


def test_a_client_stuck_in_its_handshake_does_not_stall_the_others(pki, tls_exporter):
    stuck = socket.create_connection(("127.0.0.1", tls_exporter))  # connects, never says hello
    try:
        context = client_ssl_context(str(pki / "ca.pem"), str(pki / "scraper.pem"), str(pki / "scraper.key"))
        assert "anycast_edge_announced" in fetch("https://127.0.0.1:%d/metrics" % tls_exporter, context)
    finally:
        stuck.close()


def test_anycast_edge_top_reads_a_tls_exporter_with_a_client_certificate(pki, tls_exporter, capsys):
    url = "pop1=https://127.0.0.1:%d/metrics" % tls_exporter
    assert top.main(["--exporter", url, "--once", "--json", "--interval", "0.2", "--cacert", str(pki / "ca.pem"),
                     "--cert", str(pki / "scraper.pem"), "--key", str(pki / "scraper.key")]) == 0
    assert '"announced": true' in capsys.readouterr().out
    # Without the client certificate the exporter refuses it, and top says so.
    assert top.main(["--exporter", url, "--once", "--json", "--interval", "0.2", "--cacert", str(pki / "ca.pem")]) == 1
