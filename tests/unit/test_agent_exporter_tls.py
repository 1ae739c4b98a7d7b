"""The exporter over TLS, as an operator deploys it: a fleet CA, each POP's certificate, client
certificates required. A scraper with a certificate of that CA reads the metrics (and so does
the fleet guard, reading a peer); without one, or over plain http, it gets nothing; a client
that opens a connection and never finishes its handshake does not stall the others."""

from __future__ import annotations

import importlib
import socket
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Gauge

importlib.import_module("a2s_responder")  # puts agent/ on sys.path (see its docstring)

# pylint: disable=wrong-import-position
from anycast_edge_agent import health  # noqa: E402
from anycast_edge_agent.exporter import client_ssl_context, serve, server_ssl_context  # noqa: E402


def openssl(*argv, cwd):
    subprocess.run(["openssl", *argv], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """ca.pem; pop.pem/pop.key (server, 127.0.0.1); scraper.pem/.key (client); stranger.* (another CA)."""
    folder = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "stranger-ca"):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                "-subj", "/CN=%s" % ca, "-keyout", ca + ".key", "-out", ca + ".pem", cwd=folder)
    for name, ca, extension in (("pop", "ca", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth"),
                                ("scraper", "ca", "extendedKeyUsage=clientAuth"),
                                ("stranger", "stranger-ca", "extendedKeyUsage=clientAuth")):
        (folder / (name + ".ext")).write_text(extension + "\n")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=" + name,
                "-keyout", name + ".key", "-out", name + ".csr", cwd=folder)
        openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key", "-CAcreateserial",
                "-days", "2", "-extfile", name + ".ext", "-out", name + ".pem", cwd=folder)
    return folder


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
