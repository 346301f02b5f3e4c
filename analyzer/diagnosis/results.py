"""The Diagnosis record and its parts: what diagnose.py fills in and explain.py reads.

Its own module so that the two depend on it and not on each other: diagnose → explain → results.
The string values are the JSON contract (`amqp-hb/analysis/1`, README.md); the Literal types keep
every other spelling out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal, overload

from analyzer.diagnosis.models.client_timers import TimerStart
from analyzer.diagnosis.models.clients import ClientProfile, profile
from analyzer.diagnosis.models.common import Prediction
from analyzer.timeline import ConnectionTimeline, MethodAt

Verdict = Literal[
    "missed-client-heartbeats",
    "missed-server-heartbeats",
    "graceful",
    "closed-with-error",
    "reset",
    "open",
    "unknown",
]
MISSED_CLIENT: Final = "missed-client-heartbeats"
MISSED_SERVER: Final = "missed-server-heartbeats"
GRACEFUL: Final = "graceful"
CLOSED_WITH_ERROR: Final = "closed-with-error"
RESET: Final = "reset"
OPEN: Final = "open"
UNKNOWN: Final = "unknown"

Peer = Literal["client", "server"]
CloseHow = Literal["connection.close", "fin", "rst", "open"]
HeartbeatSource = Literal["negotiated", "inferred", "unknown"]

# A close handshake (connection.close, close-ok, then FIN or RST) takes milliseconds; bytes lost or
# cut by the snap length within this long of a teardown without a captured close may have held it.
CLOSE_HANDSHAKE_SLACK = 1.0


@dataclass(frozen=True, slots=True)
class Finding:
    time: float
    kind: str
    channel: int | None
    detail: str


IdentifiedBy = Literal["handshake", "behaviour", "unknown"]


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """Which client library a connection's client is (identify.py).

    `library` is a profile key (models/clients.py) or "unknown"; `product` is the start-ok
    product as on the wire (also for a library without a profile row); `wrapper_hint` names the
    wrappers that do not name themselves ("kombu or Celery"), or the one the wire proves.
    """

    library: str
    name: str
    version: str | None
    wrapper_hint: str | None
    identified_by: IdentifiedBy
    product: str | None
    evidence: str
    wrapper_proven: bool = False  # the wire names the wrapper (Spring's connection_name)


UNKNOWN_CLIENT = ClientIdentity("unknown", "the client", None, None, "unknown", None, "not identified")


@dataclass(frozen=True, slots=True)
class Heartbeat:
    server_proposed: int | None
    client_requested: int | None
    effective: float | None
    source: HeartbeatSource


@dataclass(frozen=True, slots=True)
class Close:
    time: float | None  # None exactly when `how` is "open"
    initiator: Peer | None
    how: CloseHow
    reply_code: int | None = None
    reply_text: str | None = None
    benign_rst: float | None = None  # an RST after a clean close handshake (RabbitMQ's linger 0, mostly)
    benign_rst_from: Peer | None = None
    # Not read off the wire: a connection.close told from encrypted record sizes (TLS without keys,
    # reply code unknown), or a client's give-up placed by its model where no FIN could leave (its
    # data unacknowledged: a partition seen from the client).
    inferred: bool = False


@dataclass(frozen=True, slots=True)
class TlsSummary:
    """A TLS connection as the report shows it (times relative to the file's first packet)."""

    version: str | None  # "TLS 1.3"; None when the capture missed the ServerHello
    cipher_suite: str | None  # IANA name
    sni: str | None
    alpn: str | None
    decryption: str  # "decrypted", "not attempted" (no key log), or why not
    records_c2s: int
    records_s2c: int
    # Without keys the AMQP timing comes from record sizes and order (analyzer/tls/inference.py):
    inferred: bool
    heartbeat_records: int  # records taken for heartbeats
    tune_ok: float | None  # the client record taken for tune-ok
    tune_ok_on_grid: bool | None  # it agrees with the broker's heartbeat grid (None: nothing to check)
    alerts: tuple[tuple[float, str, str], ...] = ()  # (time, direction, what)


@dataclass(slots=True)
class Diagnosis:
    timeline: ConnectionTimeline
    t0: float
    heartbeat: Heartbeat
    close: Close
    verdict: Verdict = UNKNOWN
    silence: float | None = None
    prediction: Prediction | None = None
    prediction_fits: bool | None = None
    alternative: Prediction | None = None  # the other phase when the grid was inferred
    misfit: str | None = None  # why the observed teardown does not fit the model
    # Capture loss in the silent direction after its last captured byte: the peer may have spoken
    # as late as `gap_last`; `gap_prediction` is the model's answer for that later last byte.
    gap_last: float | None = None
    gap_prediction: Prediction | None = None
    gap_fits: bool | None = None
    findings: list[Finding] = field(default_factory=list)
    explanation: str = ""
    client: ClientIdentity = UNKNOWN_CLIENT
    tls: TlsSummary | None = None  # set for a TLS connection
    capture_end: float = 0.0  # the capture's last packet (relative), or this connection's when unknown
    # Pauses between the files of a series during this connection (relative start, end, where).
    outages: list[tuple[float, float, str]] = field(default_factory=list)

    def timer_anchors(self) -> dict[TimerStart, float]:
        """The captured (relative) times of the handshake steps a client starts its timers at; a
        client that sent tune-ok without the capture showing it started at tune."""
        tl = self.timeline
        steps: tuple[tuple[TimerStart, MethodAt | None], ...] = (
            ("tune", tl.tune), ("tune-ok", tl.tune_ok or tl.tune), ("open-ok", tl.open_ok))
        anchors = {step: method.time - self.t0 for step, method in steps if method is not None}
        if not anchors and tl.tls is not None:
            # Without keys: the records whose sizes and places make them tune and tune-ok.
            guessed: tuple[tuple[TimerStart, float | None], ...] = (
                ("tune", tl.tls.tune), ("tune-ok", tl.tls.tune_ok or tl.tls.tune))
            anchors = {step: t - self.t0 for step, t in guessed if t is not None}
        return anchors

    @property
    def tune_ok_time(self) -> float | None:
        """The tune-ok's time (relative): captured, or without keys the record taken for it."""
        tl = self.timeline
        if tl.tune_ok is not None:
            return tl.tune_ok.time - self.t0
        if tl.tls is not None and tl.tls.tune_ok is not None:
            return tl.tls.tune_ok - self.t0
        return None

    @property
    def inferred_from_tls(self) -> bool:
        """The AMQP timing comes from encrypted record sizes (no keys), not from decoded frames."""
        return self.tls is not None and self.tls.inferred

    @property
    def profile(self) -> ClientProfile:
        """The client's profile row; the generic row for an unknown library."""
        return profile(self.client.library)

    @overload
    def rel(self, t: float) -> float: ...
    @overload
    def rel(self, t: None) -> None: ...
    @overload
    def rel(self, t: float | None) -> float | None: ...
    def rel(self, t: float | None) -> float | None:
        """An epoch time as seconds since the first packet of the file; None stays None."""
        return None if t is None else t - self.t0

    @property
    def last_client_byte(self) -> float | None:
        return self.rel(self.timeline.c2s.last_payload)

    @property
    def last_server_byte(self) -> float | None:
        return self.rel(self.timeline.s2c.last_payload)
