"""Live watch: every open connection held against the peers' timing models as capture time passes.

RabbitMQ looks at a connection's received-bytes counter on a fixed grid, every T from tune-ok, and
closes it at the second look in a row that saw nothing (models/rabbitmq.py). So after the first
silent look the close is certain, at a known instant, unless the client sends a byte first: that is
when a watch can warn. The client side is judged the same way with the client library's own rule.

Sans-IO like the engine it drives (h11's style): `Watch` is fed read blocks or packets, moved on in
capture time with `advance(now)`, ended with `finish()`, and each call returns the WatchEvents it
caused, in order. Nothing here reads a file, looks at a wall clock or prints: the edge
(analyzer/cli/watch.py) reads a growing file, a pipe or a live capture, drives the clock and renders.
A file replayed through a Watch gives the same events at the same capture times whatever its read
block sizes: blocks are cut at each instant a decision is due, so every look is judged on exactly
the packets captured before it.

What is decided where: the models and their anchors (tune-ok, inferred grids, TLS record guesses,
blocked periods) are diagnosis.pending_closes, the very code `analyze` judges a teardown with; a
teardown's verdict and explanation are diagnosis.diagnose, handed the connection when the engine
retires it (flows.RETIRE_AFTER after its close, so a late RST is in it, as in `analyze`). This
module owns only when a pending close becomes a warning (`at_risk_from`) and the per-connection
state between those calls.
"""
from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np

from analyzer.diagnosis.diagnose import Diagnosis, close_of, diagnose, pending_closes
from analyzer.diagnosis.models.common import Prediction
from analyzer.diagnosis.results import OPEN
from analyzer.engine import DEFAULT_PORTS, Engine
from analyzer.records import CaptureSummary, RawPacket
from analyzer.sources.pcap import RecordBlock
from analyzer.timeline import ConnectionTimeline
from analyzer.tls.keylog import KeyLog

EventKind = Literal["connection-opened", "at-risk", "recovered", "teardown", "still-open", "warning"]
OPENED: Final = "connection-opened"
AT_RISK: Final = "at-risk"
RECOVERED: Final = "recovered"
TEARDOWN: Final = "teardown"
STILL_OPEN: Final = "still-open"  # input ended with the connection open: its final state
WARNING: Final = "warning"

Closer = Literal["broker", "client"]
_CLOSERS: dict[str, Closer] = {"server": "broker", "client": "client"}  # Close.initiator -> Closer
State = Literal["at-risk", "healthy", "no-heartbeat", "heartbeat-unknown", "closing", "torn-down"]

# How often a connection whose heartbeat is not known yet (handshake not captured, no broker
# heartbeats yet) or whose broker monitor is paused is looked at again, in capture seconds: its
# first warning can come no earlier than 2T after the handshake or the resume, and T >= 1.
REARM_EVERY = 1.0
# Torn-down connections the status table keeps showing (bounded: memory must not grow with the
# number of connections over days).
RECENT_TEARDOWNS = 20


@dataclass(frozen=True, slots=True)
class Risk:
    """A pending close: `closer` will end the connection at `predicted_close` unless the silent peer
    sends a byte first. Times are epoch seconds; `prediction` is the model's, in epoch seconds too."""

    closer: Closer  # "broker": RabbitMQ's monitor; "client": the client library's own timer
    peer: str  # who decides, as reports name it ("RabbitMQ", "pika", ...)
    last_byte: float  # the silent peer's last byte
    at_risk_from: float  # from then on the close is certain unless a byte comes
    predicted_close: float
    prediction: Prediction
    heartbeat_source: str  # "negotiated", or "inferred" from the broker's cadence (handshake not captured)

    @property
    def silent_peer(self) -> str:
        return "client" if self.closer == "broker" else "broker"


def at_risk_from(prediction: Prediction) -> float:
    """When a pending close becomes a warning. At the model's first silent look when the model gives
    up only at a later one: RabbitMQ's first of two (rabbit_heartbeat.erl heartbeater/3), amqplib's
    and the .NET client's first silent look. A rule that gives up at its first silent look (pika) or
    at a read deadline (Go, Java, aiormq) has no such moment; it is then once the silent peer has
    missed two of its own heartbeats (silent for T: RabbitMQ sends every T/2 when idle,
    rabbit_heartbeat.erl start_heartbeat_sender/4), never later than the close."""
    silent = [check.time for check in prediction.checks if not check.saw_activity]
    if len(silent) >= 2:
        return silent[0]
    return min(prediction.last_byte + prediction.timeout, prediction.predicted)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: EventKind
    time: float  # epoch: the look that made it certain, the byte, the teardown, the end of input
    connection: str  # the connection's id, as analyze names it ("" for a warning)
    risk: Risk | None = None  # at-risk and recovered: the pending close; still-open: the earliest one
    diagnosis: Diagnosis | None = None  # teardown and still-open: what `analyze` says of it
    message: str = ""  # warning: the text


@dataclass(slots=True)
class WatchedConnection:
    timeline: ConnectionTimeline
    due: float | None = None  # epoch: when to look at it again (None: only a packet can change it)
    risks: dict[Closer, Risk] = field(default_factory=dict)  # pending closes as of the last look
    announced: dict[Closer, Risk] = field(default_factory=dict)  # at-risk events not yet recovered
    heartbeat: float | None = None
    heartbeat_source: str = "unknown"
    client: str = "the client"


@dataclass(frozen=True, slots=True)
class ConnectionStatus:
    """One line of the live table."""

    connection: str
    state: State
    heartbeat: float | None
    heartbeat_source: str
    client: str
    last_client_byte: float | None  # epoch
    last_server_byte: float | None
    next_broker_look: float | None  # RabbitMQ's next look at the client's bytes
    risk: Risk | None  # the earliest pending close (announced first)
    verdict: str | None = None  # torn-down: analyze's verdict
    closed_at: float | None = None  # closing or torn down: when its close began (silence ends there)

    @property
    def urgency(self) -> tuple[int, float]:
        """Sort key, most urgent first: at risk by time left, then torn down, then the rest by id."""
        rank = {"at-risk": 0, "torn-down": 1, "closing": 2}.get(self.state, 3)
        return (rank, self.risk.predicted_close if self.risk is not None and rank == 0 else 0.0)


class Watch:
    """Fed packets, returns WatchEvents. `grace`: seconds a look is judged after its instant, for
    packets still on their way from a live capture (0 when replaying a file)."""

    def __init__(self, *, ports: Iterable[int] = DEFAULT_PORTS, show_secrets: bool = False,
                 tls_keys: KeyLog | None = None, grace: float = 0.0) -> None:
        self.summary = CaptureSummary()
        self.engine = Engine(self.summary, ports=tuple(ports), show_secrets=show_secrets,
                             on_retire=self._retired, tls_keys=tls_keys)
        self.grace = grace
        self.now = 0.0  # the capture clock (epoch): the last packet's time, or later by `advance`
        self.connections: dict[int, WatchedConnection] = {}  # by id(ConnectionInfo), as the builder keys
        self.recent_teardowns: deque[WatchEvent] = deque(maxlen=RECENT_TEARDOWNS)
        self.teardowns = 0
        self._due: list[tuple[float, int, int]] = []  # (due, tie-breaker, key), stale entries skipped
        self._pushed = 0
        self._known = 0  # timelines the builder had created when last looked
        self._at_risk: set[int] = set()  # keys of the connections with an at-risk event not recovered
        self._events: list[WatchEvent] = []
        self._finished = False
        self._next_retirement = 0.0

    # ---- input ----------------------------------------------------------------------------------

    def feed_block(self, block: RecordBlock) -> list[WatchEvent]:
        """A read block of records, cut at every instant a look is due."""
        times = block.timestamp
        n = len(times)
        ordered = n < 2 or bool(np.all(times[1:] >= times[:-1]))
        start = 0
        while start < n:
            # A new connection is first looked at after the slice it appears in: a slice spans at
            # most REARM_EVERY, so that look comes no later than for one whose heartbeat is unknown.
            due = self._next_due()
            cut = float(times[start]) + REARM_EVERY
            due = cut if due is None else min(due, cut)
            stop = start + _count_at_or_before(times[start:], due, ordered)
            if stop > start:
                self.engine.feed_block(block.slice(start, stop))
                self._clock(float(times[start:stop].max()))
                self._after_packets()
            if stop < n:
                self._advance_to(due)
            start = stop
        self._advance_to(self.now)
        return self._take()

    def feed(self, packet: RawPacket) -> list[WatchEvent]:
        """One packet (a live source that hands packets one by one)."""
        self._advance_to_before(packet.timestamp)
        self.engine.feed(packet)
        self._clock(packet.timestamp)
        self._after_packets()
        if self.now >= self._next_retirement:  # closed connections are let go once a second, not per packet
            self._next_retirement = self.now + REARM_EVERY
            self.engine.advance(self.now)
        return self._take()

    def add_tls_secrets(self, keys: KeyLog) -> None:
        self.engine.add_tls_secrets(keys)

    def advance(self, now: float) -> list[WatchEvent]:
        """Capture time is `now` and no packet came since the last one: the looks due by then."""
        self._advance_to(now)
        return self._take()

    def finish(self) -> list[WatchEvent]:
        """End of input: the teardown still to be reported and the final state of every open
        connection, diagnosed as `analyze` diagnoses them; then the capture's warnings."""
        if self._finished:
            return []
        self._finished = True
        for timeline in self.engine.finish():
            self._final(timeline)
        for message in self.summary.warnings:
            self._events.append(WatchEvent(WARNING, self.now, "", message=message))
        return self._take()

    @property
    def next_due(self) -> float | None:
        """The capture time of the next look (an edge sleeps until then when no packet comes)."""
        return self._next_due()

    # ---- what the table shows -------------------------------------------------------------------

    def statuses(self) -> list[ConnectionStatus]:
        """Every open connection and the recent teardowns, most urgent first."""
        rows = [self._status(watched) for watched in self.connections.values()]
        for event in self.recent_teardowns:
            assert event.diagnosis is not None
            d = event.diagnosis
            tl = d.timeline
            rows.append(ConnectionStatus(event.connection, "torn-down", d.heartbeat.effective, d.heartbeat.source,
                                         client_name(d), tl.c2s.last_payload, tl.s2c.last_payload, None,
                                         event.risk, d.verdict, closed_at=event.time))
        rows.sort(key=lambda row: (*row.urgency, row.connection))
        return rows

    def _status(self, watched: WatchedConnection) -> ConnectionStatus:
        tl = watched.timeline
        state: State
        closed_at = closing_since(tl)
        if closed_at is not None:
            state = "closing"
        elif watched.announced:
            state = "at-risk"
        elif watched.heartbeat == 0:
            state = "no-heartbeat"
        elif watched.heartbeat is None:
            state = "heartbeat-unknown"
        else:
            state = "healthy"
        pending = watched.announced or watched.risks
        risk = min(pending.values(), key=lambda r: r.predicted_close) if pending else None
        broker = watched.risks.get("broker")
        next_look = None
        if broker is not None and state not in ("closing",):
            p = broker.prediction
            next_look = p.anchor + max(1, int(np.ceil((self.now - p.anchor) / p.period))) * p.period
        return ConnectionStatus(tl.info.id, state, watched.heartbeat, watched.heartbeat_source, watched.client,
                                tl.c2s.last_payload, tl.s2c.last_payload, next_look, risk, closed_at=closed_at)

    # ---- the clock --------------------------------------------------------------------------------

    def _clock(self, t: float) -> None:
        if t > self.now:
            self.now = t

    def _next_due(self) -> float | None:
        while self._due:
            due, _, key = self._due[0]
            watched = self.connections.get(key)
            if watched is not None and watched.due == due:
                return due + self.grace
            heapq.heappop(self._due)  # stale: looked at since, or retired
        return None

    def _advance_to_before(self, t: float) -> None:
        """A packet stamped t is next: the looks due before it, on the packets before it."""
        due = self._next_due()
        while due is not None and due < t:
            self._advance_to(due)
            due = self._next_due()

    def _advance_to(self, now: float) -> None:
        self._clock(now)
        self.engine.advance(self.now)
        due = self._next_due()
        while due is not None and due <= self.now:
            _, _, key = heapq.heappop(self._due)
            self._look(self.connections[key])
            due = self._next_due()

    def _schedule(self, watched: WatchedConnection, due: float | None) -> None:
        watched.due = due
        if due is not None:
            self._pushed += 1
            heapq.heappush(self._due, (due, self._pushed, id(watched.timeline.info)))

    # ---- per connection ---------------------------------------------------------------------------

    def _after_packets(self) -> None:
        builder = self.engine.builder
        if builder.created > self._known:
            # The builder's dict keeps creation order, and nothing is forgotten while packets are fed.
            fresh = builder.created - self._known
            self._known = builder.created
            for key, timeline in list(builder.timelines.items())[-fresh:]:
                watched = self.connections[key] = WatchedConnection(timeline)
                self._events.append(WatchEvent(OPENED, timeline.first_seen, timeline.info.id))
                self._schedule(watched, self.now)
        for key in list(self._at_risk):
            self._check_recovery(self.connections[key])

    def _check_recovery(self, watched: WatchedConnection) -> None:
        tl = watched.timeline
        recovered = False
        if closing_since(tl) is not None:
            return  # bytes of a close handshake, or after a FIN or RST, are no recovery
        for closer, risk in list(watched.announced.items()):
            side = tl.c2s if closer == "broker" else tl.s2c
            if side.last_payload is not None and side.last_payload > risk.last_byte:
                del watched.announced[closer]
                self._events.append(WatchEvent(RECOVERED, side.last_payload, tl.info.id, risk=risk))
                recovered = True
        if not watched.announced:
            self._at_risk.discard(id(tl.info))
        if recovered:
            self._schedule(watched, self.now)

    def _look(self, watched: WatchedConnection) -> None:
        """Ask the models again with the last bytes so far; announce a close that became certain."""
        tl = watched.timeline
        pending = pending_closes(tl, 0.0, self.now)  # t0 = 0: the models answer in epoch seconds
        d = pending.diagnosis
        watched.heartbeat, watched.heartbeat_source = d.heartbeat.effective, d.heartbeat.source
        watched.client = client_name(d)
        if d.close.how != "open":
            watched.risks = {}
            self._schedule(watched, None)  # closing: the engine retires it
            return
        risks: dict[Closer, Risk] = {}
        next_due: float | None = None
        sides: tuple[tuple[Closer, Prediction | None], ...] = (("broker", pending.broker), ("client", pending.client))
        for closer, prediction in sides:
            if prediction is None:
                continue
            risk = Risk(closer, prediction.decider, prediction.last_byte,
                        at_risk_from(prediction), prediction.predicted, prediction, d.heartbeat.source)
            risks[closer] = risk
            if closer in watched.announced:
                continue
            if risk.at_risk_from + self.grace <= self.now:
                watched.announced[closer] = risk
                self._at_risk.add(id(tl.info))
                self._events.append(WatchEvent(AT_RISK, risk.at_risk_from, tl.info.id, risk=risk))
            elif next_due is None or risk.at_risk_from < next_due:
                next_due = risk.at_risk_from
        watched.risks = risks
        heartbeat_off = d.heartbeat.effective == 0
        if next_due is None and not heartbeat_off and len(risks) + len(watched.announced) < 2:
            # T not known yet, or a model silent for now (monitor paused, no broker byte yet).
            next_due = self.now + REARM_EVERY
        self._schedule(watched, next_due)

    def _retired(self, timeline: ConnectionTimeline) -> None:
        """The engine forgets a closed connection: its verdict is final."""
        d = diagnose(timeline, self.summary.start_epoch or 0.0, self.now)
        watched = self.connections.pop(id(timeline.info), None)
        self._at_risk.discard(id(timeline.info))
        self._report_end(d, watched, TEARDOWN)

    def _final(self, timeline: ConnectionTimeline) -> None:
        d = diagnose(timeline, self.summary.start_epoch or 0.0, self.summary.end_epoch)
        watched = self.connections.pop(id(timeline.info), None)
        self._at_risk.discard(id(timeline.info))
        if d.close.how == "open" and watched is not None and d.verdict == OPEN:
            self._look(watched)  # its pending closes as of the end
        self._report_end(d, watched, TEARDOWN if d.close.how != "open" else STILL_OPEN)

    def _report_end(self, d: Diagnosis, watched: WatchedConnection | None, kind: EventKind) -> None:
        risk = None
        if watched is not None:
            # A connection still open is reported with the close it was warned of, if any: a close
            # merely pending from its last bytes is no news.
            pending = watched.announced if kind == STILL_OPEN else watched.announced or watched.risks
            closer: Closer | None = _CLOSERS.get(d.close.initiator or "")
            if closer is not None and closer in pending:
                risk = pending[closer]  # the warning this teardown fulfilled
            elif pending:
                risk = min(pending.values(), key=lambda r: r.predicted_close)
        time = d.t0 + d.close.time if d.close.time is not None else self.now
        event = WatchEvent(kind, time, d.timeline.info.id, risk=risk, diagnosis=d)
        self._events.append(event)
        if kind == TEARDOWN:
            self.teardowns += 1
            self.recent_teardowns.append(event)

    def _take(self) -> list[WatchEvent]:
        events, self._events = self._events, []
        return events


def closing_since(timeline: ConnectionTimeline) -> float | None:
    """When the connection began to close (diagnose's close rule: a connection.close, or a FIN or
    RST), if it did: from then on no heartbeat timer decides anything."""
    return close_of(timeline, 0.0).time  # t0 = 0: epoch seconds


def client_name(d: Diagnosis) -> str:
    """The client library as the table names it."""
    return d.client.name if d.client.library != "unknown" else "unknown"


def _count_at_or_before(times: np.ndarray, due: float, ordered: bool) -> int:
    """How many leading records are stamped at or before `due` (the rest wait for the look)."""
    if ordered:
        return int(np.searchsorted(times, due, side="right"))
    later = np.flatnonzero(times > due)
    return int(later[0]) if len(later) else len(times)
