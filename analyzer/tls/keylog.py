"""NSS key log text (SSLKEYLOGFILE, Python's SSLContext.keylog_filename, a pcapng Decryption Secrets
Block) parsed into secrets per session, keyed by the ClientHello's 32-byte random.

One line per secret: `LABEL <client random hex> <secret hex>`; `#` starts a comment. The labels used
are those that decrypt records of an AEAD session: CLIENT_RANDOM (the TLS 1.2 master secret) and the
four TLS 1.3 handshake and application traffic secrets. Other well-formed lines (RSA pre-master
secrets, exporter and early-data secrets, ECH) are counted as unsupported, anything else as bad: a key
log is often concatenated from several processes, so one bad line must not lose the others.

Parsing never raises. The secrets never appear in a repr, a str or a message: a key log is a
credential for every session it names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

CLIENT_RANDOM = "CLIENT_RANDOM"
CLIENT_HANDSHAKE_TRAFFIC_SECRET = "CLIENT_HANDSHAKE_TRAFFIC_SECRET"
SERVER_HANDSHAKE_TRAFFIC_SECRET = "SERVER_HANDSHAKE_TRAFFIC_SECRET"
CLIENT_TRAFFIC_SECRET_0 = "CLIENT_TRAFFIC_SECRET_0"
SERVER_TRAFFIC_SECRET_0 = "SERVER_TRAFFIC_SECRET_0"

# Secret sizes: the TLS 1.2 master secret is always 48 bytes (RFC 5246 8.1); a TLS 1.3 traffic secret
# is one hash long (RFC 8446 7.1), SHA-256 or SHA-384 for every suite defined.
SECRET_SIZES: dict[str, frozenset[int]] = {
    CLIENT_RANDOM: frozenset({48}),
    CLIENT_HANDSHAKE_TRAFFIC_SECRET: frozenset({32, 48}),
    SERVER_HANDSHAKE_TRAFFIC_SECRET: frozenset({32, 48}),
    CLIENT_TRAFFIC_SECRET_0: frozenset({32, 48}),
    SERVER_TRAFFIC_SECRET_0: frozenset({32, 48}),
}

CLIENT_RANDOM_SIZE = 32

_LABEL = re.compile(rb"[A-Z][A-Z0-9_]*")
_HEX = re.compile(rb"(?:[0-9A-Fa-f]{2})+")
# Bytes that end a line's meaningful text besides ASCII whitespace: a Decryption Secrets Block is
# padded to 32 bits with NULs, and a reader may hand the padding over.
_LINE_PADDING = b" \t\r\x0b\x0c\x00"


@dataclass(repr=False)
class KeyLog:
    """NSS key log (SSLKEYLOGFILE / Python's SSLContext.keylog_filename / pcapng Decryption Secrets Block text)."""

    by_client_random: dict[bytes, dict[str, bytes]] = field(default_factory=dict)
    bad_lines: int = 0  # lines that are neither comments/blank nor a well-formed "LABEL <hex> <hex>"
    unsupported_lines: int = 0  # well-formed lines of labels we do not use (e.g. "RSA ...", EARLY_*), counted

    @classmethod
    def parse(cls, text: bytes | str) -> KeyLog:
        """Every line of `text`; of two lines for the same session and label, the later wins."""
        data = text.encode("utf-8", "replace") if isinstance(text, str) else bytes(text)
        keylog = cls()
        for line in data.splitlines():
            keylog._add_line(line.strip(_LINE_PADDING))
        return keylog

    def merge(self, other: KeyLog) -> None:
        """Add `other`'s sessions and counts to this one; `other`'s secret wins where both have a label."""
        for client_random, secrets in other.by_client_random.items():
            self.by_client_random.setdefault(client_random, {}).update(secrets)
        self.bad_lines += other.bad_lines
        self.unsupported_lines += other.unsupported_lines

    def secrets_for(self, client_random: bytes) -> dict[str, bytes] | None:
        """The session's secrets by label (a copy), or None when the key log does not know the session."""
        secrets = self.by_client_random.get(bytes(client_random))
        return None if secrets is None else dict(secrets)

    def __len__(self) -> int:
        return len(self.by_client_random)

    def __repr__(self) -> str:
        return f"KeyLog(sessions={len(self)}, bad_lines={self.bad_lines}, unsupported_lines={self.unsupported_lines})"

    def _add_line(self, line: bytes) -> None:
        if not line or line.startswith(b"#"):
            return
        parsed = _parse_line(line)
        if parsed is None:
            self.bad_lines += 1
            return
        label, client_random, secret = parsed
        sizes = SECRET_SIZES.get(label)
        if sizes is None:
            self.unsupported_lines += 1
        elif len(client_random) != CLIENT_RANDOM_SIZE or len(secret) not in sizes:
            self.bad_lines += 1
        else:
            self.by_client_random.setdefault(client_random, {})[label] = secret


def _parse_line(line: bytes) -> tuple[str, bytes, bytes] | None:
    """(label, first hex field, second hex field) of a `LABEL <hex> <hex>` line, or None."""
    fields = line.split()
    if len(fields) != 3:
        return None
    label, first, second = fields
    if not (_LABEL.fullmatch(label) and _HEX.fullmatch(first) and _HEX.fullmatch(second)):
        return None
    return label.decode("ascii"), bytes.fromhex(first.decode("ascii")), bytes.fromhex(second.decode("ascii"))
