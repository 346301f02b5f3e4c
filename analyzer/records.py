"""The record types that flow between stages: packets → segments → stream events → AMQP events.

High-volume records (one per packet or frame) are `@dataclass(slots=True)`, not frozen: building
a frozen slotted dataclass costs about 4x more here, which over millions of frames eats the speed
budget. Treat them as immutable all the same. One timestamp type from the reader on: float epoch
seconds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# AMQP frame types (AMQP 0-9-1 spec 4.2.3). 4 is the old spec misprint some peers use for heartbeats.
FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_HEARTBEAT_OLD = 4
FRAME_TYPE_NAMES = {
    FRAME_METHOD: "method",
    FRAME_HEADER: "header",
    FRAME_BODY: "body",
    FRAME_HEARTBEAT: "heartbeat",
    FRAME_HEARTBEAT_OLD: "heartbeat",
}

C2S = "c2s"
S2C = "s2c"

# TCP flag bits (RFC 9293).
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10


# RawPacket's fields as a plain tuple (index, timestamp, linktype, data, orig_len): what the readers
# yield a block at a time and the engine takes one by one, without building a RawPacket.
RecordFields = tuple[int, float, int, bytes, int]


@dataclass(slots=True)
class RawPacket:
    """One captured record: bytes as the link layer delivered them."""

    index: int  # 1-based packet number, as Wireshark counts
    timestamp: float  # epoch seconds
    linktype: int  # pcap LINKTYPE_* value
    data: bytes  # captured bytes (may be shorter than orig_len)
    orig_len: int  # length on the wire


@dataclass(slots=True)
class Segment:
    """A TCP segment with the IP addresses kept packed (formatted once per connection, not per packet)."""

    index: int
    timestamp: float
    src: bytes  # packed IPv4 (4 bytes) or IPv6 (16 bytes) address
    sport: int
    dst: bytes
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes  # the payload bytes present in the capture
    payload_len: int  # payload length on the wire (from the IP length); > len(payload) when snapped
    ttl: int = 0  # IPv4 TTL or IPv6 hop limit as captured: tells a middlebox's packet from the peer's


@dataclass(slots=True)
class Endpoint:
    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@dataclass(slots=True)
class TlsInfo:
    """What a TLS connection's handshake showed, and whether its records could be decrypted."""

    version: int | None = None  # negotiated (0x0303 TLS 1.2, 0x0304 TLS 1.3); None before the ServerHello
    cipher_suite: int | None = None
    sni: str | None = None  # server_name the client asked for
    alpn_offered: tuple[str, ...] = ()
    alpn: str | None = None  # the protocol the server selected
    client_random: bytes | None = None  # public (in the ClientHello): what a key log is keyed by
    client_hello: bool = False  # the capture holds the ClientHello
    server_hello: bool = False
    # "not attempted" (no key log given), "decrypted", or why not: "no keys for this session", ...
    decryption: str = "not attempted"
    records_undecryptable: int = 0  # protected records no key authenticated
    records_lost: int = 0  # records the decrypter had to skip (a capture gap)


@dataclass(slots=True)
class ConnectionInfo:
    """One TCP connection carrying AMQP, with client and server told apart."""

    id: str  # "CLIENT_IP:PORT->SERVER_IP:PORT"
    client: Endpoint
    server: Endpoint
    first_seen: float  # epoch of the first packet of this connection
    role_source: str  # how client/server were told apart: syn, port, protocol-header, connection.start, guess
    syn_seen: bool = False
    protocol: str = "amqp-0-9-1"  # or "amqp-1.0", "amqp-0-10", "tls", "unknown"
    tls: TlsInfo | None = None  # set when the connection runs over TLS


# ---- events produced by the pipeline, in capture order -------------------------------------------


@dataclass(slots=True)
class SegmentEvent:
    """Every TCP segment of an AMQP connection: liveness evidence even without payload."""

    connection: ConnectionInfo
    direction: str  # C2S or S2C
    timestamp: float
    packet: int
    flags: int
    seq: int
    ack: int
    payload_len: int
    retransmission: bool  # every payload byte was already seen in this direction
    missing: int = 0  # payload bytes on the wire that the capture did not keep (snap length)
    ttl: int = 0  # IPv4 TTL or IPv6 hop limit
    window: int = -1  # the advertised receive window field (unscaled); 0: the sender's buffer is full


@dataclass(slots=True)
class Frame:
    """One complete AMQP frame. Bodies keep only their first `payload_bytes` bytes."""

    connection: ConnectionInfo
    direction: str
    timestamp: float  # time of the packet that completed the frame
    packet: int  # index of that packet
    offset: int  # stream offset of the frame's first byte in this direction
    type: int
    channel: int
    size: int  # declared payload size
    payload: bytes  # method/header payload in full; body and heartbeat payloads truncated
    class_id: int | None = None
    method_id: int | None = None

    @property
    def type_name(self) -> str:
        return frame_type_name(self.type)


def frame_type_name(frame_type: int) -> str:
    """A frame type's name ("method", "heartbeat", ...), "type-N" for a type the spec does not define."""
    return FRAME_TYPE_NAMES.get(frame_type, f"type-{frame_type}")


@dataclass(slots=True)
class ProtocolHeader:
    connection: ConnectionInfo
    direction: str
    timestamp: float
    packet: int
    offset: int
    raw: bytes  # the 8 header bytes
    protocol: str  # "amqp-0-9-1", "amqp-1.0", "amqp-1.0-sasl", "amqp-0-10", "amqp-other"


@dataclass(slots=True)
class DecodeError:
    connection: ConnectionInfo
    direction: str
    timestamp: float
    packet: int
    offset: int
    reason: str
    skipped: int = 0  # bytes skipped to get back in sync


@dataclass(slots=True)
class Gap:
    """Bytes the capture lost in one direction: never zero-filled, never silence."""

    connection: ConnectionInfo
    direction: str
    timestamp: float  # time the loss became visible (the first packet after the hole)
    packet: int
    offset: int  # stream offset where the hole starts
    missing: int  # byte count, when known (0 when the size is unknown)
    reason: str  # "sequence-hole", "snapped", "acked-unseen", "buffer-overflow"


@dataclass(slots=True)
class TlsRecord:
    """One TLS record of a TLS connection (its plaintext, when decrypted, goes on as AMQP events)."""

    connection: ConnectionInfo
    direction: str
    timestamp: float  # of the packet that completed the record
    packet: int
    offset: int  # stream offset of the record header
    content_type: int  # outer type (23 for every protected TLS 1.3 record)
    version: int  # legacy record version
    length: int  # fragment length
    plaintext_len: int | None  # exact when decrypted or in clear; from the suite's overhead otherwise
    what: str  # "ClientHello", "Alert close_notify", "application data", "encrypted handshake", ...
    # Without keys: what the record most likely carries from its size and place ("protocol-header",
    # "heartbeat", "tune", "tune-ok", "alert"); None when decrypted or when nothing can be said.
    guess: str | None = None
    decrypted: bool = False


@dataclass(slots=True)
class TlsError:
    """Bytes of a TLS connection that are not TLS records, or a record no key could decrypt."""

    connection: ConnectionInfo
    direction: str
    timestamp: float
    packet: int
    offset: int
    reason: str
    skipped: int = 0


@dataclass(slots=True)
class CaptureSummary:
    """What the reader and packet layers saw, reported with every result."""

    format: str = ""  # "pcap" or "pcapng"
    packets: int = 0
    start_epoch: float | None = None
    end_epoch: float | None = None
    ip_fragments: int = 0
    non_tcp: int = 0
    unsupported_linktypes: dict[int, int] = field(default_factory=dict)
    malformed: int = 0
    tls_not_decrypted: int = 0  # TLS connections analyzed from record sizes only (no key opened them)
    warnings: list[str] = field(default_factory=list)
    # A series of rotated files read as one: the files, and the pauses between them the capture did
    # not see (epoch start, end, where), never to be read as silence.
    files: list[str] = field(default_factory=list)
    outages: list[tuple[float, float, str]] = field(default_factory=list)

    @property
    def duration(self) -> float:
        if self.start_epoch is None or self.end_epoch is None:
            return 0.0
        return self.end_epoch - self.start_epoch


# What an AMQP frame decoder emits.
FrameEvent = Frame | ProtocolHeader | DecodeError
# Every event the engine emits, one per segment, frame, protocol header, decode error, capture gap
# and TLS record or error.
Event = SegmentEvent | Frame | ProtocolHeader | DecodeError | Gap | TlsRecord | TlsError
