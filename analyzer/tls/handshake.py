"""The TLS handshake facts a capture shows in clear: ClientHello and ServerHello (RFC 8446 4.1.2-4.1.4).

Handshake messages are reassembled from the records of one direction (a message may span records,
a record may hold several messages; RFC 8446 5.1), bounded by MAX_MESSAGE. Parsers return None on
anything malformed, never raise. Only what the analysis and the listing need is kept: randoms (to
find the session's secrets in a key log), the negotiated version and cipher suite, SNI and ALPN.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

CLIENT_HELLO = 1
SERVER_HELLO = 2
NEW_SESSION_TICKET = 4
FINISHED = 20
KEY_UPDATE = 24
HANDSHAKE_TYPE_NAMES = {
    0: "HelloRequest", 1: "ClientHello", 2: "ServerHello", 4: "NewSessionTicket", 5: "EndOfEarlyData",
    8: "EncryptedExtensions", 11: "Certificate", 12: "ServerKeyExchange", 13: "CertificateRequest",
    14: "ServerHelloDone", 15: "CertificateVerify", 16: "ClientKeyExchange", 20: "Finished", 24: "KeyUpdate",
}
# A ServerHello with this random is a HelloRetryRequest (RFC 8446 4.1.3): the real one follows.
HELLO_RETRY_RANDOM = hashlib.sha256(b"HelloRetryRequest").digest()
# Certificates chains are the largest messages a handshake has; 64 KiB holds any sane one. A longer
# message is skipped (the randoms come from the hellos, which are small).
MAX_MESSAGE = 1 << 16

_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_EXT_SUPPORTED_VERSIONS = 43

VERSION_NAMES = {0x0300: "SSL 3.0", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2", 0x0304: "TLS 1.3"}
def version_name(version: int) -> str:
    return VERSION_NAMES.get(version, f"0x{version:04x}")


@dataclass(slots=True)
class ClientHello:
    random: bytes
    versions: tuple[int, ...]  # supported_versions, else the legacy version alone
    cipher_suites: tuple[int, ...]
    sni: str | None = None
    alpn: tuple[str, ...] = ()


@dataclass(slots=True)
class ServerHello:
    random: bytes
    version: int  # negotiated: supported_versions' selected version, else the legacy version
    cipher_suite: int
    alpn: str | None = None
    retry: bool = False  # a HelloRetryRequest


@dataclass(slots=True)
class HandshakeReader:
    """Reassembles one direction's plaintext handshake messages: (type, body) in order."""

    buf: bytearray = field(default_factory=bytearray)
    skipping: int = 0  # bytes left of a message too long to keep

    def feed(self, fragment: bytes) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        if self.skipping:
            take = min(self.skipping, len(fragment))
            self.skipping -= take
            fragment = fragment[take:]
        self.buf += fragment
        while len(self.buf) >= 4:
            msg_type = self.buf[0]
            length = int.from_bytes(self.buf[1:4], "big")
            if length > MAX_MESSAGE:
                self.skipping = max(0, length - (len(self.buf) - 4))
                del self.buf[: 4 + length]
                continue
            if len(self.buf) < 4 + length:
                break
            out.append((msg_type, bytes(self.buf[4 : 4 + length])))
            del self.buf[: 4 + length]
        return out

    def reset(self) -> None:
        """The handshake stream lost bytes: start afresh at the next record."""
        self.buf.clear()
        self.skipping = 0


class _Reader:
    """Big-endian reads off a bytes object that raise _Short past its end (caught by the parsers)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Short
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> bytes:
        return self.take(self.uint(length_bytes))

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


class _Short(Exception):
    """A length field pointed past the end of its message: the message is malformed."""


def _extensions(r: _Reader) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    if not r.left:
        return found
    ext = _Reader(r.vector(2))
    while ext.left:
        ext_type = ext.uint(2)
        found.setdefault(ext_type, ext.vector(2))
    return found


def parse_client_hello(body: bytes) -> ClientHello | None:
    try:
        r = _Reader(body)
        legacy_version = r.uint(2)
        random = r.take(32)
        r.vector(1)  # legacy_session_id
        suites_raw = r.vector(2)
        suites = tuple(struct.unpack(f"!{len(suites_raw) // 2}H", suites_raw[: len(suites_raw) // 2 * 2]))
        r.vector(1)  # compression methods
        extensions = _extensions(r)
        versions: tuple[int, ...] = (legacy_version,)
        if _EXT_SUPPORTED_VERSIONS in extensions:
            sv = _Reader(extensions[_EXT_SUPPORTED_VERSIONS])
            listed = _Reader(sv.vector(1))
            versions = tuple(listed.uint(2) for _ in range(listed.left // 2))
        return ClientHello(random, versions, suites, _server_name(extensions.get(_EXT_SERVER_NAME)),
                           _alpn(extensions.get(_EXT_ALPN)))
    except _Short:
        return None


def parse_server_hello(body: bytes) -> ServerHello | None:
    try:
        r = _Reader(body)
        version = r.uint(2)
        random = r.take(32)
        r.vector(1)  # legacy_session_id_echo
        suite = r.uint(2)
        r.uint(1)  # compression method
        extensions = _extensions(r)
        if _EXT_SUPPORTED_VERSIONS in extensions and len(extensions[_EXT_SUPPORTED_VERSIONS]) == 2:
            version = int.from_bytes(extensions[_EXT_SUPPORTED_VERSIONS], "big")
        alpn = _alpn(extensions.get(_EXT_ALPN))
        return ServerHello(random, version, suite, alpn[0] if alpn else None, random == HELLO_RETRY_RANDOM)
    except _Short:
        return None


def _server_name(data: bytes | None) -> str | None:
    """The host_name entry of a server_name extension (RFC 6066 3)."""
    if not data:
        return None
    r = _Reader(data)
    names = _Reader(r.vector(2))
    while names.left:
        name_type = names.uint(1)
        name = names.vector(2)
        if name_type == 0:
            return name.decode("ascii", "replace")
    return None


def _alpn(data: bytes | None) -> tuple[str, ...]:
    """The protocol names of an ALPN extension (RFC 7301 3.1)."""
    if not data:
        return ()
    r = _Reader(data)
    names = _Reader(r.vector(2))
    out: list[str] = []
    while names.left:
        out.append(names.vector(1).decode("ascii", "replace"))
    return tuple(out)
