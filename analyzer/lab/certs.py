"""Throwaway TLS material for the lab (edge: files): a test CA, a server certificate, client contexts.

Strategy: `make_pki(directory)` generates, with the `cryptography` package, a CA and a server
certificate signed by it for every name a loopback client may use (DNS localhost, IP 127.0.0.1 and
::1), ECDSA P-256 keys (small certificates keep the recorded handshakes KiB-sized), valid from an
hour ago for VALIDITY_DAYS, written as PEM into `directory` (the broker's private temp dir: nothing
is kept, nothing goes to /etc). The extensions are the ones a strict verifier wants (CA basic
constraints critical, key usages, key identifiers), so the chain also passes Python 3.13's
VERIFY_X509_STRICT. `client_context` is the one SSLContext every Python client of the lab uses
(the broker's readiness probe, the scenario programs, the tests): it trusts the test CA only,
checks the host name, can pin one TLS version and writes the session secrets to a key log (NSS
key log format, what Wireshark's `tls.keylog_file` reads). `handshake` opens one TLS connection
and reports what was negotiated.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where certificates are made: every CLI command loads this module, few make PKI
    from cryptography import x509

# The name clients send as SNI and verify against; the certificate also holds the loopback IPs.
SERVER_NAME = "localhost"
SERVER_HOSTS = (SERVER_NAME, "127.0.0.1", "::1")
# The TLS versions the lab speaks, as --tls-version spells them, and their ssl.TLSVersion.
TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# A run-time certificate only has to outlive the broker that uses it; a week covers a long session.
VALIDITY_DAYS = 7
# Backdated so that a clock a little behind (a VM, a container) still accepts a fresh certificate.
BACKDATE = dt.timedelta(hours=1)
HANDSHAKE_TIMEOUT = 5.0


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one throwaway PKI (paths)."""

    directory: str
    ca_cert: str
    server_cert: str
    server_key: str


def _name(common_name: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "amqp-hb lab (throwaway)"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    from cryptography import x509

    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    from cryptography import x509

    return x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                         encipher_only=False, decipher_only=False)


def _write(path: str, data: bytes, mode: int = 0o644) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def make_pki(directory: str, hosts: tuple[str, ...] = SERVER_HOSTS, days: int = VALIDITY_DAYS) -> TlsFiles:
    """Generate a CA and a server certificate for `hosts` into `directory` (created if needed)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    os.makedirs(directory, mode=0o700, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    start, end = now - BACKDATE, now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("amqp-hb lab test CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(_key_usage(ca=True), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    server = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_name)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(start).not_valid_after(end)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(_key_usage(ca=False), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(_san(hosts), critical=False)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
              .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return TlsFiles(directory=directory,
                    ca_cert=_write(os.path.join(directory, "ca.pem"), ca.public_bytes(pem)),
                    server_cert=_write(os.path.join(directory, "server.pem"), server.public_bytes(pem)),
                    server_key=_write(os.path.join(directory, "server-key.pem"), key_pem, 0o600))


def client_context(cafile: str, version: str | None = None, keylog: str | None = None) -> ssl.SSLContext:
    """A client SSLContext trusting `cafile` only, checking host names.

    version: "1.2" or "1.3" pins minimum and maximum to it; None allows both (the default range).
    keylog: file the session secrets are appended to (NSS key log format), or None.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    context.load_verify_locations(cafile)
    if version is not None:
        context.minimum_version = context.maximum_version = tls_version(version)
    if keylog is not None:
        context.keylog_filename = keylog
    return context


def tls_version(version: str) -> ssl.TLSVersion:
    try:
        return TLS_VERSIONS[version]
    except KeyError:
        raise ValueError(f"TLS version must be one of {', '.join(TLS_VERSIONS)}, got {version!r}") from None


def session_facts(sock: ssl.SSLSocket | ssl.SSLObject) -> dict[str, object]:
    """What a client can tell about its TLS session: protocol version and cipher suite (OpenSSL's names)."""
    cipher = sock.cipher()
    return {"version": sock.version(), "cipher": cipher[0] if cipher else None}


def handshake(host: str, port: int, cafile: str, version: str | None = None,
              server_hostname: str = SERVER_NAME, timeout: float = HANDSHAKE_TIMEOUT) -> dict[str, object]:
    """Complete one TLS handshake with host:port, then close it with close_notify; return session_facts.

    The close_notify matters: RabbitMQ answers it at once, whereas after a bare close it waits for the
    AMQP protocol header until its handshake_timeout (10 s) and only then sends its own close_notify,
    into a capture that may have started meanwhile (measured here).
    """
    context = client_context(cafile, version)
    with socket.create_connection((host, port), timeout=timeout) as raw, \
            context.wrap_socket(raw, server_hostname=server_hostname) as tls:
        facts = session_facts(tls)
        with contextlib.suppress(OSError):  # ssl.SSLError is an OSError: a peer that closed first is fine
            tls.unwrap()
        return facts
