"""`amqp-hb watch` output: each WatchEvent as a JSON object (jsonl, for alerting systems) or as a
line of text, and the live table's cells. Times are epoch seconds in JSON (the event's own time is
`epoch`, as in `frames`; the stream has no first packet to count from) and local wall-clock time
(HH:MM:SS.mmm, as tcpdump prints them) in text.
"""
from __future__ import annotations

import time

from analyzer.diagnosis.results import Diagnosis
from analyzer.flows import RETIRE_AFTER
from analyzer.watch import AT_RISK, OPENED, RECOVERED, STILL_OPEN, TEARDOWN, WARNING, ConnectionStatus, Risk, WatchEvent

SCHEMA = "amqp-hb/watch/1"
TIME_DIGITS = 6  # microseconds: classic pcap's resolution


def clock(epoch: float) -> str:
    """Local wall-clock time of an epoch, to the millisecond."""
    whole = int(epoch)
    return time.strftime("%H:%M:%S", time.localtime(whole)) + f".{int((epoch - whole) * 1000):03d}"


def risk_sentence(risk: Risk, connection: str) -> str:
    """The warning itself: who closes what, when, unless what."""
    when = "at" if risk.prediction.exact else "from"  # only the window's start is known
    return (f"{risk.peer} will close {connection} {when} {clock(risk.predicted_close)} unless the "
            f"{risk.silent_peer} sends a byte")


def event_fields(event: WatchEvent) -> dict[str, object]:
    """One event as the jsonl stream writes it."""
    fields: dict[str, object] = {"schema": SCHEMA, "event": event.kind, "epoch": round(event.time, TIME_DIGITS)}
    if event.kind == WARNING:
        fields["message"] = event.message
        return fields
    fields["connection"] = event.connection
    if event.risk is not None:
        fields.update(_risk_fields(event.risk))
        if event.kind in (AT_RISK, RECOVERED):
            fields["message"] = (risk_sentence(event.risk, event.connection) if event.kind == AT_RISK else
                                 f"the {event.risk.silent_peer} sent a byte: {event.risk.peer} will not close "
                                 f"{event.connection} at {clock(event.risk.predicted_close)}")
    if event.diagnosis is not None:
        fields.update(_diagnosis_fields(event.diagnosis))
    return fields


def _seconds(value: float | None) -> float | int | None:
    """A heartbeat as the wire carries it (whole seconds) when it is one, even when inferred."""
    return int(value) if value is not None and value == int(value) else value


def _risk_fields(risk: Risk) -> dict[str, object]:
    p = risk.prediction
    return {"closer": risk.closer, "decider": risk.peer, "model": p.model, "silent_peer": risk.silent_peer,
            "heartbeat": _seconds(p.timeout), "heartbeat_source": risk.heartbeat_source,
            "last_byte": round(risk.last_byte, TIME_DIGITS),
            "at_risk_from": round(risk.at_risk_from, TIME_DIGITS),
            "predicted_close": round(risk.predicted_close, TIME_DIGITS), "exact": p.exact,
            "window": [round(p.window[0], TIME_DIGITS), round(p.window[1], TIME_DIGITS)]}


def _diagnosis_fields(d: Diagnosis) -> dict[str, object]:
    close = d.close
    fields: dict[str, object] = {
        "verdict": d.verdict, "client_library": d.client.library, "handshake_seen": d.timeline.handshake_seen,
        "heartbeat": _seconds(d.heartbeat.effective), "heartbeat_source": d.heartbeat.source,
        "close": {"epoch": None if close.time is None else round(d.t0 + close.time, TIME_DIGITS),
                  "how": close.how, "initiator": close.initiator, "reply_code": close.reply_code,
                  "reply_text": close.reply_text, "inferred": close.inferred},
        "findings": [{"epoch": round(d.t0 + f.time, TIME_DIGITS), "kind": f.kind, "detail": f.detail}
                     for f in d.findings],
        "explanation": d.explanation,
    }
    if d.prediction is not None:
        fields["prediction"] = {"model": d.prediction.model,
                                "predicted": round(d.t0 + d.prediction.predicted, TIME_DIGITS),
                                "error": None if close.time is None else round(close.time - d.prediction.predicted, 6),
                                "fits": d.prediction_fits}
    return fields


def event_line(event: WatchEvent) -> str:
    """One event as a line of text (a teardown's explanation follows, indented)."""
    at = clock(event.time)
    if event.kind == WARNING:
        return f"{at}  warning      {event.message}"
    if event.kind == OPENED:
        return f"{at}  opened       {event.connection}"
    if event.kind == AT_RISK:
        assert event.risk is not None
        risk = event.risk
        return (f"{at}  AT RISK      {risk_sentence(risk, event.connection)} ({risk.silent_peer} silent since "
                f"{clock(risk.last_byte)}, heartbeat {risk.prediction.timeout:g} s)")
    if event.kind == RECOVERED:
        assert event.risk is not None
        return f"{at}  recovered    {event.connection}: the {event.risk.silent_peer} sent a byte"
    assert event.diagnosis is not None
    d = event.diagnosis
    what = "teardown" if event.kind == TEARDOWN else "still open"
    head = f"{at}  {what:<11}  {event.connection}: {d.verdict}"
    if event.kind == STILL_OPEN and event.risk is not None:
        head += f" (at risk: {risk_sentence(event.risk, event.connection)})"
    body = "".join(f"\n             {line}" for line in d.explanation.splitlines() if line.strip())
    return head + body


STATE_WORDS = {"at-risk": "AT RISK", "healthy": "healthy", "no-heartbeat": "no heartbeat",
               "heartbeat-unknown": "T unknown", "closing": "closing", "torn-down": "torn down"}


def status_cells(row: ConnectionStatus, now: float) -> tuple[str, ...]:
    """The live table's cells: connection, state, T, client, silence per side, the broker's next look,
    the pending close and its countdown (or, torn down, the verdict)."""
    until = now if row.closed_at is None else row.closed_at  # a closing connection's silence ended there

    def since(t: float | None) -> str:
        return "-" if t is None or row.state == "torn-down" else f"{max(0.0, until - t):.1f} s"

    heartbeat = "?" if row.heartbeat is None else f"{row.heartbeat:g} s"
    if row.heartbeat_source == "inferred":
        heartbeat += " (inferred)"
    if row.state == "torn-down":
        pending = row.verdict or ""
    elif row.state == "closing":
        pending = f"verdict {RETIRE_AFTER:g} s after the close"
    elif row.risk is not None and row.state == "at-risk":
        pending = (f"{row.risk.peer} closes at {clock(row.risk.predicted_close)} "
                   f"(in {max(0.0, row.risk.predicted_close - now):.1f} s)")
    else:
        pending = ""
    next_look = "-" if row.next_broker_look is None else f"{clock(row.next_broker_look)}"
    return (row.connection, STATE_WORDS[row.state], heartbeat, row.client, since(row.last_client_byte),
            since(row.last_server_byte), next_look, pending)


STATUS_HEADERS = ("connection", "state", "heartbeat", "client", "client silent", "broker silent",
                  "broker's next look", "pending close / verdict")
