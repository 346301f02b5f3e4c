"""Pipeline events → one bounded ConnectionTimeline per connection: activity and negotiation.

A timeline keeps what the verdict needs and nothing that grows with traffic: last-byte times,
counters, the first and last few heartbeat times (enough to infer the broker's cadence and
phase), and capped lists of rare events (closes, gaps, errors). Liveness follows RabbitMQ's
rule (rabbit_heartbeat.erl reads the socket's recv_oct): every new payload byte counts, heartbeat
or not; a bare ACK or a keepalive does not, but it shows the peer's *kernel* is alive.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

from analyzer.amqp.arguments import ArgumentDecodeError, decode_method_arguments
from analyzer.amqp.spec import METHOD_NAMES
from analyzer.records import (
    ACK,
    C2S,
    FIN,
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_HEARTBEAT_OLD,
    FRAME_METHOD,
    RST,
    SYN,
    ConnectionInfo,
    DecodeError,
    Frame,
    Gap,
    ProtocolHeader,
    SegmentEvent,
)

# Heartbeat times kept per direction: the first ones show the phase right after tune-ok, the last
# ones the cadence just before a teardown. 64 covers 32 T of an idle connection.
KEPT_HEARTBEATS = 64
# Rare events (gaps, decode errors, channel closes) kept verbatim per connection; the rest counted.
KEPT_RARE_EVENTS = 200

CONNECTION_CLOSE = (10, 50)
CONNECTION_CLOSE_OK = (10, 51)
CHANNEL_CLOSE = (20, 40)
# Direction.last_frame_name of frames other than methods (methods: their dotted name).
FRAME_KIND_NAMES = {FRAME_HEADER: "content header", FRAME_BODY: "content body", FRAME_HEARTBEAT: "heartbeat",
                    FRAME_HEARTBEAT_OLD: "heartbeat"}
NEGOTIATION_METHODS = {(10, 10): "start", (10, 11): "start_ok", (10, 30): "tune", (10, 31): "tune_ok"}
BLOCKED, UNBLOCKED = (10, 60), (10, 61)


@dataclass(slots=True)
class Direction:
    """What one side sent. Times are epoch seconds."""

    first_payload: float | None = None
    # Last new payload byte (retransmissions excluded) before either side began the TCP teardown:
    # what the peer's heartbeat monitor saw. Bytes written into a closing connection (an ack after a
    # proxy's FIN, a heartbeat from a broker resumed after pika gave up) cannot revive it.
    last_payload: float | None = None
    late_payload: float | None = None  # last payload byte sent after the teardown began
    last_segment: float | None = None
    last_frame: float | None = None
    last_frame_name: str = ""  # "heartbeat", a method name, "content header" or "content body"
    frames: int = 0
    heartbeats: int = 0
    payload_bytes: int = 0
    segments: int = 0
    ack_only: int = 0
    retransmissions: int = 0
    ack_only_since_payload: int = 0  # bare ACKs/keepalives since the last payload: kernel alive
    first_ack_only_since_payload: float | None = None
    last_ack_only: float | None = None
    heartbeat_times_first: list[float] = field(default_factory=list)
    # Made on the 65th heartbeat: an empty deque(maxlen=64) still costs about 600 bytes, which over
    # 50,000 short connections (two directions each) was a third of the analyzer's memory.
    heartbeat_times_last: deque | None = None
    nonstandard_heartbeats: int = 0
    first_nonstandard_heartbeat: float | None = None
    fin: float | None = None
    rst: float | None = None
    syn: float | None = None
    gaps: list = field(default_factory=list)  # Gap records (capped)
    missing_bytes: int = 0
    gap_count: int = 0
    decode_errors: list = field(default_factory=list)
    decode_error_count: int = 0

    def keep_heartbeat_time(self, t: float) -> None:
        if len(self.heartbeat_times_first) < KEPT_HEARTBEATS:
            self.heartbeat_times_first.append(t)
        else:
            if self.heartbeat_times_last is None:
                self.heartbeat_times_last = deque(maxlen=KEPT_HEARTBEATS)
            self.heartbeat_times_last.append(t)

    def heartbeat_times(self) -> list[float]:
        """Kept heartbeat times in order (the first and the last ones, without repeats)."""
        last = list(self.heartbeat_times_last or ())
        if self.heartbeats <= len(self.heartbeat_times_first) + len(last):
            seen = set(self.heartbeat_times_first)
            return self.heartbeat_times_first + [t for t in last if t not in seen]
        return self.heartbeat_times_first + last


@dataclass(slots=True)
class MethodAt:
    """A connection- or channel-level method worth keeping, with its decoded arguments."""

    time: float
    direction: str
    channel: int
    name: str
    args: dict


@dataclass(slots=True)
class ConnectionTimeline:
    info: ConnectionInfo
    first_seen: float
    last_seen: float
    c2s: Direction = field(default_factory=Direction)
    s2c: Direction = field(default_factory=Direction)
    protocol_header: float | None = None
    protocol: str = "amqp-0-9-1"
    start: MethodAt | None = None
    start_ok: MethodAt | None = None
    tune: MethodAt | None = None
    tune_ok: MethodAt | None = None
    connection_close: MethodAt | None = None
    connection_close_ok: MethodAt | None = None
    channel_closes: list = field(default_factory=list)  # MethodAt, capped
    blocked: list = field(default_factory=list)  # (time, "blocked"|"unblocked")
    teardown: float | None = None  # the first FIN or RST from either side
    argument_errors: int = 0
    number: int = 0  # creation order: ties of first_seen keep it (TimelineBuilder.result)

    def side(self, direction: str) -> Direction:
        return self.c2s if direction == C2S else self.s2c

    @property
    def handshake_seen(self) -> bool:
        return self.protocol_header is not None or self.start is not None or self.tune is not None


def timeline_order(timeline: ConnectionTimeline) -> tuple[float, int]:
    """Connections are listed by their first packet, ties in the order they were seen."""
    return (timeline.first_seen, timeline.number)


class TimelineBuilder:
    """Consumes pipeline events; `timelines` holds one ConnectionTimeline per connection id."""

    def __init__(self, *, show_secrets: bool = False) -> None:
        self.timelines: dict[int, ConnectionTimeline] = {}
        self.show_secrets = show_secrets  # start-ok passwords are redacted unless asked for
        self.created = 0

    def feed_all(self, events: Iterable) -> "TimelineBuilder":
        for event in events:
            self.feed(event)
        return self

    def result(self) -> list[ConnectionTimeline]:
        return sorted(self.timelines.values(), key=timeline_order)

    def feed(self, event) -> None:
        info = event.connection
        timeline = self.timelines.get(id(info))
        if timeline is None:
            timeline = self.timelines[id(info)] = ConnectionTimeline(info, event.timestamp, event.timestamp,
                                                                     number=self.created)
            self.created += 1
        if event.timestamp > timeline.last_seen:
            timeline.last_seen = event.timestamp
        kind = type(event)
        side = timeline.c2s if event.direction == C2S else timeline.s2c
        if kind is SegmentEvent:
            self._segment(timeline, side, event)
        elif kind is Frame:
            self._frame(timeline, side, event)
        elif kind is Gap:
            side.gap_count += 1
            side.missing_bytes += event.missing
            if len(side.gaps) < KEPT_RARE_EVENTS:
                side.gaps.append(event)
        elif kind is DecodeError:
            side.decode_error_count += 1
            if len(side.decode_errors) < KEPT_RARE_EVENTS:
                side.decode_errors.append(event)
        elif kind is ProtocolHeader:
            if event.direction == C2S or timeline.protocol_header is None:
                timeline.protocol_header = event.timestamp
            if event.protocol != "amqp-0-9-1":
                timeline.protocol = event.protocol

    @staticmethod
    def _segment(timeline: ConnectionTimeline, side: Direction, event: SegmentEvent) -> None:
        t = event.timestamp
        side.segments += 1
        side.last_segment = t
        flags = event.flags
        if flags & SYN and side.syn is None:
            side.syn = t
        if flags & FIN and side.fin is None:
            side.fin = t
        if flags & RST and side.rst is None:
            side.rst = t
        closing = timeline.teardown is not None
        if flags & (FIN | RST) and not closing:
            timeline.teardown = t
        if event.payload_len and not event.retransmission:
            side.payload_bytes += event.payload_len
            if closing:
                side.late_payload = t
                return
            if side.first_payload is None:
                side.first_payload = t
            side.last_payload = t
            side.ack_only_since_payload = 0
            side.first_ack_only_since_payload = None
            return
        if event.retransmission:
            side.retransmissions += 1
        if flags & ACK and not flags & (SYN | FIN | RST):
            side.ack_only += 1
            side.ack_only_since_payload += 1
            side.last_ack_only = t
            if side.first_ack_only_since_payload is None:
                side.first_ack_only_since_payload = t

    def _frame(self, timeline: ConnectionTimeline, side: Direction, frame: Frame) -> None:
        t = frame.timestamp
        side.frames += 1
        closing = timeline.teardown is not None and t > timeline.teardown
        if not closing:
            side.last_frame = t
        if frame.type == FRAME_HEARTBEAT or frame.type == FRAME_HEARTBEAT_OLD:
            if not closing:
                side.last_frame_name = FRAME_KIND_NAMES[frame.type]
            side.heartbeats += 1
            side.keep_heartbeat_time(t)
            if frame.type == FRAME_HEARTBEAT_OLD or frame.size or frame.channel:
                side.nonstandard_heartbeats += 1
                if side.first_nonstandard_heartbeat is None:
                    side.first_nonstandard_heartbeat = t
            return
        if frame.type != FRAME_METHOD:
            if not closing:
                side.last_frame_name = FRAME_KIND_NAMES[frame.type]  # the decoder emits known types only
            return
        ids = (frame.class_id, frame.method_id)
        if not closing:
            side.last_frame_name = METHOD_NAMES.get(ids, "unknown method")
        if frame.class_id != 10 and ids != CHANNEL_CLOSE:
            return
        method = self._method(timeline, frame)
        if method is None:
            return
        attr = NEGOTIATION_METHODS.get(ids)
        if attr is not None:
            if getattr(timeline, attr) is None:
                setattr(timeline, attr, method)
        elif ids == CONNECTION_CLOSE and timeline.connection_close is None:
            timeline.connection_close = method
        elif ids == CONNECTION_CLOSE_OK and timeline.connection_close_ok is None:
            timeline.connection_close_ok = method
        elif ids == CHANNEL_CLOSE and len(timeline.channel_closes) < KEPT_RARE_EVENTS:
            timeline.channel_closes.append(method)
        elif ids in (BLOCKED, UNBLOCKED) and len(timeline.blocked) < KEPT_RARE_EVENTS:
            timeline.blocked.append((t, "blocked" if ids == BLOCKED else "unblocked"))

    def _method(self, timeline: ConnectionTimeline, frame: Frame) -> MethodAt | None:
        try:
            args = decode_method_arguments(frame.class_id, frame.method_id, frame.payload,
                                           show_secrets=self.show_secrets)
        except ArgumentDecodeError:
            timeline.argument_errors += 1
            args = {}
        name = METHOD_NAMES.get((frame.class_id, frame.method_id), f"{frame.class_id}.{frame.method_id}")
        return MethodAt(frame.timestamp, frame.direction, frame.channel, name, args)
