"""TLS contexts of the exporter (server) and of its readers (the fleet guard, anycast-edge top).

Standard library only: ``top`` runs on the controller and must not need libbpf.
"""

from __future__ import annotations

import ssl


def server_ssl_context(cert_file: str, key_file: str, ca_file: str = "", client_auth: bool = False):
    """TLS 1.2+ server context; with ``client_auth``, clients must show a certificate ``ca_file`` signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    if client_auth:
        context.load_verify_locations(cafile=ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_ssl_context(ca_file: str = "", cert_file: str = "", key_file: str = ""):
    """What the fleet guard (and anycast-edge-top) read peers with: verify them against
    ``ca_file`` (the system's CAs when empty), present our own certificate when given."""
    context = ssl.create_default_context(cafile=ca_file or None)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context
