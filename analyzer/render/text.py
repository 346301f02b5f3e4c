"""Human-readable renderings: the `analyze` report and `frames` lines. Colour only on a terminal."""
from __future__ import annotations

import json
import textwrap

from analyzer.api import FileAnalysis, FrameRecord
from analyzer.diagnosis.diagnose import Diagnosis
from analyzer.pairing import PairReport
from analyzer.records import C2S
from analyzer.render.summary import (
    CaptureOverview,
    by_attention,
    capture_span,
    client_label,
    heartbeat_label,
    heartbeat_words,
    needs_attention,
)
from analyzer.tls.session import DECRYPTED, NOT_ATTEMPTED

VERDICT_COLOURS = {
    "missed-client-heartbeats": "31", "missed-server-heartbeats": "31", "reset": "33",
    "closed-with-error": "33", "graceful": "32", "open": "36", "unknown": "35",
}


def _paint(text: str, code: str, colour: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if colour else text


def analysis_report(analysis: FileAnalysis, *, colour: bool = False, full: bool = False) -> str:
    """The whole `analyze` text report of a FileAnalysis: summary_block, the problem connections'
    blocks, then the others one line each (in full with `full`, as `--all`)."""
    overview = CaptureOverview.of(analysis.connections)
    ordered = by_attention(analysis.connections)
    problems = [d for d in ordered if needs_attention(d)]
    others = ordered[len(problems):]
    text = report_head(analysis, overview, colour=colour) + "".join(connection_block(d, colour=colour)
                                                                    for d in problems)
    if others:
        text += others_heading(len(others), full=full)
        text += "".join(connection_block(d, colour=colour) if full else connection_line(d, colour=colour) + "\n"
                        for d in others)
    return text


def report_head(analysis: FileAnalysis, overview: CaptureOverview, *, colour: bool = False,
                shown: str | None = None) -> str:
    """The file's line and its summary block (the headline, connections by verdict and finding kind,
    clients, heartbeat values, time span, warnings, and the most urgent problem connections one
    line each); the connections follow as connection_blocks. `shown` says which connections the
    report goes on to show when not all (--problems, --connection)."""
    s = analysis.summary
    connections = overview.connections
    series = f"a series of {len(s.files)} files read as one, to {s.files[-1]}; " if s.files else ""
    lines = [_paint(f"{analysis.path}", "1", colour) + f"  ({series}{s.format}, {s.packets} packets, "
             f"{s.duration:.3f} s, {connections} AMQP connection{'s' if connections != 1 else ''})"]
    if not connections:
        lines.extend(_paint(f"warning: {warning}", "33", colour) for warning in s.warnings)
        lines.append("no AMQP 0-9-1 connection found (try --port N if the broker listens elsewhere)")
        return "\n".join(lines) + "\n"
    lines.append("  " + _paint(overview.headline(), "1", colour))
    lines.append("  verdicts   " + " · ".join(f"{_paint(v, VERDICT_COLOURS.get(v, '0'), colour)} {n}"
                                            for v, n in overview.verdict_counts()))
    if overview.findings:
        lines.append("  findings   " + " · ".join(f"{kind} {n}" for kind, n in overview.finding_counts()))
    lines.append("  clients    " + " · ".join(f"{n} {name}" for name, n in overview.client_counts()))
    lines.append("  heartbeat  " + " · ".join(f"{n} {heartbeat_words(value)}"
                                              for value, n in overview.heartbeat_counts()))
    span = capture_span(s)
    if span is not None:
        first, last, duration = span
        same_day = first[:10] == last[:10]
        lines.append(f"  span       {first.replace('T', ' ').rstrip('Z')} → "
                     f"{(last[11:] if same_day else last.replace('T', ' ')).rstrip('Z')} UTC ({duration:.3f} s)")
    lines.extend(_paint(f"warning: {warning}", "33", colour) for warning in s.warnings)
    urgent = overview.most_urgent()
    if urgent:
        lines.append("  need attention (in the order of the details below):")
        lines.extend("  " + connection_line(d, colour=colour) for d in urgent)
        if overview.need_attention > len(urgent):
            lines.append(f"    ... and {overview.need_attention - len(urgent)} more below")
    if shown:
        lines.append(f"  shown below: {shown}")
    return "\n".join(lines) + "\n"


def others_heading(count: int, *, full: bool) -> str:
    """The line before the connections that need no attention."""
    plural = "s" if count != 1 else ""
    how = "in full" if full else "one line each (--all shows them in full)"
    return f"\n{count} connection{plural} needing no attention, {how}:\n"


def connection_line(d: Diagnosis, *, colour: bool = False) -> str:
    """One connection in one line: id, verdict, finding kinds, client, heartbeat, when, how it ended."""
    verdict = _paint(d.verdict, VERDICT_COLOURS.get(d.verdict, "0"), colour)
    kinds = ",".join(sorted({f.kind for f in d.findings}))
    start, end = d.rel(d.timeline.first_seen), d.rel(d.timeline.last_seen)
    close = d.close
    if close.how == "open":
        ended = "open"
    elif close.how == "connection.close":
        ended = f"close {close.reply_code if close.reply_code is not None else '?'} by {close.initiator}"
    else:
        ended = f"{close.how.upper()} by {close.initiator}"
    return (f"  {d.timeline.info.id}  {verdict}" + (f"  [{kinds}]" if kinds else "")
            + f"  {client_label(d)}, heartbeat {heartbeat_label(d.heartbeat.effective)}, "
              f"{start:.3f}-{end:.3f} s, {ended}")


def connection_block(d: Diagnosis, *, colour: bool = False) -> str:
    return "\n" + "\n".join(connection_report(d, colour=colour)) + "\n"


def connection_report(d: Diagnosis, *, colour: bool = False) -> list[str]:
    verdict = _paint(d.verdict, VERDICT_COLOURS.get(d.verdict, "0"), colour)
    out = [_paint(d.timeline.info.id, "1", colour) + f"  verdict: {verdict}"]
    out.extend(f"  {name:<10} {text}" for name, text in connection_facts(d))
    for f in d.findings:
        channel = f" ch{f.channel}" if f.channel else ""
        out.append(f"  finding    {f.time:9.3f}  {f.kind}{channel}: {f.detail}")
    out.extend(textwrap.wrap(d.explanation, width=100, initial_indent="  ", subsequent_indent="  "))
    return out


def connection_facts(d: Diagnosis) -> list[tuple[str, str]]:
    """(name, text) of each fact line of a connection's report: peers, library, tls, heartbeat, each
    side's activity, how it ended and the model's prediction (the HTML report's facts table too)."""
    tl, hb, close = d.timeline, d.heartbeat, d.close
    out: list[tuple[str, str]] = []
    peers = _peers(d)
    if peers:
        out.append(("peers", peers))
    out.append(("library", _library(d)))
    if d.tls is not None:
        out.append(("tls", _tls(d)))
    if hb.effective is None:
        out.append(("heartbeat", "unknown (no handshake and no broker heartbeat cadence in the capture)"))
    else:
        origin: str = hb.source
        if hb.source == "negotiated":
            origin = f"negotiated: broker proposed {hb.server_proposed}, client asked {hb.client_requested}"
        if hb.source == "inferred" and d.inferred_from_tls:
            origin = "inferred from the broker's heartbeat-sized TLS records, one every T/2 when idle"
        tune_ok = f", tune-ok at {d.tune_ok_time:.3f} s" if d.tune_ok_time is not None else ""
        if tune_ok and tl.tune_ok is None:
            tune_ok += " (inferred: the client's first record after the broker's tune-sized one"
            on_grid = d.tls.tune_ok_on_grid if d.tls else None
            tune_ok += {True: ", on the broker's heartbeat grid)", False: ", off the broker's heartbeat grid: "
                        "not used)", None: ")"}[on_grid]
        out.append(("heartbeat", f"{hb.effective:g} s ({origin}){tune_ok}"))
    for name, side in (("client", tl.c2s), ("server", tl.s2c)):
        last = f"last byte {d.rel(side.last_payload):.3f} s" if side.last_payload is not None else "no payload"
        extra = f", {side.gap_count} gaps ({side.missing_bytes} bytes lost)" if side.gap_count else ""
        if d.inferred_from_tls and d.tls is not None:
            records = d.tls.records_c2s if name == "client" else d.tls.records_s2c
            content = f"{records} TLS records ({side.heartbeats} heartbeat-sized)"
        else:
            content = f"{side.frames} frames ({side.heartbeats} heartbeat{'' if side.heartbeats == 1 else 's'})"
        out.append((name, f"{last}; {content}, {side.ack_only} bare ACKs, {side.retransmissions} retransmissions"
                          f"{extra}"))
    out.append(("ended", _ended(d)))
    if d.prediction is not None and close.time is not None:  # (a prediction is for a teardown)
        p = d.prediction
        observed = ("not on the wire" if close.inferred and close.how == "fin"
                    else f"observed {close.time:.3f} s ({p.error(close.time) * 1000:+.0f} ms)")
        window = (f"window [{p.window[0]:.3f}, {p.window[1]:.3f}), " if p.window[1] > p.window[0] else "")
        out.append(("model", f"{p.model}: {window}predicted {p.predicted:.3f} s, {observed}"
                             + ("" if d.prediction_fits else "  — does not fit")))
    return out


def _peers(d: Diagnosis) -> str:
    tl = d.timeline
    parts: list[str] = []
    for name, method, key in (("client", tl.start_ok, "client_properties"),
                              ("server", tl.start, "server_properties")):
        props = (method.args.get(key) if method else None) or {}
        ident = " ".join(str(props[k]) for k in ("product", "version") if props.get(k))
        platform = props.get("platform")
        if ident or platform:
            parts.append(f"{name} {ident}".rstrip() + (f" ({platform})" if platform else ""))
    return " · ".join(parts)


def _tls(d: Diagnosis) -> str:
    t = d.tls
    assert t is not None  # (called for TLS connections)
    parts = [" ".join(x for x in (t.version, t.cipher_suite) if x) or "handshake not captured"]
    if t.sni:
        parts.append(f"SNI {t.sni}")
    if t.alpn:
        parts.append(f"ALPN {t.alpn}")
    head = ", ".join(parts)
    if t.decryption == DECRYPTED:
        return f"{head}; decrypted (key log): AMQP decoded from the plaintext"
    why = "no key log given" if t.decryption == NOT_ATTEMPTED else f"not decrypted: {t.decryption}"
    return f"{head}; {why}: AMQP timing inferred from record sizes and times"


def _library(d: Diagnosis) -> str:
    c = d.client
    if c.library == "unknown":
        named = f"{c.product} (no profile for it)" if c.product else "unknown"
        return f"{named}: {c.evidence}; advice in AMQP terms"
    text = f"{c.name}" + (f" {c.version}" if c.version else "")
    how = "connection.start-ok" if c.identified_by == "handshake" else "heartbeat cadence"
    if c.wrapper_proven:
        hint = f", under {c.wrapper_hint}"
    elif c.wrapper_hint:
        hint = f"; {c.wrapper_hint} would say the same"
    else:
        hint = ""
    return f"{text} (from {how}{hint})"


def _ended(d: Diagnosis) -> str:
    close = d.close
    if close.how == "open":
        return "still open at the end of the capture"
    if close.how == "connection.close" and close.inferred:
        return (f"connection.close from the {close.initiator} at {close.time:.3f} s, probably: encrypted records of "
                "the sizes of connection.close and close-ok just before its FIN (reply code unknown)")
    if close.how == "connection.close":
        text = f"connection.close {close.reply_code} {close.reply_text or ''}".rstrip()
        text += f" from the {close.initiator} at {close.time:.3f} s"
        if close.benign_rst is not None:
            text += (f" (benign linger-0 RST at {close.benign_rst:.3f} s)" if close.benign_rst_from == "server"
                     else f" (benign RST from the client at {close.benign_rst:.3f} s, after the close)")
        return text
    silence = f", {d.silence:.3f} s after the peer's last byte" if d.silence is not None else ""
    if close.inferred and close.how == "fin":
        return (f"no FIN or RST on the wire: {d.profile.name} gives up at {close.time:.3f} s by its own rule{silence}; "
                "its FIN waits behind data its kernel keeps retransmitting, so it never leaves the host")
    alert = ""
    if d.tls is not None and close.initiator is not None and close.time is not None:
        direction = "c2s" if close.initiator == "client" else "s2c"
        sent = [(t, what) for t, where, what in d.tls.alerts if where == direction and t <= close.time]
        if sent:
            alert = f" (after its TLS {sent[-1][1]} at {sent[-1][0]:.3f} s)"
    without = "; no connection.close visible (encrypted)" if d.inferred_from_tls else " without connection.close"
    if any(f.kind == "middlebox-teardown" for f in d.findings):
        return (f"{close.how.upper()} with the {close.initiator}'s address at {close.time:.3f} s, sent by a device on "
                f"the path (see middlebox-teardown){without}{silence}")
    return f"{close.how.upper()} from the {close.initiator} at {close.time:.3f} s{alert}{without}{silence}"


# Arguments shown on a text line; the rest is one `--format jsonl` away (server_properties alone
# run to 500 characters).
TEXT_ARGS_WIDTH = 100


def frame_line(frame: FrameRecord) -> str:
    what = frame.method or frame.type
    args = "" if not frame.args else " " + json.dumps(frame.args, separators=(",", ":"), ensure_ascii=False)
    if len(args) > TEXT_ARGS_WIDTH:
        args = args[: TEXT_ARGS_WIDTH - 1] + "…"
    return (f"{frame.t:12.6f}  {frame.connection}  {frame.direction}  ch{frame.channel:<3} "
            f"{what:<24} {frame.size:>7}{args}")


# ---- two captures of one connection (analyzer/pairing.py) ---------------------------------------------


def pair_block(r: PairReport, *, colour: bool = False) -> str:
    """One connection seen in two captures: clocks, what each direction delivered and lost, where a
    cut lies and who stopped first. Times on the client capture's clock."""
    head = _paint(f"pair {r.client_id}", "1", colour)
    if r.broker_id != r.client_id:
        head += f"  (= {r.broker_id} in the broker's capture: NAT on the path)"
    out = [head, f"  captures   client side {r.client_capture}, broker side {r.broker_capture} "
                 f"(matched by {r.matched_by}; times below on the client capture's clock)"]
    if r.offset is not None and r.one_way_delay is not None:
        out.append(f"  clocks     the broker capture's clock is {r.offset * 1000:+.3f} ms from the client capture's; "
                   f"one-way delay {r.one_way_delay * 1000:.3f} ms")
    for d in r.directions:
        name = "client → broker" if d.direction == C2S else "broker → client"
        text = f"{d.sent} segments sent, {d.delivered} arrived, {d.lost} lost"
        if d.first_lost is not None:
            last = f"{d.last_delivered:.3f} s" if d.last_delivered is not None else "none"
            text += f"; last delivered sent at {last}, first lost after it sent at {d.first_lost:.3f} s"
        out.append(f"  {name:<16} {text}")
    for d in r.directions:
        for sent_at, seq, length, flags in d.lost_segments:
            words = _segment_words(length, flags)
            out.append(f"  lost       {d.direction} sent at {sent_at:.3f} s, seq {seq}, {words}")
        sender, receiver = ("client", "broker") if d.direction == C2S else ("broker", "client")
        for arrived_at, _seq, length, flags in d.injected:
            out.append(f"  forged     {_segment_words(length, flags)} reached the {receiver} at {arrived_at:.3f} s "
                       f"with the {sender}'s addresses, but the {sender} never sent it: a device on the path did")
        if d.unseen:
            plural = "s" if d.unseen > 1 else ""
            out.append(f"  unseen     {d.unseen} {d.direction} segment{plural} sent after the other capture's last "
                       "packet: whether they arrived cannot be told")
    out.append(f"  {_pair_verdict(r)}")
    if r.truncated:
        out.append("  (only the first segments of a busy connection were matched)")
    return "\n" + "\n".join(out) + "\n"


def _segment_words(length: int, flags: str) -> str:
    if not length:
        return flags or "an empty segment"
    return f"{length} bytes" + (f" + {flags}" if flags else "")


def _pair_verdict(r: PairReport) -> str:
    c2s, s2c = r.directions
    cut = r.cut
    forged = [d for d in r.directions if d.injected]
    if forged:
        words = " and ".join(f"{'to the broker' if d.direction == C2S else 'to the client'}" for d in forged)
        lead = (f"packets no endpoint sent were delivered {words}: a device on the path (a NAT gateway, firewall or "
                "load balancer) took part in ending this connection")
        return lead if cut is None else f"{lead}; besides, segments were lost from {cut[1]:.3f} s"
    if cut is None:
        unseen = sum(d.unseen for d in r.directions)
        if unseen:
            return (f"nothing was lost while both captures ran; {unseen} segment{'s' if unseen > 1 else ''} sent after "
                    "the other capture's last packet cannot be compared (if that capture was still running, they "
                    "never arrived: the path failed)")
        return ("nothing was lost between the captures: a side that fell silent did so on its own host (its "
                "application, or its kernel), not on the path")
    lo, hi = cut
    lossy = [d for d in r.directions if d.first_lost is not None]
    if len(lossy) == 2:
        return (f"the path failed between {lo:.3f} s and {hi:.3f} s: from then on neither direction delivered, while "
                "both peers kept sending (a partition, not a silent peer)")
    (only,) = lossy
    other = s2c if only is c2s else c2s
    who = "client" if only.direction == C2S else "broker"
    peer = "broker" if who == "client" else "client"
    return (f"the {who}'s segments stopped arriving between {lo:.3f} s and {hi:.3f} s while the {peer}'s still did "
            f"({other.delivered} delivered): the path from the {who} to the {peer} failed, one way")
