"""What an encrypted record carries, told from its size and place alone (no keys).

An AEAD suite adds a fixed overhead to every record (suites.record_overhead), so a protected
record's plaintext length is known exactly (less TLS 1.3's optional padding, which OpenSSL,
Erlang/OTP, Java, Go and .NET do not add by default). AMQP 0-9-1 gives some plaintexts a
size of their own (amqp/frames.py): a heartbeat frame is 8 bytes and no other frame is that short;
connection.tune and tune-ok are 20 bytes; an alert is 2 bytes, shorter than any frame. The first
8-byte record a client sends is its protocol header, which is as long as a heartbeat. These guesses
stand only while each record holds one frame: peers write an idle heartbeat alone, which is all
the timing analysis needs from them (field-notes.md, TLS).
"""
from __future__ import annotations

from dataclasses import dataclass

from analyzer.amqp.frames import FRAME_HEADER_SIZE, PROTOCOL_HEADER_SIZE
from analyzer.tls.suites import TLS12, TLS13, record_overhead

# Plaintext sizes (AMQP 0-9-1 spec 4.2.3, 1.4.2): a frame is header (7) + payload + frame-end (1).
HEARTBEAT_PLAINTEXT = FRAME_HEADER_SIZE + 1
TUNE_PLAINTEXT = FRAME_HEADER_SIZE + 12 + 1  # class, method, channel-max (2), frame-max (4), heartbeat (2)
ALERT_PLAINTEXT = 2  # level, description (RFC 8446 6)
# connection.close-ok has no arguments; connection.close at least a reply code, an empty reply text and
# the failing class and method ids.
CLOSE_OK_PLAINTEXT = FRAME_HEADER_SIZE + 4 + 1
MIN_CLOSE_PLAINTEXT = FRAME_HEADER_SIZE + 4 + 2 + 1 + 2 + 2 + 1

# Guesses.
PROTOCOL_HEADER, HEARTBEAT, TUNE, TUNE_OK, ALERT = "protocol-header", "heartbeat", "tune", "tune-ok", "alert"


# A heartbeat's fragment length under each AEAD record protection: TLS 1.2 ChaCha20-Poly1305, TLS 1.3,
# TLS 1.2 AES-GCM. No other AMQP frame fits any of them under any of the three (a frame is 8 bytes
# or at least 12), nor does any record of a CBC suite (an explicit IV and a MAC alone are longer), so
# when the capture misses the hellos (it began after the handshake, or cut it) the heartbeats still show.
# (The suites' own overheads: suites.record_overhead, for one suite of each protection.)
_HEARTBEAT_FRAGMENTS = frozenset(HEARTBEAT_PLAINTEXT + (record_overhead(version, suite) or 0)
                                 for version, suite in ((TLS12, 0xCCA8), (TLS13, 0x1301), (TLS12, 0xC02F)))


@dataclass(slots=True)
class AmqpGuesser:
    """One connection's guesses, fed its protected application-data records in capture order.
    `midstream`: the capture began after the handshake (the version and suite are unknown)."""

    midstream: bool = False
    client_header_seen: bool = False
    tune_seen: bool = False
    tune_ok_seen: bool = False

    def __post_init__(self) -> None:
        if self.midstream:
            self.client_header_seen = self.tune_seen = self.tune_ok_seen = True

    def guess(self, from_client: bool, plaintext_len: int | None, fragment_len: int) -> str | None:
        if plaintext_len is None:
            return HEARTBEAT if fragment_len in _HEARTBEAT_FRAGMENTS else None
        if plaintext_len == ALERT_PLAINTEXT:
            return ALERT  # TLS 1.3 hides alerts in application-data records
        if from_client:
            if not self.client_header_seen:
                if plaintext_len == PROTOCOL_HEADER_SIZE:
                    self.client_header_seen = True
                    return PROTOCOL_HEADER
                return None  # TLS 1.3: the client's encrypted Finished comes first
            if self.tune_seen and not self.tune_ok_seen:
                # The first client record after the broker's tune holds tune-ok (possibly with open).
                self.tune_ok_seen = True
                return TUNE_OK
        elif self.client_header_seen and not self.tune_seen and plaintext_len == TUNE_PLAINTEXT:
            self.tune_seen = True
            return TUNE
        if plaintext_len == HEARTBEAT_PLAINTEXT and self.client_header_seen:
            return HEARTBEAT
        return None


def looks_like_close_handshake(client_plaintext: int | None, server_plaintext: int | None) -> bool:
    """The client's last record and the broker's answer, the last before the client's FIN, have the
    sizes of connection.close and close-ok (a channel.close and its close-ok have them too, which a
    client closing its connection sends just before)."""
    return (client_plaintext is not None and server_plaintext == CLOSE_OK_PLAINTEXT
            and client_plaintext >= MIN_CLOSE_PLAINTEXT)
