"""Two captures of one connection (the client's host and the broker's), joined: clock offset, one-way
delay, and what left one side and never reached the other.

Sans-IO: fed SegmentEvents of each capture (`PairCollector`), it matches connections by their
initial sequence numbers (both SYNs, which survive NAT; else by the connection id) and segments by
(direction, sequence number, payload length, SYN/FIN/RST). A segment seen in both captures gives
t_b - t_a = offset ± the one-way delay; the smallest such difference each way bounds both, and with
equal minimum delays both ways (what a symmetric path gives) offset = (min_c2s + max_s2c) / 2 and
delay = (min_c2s - max_s2c) / 2. Which capture is the client's is the one where client segments
appear first. A segment (or all copies of a retransmitted one) sent in the sender's capture and
absent from the receiver's was lost on the way: the first of them after the last delivered one
places a cut in that direction.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from analyzer.records import C2S, FIN, RST, S2C, SYN, SegmentEvent

# Segments kept per connection and capture for matching: a heartbeat-paced connection has a few
# per second; a busy one is cut at this many (the report says so).
MAX_SEGMENTS = 200_000
_KEY_FLAGS = SYN | FIN | RST

# (direction, seq, payload length, SYN/FIN/RST bits)
SegmentKey = tuple[str, int, int, int]


@dataclass(slots=True)
class _Connection:
    id: str
    isn: dict[str, int] = field(default_factory=dict)  # direction -> its SYN's sequence number
    sent: dict[SegmentKey, list[float]] = field(default_factory=dict)  # every copy's time
    order: list[SegmentKey] = field(default_factory=list)  # first copies, in capture order
    truncated: bool = False
    last_seen: float = 0.0  # this capture's last packet of the connection

    def add(self, event: SegmentEvent) -> None:
        self.last_seen = max(self.last_seen, event.timestamp)
        if event.flags & SYN:
            self.isn.setdefault(event.direction, event.seq)
        if not event.payload_len and not event.flags & _KEY_FLAGS:
            return  # a bare ACK: not matched (identical ones repeat)
        key = (event.direction, event.seq, event.payload_len, event.flags & _KEY_FLAGS)
        times = self.sent.get(key)
        if times is None:
            if len(self.order) >= MAX_SEGMENTS:
                self.truncated = True
                return
            self.sent[key] = [event.timestamp]
            self.order.append(key)
        else:
            times.append(event.timestamp)

    @property
    def match_key(self) -> tuple[int, int] | str:
        if C2S in self.isn and S2C in self.isn:
            return (self.isn[C2S], self.isn[S2C])
        return self.id


class PairCollector:
    """The segments of one capture's connections (the engine observer's callback)."""

    def __init__(self) -> None:
        self.connections: dict[str, _Connection] = {}
        self.t0 = 0.0  # the capture's first packet (its reports' zero), set by whoever reads the file
        self.end = 0.0  # the capture's last packet (any connection): what it could still have seen

    def __call__(self, event: object) -> None:
        if type(event) is not SegmentEvent:
            return
        cid = event.connection.id
        conn = self.connections.get(cid)
        if conn is None:
            conn = self.connections[cid] = _Connection(cid)
        conn.add(event)


@dataclass(frozen=True, slots=True)
class DirectionReport:
    """One direction across the two captures; times on the client capture's clock, relative to t0."""

    direction: str
    sent: int  # distinct segments in the sender's capture
    delivered: int
    lost: int  # sent, no copy in the receiver's capture
    last_delivered: float | None  # when the last delivered segment was sent
    first_lost: float | None  # when the first segment lost after it was sent (a cut lies between)
    lost_segments: tuple[tuple[float, int, int, str], ...]  # (sent at, seq, length, "SYN"/"FIN"/"RST"/""), first ones
    min_delay: float | None
    # Arrived as this direction's but never left the sender while its capture ran (arrival time, ...):
    # a middlebox speaking with the sender's addresses (a reset, typically).
    injected: tuple[tuple[float, int, int, str], ...] = ()
    unseen: int = 0  # sent after the receiver's capture had stopped: neither delivered nor lost


@dataclass(frozen=True, slots=True)
class PairReport:
    client_capture: str  # path of the capture taken nearer the client
    broker_capture: str
    client_id: str  # the connection's id in each capture (they differ behind NAT)
    broker_id: str
    matched_by: str  # "initial sequence numbers" or "connection id"
    offset: float | None  # broker capture's clock minus the client capture's
    one_way_delay: float | None
    directions: tuple[DirectionReport, DirectionReport]  # c2s, s2c
    truncated: bool

    @property
    def cut(self) -> tuple[float, float] | None:
        """Where a path cut lies (client clock, relative): after the last segment delivered and by the
        first one lost after it, of the direction whose loss began first; None without loss."""
        spans = [(d.first_lost, d.last_delivered) for d in self.directions if d.first_lost is not None]
        if not spans:
            return None
        first_lost, last_delivered = min(spans)
        return (last_delivered if last_delivered is not None else first_lost, first_lost)


LISTED_LOSSES = 20


def pair(path_a: str, a: PairCollector, path_b: str, b: PairCollector) -> list[PairReport]:
    """Every connection seen in both captures, joined; times relative to the client capture's t0."""
    by_key_b: dict[tuple[int, int] | str, _Connection] = {c.match_key: c for c in b.connections.values()}
    reports = []
    for conn_a in a.connections.values():
        conn_b = by_key_b.get(conn_a.match_key)
        if conn_b is None:
            continue
        report = _pair_one(path_a, conn_a, a, path_b, conn_b, b)
        if report is not None:
            reports.append(report)
    return reports


def _pair_one(path_a: str, a: _Connection, capture_a: PairCollector, path_b: str, b: _Connection,
              capture_b: PairCollector) -> PairReport | None:
    diffs: dict[str, list[float]] = {C2S: [], S2C: []}
    for key, times_a in a.sent.items():
        times_b = b.sent.get(key)
        if times_b:
            diffs[key[0]].append(min(times_b) - min(times_a))
    if not diffs[C2S] or not diffs[S2C]:
        return None  # nothing crossed both ways: no clock to join them on
    c2s_min, s2c_max = min(diffs[C2S]), max(diffs[S2C])
    offset, delay = (c2s_min + s2c_max) / 2, (c2s_min - s2c_max) / 2
    if delay < 0:  # b is the client's capture
        a, b, path_a, path_b, capture_a, capture_b = b, a, path_b, path_a, capture_b, capture_a
        offset, delay = -offset, -delay
    client, broker = a, b  # a: the client's capture; b's clock = a's + offset
    t0 = capture_a.t0
    reports = (
        _direction(C2S, client, broker, receiver_minus_sender=offset, sender_to_client=0.0, delay=delay, t0=t0,
                   receiver_end=max(capture_b.end, broker.last_seen), sender_end=max(capture_a.end, client.last_seen)),
        _direction(S2C, broker, client, receiver_minus_sender=-offset, sender_to_client=-offset, delay=delay, t0=t0,
                   receiver_end=max(capture_a.end, client.last_seen), sender_end=max(capture_b.end, broker.last_seen)),
    )
    matched_by = "initial sequence numbers" if isinstance(client.match_key, tuple) else "connection id"
    return PairReport(path_a, path_b, client.id, broker.id, matched_by, offset, delay, reports,
                      client.truncated or broker.truncated)


def _direction(direction: str, sender: _Connection, receiver: _Connection, *, receiver_minus_sender: float,
               sender_to_client: float, delay: float, t0: float, receiver_end: float,
               sender_end: float) -> DirectionReport:
    """`receiver_minus_sender`: the receiver capture's clock minus the sender's; `sender_to_client`:
    what turns a sender-capture time into the client capture's clock; `*_end`: each capture's last
    packet (of any connection), on its own clock."""
    sent = [key for key in sender.order if key[0] == direction]
    # A segment that would have arrived after the receiver's capture stopped is not lost, only unseen.
    horizon = receiver_end - receiver_minus_sender - delay
    unseen = [key for key in sent if key not in receiver.sent and sender.sent[key][0] > horizon]
    sent = [key for key in sent if key in receiver.sent or sender.sent[key][0] <= horizon]
    delivered = [key for key in sent if key in receiver.sent]
    last_delivered_at = max((sender.sent[key][0] for key in delivered), default=None)
    lost = [key for key in sent if key not in receiver.sent]
    after = [key for key in lost if last_delivered_at is None or sender.sent[key][0] > last_delivered_at]
    first_lost = min((sender.sent[key][0] for key in after), default=None)
    delays = [min(receiver.sent[key]) - sender.sent[key][0] - receiver_minus_sender for key in delivered]
    # Arrived with the sender's addresses, never sent by it while its capture ran: a device on the path.
    sender_span_end = sender_end + receiver_minus_sender + delay
    injected = [key for key in receiver.order if key[0] == direction and key not in sender.sent
                and min(receiver.sent[key]) <= sender_span_end]

    def rel(t: float | None) -> float | None:
        return None if t is None else t + sender_to_client - t0

    listed = tuple((sender.sent[key][0] + sender_to_client - t0, key[1], key[2], _flag_names(key[3]))
                   for key in lost[:LISTED_LOSSES])
    to_client = sender_to_client - receiver_minus_sender  # receiver clock -> client clock
    forged = tuple((min(receiver.sent[key]) + to_client - t0, key[1], key[2], _flag_names(key[3]))
                   for key in injected[:LISTED_LOSSES])
    return DirectionReport(direction, len(sent), len(delivered), len(lost), rel(last_delivered_at), rel(first_lost),
                           listed, min(delays) if delays else None, forged, len(unseen))


def _flag_names(flags: int) -> str:
    return "+".join(name for bit, name in ((SYN, "SYN"), (FIN, "FIN"), (RST, "RST")) if flags & bit)
