"""FileAnalysis → the `amqp-hb/analysis/1` JSON document (schema documented in README.md)."""
from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TextIO

from analyzer.api import FileAnalysis
from analyzer.diagnosis.diagnose import Diagnosis
from analyzer.pairing import PairReport
from analyzer.render.summary import CaptureOverview
from analyzer.timeline import ConnectionTimeline, Direction

SCHEMA = "amqp-hb/analysis/1"
# Times to the microsecond: what a classic pcap can resolve.
TIME_DIGITS = 6

# A JSON object as json.loads returns it and json.dumps takes it.
JsonObject = dict[str, object]
# One CSV row (and DataFrame row): scalars only.
Row = dict[str, str | int | float | bool | None]


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, TIME_DIGITS)


def analysis_document(analysis: FileAnalysis, overview: CaptureOverview | None = None) -> JsonObject:
    """The document of `analysis`; its `summary` object is `overview`'s, else its connections'."""
    summary = analysis.summary
    overview = CaptureOverview.of(analysis.connections) if overview is None else overview
    return {
        "schema": SCHEMA,
        "file": analysis.path,
        **({"files": list(summary.files)} if summary.files else {}),  # a rotated series read as one
        "format": summary.format,
        "packets": summary.packets,
        "start_epoch": summary.start_epoch,
        "duration": _r(summary.duration),
        "warnings": list(summary.warnings),
        "summary": overview.document(summary),
        "connections": [connection_document(d) for d in analysis.connections],
    }


# Above this many connections a file's connections are written one compact line each: json's
# indenting encoder is pure Python (0.26 ms a connection: 13 s for 50,000); the compact one is C.
INDENTED_CONNECTIONS = 100


def write_analysis_document(analysis: FileAnalysis, stream: TextIO) -> None:
    """analysis_document as JSON text on `stream`, followed by a newline."""
    write_document(analysis, (connection_json(d) for d in analysis.connections), len(analysis.connections), stream)


def connection_json(d: Diagnosis) -> str:
    """One connection's document as compact JSON text."""
    return json.dumps(connection_document(d), ensure_ascii=False)


def write_document(analysis: FileAnalysis, connections: Iterable[str], count: int, stream: TextIO,
                   overview: CaptureOverview | None = None) -> None:
    """The document of `analysis` whose `count` connections are the connection_json texts
    `connections`, written a connection at a time (the document of a 50,000-connection capture
    is never held whole). `overview` summarizes the file's connections (they were streamed: the
    FileAnalysis holds none); without it, analysis.connections are summarized."""
    overview = CaptureOverview.of(analysis.connections) if overview is None else overview
    head = analysis_document(FileAnalysis(analysis.path, analysis.summary), overview)
    if count <= INDENTED_CONNECTIONS:
        head["connections"] = [json.loads(text) for text in connections]
        # json.dump writes piece by piece: dumps would hold the whole text.
        json.dump(head, stream, indent=2, ensure_ascii=False)
        stream.write("\n")
        return
    del head["connections"]
    text = json.dumps(head, indent=2, ensure_ascii=False)
    stream.write(text[: text.rindex("}")].rstrip() + ',\n  "connections": [\n')
    for i, connection in enumerate(connections):
        stream.write(("    " if i == 0 else ",\n    ") + connection)
    stream.write("\n  ]\n}\n")


def pairs_document(reports: Iterable[PairReport]) -> JsonObject:
    """Connections seen in two captures, joined (`analyze --pair`): times on the client capture's clock."""
    return {"schema": "amqp-hb/pairs/1", "pairs": [{
        "client_capture": r.client_capture, "broker_capture": r.broker_capture,
        "client_id": r.client_id, "broker_id": r.broker_id, "matched_by": r.matched_by,
        "clock_offset": r.offset, "one_way_delay": r.one_way_delay,
        "cut": list(r.cut) if r.cut is not None else None,
        "directions": {d.direction: {
            "sent": d.sent, "delivered": d.delivered, "lost": d.lost, "last_delivered": _r(d.last_delivered),
            "first_lost": _r(d.first_lost), "min_delay": d.min_delay,
            "lost_segments": [{"sent_at": _r(t), "seq": seq, "length": length, "flags": flags}
                              for t, seq, length, flags in d.lost_segments],
            "injected_segments": [{"arrived_at": _r(t), "seq": seq, "length": length, "flags": flags}
                                  for t, seq, length, flags in d.injected],
            "unseen": d.unseen,
        } for d in r.directions},
        "truncated": r.truncated,
    } for r in reports]}


def connection_document(d: Diagnosis) -> JsonObject:
    tl, hb, close, info = d.timeline, d.heartbeat, d.close, d.timeline.info
    prediction: JsonObject | None = None
    if d.prediction is not None and close.time is not None:  # (a prediction is for a teardown)
        p = d.prediction
        prediction = {
            "model": p.model,
            "rule": p.rule,
            "exact": p.exact,
            "window": [_r(p.window[0]), _r(p.window[1])],
            "predicted": _r(p.predicted),
            "error": None if close.inferred and close.how == "fin" else _r(p.error(close.time)),
            "fits": d.prediction_fits,
            "anchor": _r(p.anchor),
            "anchor_kind": p.anchor_kind,
            "source": "inferred" if d.inferred_from_tls else "decoded",
            "checks": [{"time": _r(c.time), "saw_activity": c.saw_activity} for c in p.checks],
            "explanation": p.explain(),
        }
        if d.alternative is not None:
            prediction["alternative_predicted"] = _r(d.alternative.predicted)
    return {
        "id": info.id,
        "client": {"ip": info.client.ip, "port": info.client.port, **_library(d)},
        "server": {"ip": info.server.ip, "port": info.server.port},
        "role_source": info.role_source,
        "protocol": tl.protocol,
        "tls": _tls(d),
        "start": _r(d.rel(tl.first_seen)),
        "end": _r(d.rel(tl.last_seen)),
        "handshake_seen": tl.handshake_seen,
        "server_properties": tl.start.args.get("server_properties") if tl.start else None,
        "client_properties": tl.start_ok.args.get("client_properties") if tl.start_ok else None,
        "auth": _auth(tl),
        "heartbeat": {
            "server_proposed": hb.server_proposed,
            "client_requested": hb.client_requested,
            "effective": hb.effective,
            "source": hb.source,
        },
        "tune_ok_time": _r(d.tune_ok_time),
        "last_client_byte": _r(d.last_client_byte),
        "last_server_byte": _r(d.last_server_byte),
        "close": {
            "time": _r(close.time),
            "initiator": close.initiator,
            "how": close.how,
            "reply_code": close.reply_code,
            "reply_text": close.reply_text,
            "benign_rst": _r(close.benign_rst),
            "benign_rst_from": close.benign_rst_from,
            "inferred": close.inferred,
        },
        "verdict": d.verdict,
        "source": "inferred" if d.inferred_from_tls else "decoded",
        "silence": _r(d.silence),
        "prediction": prediction,
        "misfit": d.misfit,
        "activity": {name: _direction(side, d) for name, side in (("c2s", tl.c2s), ("s2c", tl.s2c))},
        "findings": [{"time": _r(f.time), "kind": f.kind, "channel": f.channel, "detail": f.detail}
                     for f in d.findings],
        "explanation": d.explanation,
    }


def _tls(d: Diagnosis) -> JsonObject | None:
    """A TLS connection's handshake facts and what its records told (issue 13); null in plaintext."""
    t = d.tls
    if t is None:
        return None
    return {
        "version": t.version, "cipher_suite": t.cipher_suite, "sni": t.sni, "alpn": t.alpn,
        "decryption": t.decryption, "records": {"c2s": t.records_c2s, "s2c": t.records_s2c},
        "inferred": t.inferred, "heartbeat_records": t.heartbeat_records,
        "tune_ok_inferred": _r(t.tune_ok), "tune_ok_on_grid": t.tune_ok_on_grid,
        "alerts": [{"time": _r(time), "direction": direction, "what": what} for time, direction, what in t.alerts],
    }


def _library(d: Diagnosis) -> JsonObject:
    """Which client library (issue 12): a profile key or "unknown", as identified."""
    c = d.client
    return {"library": c.library, "version": c.version, "wrapper_hint": c.wrapper_hint,
            "identified_by": c.identified_by, "product": c.product}


def _auth(tl: ConnectionTimeline) -> JsonObject | None:
    """The start-ok mechanism and response, as arguments.py left it (password redacted unless
    --show-secrets)."""
    if tl.start_ok is None or "mechanism" not in tl.start_ok.args:
        return None
    return {"mechanism": tl.start_ok.args["mechanism"], "response": tl.start_ok.args.get("response")}


def _direction(side: Direction, d: Diagnosis) -> JsonObject:
    return {
        "frames": side.frames,
        "heartbeats": side.heartbeats,
        "payload_bytes": side.payload_bytes,
        "segments": side.segments,
        "ack_only": side.ack_only,
        "retransmissions": side.retransmissions,
        "gaps": side.gap_count,
        "missing_bytes": side.missing_bytes,
        "decode_errors": side.decode_error_count,
        "first_payload": _r(d.rel(side.first_payload)),
        "last_payload": _r(d.rel(side.last_payload)),
        "fin": _r(d.rel(side.fin)),
        "rst": _r(d.rel(side.rst)),
    }


CSV_COLUMNS = [
    "file", "id", "client_ip", "client_port", "client_library", "client_version", "client_identified_by",
    "server_ip", "server_port", "tls_version", "tls_decryption", "start", "end", "handshake_seen",
    "heartbeat_server_proposed", "heartbeat_client_requested", "heartbeat_effective", "heartbeat_source",
    "last_client_byte", "last_server_byte", "close_time", "close_initiator", "close_how", "close_reply_code",
    "close_reply_text", "close_inferred", "verdict", "source", "silence", "prediction_model", "prediction_window_start",
    "prediction_window_end", "prediction_predicted", "prediction_error", "findings",
]


def connection_row(path: str, d: Diagnosis) -> Row:
    """The scalar fields of one connection, flattened for CSV (and DataFrames): the same values as
    connection_document's, read from the Diagnosis directly."""
    tl, hb, close, info = d.timeline, d.heartbeat, d.close, d.timeline.info
    p = d.prediction if close.time is not None else None  # (a prediction is for a teardown)
    return {
        "file": path, "id": info.id,
        "client_ip": info.client.ip, "client_port": info.client.port,
        "client_library": d.client.library, "client_version": d.client.version,
        "client_identified_by": d.client.identified_by,
        "server_ip": info.server.ip, "server_port": info.server.port,
        "tls_version": d.tls.version if d.tls else None, "tls_decryption": d.tls.decryption if d.tls else None,
        "start": _r(d.rel(tl.first_seen)), "end": _r(d.rel(tl.last_seen)), "handshake_seen": tl.handshake_seen,
        "heartbeat_server_proposed": hb.server_proposed, "heartbeat_client_requested": hb.client_requested,
        "heartbeat_effective": hb.effective, "heartbeat_source": hb.source,
        "last_client_byte": _r(d.last_client_byte), "last_server_byte": _r(d.last_server_byte),
        "close_time": _r(close.time), "close_initiator": close.initiator, "close_how": close.how,
        "close_reply_code": close.reply_code, "close_reply_text": close.reply_text, "close_inferred": close.inferred,
        "verdict": d.verdict, "source": "inferred" if d.inferred_from_tls else "decoded", "silence": _r(d.silence),
        "prediction_model": p.model if p else None,
        "prediction_window_start": _r(p.window[0]) if p else None,
        "prediction_window_end": _r(p.window[1]) if p else None,
        "prediction_predicted": _r(p.predicted) if p else None,
        "prediction_error": _r(p.error(close.time)) if p and close.time is not None and not close.inferred else None,
        "findings": ";".join(sorted({f.kind for f in d.findings})),
    }
