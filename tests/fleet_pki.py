"""A small fleet PKI made with the openssl command line, for the TLS tests of the exporter:

    ca.pem/.key            the fleet's CA
    pop.pem/.key           an exporter's certificate (127.0.0.1; server and client use: the fleet
                           guard presents it when it reads the other POPs)
    scraper.pem/.key       a client certificate of the fleet (Prometheus)
    stranger.pem/.key      a client certificate of another CA (stranger-ca.pem)
"""

from __future__ import annotations

import subprocess
from pathlib import Path

CERTIFICATES = (
    ("pop", "ca", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth"),
    ("scraper", "ca", "extendedKeyUsage=clientAuth"),
    ("stranger", "stranger-ca", "extendedKeyUsage=clientAuth"),
)


def _openssl(folder: Path, *argv: str) -> None:
    subprocess.run(["openssl", *argv], cwd=folder, check=True, capture_output=True)


def make_ca(folder: Path, ca: str) -> None:
    """<ca>.pem and <ca>.key: a self-signed CA."""
    _openssl(folder, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-days", "2", "-subj", "/CN=%s" % ca, "-keyout", ca + ".key", "-out", ca + ".pem")


def issue(folder: Path, name: str, ca: str, extensions: str) -> None:
    """<name>.pem and <name>.key: a certificate of ``ca`` with ``extensions`` (openssl's syntax)."""
    (folder / (name + ".ext")).write_text(extensions + "\n")
    _openssl(folder, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-subj", "/CN=" + name, "-keyout", name + ".key", "-out", name + ".csr")
    _openssl(folder, "x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
             "-CAcreateserial", "-days", "2", "-extfile", name + ".ext", "-out", name + ".pem")


def make_pki(folder: Path) -> Path:
    for ca in ("ca", "stranger-ca"):
        make_ca(folder, ca)
    for name, ca, extensions in CERTIFICATES:
        issue(folder, name, ca, extensions)
    return folder
