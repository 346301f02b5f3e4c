"""ConnectionTimeline → Diagnosis: negotiation, how it ended, verdict, prediction and findings.

All times in a Diagnosis are seconds since the first packet of the file (`t0`). The verdict
comes from the peers' real timing models (analyzer.diagnosis.models), never from a bare threshold: a
teardown is blamed on missed heartbeats only when it falls where the model says it would.
The plain-language explanation is written by analyzer.diagnosis.explain from the Diagnosis.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from analyzer.diagnosis.explain import explain
from analyzer.diagnosis.identify import identify
from analyzer.diagnosis.models import linux_tcp
from analyzer.diagnosis.models import rabbitmq as rabbitmq_model
from analyzer.diagnosis.models.client_timers import predict_give_up
from analyzer.diagnosis.models.common import Prediction
from analyzer.diagnosis.results import (
    CLOSE_HANDSHAKE_SLACK,
    CLOSED_WITH_ERROR,
    GRACEFUL,
    MISSED_CLIENT,
    MISSED_SERVER,
    OPEN,
    RESET,
    UNKNOWN,
    Close,
    CloseHow,
    Diagnosis,
    Finding,
    Heartbeat,
    Peer,
    TlsSummary,
)
from analyzer.records import C2S, S2C
from analyzer.timeline import ConnectionTimeline, Direction
from analyzer.tls.handshake import version_name
from analyzer.tls.inference import looks_like_close_handshake
from analyzer.tls.session import DECRYPTED
from analyzer.tls.suites import cipher_suite_name

# The record types and verdicts live in results.py (explain.py reads them too); importers of this
# module keep finding them here.
__all__ = [
    "CLOSED_WITH_ERROR",
    "CLOSE_HANDSHAKE_SLACK",
    "GRACEFUL",
    "MISSED_CLIENT",
    "MISSED_SERVER",
    "OPEN",
    "RESET",
    "UNKNOWN",
    "Close",
    "Diagnosis",
    "Finding",
    "Heartbeat",
    "PendingCloses",
    "close_of",
    "diagnose",
    "pending_closes",
]

# How far outside the model's window an observed teardown may fall and still be the model's doing:
# capture timestamps and socket teardown add a few ms on loopback; a capture taken on another host
# adds the path delay. Beyond this the teardown "does not fit" and we say so.
WINDOW_EARLY_TOLERANCE = 0.05
WINDOW_LATE_TOLERANCE = 0.5
# Reply codes (AMQP 0-9-1 spec 1.9, constants): reply-success, and precondition-failed, which
# RabbitMQ's consumer timeout closes the channel with.
REPLY_SUCCESS = 200
PRECONDITION_FAILED = 406


def diagnose(timeline: ConnectionTimeline, t0: float, capture_end: float | None = None,
             outages: Sequence[tuple[float, float, str]] = ()) -> Diagnosis:
    """`capture_end`: the epoch of the capture's last packet (of any connection), when known: the
    silence of a connection still open can be judged up to there, not only to its own last packet
    (a closed one ends with its teardown, and is the same handed over early or at the end).
    `outages`: pauses the capture did not see (epoch start, end, where: between two files of a
    series), which are never silence."""
    d = Diagnosis(timeline, t0, _heartbeat(timeline), _close(timeline, t0))
    d.outages = [(start - t0, end - t0, where) for start, end, where in outages
                 if end >= timeline.first_seen and (timeline.teardown is None or start <= timeline.teardown)]
    d.capture_end = d.rel(timeline.last_seen)
    if capture_end is not None and timeline.teardown is None:
        d.capture_end = max(d.capture_end, d.rel(capture_end))
    d.tls = _tls_summary(d)
    d.client = identify(timeline, d.heartbeat.effective)
    _verdict(d)
    if d.verdict == RESET:
        _hidden_close(d)
    d.findings = sorted(_findings(d), key=lambda f: f.time)
    if d.verdict == RESET and any(f.kind in PATH_TEARDOWNS for f in d.findings):
        # The path ended it: a heartbeat model's window says nothing about that teardown.
        d.prediction = d.alternative = None
        d.prediction_fits = d.misfit = None
    d.explanation = explain(d)
    return d


@dataclass(frozen=True, slots=True)
class PendingCloses:
    """A connection still open, read forward: when each peer's own model closes it if the other
    peer sends nothing more after its last byte so far (times relative to `t0`, as in a Diagnosis).
    None for a side when heartbeats are off or not known yet, when its model never gives up, or
    while the broker's monitor is paused (connection.blocked)."""

    diagnosis: Diagnosis  # negotiation, client and TLS only: no verdict, findings or explanation
    broker: Prediction | None  # RabbitMQ closes: the client stays silent
    client: Prediction | None  # the client library gives up: the broker stays silent


def pending_closes(timeline: ConnectionTimeline, t0: float, at: float) -> PendingCloses:
    """What a live watch asks at capture time `at` (relative): the same models, anchors and inferred
    grids `diagnose` judges a teardown with, applied to the last bytes so far. Where the broker's
    grid phase is inferred (no tune-ok captured) the earlier of its two candidates is taken: a
    warning may come T/2 early, never late."""
    d = Diagnosis(timeline, t0, _heartbeat(timeline), _close(timeline, t0))
    d.tls = _tls_summary(d)
    timeout = d.heartbeat.effective
    d.client = identify(timeline, timeout)
    if not timeout or d.close.how != "open":
        return PendingCloses(d, None, None)
    last_client = d.last_client_byte
    if last_client is None and not timeline.handshake_seen and timeline.c2s.syn is None:
        last_client = d.rel(timeline.first_seen)  # the client's last byte came before the capture: a bound
    broker = None
    if last_client is not None:
        first, second = _broker_prediction(d, last_client, timeout, at)
        broker = first if second is None or first is None else min(first, second, key=lambda p: p.predicted)
    last_server = d.last_server_byte
    client = _client_prediction(d, last_server, timeout) if last_server is not None else None
    return PendingCloses(d, broker, client)


# ---- negotiation ----------------------------------------------------------------------------------


def _heartbeat(tl: ConnectionTimeline) -> Heartbeat:
    proposed = tl.tune.args.get("heartbeat") if tl.tune else None
    requested = tl.tune_ok.args.get("heartbeat") if tl.tune_ok else None
    if requested is not None:
        # rabbit_reader.erl handle_method0(tune_ok) takes the client's value verbatim (heartbeat-model.md).
        return Heartbeat(proposed, requested, requested, "negotiated")
    inferred = rabbitmq_model.infer_timeout_from_heartbeats(tl.s2c.heartbeat_times())
    if inferred is not None:
        return Heartbeat(proposed, None, inferred, "inferred")
    return Heartbeat(proposed, None, None, "unknown")


def _tls_summary(d: Diagnosis) -> TlsSummary | None:
    info, records = d.timeline.info.tls, d.timeline.tls
    if info is None:
        return None
    inferred = info.decryption != DECRYPTED
    tune_ok = d.rel(records.tune_ok) if records is not None and inferred else None
    on_grid = None
    timeout = d.heartbeat.effective
    if tune_ok is not None and timeout:
        phase = rabbitmq_model.infer_tick_anchor([t - d.t0 for t in d.timeline.s2c.heartbeat_times()], timeout)
        if phase is not None and phase.heartbeats >= 2:
            on_grid = rabbitmq_model.anchor_on_grid(tune_ok, phase)
    return TlsSummary(
        version_name(info.version) if info.version is not None else None,
        cipher_suite_name(info.cipher_suite) if info.cipher_suite is not None else None,
        info.sni, info.alpn, info.decryption,
        records.records_c2s if records else 0, records.records_s2c if records else 0,
        inferred, records.heartbeat_guesses if records and inferred else 0, tune_ok, on_grid,
        tuple((d.rel(t), direction, what) for t, direction, what in records.alerts) if records else ())


# ---- teardown -------------------------------------------------------------------------------------


def close_of(tl: ConnectionTimeline, t0: float) -> Close:
    """How the connection ended so far (times relative to `t0`): the one rule diagnose and a live watch
    read a close by."""
    return _close(tl, t0)


def _close(tl: ConnectionTimeline, t0: float) -> Close:
    first_rst = _first(tl.c2s.rst, tl.s2c.rst)
    if tl.connection_close is not None:
        close = tl.connection_close
        benign = benign_from = None
        if first_rst is not None and first_rst[0] >= close.time:
            benign, benign_from = first_rst[0] - t0, first_rst[1]
        return Close(close.time - t0, "client" if close.direction == C2S else "server", "connection.close",
                     close.args.get("reply_code"), close.args.get("reply_text"), benign, benign_from)
    first_fin = _first(tl.c2s.fin, tl.s2c.fin)
    encrypted_close = _encrypted_close(tl, first_fin)
    if encrypted_close is not None:
        return Close(encrypted_close - t0, "client", "connection.close", inferred=True)
    ends: list[tuple[float, CloseHow, Peer]] = []
    if first_rst:
        ends.append((first_rst[0], "rst", first_rst[1]))
    if first_fin:
        ends.append((first_fin[0], "fin", first_fin[1]))
    if not ends:
        return Close(None, None, "open")
    t, how, who = min(ends)
    return Close(t - t0, who, how)


def _encrypted_close(tl: ConnectionTimeline, first_fin: tuple[float, Peer] | None) -> float | None:
    """Without keys: when the client's FIN follows, within a close handshake's time, records the
    sizes of its connection.close and the broker's close-ok, the time of that close."""
    info, records = tl.info.tls, tl.tls
    if info is None or records is None or info.decryption == DECRYPTED or first_fin is None:
        return None
    fin, who = first_fin
    if who != "client" or records.last_c2s is None or records.last_s2c is None:
        return None
    (close_at, close_len), (close_ok_at, close_ok_len) = records.last_c2s, records.last_s2c
    if (close_at <= close_ok_at <= fin <= close_ok_at + CLOSE_HANDSHAKE_SLACK
            and looks_like_close_handshake(close_len, close_ok_len)):
        return close_at
    return None


def _first(client_time: float | None, server_time: float | None) -> tuple[float, Peer] | None:
    candidates: list[tuple[float, Peer]] = []
    if client_time is not None:
        candidates.append((client_time, "client"))
    if server_time is not None:
        candidates.append((server_time, "server"))
    return min(candidates) if candidates else None


# ---- verdict --------------------------------------------------------------------------------------


def _verdict(d: Diagnosis) -> None:
    close, tl = d.close, d.timeline
    observed = close.time
    if close.how == "open" or observed is None:  # (the time is None exactly when it is open)
        d.verdict = OPEN
        _gave_up_off_the_wire(d)
        return
    if close.how == "connection.close":
        d.verdict = GRACEFUL if _normal_close_code(d) else CLOSED_WITH_ERROR
        return
    if close.initiator == "client" and _blocked_at(d, observed) is not None:
        # The client gave up while the broker held it blocked: the broker's heartbeats kept coming
        # (its sender is never paused), so no heartbeat timer closed it; its blocked-connection
        # timeout (pika's blocked_connection_timeout) or the application did.
        d.verdict = RESET
        return
    timeout = d.heartbeat.effective
    silent_side = tl.c2s if close.initiator == "server" else tl.s2c
    last = d.rel(silent_side.last_payload)
    before_capture = last is None and not tl.handshake_seen and silent_side.syn is None
    if before_capture:
        # The silent peer sent nothing the capture saw, and the capture began mid-connection: its
        # last byte came before the first packet, which bounds it from above.
        last = d.rel(tl.first_seen)
    if last is not None and not before_capture:
        d.silence = observed - last
    if not timeout or last is None:
        d.verdict = RESET
        if not timeout and d.heartbeat.source != "unknown":
            d.misfit = "heartbeats were disabled, so no heartbeat timer closed it"
        return
    prediction, d.alternative = _predict(d, last, timeout, observed)
    if prediction is None:
        d.verdict = RESET
        return
    d.prediction = prediction
    fits = _fits(prediction, observed)
    if before_capture:
        # Only an upper bound on the last byte: any teardown up to the bound's window end fits, once
        # the capture shows at least one full timeout of silence.
        latest = rabbitmq_model.WINDOW_END_PERIODS * timeout + WINDOW_LATE_TOLERANCE
        fits = timeout - WINDOW_EARLY_TOLERANCE <= observed - last < latest
        d.misfit = (f"the {'client' if close.initiator == 'server' else 'broker'} sent nothing during the capture, "
                    f"so its last byte came before the capture started ({last:.3f} s); the prediction uses "
                    "that bound and may be late")
    d.prediction_fits = fits
    if not before_capture:
        _gap_sensitivity(d, silent_side, last, timeout, observed)
    if fits:
        d.verdict = MISSED_CLIENT if close.initiator == "server" else MISSED_SERVER
        if close.initiator == "server" and close.how == "fin":
            d.misfit = ("the broker side closed with a FIN, not the RST RabbitMQ sends (linger 0): a proxy or "
                        "load balancer sits between client and broker, or tcp_listen_options were customised")
        return
    d.verdict = RESET
    who = prediction.decider
    who = "t" + who[1:] if who.startswith("The ") else who  # mid-sentence
    lo, hi = prediction.window
    if observed < lo:
        d.misfit = (f"the teardown at {observed:.3f} s came {lo - observed:.3f} s before {who}'s earliest heartbeat "
                    f"timeout ({lo:.3f} s): something else closed it (a process killed, a firewall or proxy idle "
                    "timeout, an operator closing the connection)")
    else:
        d.misfit = (f"the teardown at {observed:.3f} s came {observed - hi:.3f} s after {who}'s latest heartbeat "
                    f"timeout ({hi:.3f} s): a longer effective timeout (customised tcp_listen_options, a proxy), "
                    "a capture taken far from the broker, or a teardown with another cause")


def _gave_up_off_the_wire(d: Diagnosis) -> None:
    """An open connection whose broker fell silent while the client's own data went unacknowledged
    (a partition seen from the client): when the client's model gave up inside the capture, that is
    the verdict, at the predicted time. Its FIN waits behind the data its kernel keeps retransmitting
    (models/linux_tcp.py), so it never reaches the wire; the prediction is all there is."""
    prediction = _unheard_client_give_up(d)
    if prediction is None or prediction.predicted >= d.capture_end:
        return  # (after the capture's last packet: a finding says when it will come)
    d.prediction, d.prediction_fits = prediction, True
    d.close = Close(prediction.predicted, "client", "fin", inferred=True)
    d.silence = prediction.predicted - prediction.last_byte
    d.verdict = MISSED_SERVER


def _unheard_client_give_up(d: Diagnosis) -> Prediction | None:
    """The client model's give-up for a broker that fell silent while the client's own data went
    unacknowledged (it retransmits after the broker's last byte); None when that is not the case."""
    tl, timeout = d.timeline, d.heartbeat.effective
    last_server, last_client = d.last_server_byte, d.last_client_byte
    if not timeout or last_server is None or last_client is None or not tl.c2s.retransmission_times:
        return None
    if last_client <= last_server:
        return None  # nothing of the client's was left unacknowledged by the silent broker
    return _client_prediction(d, last_server, timeout)


def _hidden_close(d: Diagnosis) -> None:
    """A FIN/RST with no connection.close in the capture, right where the capture lost or cut bytes:
    the close may be in them, so how the connection ended cannot be told (never guess "reset")."""
    tl, end = d.timeline, d.close.time
    if end is None:  # still open: nothing was hidden
        return
    hidden = [g for side in (tl.c2s, tl.s2c) for g in side.gaps
              if abs(d.rel(g.timestamp) - end) <= CLOSE_HANDSHAKE_SLACK]
    if not hidden:
        return
    how = "snap length cut" if all(g.reason == "snapped" for g in hidden) else "capture lost"
    note = (f"the {how} {sum(g.missing for g in hidden)} bytes within {CLOSE_HANDSHAKE_SLACK:g} s of the "
            f"{d.close.how.upper()}: they may have held a connection.close")
    d.verdict = UNKNOWN
    d.misfit = note if d.misfit is None else f"{note}; besides, {d.misfit}"


def _normal_close_code(d: Diagnosis) -> bool:
    """The connection.close was a normal one (`_normal_reply`)."""
    return _normal_reply(d, d.close.reply_code, d.close.initiator == "client")


def _normal_reply(d: Diagnosis, code: int | None, from_client: bool) -> bool:
    """A close (connection or channel) with reply-success, or from the client with the code its
    library sends on its own normal close (py-amqp and php-amqplib send 0). 0 is no AMQP error
    code: from a client not identified it is read as a normal close too."""
    if code in (None, REPLY_SUCCESS):
        return True
    if not from_client:
        return False
    return code == d.profile.normal_close_code or (code == 0 and d.client.library == "unknown")


def _blocked_at(d: Diagnosis, t: float) -> float | None:
    """The connection.blocked time (relative) when the broker held the connection blocked at `t`."""
    for blocked, unblocked in _blocked_periods(d):
        if blocked <= t and (unblocked is None or unblocked > t):
            return blocked
    return None


def _fits(prediction: Prediction, observed: float) -> bool:
    lo, hi = prediction.window
    if prediction.late_ok:
        # The client's timer runs only when its loop or the application lets it (pika's
        # BlockingConnection, py-amqp's heartbeat_tick): it may detect late, never early.
        return observed >= lo - WINDOW_EARLY_TOLERANCE
    return lo - WINDOW_EARLY_TOLERANCE <= observed < hi + WINDOW_LATE_TOLERANCE + prediction.lateness_allowance


def _gap_sensitivity(d: Diagnosis, silent_side: Direction, last: float, timeout: float, close: float) -> None:
    """Capture loss is never silence: bytes of the silent peer lost after its last captured byte
    were sent before the loss became visible (the ACK or segment that revealed the hole), so its
    real last byte may be that late. Ask the model again with that bound."""
    seen = [d.rel(g.timestamp) for g in silent_side.gaps if g.reason != "snapped"]
    seen += [end for start, end, _ in d.outages if start >= last]  # it may have spoken while nothing was captured
    later = [t for t in seen if last < t <= close + WINDOW_EARLY_TOLERANCE]
    if not later:
        return
    latest = min(max(later), close)
    prediction, _ = _predict(d, latest, timeout, close)
    d.gap_last = latest
    if prediction is not None:
        d.gap_prediction = prediction
        d.gap_fits = _fits(prediction, close)


def _predict(d: Diagnosis, last: float, timeout: float, close: float) -> tuple[Prediction | None, Prediction | None]:
    """The model of whoever tore the connection down at `close`, for a silent peer whose last byte
    was `last` and a heartbeat timeout `timeout`; the second value is the other candidate when the
    broker's grid phase had to be inferred."""
    if d.close.initiator == "server":
        return _broker_prediction(d, last, timeout, close)
    return _client_prediction(d, last, timeout), None


def _broker_prediction(d: Diagnosis, last_client: float, timeout: float,
                       close: float) -> tuple[Prediction | None, Prediction | None]:
    tl = d.timeline
    tune_ok = d.tune_ok_time
    if tune_ok is not None and tl.tune_ok is None and d.tls is not None and d.tls.tune_ok_on_grid is False:
        tune_ok = None  # the record taken for tune-ok is off the broker's own grid: trust the grid
    if tune_ok is not None:
        periods = _blocked_periods(d)
        anchor = rabbitmq_model.monitor_anchor(tune_ok, periods, at=close)
        if anchor is None:
            return None, None  # the monitor was paused when the connection died: not a heartbeat timeout
        return rabbitmq_model.predict_missed_client_heartbeats(
            last_client, tune_ok, timeout, monitor_anchor=anchor if anchor != tune_ok else None), None
    phase = rabbitmq_model.infer_tick_anchor([t - d.t0 for t in tl.s2c.heartbeat_times()], timeout)
    if phase is None:
        return None, None
    first, second = rabbitmq_model.predict_from_tick_phase(last_client, phase)
    # The broker's heartbeats fix the grid only up to T/2: keep the candidate the teardown matches.
    best, other = sorted((first, second), key=lambda p: abs(p.error(close)))
    return best, other


def _client_prediction(d: Diagnosis, last_server: float, timeout: float) -> Prediction | None:
    """The client library's own give-up rule (its profile row; pika's is its checker model)."""
    row = d.profile
    if row.detection is None:
        return None
    prediction = predict_give_up(row.detection, row.key, last_server, timeout, d.timer_anchors())
    if prediction is None:
        return None
    # A timer on the loop that runs the handler (or driven by the application) fires late when
    # that loop is busy.
    late_ok = prediction.late_ok or row.sender_runs != "own-thread"
    return replace(prediction, peer=row.name, late_ok=late_ok)


def _blocked_periods(d: Diagnosis) -> list[tuple[float, float | None]]:
    periods: list[tuple[float, float | None]] = []
    for t, what in d.timeline.blocked:
        if what == "blocked":
            periods.append((t - d.t0, None))
        elif periods and periods[-1][1] is None:
            periods[-1] = (periods[-1][0], t - d.t0)
    return periods


# ---- findings -------------------------------------------------------------------------------------


def _findings(d: Diagnosis) -> Iterator[Finding]:
    tl, hb = d.timeline, d.heartbeat
    end = d.close.time if d.close.time is not None else d.rel(tl.last_seen)
    timeout = hb.effective
    if hb.effective == 0:
        yield Finding(d.rel(tl.tune_ok.time) if tl.tune_ok else 0.0, "heartbeat-disabled", None,
                      "heartbeat 0 in connection.tune-ok: neither peer will ever detect a dead connection")
    # (client_requested comes from the tune-ok)
    if (tl.tune_ok is not None and hb.client_requested and hb.server_proposed is not None
            and hb.client_requested > hb.server_proposed):
        yield Finding(d.rel(tl.tune_ok.time), "heartbeat-above-proposal", None,
                      f"the client asked for {hb.client_requested} s, more than the broker's {hb.server_proposed} s; "
                      f"RabbitMQ accepts it as is ({_negotiation_note(d)})")
    for side, peer, kind in ((tl.c2s, tl.s2c, "client"), (tl.s2c, tl.c2s, "broker")):
        # Without heartbeats a silent side is normal: only the peer retransmitting into it says something.
        yield from _silence_findings(d, side, peer, kind, end, timeout or 0.0)
    for start, stop, where in d.outages:
        yield Finding(start, "capture-gap", None,
                      f"nothing captured for {stop - start:.3f} s ({where}): whatever either peer sent then, the "
                      "capture cannot show")
    for direction, side in ((C2S, tl.c2s), (S2C, tl.s2c)):
        for gap in side.gaps:
            yield Finding(d.rel(gap.timestamp), "capture-gap", None,
                          f"{gap.missing} bytes {direction} missing from the capture ({gap.reason}) at stream offset "
                          f"{gap.offset}: whatever they carried, the capture cannot show")
        if side.gap_count > len(side.gaps):
            yield Finding(d.rel(side.gaps[-1].timestamp), "capture-gap", None,
                          f"{side.gap_count - len(side.gaps)} more gaps {direction} not listed")
        for error in side.decode_errors:
            yield Finding(d.rel(error.timestamp), "decode-error", None,
                          f"{direction} offset {error.offset}: {error.reason}")
        if side.nonstandard_heartbeats and side.first_nonstandard_heartbeat is not None:
            yield Finding(d.rel(side.first_nonstandard_heartbeat), "nonstandard-heartbeat-frame", 0,
                          f"{side.nonstandard_heartbeats} heartbeat frames {direction} with type 4, a payload or a "
                          "non-zero channel (accepted, but not what the 0-9-1 spec says)")
    for close in tl.channel_closes:
        code, text = close.args.get("reply_code"), close.args.get("reply_text") or ""
        if _normal_reply(d, code, close.direction == C2S):
            continue
        who = "broker" if close.direction != C2S else "client"
        if code == PRECONDITION_FAILED and "delivery acknowledgement" in text:
            yield Finding(d.rel(close.time), "consumer-timeout", close.channel,
                          f"the broker closed channel {close.channel}: {text} (the connection stays open; "
                          "ack sooner or raise consumer_timeout)")
        else:
            yield Finding(d.rel(close.time), "channel-error", close.channel,
                          f"{who} closed channel {close.channel}: {code} {text}".rstrip())
    if d.close.initiator == "client" and d.close.how in ("fin", "rst") and d.close.time is not None:
        blocked = _blocked_at(d, d.close.time)
        if blocked is not None:
            yield Finding(d.close.time, "client-gave-up-blocked", None, _blocked_give_up(d, d.close.time - blocked))
    for t, what in tl.blocked:
        yield Finding(d.rel(t), "connection-blocked", None,
                      "broker sent connection.blocked (resource alarm): it pauses its heartbeat monitor"
                      if what == "blocked" else "broker sent connection.unblocked: its heartbeat monitor restarts now")
    yield from _path_findings(d)
    if d.verdict == OPEN:
        pending = _unheard_client_give_up(d)
        if pending is not None:
            yield Finding(end, "client-gives-up-after-capture", None,
                          f"the broker has sent nothing since {pending.last_byte:.3f} s while the client's data went "
                          f"unacknowledged: unless a broker byte arrived later, {d.profile.name} gives up at "
                          f"{pending.predicted:.3f} s, after this capture's last packet ({d.capture_end:.3f} s); its "
                          "FIN will wait behind the unacknowledged data, so no packet will show it")
    yield from _kernel_gave_up(d)
    for side, kind in ((tl.c2s, "client"), (tl.s2c, "broker")):
        if side.zero_windows and side.first_zero_window is not None and side.last_zero_window is not None:
            why = ("RabbitMQ stops reading a connection it has blocked (a resource alarm), and a busy or stalled node "
                   "reads late" if kind == "broker" else
                   "the client library's I/O loop was not reading (a long callback), or it could not keep up")
            yield Finding(d.rel(side.first_zero_window), "not-reading", None,
                          f"the {kind} advertised a zero receive window {side.zero_windows} times from "
                          f"{d.rel(side.first_zero_window):.3f} s to {d.rel(side.last_zero_window):.3f} s: its kernel "
                          f"was alive but its socket buffer full, the application not reading ({why})")
    if tl.protocol != "amqp-0-9-1":
        yield Finding(d.rel(tl.protocol_header or tl.first_seen), "not-amqp-0-9-1", None,
                      f"this connection speaks {tl.protocol}, not AMQP 0-9-1: its frames are not decoded")


# Retransmissions into a side's silence before it counts as unreachable (one lost segment, repaired by
# the next, is ordinary loss).
UNREACHABLE_RETRANSMISSIONS = 3


# Findings that name a device on the path as what ended a connection.
PATH_TEARDOWNS = ("middlebox-teardown", "idle-timeout")


# Past the retransmission the back-off would have sent next, this much more capture without it (and
# without a FIN or RST) means the sender's kernel stopped trying.
KERNEL_GAVE_UP_MARGIN = 1.0


def _kernel_gave_up(d: Diagnosis) -> Iterator[Finding]:
    """A side whose retransmissions backed off and then stopped, with no FIN or RST, while the capture
    went on: its kernel timed the connection out (tcp_retries2, or the socket's TCP_USER_TIMEOUT)."""
    for side, kind in ((d.timeline.c2s, "client"), (d.timeline.s2c, "broker")):
        if side.fin is not None or side.rst is not None or side.last_payload is None:
            continue
        train = [side.last_payload, *side.retransmission_times]
        if side.retransmissions_since_payload > len(side.retransmission_times) or not linux_tcp.is_backoff(train):
            continue
        expected = linux_tcp.next_retransmission(train)
        if expected is None or d.capture_end < d.rel(expected) + KERNEL_GAVE_UP_MARGIN:
            continue
        first, last, due = d.rel(side.last_payload), d.rel(train[-1]), d.rel(expected)
        yield Finding(last, "kernel-gave-up", None,
                      f"the {kind}'s TCP retransmitted its unacknowledged data {len(train) - 1} times from "
                      f"{first:.3f} s to {last:.3f} s with exponential back-off, then stopped without a FIN or RST "
                      "although the "
                      f"capture went on to {d.capture_end:.3f} s (the next retransmission was due at "
                      f"{due:.3f} s): its kernel gave up on the connection about {due - first:.1f} s after first "
                      "sending it "
                      "(the socket's TCP_USER_TIMEOUT, or net.ipv4.tcp_retries2 after about 15 minutes by default) "
                      "and the application's next call on it failed with ETIMEDOUT")


# A teardown after this long with no byte either way, where heartbeats could not have run, is what an
# idle timeout on the path (firewall, NAT, load balancer) leaves; shorter quiet is an ordinary close.
IDLE_TEARDOWN_MIN = 1.0


def _path_findings(d: Diagnosis) -> Iterator[Finding]:
    """What the wire says about devices between the peers: a teardown one of them did not send, and a
    flow killed for being idle."""
    close, tl = d.close, d.timeline
    for side, peer, kind in ((tl.c2s, tl.s2c, "client"), (tl.s2c, tl.c2s, "broker")):
        if not side.segments and peer.segments >= ONE_WAY_MIN_SEGMENTS:
            yield Finding(d.rel(tl.first_seen), "direction-not-captured", None,
                          f"the capture holds no packet at all from the {kind} while the "
                          f"{'broker' if kind == 'client' else 'client'} sent {peer.segments}: the capture misses that "
                          "direction (asymmetric routing, a one-way mirror port, a filter on one address), so the "
                          f"{kind}'s silence says nothing about the {kind}")
    if close.how not in ("fin", "rst") or close.initiator is None or close.time is None or close.inferred:
        return
    who = close.initiator if close.initiator == "client" else "broker"
    side = tl.c2s if close.initiator == "client" else tl.s2c
    packet = close.how.upper()
    if side.ttl and side.teardown_ttl and side.ttl != side.teardown_ttl:
        yield Finding(close.time, "middlebox-teardown", None,
                      f"the {packet} from the {who}'s address arrived with TTL {side.teardown_ttl} where the {who}'s "
                      f"other packets had {side.ttl}: a device on the path (a firewall, NAT gateway or load balancer) "
                      f"sent it, not the {who}")
    if d.verdict in (MISSED_CLIENT, MISSED_SERVER, GRACEFUL, CLOSED_WITH_ERROR):
        return
    if close.how != "rst":
        return  # idle-timeout devices reset (or forget silently); an endpoint's FIN is its own close
    quiet, woke = _idle_before(d, close.time)
    if quiet is None:
        return
    timeout = d.heartbeat.effective
    if quiet < IDLE_TEARDOWN_MIN or (timeout and timeout / 2 < quiet - WINDOW_LATE_TOLERANCE):
        return  # heartbeats were due in that quiet: not an idle flow, a silent peer
    why = ("heartbeats were disabled (heartbeat 0)" if timeout == 0 else
           "heartbeats were off or unknown" if not timeout else
           f"a heartbeat every T/2 = {timeout / 2:g} s is longer than that")
    what = (f"no byte in either direction for {quiet:.3f} s, then a {packet} ({who} side)" if woke is None else
            f"no byte in either direction for {quiet:.3f} s, then the first one (at {woke:.3f} s) was answered with a "
            f"{packet} ({who} side): the device had already forgotten the flow")
    bound = "at most" if woke is not None else "about"
    yield Finding(close.time, "idle-timeout", None,
                  f"{what}: the signature of an idle timeout on the path (a firewall, NAT gateway, load balancer or "
                  f"proxy that drops flows idle for {bound} {quiet:.0f} s); {why}, so nothing kept the flow "
                  f"alive. Fix: a heartbeat whose T/2 is well below the idle timeout (T of {max(1, int(quiet)):d} s or "
                  f"less here sends something every {max(1, int(quiet)) / 2:g} s), or raise the device's idle timeout")


# Segments one way, none the other, before a capture counts as missing a direction (a SYN and its
# retransmissions to a dead host are fewer).
ONE_WAY_MIN_SEGMENTS = 8


# A byte answered this fast by the teardown was refused by the path, not judged by a peer's timer.
REFUSED_WITHIN = 0.5


def _idle_before(d: Diagnosis, end: float) -> tuple[float | None, float | None]:
    """How long the flow was idle before it died: up to the teardown, or, when the teardown answered
    the first byte after a silence (a device that had dropped the flow refusing it), up to that byte,
    whose time comes second. (None, None) without bytes."""
    tl = d.timeline
    lasts = sorted((t, side) for t, side in ((d.last_client_byte, tl.c2s), (d.last_server_byte, tl.s2c))
                   if t is not None)
    if not lasts:
        return None, None
    last, side = lasts[-1]
    if end - last > REFUSED_WITHIN:
        return end - last, None
    before = [t for t in (d.rel(side.previous_payload), lasts[0][0] if len(lasts) > 1 else None) if t is not None]
    return (last - max(before), last) if before else (None, None)


def _negotiation_note(d: Diagnosis) -> str:
    if d.client.library == "unknown":
        return "the client's value always wins"
    return f"{d.profile.name}: {d.profile.negotiation}"


def _blocked_give_up(d: Diagnosis, after: float) -> str:
    row = d.profile
    head = (f"the client closed the connection {after:.3f} s after connection.blocked, while the broker still held "
            "it blocked (a resource alarm), without connection.close")
    if row.blocked_timeout is not None:
        return (f"{head}: {row.name}'s {row.blocked_timeout} fired ({row.blocked_timeout_error}); its value is that "
                f"setting, about {after:.0f} s")
    return f"{head}: the application gave up on the blocked connection ({row.name} has no such timeout of its own)"


def _silence_findings(d: Diagnosis, side: Direction, peer: Direction, kind: str, end: float,
                      timeout: float) -> Iterator[Finding]:
    """Why a side fell silent, as far as the wire shows it: its application stopped while its kernel
    still ACKed (blocked), or nothing of it arrived while the peer retransmitted into the silence or
    kept sending (unreachable). A side whose own data went unacknowledged is retransmitting, not
    blocked: no finding for it here."""
    if side.last_payload is None:
        return
    last = d.rel(side.last_payload)
    # Silence is only what the capture saw: after a pause it did not see (between the files of a
    # series), it counts from the pause's end.
    last = max([last, *(stop for start, stop, _ in d.outages if last <= start < end)])
    silence = end - last
    if timeout and silence <= timeout:
        return
    peer_sent = peer.last_payload is not None and peer.last_payload > side.last_payload
    other = "broker" if kind == "client" else "client"
    # The peer retransmitting after the last segment of this side's: not even this side's kernel answered.
    heard_last = max(side.last_payload, side.last_segment or side.last_payload)
    retransmitted = [t for t in peer.retransmission_times if heard_last < t <= d.t0 + end]
    if retransmitted and len(retransmitted) >= UNREACHABLE_RETRANSMISSIONS:
        first_send = peer.last_payload if peer.last_payload is not None else retransmitted[0]
        backoff = linux_tcp.is_backoff([first_send, *retransmitted])
        how = " with exponential back-off, as a sender's TCP does when nothing comes back" if backoff else ""
        yield Finding(last, "peer-unreachable", None,
                      f"the {kind} sent nothing, not even TCP ACKs, for {silence:.3f} s after {last:.3f} s while the "
                      f"{other} retransmitted its unacknowledged data {len(retransmitted)} times{how}: the {kind}'s "
                      "host or the network path between them was down (a partition, a host crash, a firewall "
                      f"dropping the flow); the {kind} was not blocked, nothing of it arrived")
    elif not timeout:
        return
    elif side.ack_only_since_payload:
        name = "client-app-blocked" if kind == "client" else "broker-app-blocked"
        detail = (f"the {kind} sent no AMQP bytes for {silence:.3f} s after {last:.3f} s while its kernel ACKed "
                  f"{side.ack_only_since_payload} {other} segments: ")
        if kind != "client":
            detail += "the process was alive but not running its Erlang processes (SIGSTOP, GC, overload?)"
        elif d.profile.sender_runs == "own-thread":
            detail += (f"the process was alive but not running {d.profile.loop}, which sends {d.profile.name}'s "
                       "heartbeats whatever the handlers do: the whole process stalled (SIGSTOP, a debugger, a paused "
                       "container or VM, CPU starvation, a stop-the-world pause) or a write blocked on a full socket")
        else:
            detail += f"the process was alive but not running {d.profile.loop} (a long callback?)"
        yield Finding(last, name, None, detail)
    elif peer_sent:
        yield Finding(last, "peer-unreachable", None,
                      f"the {kind} sent nothing, not even TCP ACKs, for {silence:.3f} s after {last:.3f} s while its "
                      "peer kept sending: host down, network path broken, or capture missing that direction")
