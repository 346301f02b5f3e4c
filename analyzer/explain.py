"""Diagnosis → a few plain sentences a user can act on: times, window arithmetic, cause, fix."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from analyzer.diagnose import Diagnosis

FIX_CLIENT_BLOCKED = (
    "Fix: run long work in a thread and ack from it with "
    "connection.add_callback_threadsafe(functools.partial(ch.basic_ack, delivery_tag=...)); "
    "or let pika service I/O during the work (connection.process_data_events / connection.sleep); "
    "or negotiate a heartbeat longer than the longest task."
)
FIX_BROKER_BLOCKED = (
    "Check the broker: a stopped (SIGSTOP), overloaded or partitioned node stops sending while its kernel "
    "still ACKs; its logs and `rabbitmq-diagnostics status` tell which."
)


def explain(d: "Diagnosis") -> str:
    tl, close = d.timeline, d.close
    parts: list[str] = []
    verdict = d.verdict
    if verdict == "open":
        end = d.rel(tl.last_seen)
        parts.append(f"Still open when the capture ended (last packet of this connection at {end:.3f} s).")
        parts.append(_last_bytes(d))
    elif verdict in ("graceful", "closed-with-error"):
        reply = f"{close.reply_code} {close.reply_text or ''}".strip()
        parts.append(f"The {close.initiator} closed the connection with connection.close ({reply}) at {close.time:.3f} s.")
        if close.benign_rst is not None:
            parts.append(f"The RST at {close.benign_rst:.3f} s is RabbitMQ's linger-0 socket close after the close "
                         "handshake: benign.")
        if verdict == "closed-with-error":
            parts.append("The reply code says why; the broker log has the same text.")
    elif verdict == "missed-client-heartbeats":
        parts.extend(_missed(d, silent="client", closer="RabbitMQ"))
    elif verdict == "missed-server-heartbeats":
        parts.extend(_missed(d, silent="broker", closer="the client"))
    elif verdict == "reset":
        what = "an RST" if close.how == "rst" else "a FIN"
        parts.append(f"The {close.initiator} ended the connection with {what} at {close.time:.3f} s, "
                     "without an AMQP connection.close.")
        if d.misfit:
            parts.append(f"It does not fit a heartbeat timeout: {d.misfit}.")
        parts.append(_last_bytes(d))
    else:
        parts.append("Not enough of this connection was captured to say how it ended.")
    parts.extend(_gap_caveat(d))
    return " ".join(p for p in parts if p)


def _missed(d: "Diagnosis", *, silent: str, closer: str) -> list[str]:
    tl, close, pred = d.timeline, d.close, d.prediction
    side = tl.c2s if silent == "client" else tl.s2c
    last = d.rel(side.last_payload)
    t = d.heartbeat.effective
    if last is None:
        out = [f"The {silent} sent nothing during the capture; heartbeat timeout {t:g} s ({d.heartbeat.source})."]
    else:
        out = [f"The {silent}'s last byte was {_last_thing(d, side)} at {last:.3f} s; heartbeat timeout {t:g} s "
               f"({d.heartbeat.source})."]
    explained = pred.explain()
    how = "RST" if close.how == "rst" else "FIN"
    error_ms = pred.error(close.time) * 1000
    out.append(f"{explained[:-1]} (observed {how} at {close.time:.3f} s, {error_ms:+.0f} ms from the prediction).")
    if pred.model == "rabbitmq" and d.silence is not None:
        out.append(f"So the teardown comes {d.silence:.3f} s ({d.silence / t:.2f} T) after the last byte: RabbitMQ "
                   f"looks only every T and needs two silent looks, so it always lands between 2T and 3T "
                   f"[{pred.window[0]:.3f}, {pred.window[1]:.3f}), never at T.")
        if d.alternative is not None:
            out.append(f"Tune-ok was not captured; the grid phase was inferred from the broker's heartbeats (the "
                       f"other possible phase would close at {d.alternative.predicted:.3f} s).")
    else:
        out.append(f"pika looks every T+5 = {pred.period:g} s and gives up after one silent window; it then raises "
                   "AMQPHeartbeatTimeout and closes the socket with a FIN, without connection.close.")
    if d.misfit:
        out.append(f"Note: {d.misfit}.")
    blocked = [f for f in d.findings if f.kind in ("client-app-blocked", "broker-app-blocked", "peer-unreachable")]
    for finding in blocked:
        out.append(finding.detail[0].upper() + finding.detail[1:] + ".")
    if silent == "client":
        if any(f.kind == "client-app-blocked" for f in blocked):
            out.append(FIX_CLIENT_BLOCKED)
    else:
        out.append(FIX_BROKER_BLOCKED)
    return out


def _last_thing(d: "Diagnosis", side) -> str:
    if side.last_frame is not None and side.last_frame == side.last_payload:
        return "a heartbeat" if side.last_frame_name == "heartbeat" else f"a {side.last_frame_name} frame"
    return "a payload byte"


def _last_bytes(d: "Diagnosis") -> str:
    words = []
    for name, value in (("client", d.last_client_byte), ("server", d.last_server_byte)):
        if value is not None:
            words.append(f"last {name} byte at {value:.3f} s")
    return ("Activity: " + ", ".join(words) + ".") if words else ""


def _gap_caveat(d: "Diagnosis") -> list[str]:
    """Capture loss is never silence: say when a gap falls where the verdict assumes quiet."""
    tl = d.timeline
    end = d.close.time if d.close.time is not None else d.rel(tl.last_seen)
    out = []
    for name, side in (("client", tl.c2s), ("server", tl.s2c)):
        if side.last_payload is None:
            continue
        last = d.rel(side.last_payload)
        lost = [g for g in side.gaps if last - 0.001 <= d.rel(g.timestamp) <= end + 0.001]
        if lost:
            missing = sum(g.missing for g in lost)
            out.append(f"Caution: the capture lost {missing} {name} bytes around {d.rel(lost[0].timestamp):.3f} s: "
                       f"the {name} may have sent data during that capture gap, so its silence may be shorter "
                       "than it looks.")
    if tl.c2s.gap_count or tl.s2c.gap_count:
        if not out:
            out.append(f"The capture lost bytes of this connection ({tl.c2s.missing_bytes} client, "
                       f"{tl.s2c.missing_bytes} server); see the capture-gap findings.")
    return out
