"""The notebook API: one pass over a capture into pandas DataFrames, and per-connection views that plot.

    >>> import analyzer
    >>> analysis = analyzer.load("captures/blocked-callback.pcap")
    >>> analysis                      # a summary table in Jupyter: verdict, heartbeat, close, silence
    >>> analysis.frames.query("type == 'heartbeat'")
    >>> analysis.connection(0).plot()

Strategy: `analyze_file` runs the pipeline once; its observer hook hands every event to a
collector that keeps one small row tuple per frame, segment, gap and decode error, so the
tables and the verdicts come from the same pass. Everything is plain synchronous code (no
asyncio loop, no pyshark), so it runs inside Jupyter's own event loop untouched. pandas and
matplotlib are imported only when a table or a plot is built: the core CLI does not need them.
All times `t` are seconds since the file's first packet, as in `amqp-hb analyze`.
"""
from __future__ import annotations

import html
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from analyzer.api import FileAnalysis, analyze_file, find_connection, frame_record, read_keylog
from analyzer.diagnosis.diagnose import Diagnosis
from analyzer.engine import DEFAULT_PORTS
from analyzer.errors import UsageError
from analyzer.records import ACK, FIN, PSH, RST, SYN, DecodeError, Frame, Gap, SegmentEvent, TlsRecord
from analyzer.tls.inference import HEARTBEAT

# Method arguments promoted to their own frame columns (None where a method has no such argument);
# the full decoded arguments stay in the `args` column.
KEY_ARGUMENTS = ("heartbeat", "reply_code", "reply_text", "delivery_tag", "consumer_tag", "exchange",
                 "routing_key", "queue")
FRAME_COLUMNS = ("t", "epoch", "connection", "direction", "channel", "type", "method", "size", "packet",
                 "offset", *KEY_ARGUMENTS, "args")
SEGMENT_COLUMNS = ("t", "epoch", "connection", "direction", "packet", "flags", "seq", "ack", "payload_len",
                   "ack_only", "retransmission", "missing")
GAP_COLUMNS = ("t", "epoch", "connection", "direction", "packet", "offset", "missing", "reason")
DECODE_ERROR_COLUMNS = ("t", "epoch", "connection", "direction", "packet", "offset", "reason", "skipped")
# One row per TLS record of a TLS connection; `guess` is what a record without keys most likely holds
# ("heartbeat", "tune", ...: analyzer/tls/inference.py).
TLS_RECORD_COLUMNS = ("t", "epoch", "connection", "direction", "packet", "content_type", "length", "plaintext_len",
                      "what", "guess", "decrypted")
FINDING_COLUMNS = ("connection", "t", "kind", "channel", "detail")
# Nullable integer columns (pandas "Int64"), so a missing value does not turn them into floats.
_NULLABLE_INTS = {"heartbeat", "reply_code", "delivery_tag", "channel", "heartbeat_server_proposed",
                  "heartbeat_client_requested", "close_reply_code"}

# tcpdump's flag letters, in tcpdump's order ("S", "F", "R", "P", then "A" for the ACK bit).
_FLAG_LETTERS = ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, "A"))


def flags_text(flags: int) -> str:
    """TCP flags as letters, e.g. "PA", "R", "FA", "S"."""
    return "".join(letter for bit, letter in _FLAG_LETTERS if flags & bit) or "."


def is_ack_only(flags: int, payload_len: int) -> bool:
    """A bare ACK (or keepalive): no payload, no SYN/FIN/RST. Not liveness for the peer's timers,
    but proof that the sender's kernel is alive."""
    return not payload_len and bool(flags & ACK) and not flags & (SYN | FIN | RST)


class _Collector:
    """The `analyze_file` observer: one row tuple per event, epoch times (made relative later)."""

    def __init__(self, connection: str | None) -> None:
        self.connection = connection
        self.frames: list[tuple] = []
        self.segments: list[tuple] = []
        self.gaps: list[tuple] = []
        self.decode_errors: list[tuple] = []
        self.tls_records: list[tuple] = []

    def __call__(self, event) -> None:
        cid = event.connection.id
        if self.connection is not None and cid != self.connection:
            return
        kind = type(event)
        if kind is SegmentEvent:
            self.segments.append((event.timestamp, cid, event.direction, event.packet, flags_text(event.flags),
                                  event.seq, event.ack, event.payload_len,
                                  is_ack_only(event.flags, event.payload_len), event.retransmission,
                                  event.missing))
        elif kind is Frame:
            r = frame_record(event, 0.0)
            args = r.args or {}
            keys = tuple(args.get(name) for name in KEY_ARGUMENTS)
            self.frames.append((r.epoch, cid, r.direction, r.channel, r.type, r.method, r.size, r.packet,
                                r.offset, *keys, r.args))
        elif kind is Gap:
            self.gaps.append((event.timestamp, cid, event.direction, event.packet, event.offset, event.missing,
                              event.reason))
        elif kind is DecodeError:
            self.decode_errors.append((event.timestamp, cid, event.direction, event.packet, event.offset,
                                       event.reason, event.skipped))
        elif kind is TlsRecord:
            self.tls_records.append((event.timestamp, cid, event.direction, event.packet, event.content_type,
                                     event.length, event.plaintext_len, event.what, event.guess, event.decrypted))


def _table(rows: list[tuple], columns: tuple[str, ...], t0: float):
    """A DataFrame whose first column `t` is derived from the rows' leading epoch."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=list(columns[1:]))
    df.insert(0, "t", df["epoch"] - t0 if len(df) else pd.Series(dtype="float64"))
    for name in _NULLABLE_INTS & set(df.columns):
        df[name] = df[name].astype("Int64")
    return df


def load(path: str | os.PathLike, *, ports: Iterable[int] = DEFAULT_PORTS, connection: str | None = None,
         tls_keylog: str | os.PathLike | None = None) -> Analysis:
    """Analyze a capture and tabulate it: `frames`, `segments`, `gaps`, `decode_errors`,
    `connections`, `findings` (pandas DataFrames), plus one `Connection` view per connection.

    `ports` are the TCP ports known to carry AMQP (others are still auto-detected); `connection`
    keeps only that connection id ("CLIENT_IP:PORT->SERVER_IP:PORT"); `tls_keylog` an NSS key log
    file that decrypts TLS connections (their frames then appear like plaintext ones).
    """
    import pandas as pd

    from analyzer.render.analysis_json import connection_row

    collector = _Collector(connection)
    keys = read_keylog(tls_keylog) if tls_keylog is not None else None
    result = analyze_file(path, ports=tuple(ports), connection=connection, observer=collector, tls_keys=keys)
    t0 = result.summary.start_epoch or 0.0
    rows = [connection_row(result.path, d) for d in result.connections]
    findings = [(d.timeline.info.id, f.time, f.kind, f.channel, f.detail) for d in result.connections
                for f in d.findings]
    return Analysis(
        path=result.path,
        result=result,
        frames=_table(collector.frames, FRAME_COLUMNS, t0),
        segments=_table(collector.segments, SEGMENT_COLUMNS, t0),
        gaps=_table(collector.gaps, GAP_COLUMNS, t0),
        decode_errors=_table(collector.decode_errors, DECODE_ERROR_COLUMNS, t0),
        tls_records=_table(collector.tls_records, TLS_RECORD_COLUMNS, t0),
        connections=_nullable(pd.DataFrame(rows, columns=_connection_columns())),
        findings=_nullable(pd.DataFrame(findings, columns=list(FINDING_COLUMNS))),
    )


def load_scenario(name: str, captures: str | os.PathLike | None = None) -> Analysis:
    """`load` a capture recorded by `amqp-hb scenario run` (captures/<name>.pcap), with the ports and
    ground truth from its `<name>.json` when present (as `Analysis.metadata`).

    `captures` defaults to $AMQP_HB_CAPTURES, else the nearest `captures/` folder at or above the
    working directory (so it works from the repository root and from notebooks/).
    """
    folder = find_captures() if captures is None else os.fspath(captures)
    pcap = os.path.join(folder, f"{name}.pcap")
    if not os.path.exists(pcap):
        raise UsageError(f"{pcap}: no such capture (record it with `amqp-hb scenario run {name}`)")
    metadata: dict = {}
    meta_path = os.path.join(folder, f"{name}.json")
    if os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            metadata = json.load(f)
    ports = tuple(sorted({int(p) for p in (metadata.get("ports") or {}).values()})) or DEFAULT_PORTS
    keylog = (metadata.get("tls") or {}).get("keylog")
    analysis = load(pcap, ports=ports, tls_keylog=os.path.join(folder, keylog) if keylog else None)
    analysis.metadata = metadata
    return analysis


def find_captures() -> str:
    """The captures folder: $AMQP_HB_CAPTURES, else `captures/` in the working directory or above it."""
    env = os.environ.get("AMQP_HB_CAPTURES")
    if env:
        return env
    here = os.path.abspath(os.getcwd())
    while True:
        candidate = os.path.join(here, "captures")
        if os.path.isdir(candidate):
            return candidate
        parent = os.path.dirname(here)
        if parent == here:
            raise UsageError("no captures/ folder here or above; set AMQP_HB_CAPTURES")
        here = parent


def _connection_columns() -> list[str]:
    from analyzer.render.analysis_json import CSV_COLUMNS

    return list(CSV_COLUMNS)


def _nullable(df):
    for name in _NULLABLE_INTS & set(df.columns):
        df[name] = df[name].astype("Int64")
    return df


@dataclass(eq=False)
class Analysis:
    """One capture, tabulated. Iterate it (or index with `.connection(...)`) for Connection views."""

    path: str
    result: FileAnalysis
    frames: Any  # pandas.DataFrame, one row per AMQP frame
    segments: Any  # one row per TCP segment of an AMQP connection
    gaps: Any  # bytes the capture lost, one row per hole
    decode_errors: object
    tls_records: Any  # one row per TLS record of a TLS connection (empty without TLS)
    connections: Any  # one row per connection: the scalar fields of `amqp-hb analyze --format csv`
    findings: object
    metadata: dict = field(default_factory=dict)  # a scenario capture's ground truth (load_scenario)

    @property
    def diagnoses(self) -> list[Diagnosis]:
        return self.result.connections

    @property
    def summary(self):
        return self.result.summary

    def __len__(self) -> int:
        return len(self.diagnoses)

    def __iter__(self) -> Iterator[Connection]:
        for i in range(len(self.diagnoses)):
            yield self.connection(i)

    def connection(self, key: int | str) -> Connection:
        """A connection by position (0 = first seen), exact id, or any unique part of its id
        (e.g. the client port "38886"): analyzer.api.find_connection, the rule of `--connection`."""
        return Connection(self, self.diagnoses[find_connection(key, [d.timeline.info.id for d in self.diagnoses])])

    def by_verdict(self, verdict: str) -> list[Connection]:
        return [c for c in self if c.verdict == verdict]

    def __repr__(self) -> str:
        return (f"<Analysis {self.path}: {len(self)} connections, {len(self.frames)} frames, "
                f"{self.summary.packets} packets>")

    def _repr_html_(self) -> str:
        s = self.summary
        head = (f"<p><b>{html.escape(str(self.path))}</b> · {html.escape(s.format)} · {s.packets} packets · "
                f"{s.duration:.3f} s · {len(self)} AMQP connection{'s' if len(self) != 1 else ''} · "
                f"{len(self.frames)} frames</p>")
        warnings = "".join(f"<p style='color:#a60'>warning: {html.escape(w)}</p>" for w in s.warnings)
        rows = "".join(
            "<tr>" + "".join(f"<td style='text-align:left'>{cell}</td>" for cell in _summary_cells(d)) + "</tr>"
            for d in self.diagnoses)
        header = "".join(f"<th style='text-align:left'>{h}</th>" for h in SUMMARY_HEADERS)
        return f"{head}{warnings}<table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>"


@dataclass(eq=False)
class Connection:
    """One connection of an Analysis: its rows of each table, its diagnosis, and a plot."""

    analysis: Analysis
    diagnosis: Diagnosis

    @property
    def id(self) -> str:
        return self.diagnosis.timeline.info.id

    @property
    def verdict(self) -> str:
        return self.diagnosis.verdict

    @property
    def explanation(self) -> str:
        return self.diagnosis.explanation

    @property
    def prediction(self):
        return self.diagnosis.prediction

    def _rows(self, df):
        return df[df["connection"] == self.id].reset_index(drop=True)

    @property
    def frames(self):
        return self._rows(self.analysis.frames)

    @property
    def segments(self):
        return self._rows(self.analysis.segments)

    @property
    def gaps(self):
        return self._rows(self.analysis.gaps)

    @property
    def tls_records(self):
        return self._rows(self.analysis.tls_records)

    @property
    def findings(self):
        return self._rows(self.analysis.findings)

    @property
    def row(self):
        """This connection's row of `Analysis.connections` (a pandas Series)."""
        df = self.analysis.connections
        return df[df["id"] == self.id].iloc[0]

    def plot(self, *, ax=None, xlim: tuple[float, float] | None = None, checks: str = "auto"):
        """The heartbeat timeline as a matplotlib Figure (see analyzer.render.plot.plot_connection)."""
        _display_figures_in_ipython()
        from analyzer.render.plot import plot_connection

        frames = self.frames
        if self.diagnosis.inferred_from_tls:
            # No frames without keys: the encrypted records stand in, heartbeat-sized ones as heartbeats.
            records = self.tls_records
            kind = records["guess"].map(lambda g: "heartbeat" if g == HEARTBEAT else "tls record")
            frames = records.assign(type=kind)
        return plot_connection(self.diagnosis, frames, self.segments, self.gaps, ax=ax, xlim=xlim, checks=checks)

    def __repr__(self) -> str:
        return f"<Connection {self.id}: {self.verdict}>"

    def _repr_html_(self) -> str:
        d = self.diagnosis
        cells = dict(zip(SUMMARY_HEADERS, _summary_cells(d), strict=True))
        facts = "".join(f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{v}</td></tr>"
                        for k, v in cells.items() if k != "connection")
        findings = "".join(f"<li>{f.time:.3f} s <b>{html.escape(f.kind)}</b>: {html.escape(f.detail)}</li>"
                           for f in d.findings)
        return (f"<p><b>{html.escape(self.id)}</b></p><table>{facts}</table>"
                f"<p>{html.escape(d.explanation)}</p>" + (f"<ul>{findings}</ul>" if findings else ""))


def _display_figures_in_ipython() -> None:
    """Inside IPython/Jupyter, make a returned Figure display as a PNG.

    Our figures are built without pyplot (so Jupyter never shows them twice), and IPython registers
    its Figure formatter only once pyplot's inline backend is activated, which may never happen:
    register it here when nothing else has.
    """
    if "IPython" not in sys.modules:
        return
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        return
    from matplotlib.figure import Figure

    png = shell.display_formatter.formatters.get("image/png")
    if png is None:
        return
    try:
        png.lookup_by_type(Figure)
    except KeyError:
        from IPython.core.pylabtools import print_figure

        png.for_type(Figure, lambda fig: print_figure(fig, "png", bbox_inches="tight"))


SUMMARY_HEADERS = ("connection", "client", "verdict", "heartbeat", "close", "silence", "prediction error")
_VERDICT_COLOURS = {"missed-client-heartbeats": "#c0392b", "missed-server-heartbeats": "#c0392b",
                    "reset": "#d35400", "closed-with-error": "#d35400", "graceful": "#27ae60", "open": "#2471a3"}


def _summary_cells(d: Diagnosis) -> list[str]:
    """HTML-escaped cells of one summary row (SUMMARY_HEADERS)."""
    hb, close = d.heartbeat, d.close
    if hb.effective is None:
        heartbeat = "unknown"
    elif hb.effective == 0:
        heartbeat = f"disabled ({hb.source})"
    else:
        heartbeat = f"{hb.effective:g} s ({hb.source})"
    if close.how == "open":
        ended = "still open"
    else:
        ended = f"{close.how} by {close.initiator or '?'} at {close.time:.3f} s"
        if close.reply_code is not None:
            ended += f" ({close.reply_code} {close.reply_text or ''})".rstrip()
    silence = "" if d.silence is None else f"{d.silence:.3f} s"
    if d.silence is not None and hb.effective:
        silence += f" ({d.silence / hb.effective:.2f} T)"
    error = ""
    if d.prediction is not None and close.time is not None:
        error = f"{d.prediction.error(close.time) * 1000:+.0f} ms ({d.prediction.model})"
        if d.prediction_fits is False:
            error += ", does not fit"
    colour = _VERDICT_COLOURS.get(d.verdict, "#555")
    verdict = f"<b style='color:{colour}'>{html.escape(d.verdict)}</b>"
    client = d.client.name if d.client.library != "unknown" else (d.client.product or "unknown")
    if d.client.version:
        client += f" {d.client.version}"
    return [f"<code>{html.escape(d.timeline.info.id)}</code>", html.escape(client), verdict, html.escape(heartbeat),
            html.escape(ended), html.escape(silence), html.escape(error)]
