"""Diagnosis → a few plain sentences a user can act on: times, window arithmetic, cause, fix."""
from __future__ import annotations

from analyzer.diagnosis.results import (
    CLOSE_HANDSHAKE_SLACK,
    CLOSED_WITH_ERROR,
    GRACEFUL,
    MISSED_CLIENT,
    MISSED_SERVER,
    OPEN,
    RESET,
    UNKNOWN,
    Diagnosis,
)
from analyzer.timeline import Direction

FIX_BROKER_BLOCKED = (
    "Check the broker: a stopped (SIGSTOP), overloaded or partitioned node stops sending while its kernel "
    "still ACKs; its logs and `rabbitmq-diagnostics status` tell which."
)
FIX_UNREACHABLE = (
    "Check the network path between them (a partition, a firewall or NAT dropping the flow, a host down): "
    "capturing on both hosts at once shows where the packets stop."
)
# A gap revealed by the packet of a side's last byte or of the teardown carries (about) the same
# timestamp; this much slack keeps it "near" whichever way the float arithmetic rounds.
GAP_NEAR_SLACK = 0.001


def explain(d: Diagnosis) -> str:
    tl, close = d.timeline, d.close
    parts: list[str] = []
    verdict = d.verdict
    if verdict == OPEN:
        end = d.rel(tl.last_seen)
        parts.append(f"Still open when the capture ended (last packet of this connection at {end:.3f} s).")
        parts.append(_last_bytes(d))
    elif verdict == GRACEFUL and close.inferred:
        parts.append(f"The {close.initiator} closed the connection at {close.time:.3f} s, most likely with "
                     "connection.close: its last TLS record and the broker's answer have the sizes of connection.close "
                     "and close-ok, and its FIN followed at once. The reply code is encrypted; a key log "
                     "(--tls-keylog) would show it.")
    elif verdict in (GRACEFUL, CLOSED_WITH_ERROR):
        reply = f"{close.reply_code} {close.reply_text or ''}".strip()
        parts.append(f"The {close.initiator} closed the connection with connection.close ({reply}) "
                     f"at {close.time:.3f} s.")
        if close.benign_rst is not None and close.benign_rst_from == "server":
            parts.append(f"The RST at {close.benign_rst:.3f} s is RabbitMQ's linger-0 socket close after the close "
                         "handshake: benign.")
        elif close.benign_rst is not None:
            parts.append(f"The client's RST at {close.benign_rst:.3f} s came after the close handshake: its socket was "
                         "already closed when more bytes arrived (a TLS close_notify, a late frame), and its kernel "
                         "answered with a reset: benign.")
        if verdict == CLOSED_WITH_ERROR:
            parts.append("The reply code says why; the broker log has the same text.")
    elif verdict == MISSED_CLIENT:
        parts.extend(_missed(d, silent="client"))
    elif verdict == MISSED_SERVER:
        parts.extend(_missed(d, silent="broker"))
    elif verdict == RESET and any(f.kind == "middlebox-teardown" for f in d.findings):
        what = "An RST" if close.how == "rst" else "A FIN"
        parts.append(f"{what} carrying the {close.initiator}'s address, but sent by a device on the path, ended the "
                     f"connection at {close.time:.3f} s.")
        parts.extend(f.detail[0].upper() + f.detail[1:] + "." for f in d.findings
                     if f.kind in ("middlebox-teardown", "idle-timeout"))
        parts.append(_last_bytes(d))
    elif verdict == RESET:
        what = "an RST" if close.how == "rst" else "a FIN"
        parts.append(f"The {close.initiator} ended the connection with {what} at {close.time:.3f} s, "
                     "without an AMQP connection.close.")
        parts.extend(f.detail[0].upper() + f.detail[1:] + "." for f in d.findings if f.kind == "idle-timeout")
        parts.extend(f.detail[0].upper() + f.detail[1:] + "." for f in d.findings if f.kind == "client-gave-up-blocked")
        if d.misfit:
            parts.append(f"It does not fit a heartbeat timeout: {d.misfit}.")
        parts.append(_last_bytes(d))
    elif close.how in ("fin", "rst"):
        what = "an RST" if close.how == "rst" else "a FIN"
        parts.append(f"The {close.initiator} ended the connection with {what} at {close.time:.3f} s; whether an AMQP "
                     "connection.close came first cannot be told from this capture.")
        if d.misfit:
            parts.append(d.misfit[0].upper() + d.misfit[1:] + ".")
        parts.append(_last_bytes(d))
    else:
        parts.append("Not enough of this connection was captured to say how it ended.")
    parts.extend(_gap_caveat(d))
    return " ".join(p for p in parts if p)


def _missed(d: Diagnosis, *, silent: str) -> list[str]:
    tl, close, pred = d.timeline, d.close, d.prediction
    side = tl.c2s if silent == "client" else tl.s2c
    last = d.rel(side.last_payload)
    t, end = d.heartbeat.effective, close.time
    # diagnose() blames missed heartbeats only on a teardown that fits a timer's prediction
    assert pred is not None and t is not None and end is not None, "missed heartbeats without a prediction"
    if last is None:
        out = [f"The {silent} sent nothing during the capture; heartbeat timeout {t:g} s ({d.heartbeat.source})."]
    else:
        out = [f"The {silent}'s last byte was {_last_thing(d, side)} at {last:.3f} s; heartbeat timeout {t:g} s "
               f"({d.heartbeat.source})."]
    explained = pred.explain()
    how = "RST" if close.how == "rst" else "FIN"
    if close.inferred:
        out.append(f"{explained} No FIN or RST reached the wire: the client's kernel was still retransmitting its "
                   "unacknowledged data to the silent broker, and a FIN waits behind it (Linux tcp_retransmit_timer "
                   "backs off and sends nothing new), so the give-up time is the model's, not a packet's.")
    elif pred.exact:
        error_ms = pred.error(end) * 1000
        out.append(f"{explained[:-1]} (observed {how} at {end:.3f} s, {error_ms:+.0f} ms from the prediction).")
    else:
        where = "inside that window" if end < pred.window[1] else "after that window"
        out.append(f"{explained[:-1]} (observed {how} at {end:.3f} s, {where}).")
    if pred.model == "rabbitmq" and d.silence is not None:
        out.append(f"So the teardown comes {d.silence:.3f} s ({d.silence / t:.2f} T) after the last byte: RabbitMQ "
                   f"looks only every T and needs two silent looks, so it always lands between 2T and 3T "
                   f"[{pred.window[0]:.3f}, {pred.window[1]:.3f}), never at T.")
        if d.alternative is not None:
            out.append(f"Tune-ok was not captured; the grid phase was inferred from the broker's heartbeats (the "
                       f"other possible phase would close at {d.alternative.predicted:.3f} s).")
    elif pred.model == "pika":
        out.append(f"pika looks every T+5 = {pred.period:g} s and gives up after one silent window; it then raises "
                   "AMQPHeartbeatTimeout and closes the socket with a FIN, without connection.close.")
    else:
        out.append(_give_up_sentence(d))
    out.extend(_tls_inference(d))
    if d.misfit:
        out.append(f"Note: {d.misfit}.")
    blocked = [f for f in d.findings if f.kind in ("client-app-blocked", "broker-app-blocked", "peer-unreachable")]
    for finding in blocked:
        out.append(finding.detail[0].upper() + finding.detail[1:] + ".")
    if any(f.kind == "peer-unreachable" for f in blocked):
        out.append(FIX_UNREACHABLE)
    elif silent == "client":
        if any(f.kind == "client-app-blocked" for f in blocked):
            out.append(d.profile.fix)
    else:
        out.append(FIX_BROKER_BLOCKED)
    return out


_WIRE_WORDS = {
    "fin": "closes the socket with a FIN, without connection.close",
    "rst": "resets the socket, without connection.close",
    "nothing": "puts nothing on the wire at once (no connection.close; the socket closes later, if at all)",
    "connection.close": "sends connection.close",
}


def _give_up_sentence(d: Diagnosis) -> str:
    """How the client's own library gives up, from its profile row."""
    row = d.profile
    who = row.name if d.client.library != "unknown" else "The client's library (not identified)"
    if d.client.library == "unknown":
        return (f"{who} gave up on the silent broker by its own rule ({row.detection_text}); which library it is "
                "the capture does not say.")
    # Library names keep their own case ("amqplib", "py-amqp"); "the ..." starts a sentence.
    who = who[0].upper() + who[1:] if who.startswith("the ") else who
    return (f"{who} {row.detection_text}; it then {_WIRE_WORDS[row.gives_up_with]}, and the "
            f"application sees {row.app_sees}.")


def _tls_inference(d: Diagnosis) -> list[str]:
    """What was inferred for a TLS connection read without keys, and how sure it is."""
    t = d.tls
    if t is None or not t.inferred:
        return []
    out = ["This connection is TLS and was not decrypted, so these times come from the encrypted records: every "
           "record the client sends counts as activity to the broker, which counts raw socket bytes "
           "(rabbit_net:getstat/2 reads the TCP socket's recv_oct under TLS too)."]
    if d.heartbeat.source == "inferred":
        out.append(f"T = {d.heartbeat.effective:g} s was inferred from the broker's {d.timeline.s2c.heartbeats} "
                   "heartbeat-sized records (an 8-byte heartbeat frame plus the cipher suite's fixed overhead), sent "
                   "every T/2 while it had nothing else to send.")
    if t.tune_ok is not None and t.tune_ok_on_grid:
        out.append(f"The broker's check grid starts at the client's first record after the broker's tune-sized record "
                   f"({t.tune_ok:.3f} s), which the broker's heartbeats confirm: the prediction is as exact as with "
                   "decoded frames.")
    elif t.tune_ok is not None and t.tune_ok_on_grid is False:
        out.append("The record taken for tune-ok is off the broker's heartbeat grid, so the grid was fitted to the "
                   "broker's heartbeats alone (exact only up to T/2).")
    return out


def _last_thing(d: Diagnosis, side: Direction) -> str:
    if d.inferred_from_tls:
        name = "a heartbeat-sized TLS record" if side.last_frame_name == "heartbeat" else "a TLS record"
        return name if side.last_frame is not None and side.last_frame == side.last_payload else "a TLS record"
    if side.last_frame is not None and side.last_frame == side.last_payload:
        return "a heartbeat" if side.last_frame_name == "heartbeat" else f"a {side.last_frame_name} frame"
    return "a payload byte"


def _last_bytes(d: Diagnosis) -> str:
    words = []
    for name, value in (("client", d.last_client_byte), ("server", d.last_server_byte)):
        if value is not None:
            words.append(f"last {name} byte at {value:.3f} s")
    return ("Activity: " + ", ".join(words) + ".") if words else ""


def _gap_caveat(d: Diagnosis) -> list[str]:
    """Capture loss is never silence: say when a gap falls where the verdict assumes quiet.

    Lost bytes (sequence holes, bytes ACKed but never captured) were sent at an unknown time
    between the side's last captured byte and the packet that revealed the loss: the side may have
    spoken during that time. Snapped bytes (cut by the snap length) were seen on the wire and count
    as activity; only what they carried is unknown.
    """
    tl, close = d.timeline, d.close
    end = close.time if close.time is not None else d.rel(tl.last_seen)
    no_amqp_close = close.how in ("fin", "rst") and d.verdict != UNKNOWN  # unknown already says so
    out = []
    for name, side in (("client", tl.c2s), ("server", tl.s2c)):
        if side.last_payload is None:
            continue
        last = d.rel(side.last_payload)
        near = [g for g in side.gaps if last - GAP_NEAR_SLACK <= d.rel(g.timestamp) <= end + GAP_NEAR_SLACK]
        lost = [g for g in near if g.reason != "snapped"]
        snapped = [g for g in near if g.reason == "snapped"]
        if lost:
            missing = sum(g.missing for g in lost)
            until = min(max(d.rel(g.timestamp) for g in lost), end)
            span = max(0.0, until - last)
            text = (f"Caution: the capture lost {missing} {name} bytes sent between {last:.3f} s and {until:.3f} s: "
                    f"the {name} may have sent data during that {span:.1f} s capture gap, so its silence may be up to "
                    f"{span:.1f} s shorter than it looks")
            if no_amqp_close and until >= end - CLOSE_HANDSHAKE_SLACK:
                text += ", and an AMQP connection.close may be among the lost bytes"
            out.append(text + ".")
        if snapped:
            missing = sum(g.missing for g in snapped)
            text = (f"The capture's snap length cut {missing} {name} bytes at {d.rel(snapped[0].timestamp):.3f} s: "
                    "they count as activity, but what they carried is not in the capture")
            if no_amqp_close and d.rel(snapped[-1].timestamp) >= end - CLOSE_HANDSHAKE_SLACK:
                text += " (an AMQP connection.close may be among them)"
            out.append(text + ".")
    if d.gap_prediction is not None and d.verdict in (MISSED_CLIENT, MISSED_SERVER, RESET):
        who = "client" if close.initiator == "server" else "broker"
        lo, hi = d.gap_prediction.window
        head = (f"Had the {who} sent its lost bytes as late as {d.gap_last:.3f} s, the model's window would be "
                f"[{lo:.3f}, {hi:.3f})")
        if d.verdict != RESET:
            out.append(head + (" and the teardown would still fit: the verdict holds either way." if d.gap_fits else
                               " and the teardown would not fit: this verdict depends on what the capture lost."))
        elif d.gap_fits:
            out.append(head + " and the teardown would fit a heartbeat timeout: this verdict depends on what the "
                       "capture lost.")
    if (tl.c2s.gap_count or tl.s2c.gap_count) and not out:
        sides = (tl.c2s, tl.s2c)
        all_snapped = all(side.gap_count == len(side.gaps) and all(g.reason == "snapped" for g in side.gaps)
                          for side in sides)
        how = "The capture's snap length cut" if all_snapped else "The capture lost"
        out.append(f"{how} bytes of this connection ({tl.c2s.missing_bytes} client, "
                   f"{tl.s2c.missing_bytes} server); see the capture-gap findings.")
    return out
