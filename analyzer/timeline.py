"""Pipeline events → one bounded ConnectionTimeline per connection: activity and negotiation.

A timeline keeps what the verdict needs and nothing that grows with traffic: last-byte times,
counters, the first and last few heartbeat times (enough to infer the broker's cadence and
phase), and capped lists of rare events (closes, gaps, errors). Liveness follows RabbitMQ's
rule (rabbit_heartbeat.erl reads the socket's recv_oct): every new payload byte counts, heartbeat
or not; a bare ACK or a keepalive does not, but it shows the peer's *kernel* is alive.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from analyzer.amqp.arguments import ArgumentDecodeError, decode_method_arguments
from analyzer.amqp.frames import HEARTBEAT_TYPES, heartbeat_is_nonstandard
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
    Event,
    Frame,
    Gap,
    ProtocolHeader,
    SegmentEvent,
    TlsError,
    TlsRecord,
)
from analyzer.tls.inference import ALERT as GUESS_ALERT
from analyzer.tls.inference import HEARTBEAT as GUESS_HEARTBEAT
from analyzer.tls.inference import TUNE as GUESS_TUNE
from analyzer.tls.inference import TUNE_OK as GUESS_TUNE_OK
from analyzer.tls.records import APPLICATION_DATA

# Heartbeat times kept per direction: the first ones show the phase right after tune-ok, the last
# ones the cadence just before a teardown. 64 covers 32 T of an idle connection.
KEPT_HEARTBEATS = 64
# Rare events (gaps, decode errors, channel closes) kept verbatim per connection; the rest counted.
KEPT_RARE_EVENTS = 200
# Retransmission times kept since a side's last new byte: Linux gives up after tcp_retries2 = 15
# retransmissions by default, so 32 hold a whole back-off train.
KEPT_RETRANSMISSIONS = 32

CONNECTION_CLOSE = (10, 50)
CONNECTION_CLOSE_OK = (10, 51)
CHANNEL_CLOSE = (20, 40)
# Direction.last_frame_name of frames other than methods (methods: their dotted name).
FRAME_KIND_NAMES = {FRAME_HEADER: "content header", FRAME_BODY: "content body", FRAME_HEARTBEAT: "heartbeat",
                    FRAME_HEARTBEAT_OLD: "heartbeat"}
NEGOTIATION_METHODS = {(10, 10): "start", (10, 11): "start_ok", (10, 30): "tune", (10, 31): "tune_ok",
                       (10, 41): "open_ok"}
BLOCKED, UNBLOCKED = (10, 60), (10, 61)
CONNECTION_CLASS = 10


def reads_arguments(class_id: int, method_id: int) -> bool:
    """The methods whose arguments a timeline keeps: every connection method and channel.close."""
    return class_id == CONNECTION_CLASS or (class_id, method_id) == CHANNEL_CLOSE


def frame_name(frame_type: int, ids: int) -> str:
    """Direction.last_frame_name of a frame: a method's dotted name, else its kind."""
    if frame_type == FRAME_METHOD:
        return METHOD_NAMES.get((ids >> 16, ids & 0xFFFF), "unknown method")
    return FRAME_KIND_NAMES[frame_type]


@dataclass(slots=True)
class Direction:
    """What one side sent. Times are epoch seconds."""

    first_payload: float | None = None
    # Last new payload byte (retransmissions excluded) before either side began the TCP teardown:
    # what the peer's heartbeat monitor saw. Bytes written into a closing connection (an ack after a
    # proxy's FIN, a heartbeat from a broker resumed after pika gave up) cannot revive it.
    last_payload: float | None = None
    late_payload: float | None = None  # last payload byte sent after the teardown began
    previous_payload: float | None = None  # the new byte before last_payload (how long it followed silence)
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
    # Retransmissions since the last new byte: data this side sent and the peer did not acknowledge.
    # Its kernel is alive, but it is not hearing the peer (unlike a bare ACK, which answers the peer).
    # Since the last new byte, capped; a shared empty tuple until the first one (50,000 short connections
    # would otherwise hold 100,000 empty lists: 5 MB).
    retransmission_times: tuple[float, ...] | list[float] = ()
    retransmissions_since_payload: int = 0
    last_retransmission: float | None = None
    heartbeat_times_first: list[float] = field(default_factory=list)
    # Made on the 65th heartbeat: an empty deque(maxlen=64) still costs about 600 bytes, which over
    # 50,000 short connections (two directions each) was a third of the analyzer's memory.
    heartbeat_times_last: deque[float] | None = None
    nonstandard_heartbeats: int = 0
    first_nonstandard_heartbeat: float | None = None
    fin: float | None = None
    rst: float | None = None
    syn: float | None = None
    # IPv4 TTL / IPv6 hop limit of this side's first segment and of its first FIN or RST: a teardown
    # injected by a device on the path arrives with another one (a router hop fewer or more).
    ttl: int | None = None
    teardown_ttl: int | None = None
    # Zero-window advertisements (only the plain path sees them: engine/quick.py leaves them to it):
    # this side's receive buffer was full, its application not reading.
    zero_windows: int = 0
    first_zero_window: float | None = None
    last_zero_window: float | None = None
    gaps: list[Gap] = field(default_factory=list)  # capped
    missing_bytes: int = 0
    gap_count: int = 0
    decode_errors: list[DecodeError] = field(default_factory=list)  # capped
    decode_error_count: int = 0

    # ---- counting: the one home of each counter rule; TimelineBuilder and the engine's quick paths
    # ---- call these (add_segments is the column form of add_segment, held equal by a test) -------

    def add_segment(self, t: float, new_bytes: int, retransmission: bool, bare_ack: bool, closing: bool) -> None:
        """One TCP segment: `new_bytes` payload bytes not seen before, or a whole retransmission, or
        a bare ACK (ACK set, no SYN/FIN/RST, no new byte). After the teardown began (`closing`) new
        bytes are late, not liveness."""
        self.segments += 1
        self.last_segment = t
        if new_bytes:
            self.payload_bytes += new_bytes
            if closing:
                self.late_payload = t
                return
            if self.first_payload is None:
                self.first_payload = t
            self.previous_payload = self.last_payload
            self.last_payload = t
            self.ack_only_since_payload = 0
            self.first_ack_only_since_payload = None
            if self.retransmissions_since_payload:
                self.retransmissions_since_payload = 0
                self.retransmission_times = ()
            return
        if retransmission:
            # A segment whose every payload byte was sent before: not a bare ACK, whatever its flags.
            self.retransmissions += 1
            self.retransmissions_since_payload += 1
            self.last_retransmission = t
            times = self.retransmission_times
            if not isinstance(times, list):
                times = self.retransmission_times = []
            if len(times) < KEPT_RETRANSMISSIONS:
                times.append(t)
            return
        if bare_ack:
            self.ack_only += 1
            self.ack_only_since_payload += 1
            self.last_ack_only = t
            if self.first_ack_only_since_payload is None:
                self.first_ack_only_since_payload = t

    def add_segments(self, timestamps: npt.NDArray[np.float64], new_bytes: npt.NDArray[np.int64]) -> None:
        """add_segment for a run of ACK segments in order before the teardown (no retransmission, no
        SYN/FIN/RST): each carries new_bytes[k] new bytes, or is a bare ACK where that is 0."""
        if not len(timestamps):
            return
        self.segments += len(timestamps)
        self.last_segment = float(timestamps[-1])
        payload = np.flatnonzero(new_bytes)
        bare = np.flatnonzero(new_bytes == 0)
        if len(bare):
            self.ack_only += len(bare)
            self.last_ack_only = float(timestamps[bare[-1]])
        if not len(payload):
            if len(bare):
                if self.first_ack_only_since_payload is None:
                    self.first_ack_only_since_payload = float(timestamps[bare[0]])
                self.ack_only_since_payload += len(bare)
            return
        self.payload_bytes += int(new_bytes[payload].sum())
        if self.retransmissions_since_payload:
            self.retransmissions_since_payload = 0
            self.retransmission_times = ()
        if self.first_payload is None:
            self.first_payload = float(timestamps[payload[0]])
        last = int(payload[-1])
        self.previous_payload = float(timestamps[payload[-2]]) if len(payload) > 1 else self.last_payload
        self.last_payload = float(timestamps[last])
        after = bare[np.searchsorted(bare, last):]
        self.ack_only_since_payload = len(after)
        self.first_ack_only_since_payload = float(timestamps[after[0]]) if len(after) else None

    def add_frames(self, t: float, count: int, last_name: str, closing: bool = False) -> None:
        """`count` frames other than heartbeats completed at t; the last frame completed at t (of
        all, heartbeats included) is named `last_name`."""
        self.frames += count
        if not closing:
            self.last_frame = t
            self.last_frame_name = last_name

    def add_heartbeat(self, t: float, nonstandard: bool, closing: bool = False) -> None:
        self.frames += 1
        if not closing:
            self.last_frame = t
            self.last_frame_name = FRAME_KIND_NAMES[FRAME_HEARTBEAT]
        self.heartbeats += 1
        self.keep_heartbeat_time(t)
        if nonstandard:
            self.nonstandard_heartbeats += 1
            if self.first_nonstandard_heartbeat is None:
                self.first_nonstandard_heartbeat = t

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
    args: dict[str, Any]


@dataclass(slots=True)
class TlsTimeline:
    """A TLS connection's records: counts, and what their sizes and places tell without keys.
    The handshake's facts (version, suite, SNI, decryption) are on ConnectionInfo.tls."""

    records_c2s: int = 0
    records_s2c: int = 0
    decrypted_records: int = 0
    # Without keys (TlsRecord.guess): the broker's tune and the client's tune-ok records, and how many
    # records were taken for heartbeats (Direction.add_heartbeat holds their times).
    tune: float | None = None
    tune_ok: float | None = None
    heartbeat_guesses: int = 0
    alerts: list[tuple[float, str, str]] = field(default_factory=list)  # (time, direction, what), capped
    # Each side's last application-data record before the teardown: (time, plaintext length).
    last_c2s: tuple[float, int | None] | None = None
    last_s2c: tuple[float, int | None] | None = None
    errors: list[TlsError] = field(default_factory=list)  # capped
    error_count: int = 0

    def close_notify(self, direction: str) -> float | None:
        """When `direction` sent its first alert of the teardown (close_notify when it can be read)."""
        return next((t for t, d, _ in self.alerts if d == direction), None)


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
    open_ok: MethodAt | None = None  # several clients start their heartbeat timers here
    connection_close: MethodAt | None = None
    connection_close_ok: MethodAt | None = None
    channel_closes: list[MethodAt] = field(default_factory=list)  # capped
    blocked: list[tuple[float, str]] = field(default_factory=list)  # (time, "blocked"|"unblocked")
    teardown: float | None = None  # the first FIN or RST from either side
    tls: TlsTimeline | None = None  # a TLS connection's records
    argument_errors: int = 0
    number: int = 0  # creation order: ties of first_seen keep it (TimelineBuilder.result)

    def side(self, direction: str) -> Direction:
        return self.c2s if direction == C2S else self.s2c

    def saw(self, t: float) -> None:
        """A packet of this connection at t (capture order is not always time order)."""
        if t > self.last_seen:
            self.last_seen = t

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

    def feed_all(self, events: Iterable[Event]) -> TimelineBuilder:
        for event in events:
            self.feed(event)
        return self

    def result(self) -> list[ConnectionTimeline]:
        return sorted(self.timelines.values(), key=timeline_order)

    def timeline_of(self, info: ConnectionInfo) -> ConnectionTimeline | None:
        return self.timelines.get(id(info))

    def forget(self, info: ConnectionInfo) -> ConnectionTimeline | None:
        """Hand back a connection's timeline and keep nothing of it (a retired connection)."""
        return self.timelines.pop(id(info), None)

    def feed(self, event: Event) -> None:
        info = event.connection
        timeline = self.timelines.get(id(info))
        if timeline is None:
            timeline = self.timelines[id(info)] = ConnectionTimeline(info, event.timestamp, event.timestamp,
                                                                     number=self.created)
            self.created += 1
        timeline.saw(event.timestamp)
        side = timeline.c2s if event.direction == C2S else timeline.s2c
        if type(event) is SegmentEvent:
            self._segment(timeline, side, event)
        elif type(event) is Frame:
            self._frame(timeline, side, event)
        elif type(event) is Gap:
            side.gap_count += 1
            side.missing_bytes += event.missing
            if len(side.gaps) < KEPT_RARE_EVENTS:
                side.gaps.append(event)
        elif type(event) is DecodeError:
            side.decode_error_count += 1
            if len(side.decode_errors) < KEPT_RARE_EVENTS:
                side.decode_errors.append(event)
        elif type(event) is TlsRecord:
            self._tls_record(timeline, side, event)
        elif type(event) is TlsError:
            tls = timeline.tls = timeline.tls or TlsTimeline()
            tls.error_count += 1
            if len(tls.errors) < KEPT_RARE_EVENTS:
                tls.errors.append(event)
        elif type(event) is ProtocolHeader:
            if event.direction == C2S or timeline.protocol_header is None:
                timeline.protocol_header = event.timestamp
            if event.protocol != "amqp-0-9-1":
                timeline.protocol = event.protocol

    @staticmethod
    def _segment(timeline: ConnectionTimeline, side: Direction, event: SegmentEvent) -> None:
        t = event.timestamp
        flags = event.flags
        if flags & SYN and side.syn is None:
            side.syn = t
        if side.ttl is None:
            side.ttl = event.ttl
        if event.window == 0 and not flags & (SYN | RST):
            side.zero_windows += 1
            side.last_zero_window = t
            if side.first_zero_window is None:
                side.first_zero_window = t
        if flags & (FIN | RST) and side.fin is None and side.rst is None:
            side.teardown_ttl = event.ttl
        if flags & FIN and side.fin is None:
            side.fin = t
        if flags & RST and side.rst is None:
            side.rst = t
        closing = timeline.teardown is not None
        if flags & (FIN | RST) and not closing:
            timeline.teardown = t
        side.add_segment(t, 0 if event.retransmission else event.payload_len, event.retransmission,
                         bool(flags & ACK) and not flags & (SYN | FIN | RST), closing)

    @staticmethod
    def _tls_record(timeline: ConnectionTimeline, side: Direction, record: TlsRecord) -> None:
        tls = timeline.tls = timeline.tls or TlsTimeline()
        t = record.timestamp
        if record.direction == C2S:
            tls.records_c2s += 1
        else:
            tls.records_s2c += 1
        if record.decrypted:
            tls.decrypted_records += 1
        if (record.what.startswith("alert") or record.what == "encrypted alert" or record.guess == GUESS_ALERT) \
                and len(tls.alerts) < KEPT_RARE_EVENTS:
            tls.alerts.append((t, record.direction, record.what if record.guess is None else "alert (encrypted)"))
        if record.content_type == APPLICATION_DATA and record.guess != GUESS_ALERT and timeline.teardown is None:
            if record.direction == C2S:
                tls.last_c2s = (t, record.plaintext_len)
            else:
                tls.last_s2c = (t, record.plaintext_len)
        guess = record.guess
        if guess == GUESS_HEARTBEAT:
            tls.heartbeat_guesses += 1
            side.add_heartbeat(t, False, timeline.teardown is not None and t > timeline.teardown)
        elif guess == GUESS_TUNE and tls.tune is None:
            tls.tune = t
        elif guess == GUESS_TUNE_OK and tls.tune_ok is None:
            tls.tune_ok = t

    def _frame(self, timeline: ConnectionTimeline, side: Direction, frame: Frame) -> None:
        t = frame.timestamp
        closing = timeline.teardown is not None and t > timeline.teardown
        if frame.type in HEARTBEAT_TYPES:
            side.add_heartbeat(t, heartbeat_is_nonstandard(frame.type, frame.channel, frame.size), closing)
            return
        if frame.type != FRAME_METHOD:
            side.add_frames(t, 1, FRAME_KIND_NAMES[frame.type], closing)  # the decoder emits known types only
            return
        assert frame.class_id is not None and frame.method_id is not None  # a method frame has its ids
        ids = (frame.class_id, frame.method_id)
        side.add_frames(t, 1, METHOD_NAMES.get(ids, "unknown method"), closing)
        if not reads_arguments(*ids):
            return
        method = self._method(timeline, frame, *ids)
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

    def _method(self, timeline: ConnectionTimeline, frame: Frame, class_id: int, method_id: int) -> MethodAt:
        try:
            args = decode_method_arguments(class_id, method_id, frame.payload, show_secrets=self.show_secrets)
        except ArgumentDecodeError:
            timeline.argument_errors += 1
            args = {}
        name = METHOD_NAMES.get((class_id, method_id), f"{class_id}.{method_id}")
        return MethodAt(frame.timestamp, frame.direction, frame.channel, name, args)
