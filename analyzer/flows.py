"""One TCP connection's two directions: reassembly, AMQP and TLS detection, client/server roles.

A Flow is fed Segments and returns events (SegmentEvent, Frame, ProtocolHeader, DecodeError,
Gap, and TlsRecord/TlsError for a TLS connection). A stream that starts with a TLS record header
(a ClientHello) goes through a TlsSession (tls/session.py), which hands what it decrypts to the same
AMQP decoders; one seen mid-stream on a TLS port (5671, amqps) is read as TLS records too.
Flows on a configured AMQP port decode at once. Any other flow is *probed*: its events are held
(bounded) until the bytes prove it is AMQP 0-9-1 — a protocol header, a method frame with known
ids at the stream start, or two verified frames mid-stream; for TLS, its decrypted bytes, or
without keys the sizes of its first records (a protocol header, then tune) — or until
PROBE_LIMIT bytes prove it is not. Roles are told apart, in order of trust, by the SYN, the configured
port, the protocol header, the methods each side sends, and lastly the lower port.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from analyzer.amqp.framing import FrameDecoder
from analyzer.net.tcp import HalfStream, StreamData, StreamGap
from analyzer.records import (
    ACK,
    C2S,
    FIN,
    RST,
    S2C,
    SYN,
    ConnectionInfo,
    DecodeError,
    Endpoint,
    Event,
    Frame,
    Gap,
    ProtocolHeader,
    Segment,
    SegmentEvent,
    TlsRecord,
)
from analyzer.tls.inference import TUNE
from analyzer.tls.keylog import KeyLog
from analyzer.tls.records import HANDSHAKE
from analyzer.tls.session import DECRYPTED, TlsSession

# Bytes per direction (and events per flow) a flow on an unknown port may show before we give
# up on it: connection.start is about 500 bytes, so 8 KiB is many frames of evidence. A TLS flow
# first carries its handshake (a certificate chain of a few KiB): it is given 32 KiB.
PROBE_LIMIT = 8192
TLS_PROBE_LIMIT = 32768
PROBE_MAX_EVENTS = 512

# Methods only a server sends, and only a client sends (AMQP 0-9-1 spec, "chassis" attributes).
SERVER_METHODS = frozenset({(10, 10), (10, 20), (10, 30), (10, 41), (60, 60), (60, 71), (60, 50)})
CLIENT_METHODS = frozenset({(10, 11), (10, 21), (10, 31), (10, 40), (60, 40), (60, 70), (60, 80)})

PROBING, AMQP, OTHER = "probing", "amqp", "other"
# How far each way of telling client from server is trusted; better evidence overrides worse.
ROLE_TRUST = {"guess": 0, "methods": 1, "connection.start": 2, "protocol-header": 3, "tls-hello": 3, "port": 4,
              "syn": 5}
# Ports whose bytes seen mid-stream (no SYN, so no first bytes to tell by) are TLS records: amqps.
TLS_PORTS = frozenset({5671})


def format_ip(packed: bytes) -> str:
    if len(packed) == 4:
        # Same dotted quad as ipaddress, which costs about 20 µs a call here (twice per connection:
        # 2 s over 50,000 short connections).
        return socket.inet_ntop(socket.AF_INET, packed)
    return str(ipaddress.ip_address(packed))


class Flow:
    """Both directions of one TCP connection. Side 0 sent the first segment we saw."""

    __slots__ = (
        "client_side",
        "decoders",
        "deferred",
        "fin",
        "ids_in_use",
        "info",
        "payload_bytes",
        "probe_bytes",
        "probe_frames",
        "rst",
        "sides",
        "state",
        "streams",
        "tls",
        "tls_keys",
        "undecided",
    )

    def __init__(self, seg: Segment, *, server_port_side: int | None, payload_bytes: int, tls_port: bool = False,
                 tls_keys: KeyLog | None = None) -> None:
        self.sides = ((seg.src, seg.sport), (seg.dst, seg.dport))
        self.streams = (HalfStream(), HalfStream())
        self.payload_bytes = payload_bytes
        self.fin = [False, False]
        self.rst = False
        self.deferred: list[Event] = []
        self.probe_bytes = [0, 0]
        self.probe_frames = 0
        syn_only = seg.flags & (SYN | ACK) == SYN
        role_source = "guess"
        if syn_only:
            self.client_side, role_source = 0, "syn"
        elif seg.flags & (SYN | ACK) == SYN | ACK:
            self.client_side, role_source = 1, "syn"
        elif server_port_side is not None:
            self.client_side, role_source = 1 - server_port_side, "port"
        else:
            self.client_side = 0 if seg.sport > seg.dport else 1
        self.info = self._make_info(seg.timestamp, role_source, syn_only or bool(seg.flags & SYN))
        self.state = AMQP if server_port_side is not None else PROBING
        synced = bool(seg.flags & SYN)  # the capture holds both streams' first bytes
        self.decoders: list[FrameDecoder | None] = [
            FrameDecoder(self.info, self._direction(side), synced=synced, payload_bytes=payload_bytes)
            for side in (0, 1)]
        self.tls_keys = tls_keys
        self.tls: TlsSession | None = None
        if tls_port and not synced:
            self.tls = TlsSession(self.info, synced=False, keys=tls_keys)
        # Whether the flow is TLS: decided here without the streams' first bytes, else by the first
        # bytes (_decode, or decide_plain for the engine's quick path).
        self.undecided = synced

    def _make_info(self, timestamp: float, role_source: str, syn_seen: bool) -> ConnectionInfo:
        client = Endpoint(format_ip(self.sides[self.client_side][0]), self.sides[self.client_side][1])
        server = Endpoint(format_ip(self.sides[1 - self.client_side][0]), self.sides[1 - self.client_side][1])
        return ConnectionInfo(f"{client}->{server}", client, server, timestamp, role_source, syn_seen)

    def _direction(self, side: int) -> str:
        return C2S if side == self.client_side else S2C

    @property
    def closed(self) -> bool:
        return self.rst or (self.fin[0] and self.fin[1])

    # ---- feeding --------------------------------------------------------------------------------

    def feed(self, seg: Segment, side: int) -> list[Event]:
        """Process one segment sent by `side`; returns the events ready for the caller."""
        out: list[Event] = []
        if self.state == OTHER:
            return out
        stream = self.streams[side]
        flags = seg.flags
        for half, half_stream in enumerate(self.streams):
            if half_stream.unseen_ack is not None:  # a capture-reordering allowance is running out
                expired: list[StreamData | StreamGap] = []
                half_stream.expire(seg.timestamp, expired)
                self._decode(half, expired, out)
        chunks: list[StreamData | StreamGap] = []
        if flags & SYN:
            stream.syn(seg.seq)
        retransmission = False
        if seg.payload_len:
            retransmission = stream.segment(seg.seq, seg.payload, seg.payload_len, seg.timestamp, seg.index, chunks)
        if flags & FIN:
            stream.fin(seg.seq, seg.payload_len)
            self.fin[side] = True
        if flags & RST:
            self.rst = True
        direction = self._direction(side)
        out.append(SegmentEvent(self.info, direction, seg.timestamp, seg.index, flags, seg.seq, seg.ack,
                                seg.payload_len, retransmission, seg.payload_len - len(seg.payload), seg.ttl,
                                seg.window))
        self._decode(side, chunks, out)
        if flags & ACK:
            self.streams[1 - side].peer_ack(seg.ack, seg.timestamp, seg.index)
        for half in ((0, 1) if self.closed else (side,) if flags & FIN else ()):
            tail: list[StreamData | StreamGap] = []
            self.streams[half].flush(seg.timestamp, seg.index, tail)
            self._decode(half, tail, out)
        if self.state == PROBING:
            return self._probe(side, out)
        return out

    def finish(self, timestamp: float, packet: int) -> list[Event]:
        """End of capture: holes still open become gaps."""
        out: list[Event] = []
        if self.state == OTHER:
            return out
        for side in (0, 1):
            chunks: list[StreamData | StreamGap] = []
            self.streams[side].flush(timestamp, packet, chunks)
            self._decode(side, chunks, out)
        if self.state == PROBING:
            self.state = OTHER  # never proved to be AMQP
            self.deferred = []
            return []
        return out

    def decide_plain(self, first: bytes, at_start: bool) -> bool:
        """A synced flow's first data, seen by the engine's quick path: plain AMQP (decided now, True),
        or a TLS ClientHello at the stream's start (False: _decode starts the TLS session)."""
        if at_start and _tls_start(first):
            return False
        self.undecided = False
        return True

    def _decode(self, side: int, chunks: list[StreamData | StreamGap], out: list[Event]) -> None:
        decoder = self.decoders[side]
        assert decoder is not None  # dropped only when the flow turned out not to be AMQP
        for chunk in chunks:
            if isinstance(chunk, StreamData):
                if self.undecided and not self.decide_plain(chunk.data, chunk.offset == 0):
                    self.undecided = False
                    self.tls = TlsSession(self.info, synced=True, keys=self.tls_keys)
                tls = self.tls
                if tls is None:
                    out.extend(decoder.feed(chunk.data, chunk.timestamp, chunk.packet))
                    continue
                tls.feed(side, decoder, chunk.data, chunk.timestamp, chunk.packet, out)
                if tls.client_side is not None and tls.client_side != self.client_side:
                    self._set_client(tls.client_side, "tls-hello")
            else:
                out.append(Gap(self.info, decoder.direction, chunk.timestamp, chunk.packet, chunk.offset,
                               chunk.missing, chunk.reason))
                if self.tls is None:
                    out.extend(decoder.gap(chunk.missing, chunk.timestamp, chunk.packet))
                else:
                    self.tls.gap(side, decoder, chunk.missing, chunk.timestamp, chunk.packet, out)

    # ---- detection ------------------------------------------------------------------------------

    def _probe(self, side: int, out: list[Event]) -> list[Event]:
        """Hold events until the flow is shown to be AMQP (release them) or not (drop it)."""
        self.deferred.extend(out)
        evidence_side = None
        for event in out:
            if isinstance(event, ProtocolHeader):
                if event.protocol == "tls":
                    return self._give_up()
                evidence_side = self._side_of(event)
                self._set_client(evidence_side, "protocol-header")
            elif isinstance(event, Frame):
                self.probe_frames += 1
                ids = (event.class_id, event.method_id)
                if ids in SERVER_METHODS:
                    self._set_client(1 - self._side_of(event), "connection.start" if ids == (10, 10) else "methods")
                elif ids in CLIENT_METHODS:
                    self._set_client(self._side_of(event), "methods")
                if event.class_id is not None or self.probe_frames >= 2:
                    evidence_side = self._side_of(event)
            elif isinstance(event, DecodeError) and not event.skipped:
                return self._give_up()
            elif isinstance(event, TlsRecord) and event.guess == TUNE:
                # Without keys: an 8-byte first record from the client (its protocol header) and then a
                # record of connection.tune's size from the server (tls/inference.py) is AMQP's handshake.
                evidence_side = self._side_of(event)
        if evidence_side is not None:
            return self._release()
        self.probe_bytes[side] += sum(e.payload_len for e in out if type(e) is SegmentEvent)
        limit = PROBE_LIMIT if self.tls is None else TLS_PROBE_LIMIT
        if self.probe_bytes[side] > limit or len(self.deferred) > PROBE_MAX_EVENTS:
            return self._give_up()
        return []

    def _side_of(self, event: Event) -> int:
        return 0 if (event.direction == C2S) == (self.client_side == 0) else 1

    def _set_client(self, side: int, source: str) -> None:
        """Adopt `side` as the client when `source` is better evidence than what decided so far."""
        if ROLE_TRUST[source] <= ROLE_TRUST[self.info.role_source]:
            return
        self.info.role_source = source
        if side == self.client_side:
            return
        self.client_side = side
        # Re-point what was already produced: directions and the connection's endpoints.
        fresh = self._make_info(self.info.first_seen, source, self.info.syn_seen)
        self.info.id, self.info.client, self.info.server = fresh.id, fresh.client, fresh.server
        for event in self.deferred:
            event.direction = S2C if event.direction == C2S else C2S
        for s, decoder in enumerate(self.decoders):
            if decoder is not None:
                decoder.direction = self._direction(s)

    def _release(self) -> list[Event]:
        self.state = AMQP
        released, self.deferred = self.deferred, []
        return released

    def _give_up(self) -> list[Event]:
        self.state = OTHER
        self.deferred = []
        self.decoders = [None, None]
        return []


def _tls_start(data: bytes) -> bool:
    """A stream's first bytes are a TLS handshake record (a ClientHello: type 22, version 3.x)."""
    return data[:1] == bytes((HANDSHAKE,)) and data[1:2] in (b"", b"\x03")


# ---- the flow table: which Flow a packet belongs to ---------------------------------------------------

_PORTS = struct.Struct("!HH")
# Capture seconds after a connection's close before it may be retired (FlowTable.retire). A FIN
# retransmitted with exponential backoff (0.2 + 0.4 + 0.8 + 1.6 s) still arrives within it.
RETIRE_AFTER = 5.0
# A retired connection's 4-tuple is remembered this long, so that its stragglers are counted
# rather than taken for a new connection seen mid-stream; then it is forgotten too.
RETIRED_KEYS_KEPT = 15.0

Cache = TypeVar("Cache")


def flow_key(src: bytes, sport: int, dst: bytes, dport: int) -> bytes:
    """The table's key of one direction: source and destination addresses, then both ports. For
    IPv4 it is the 12 bytes from the IP header's source address to the TCP destination port, so a
    fast path can slice it out of a packet."""
    return src + dst + _PORTS.pack(sport, dport)


@dataclass(slots=True, eq=False)
class FlowSide(Generic[Cache]):
    """One direction of one flow, as found by its key: the flow, which side sent, and a slot for
    the engine's per-side view (filled on first use, saving a second lookup per packet)."""

    flow: Flow
    side: int
    cache: Cache | None = None


class FlowTable(Generic[Cache]):
    """Every flow of a capture by key; new flows per the AMQP ports; a 4-tuple reused by a new
    connection (a SYN with a new ISN after the close, RFC 9293 3.4.1) gets a new Flow; closed
    flows can be retired (forgotten) after RETIRE_AFTER seconds of capture time."""

    def __init__(self, ports: frozenset[int], payload_bytes: int = 0, tls_keys: KeyLog | None = None) -> None:
        self.ports = ports
        self.payload_bytes = payload_bytes
        self.tls_keys = tls_keys  # merged into as pcapng Decryption Secrets Blocks arrive
        self.by_key: dict[bytes, FlowSide[Cache]] = {}
        self.live: dict[int, Flow] = {}  # by id(flow), in creation order
        self.closed: dict[int, tuple[Flow, bytes, bytes, float]] = {}  # waiting to be retired
        self.retired: dict[bytes, float] = {}  # key -> when its flow was retired
        self.retired_order: deque[tuple[float, bytes, bytes]] = deque()
        self.late_packets = 0  # packets for flows already retired
        # TLS connections on ports not known to carry AMQP whose content could not be shown to be
        # AMQP (no keys): server port -> count. Not listed, but said (Engine.finish).
        self.tls_unproven: dict[int, int] = {}

        self.tls_not_decrypted = 0  # TLS connections listed whose records no key opened

    def count_tls(self, flow: Flow) -> None:
        """A flow leaves the table (retired, or at the end of the capture): count it if it was TLS
        and not shown, or shown without decryption."""
        if flow.tls is None:
            return
        if flow.state != AMQP:
            port = flow.info.server.port
            self.tls_unproven[port] = self.tls_unproven.get(port, 0) + 1
        elif flow.tls.tls.decryption != DECRYPTED:
            self.tls_not_decrypted += 1

    def get(self, key: bytes) -> FlowSide[Cache] | None:
        return self.by_key.get(key)

    def for_segment(self, seg: Segment, key: bytes, reverse: bytes) -> FlowSide[Cache] | None:
        """The flow side `seg` belongs to, made when it starts a flow worth following; None when it
        belongs to none (or to a retired flow: counted in late_packets)."""
        entry = self.by_key.get(key)
        new_connection = seg.flags & (SYN | ACK) == SYN
        if entry is None and key in self.retired:
            if not new_connection:
                self.late_packets += 1
                return None
        elif (entry is not None and new_connection and entry.flow.closed
              and entry.flow.streams[entry.side].syn_seq != seg.seq):
            entry = None  # the 4-tuple is reused by a new connection (a new ISN)
        if entry is not None:
            return entry
        flow = self._new_flow(seg)
        if flow is None:
            return None
        self.live[id(flow)] = flow
        self.retired.pop(key, None)
        self.retired.pop(reverse, None)
        entry = self.by_key[key] = FlowSide(flow, 0)
        self.by_key[reverse] = FlowSide(flow, 1)
        return entry

    def _new_flow(self, seg: Segment) -> Flow | None:
        if seg.dport in self.ports:
            server_side: int | None = 1
        elif seg.sport in self.ports:
            server_side = 0
        elif seg.payload_len or seg.flags & SYN:
            server_side = None  # probe it
        else:
            return None  # a bare ACK of a flow we never saw carry data: nothing to learn yet
        if seg.flags & RST and not seg.payload_len:
            return None
        tls_port = server_side is not None and (seg.dport if server_side else seg.sport) in TLS_PORTS
        return Flow(seg, server_port_side=server_side, payload_bytes=self.payload_bytes, tls_port=tls_port,
                    tls_keys=self.tls_keys)

    def note_close(self, entry: FlowSide[Cache], key: bytes, reverse: bytes, t: float) -> None:
        """A FIN or RST of `entry`'s flow at t: once closed, it waits RETIRE_AFTER to be retired."""
        if entry.flow.closed:
            self.closed[id(entry.flow)] = (entry.flow, key, reverse, t)

    def retire(self, now: float) -> list[Flow]:
        """Forget the flows closed before now - RETIRE_AFTER, and return them."""
        retired: list[Flow] = []
        for flow_id, (flow, key, reverse, closed_at) in list(self.closed.items()):
            if now - closed_at <= RETIRE_AFTER:
                continue
            del self.closed[flow_id]
            for k in (key, reverse):
                entry = self.by_key.get(k)
                if entry is not None and entry.flow is flow:
                    del self.by_key[k]
                    self.retired[k] = now
            self.retired_order.append((now, key, reverse))
            self.live.pop(flow_id, None)
            self.count_tls(flow)
            retired.append(flow)
        while self.retired_order and now - self.retired_order[0][0] > RETIRED_KEYS_KEPT:
            at, key, reverse = self.retired_order.popleft()
            for k in (key, reverse):
                if self.retired.get(k) == at:
                    del self.retired[k]
        return retired
