"""The notebook API: one pass over a capture into pandas DataFrames, and per-connection views that plot.

    >>> import analyzer
    >>> analysis = analyzer.load("captures/blocked-callback.pcap")
    >>> analysis                      # a summary table in Jupyter: verdict, heartbeat, close, silence
    >>> analysis.frames.query("type == 'heartbeat'")
    >>> analysis.connection(0).plot()

Strategy: `analyze_file` runs the engine once, as `amqp-hb analyze` does; a TableCollector
(analyzer/tables.py) listens, keeping the engine's runs as numpy columns and the few single events
as rows, so the tables and the verdicts come from the same pass. Each table becomes a DataFrame on
first access; `tables=` leaves out the ones not wanted (then the engine skips their work too).
Everything is plain synchronous code (no asyncio loop, no pyshark), so it runs inside Jupyter's own
event loop untouched. pandas and matplotlib are imported only when a table or a plot is built: the
core CLI does not need them. All times `t` are seconds since the file's first packet, as in
`amqp-hb analyze`.
"""
from __future__ import annotations

import html
import json
import os
import sys
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from analyzer.api import Capture, FileAnalysis, analyze_file, capture_paths, find_connection, read_keylog
from analyzer.diagnosis.diagnose import Diagnosis
from analyzer.engine import DEFAULT_PORTS
from analyzer.errors import UsageError
from analyzer.render.summary import CaptureOverview, by_attention
from analyzer.tables import (
    DECODE_ERROR_COLUMNS,
    FRAME_COLUMNS,
    GAP_COLUMNS,
    KEY_ARGUMENTS,
    SEGMENT_COLUMNS,
    TABLES,
    TLS_RECORD_COLUMNS,
    TableCollector,
    Tables,
    flags_text,
    is_ack_only,
)
from analyzer.tls.inference import HEARTBEAT

__all__ = ["DECODE_ERROR_COLUMNS", "FINDING_COLUMNS", "FRAME_COLUMNS", "GAP_COLUMNS", "KEY_ARGUMENTS",
           "SEGMENT_COLUMNS", "TABLES", "TLS_RECORD_COLUMNS", "Analysis", "Connection", "find_captures",
           "flags_text", "is_ack_only", "load", "load_scenario"]

FINDING_COLUMNS = ("connection", "t", "kind", "channel", "detail")
# Nullable integer columns (pandas "Int64"), so a missing value does not turn them into floats.
_NULLABLE_INTS = {"heartbeat", "reply_code", "delivery_tag", "channel", "heartbeat_server_proposed",
                  "heartbeat_client_requested", "close_reply_code"}
# A load shows a progress bar once it has taken this long (a shorter one would only flicker).
PROGRESS_AFTER = 1.0  # seconds


def load(path: Capture, *, ports: Iterable[int] = DEFAULT_PORTS, connection: str | None = None,
         tls_keylog: str | os.PathLike | None = None, tables: Collection[str] = tuple(TABLES),
         progress: bool = True) -> Analysis:
    """Analyze a capture (a file, or a list of files that continue each other, in time order: a
    rotated series read as one) and tabulate it: `frames`, `segments`, `gaps`, `decode_errors`,
    `tls_records`, `connections`, `findings` (pandas DataFrames), plus one `Connection` view per
    connection.

    `ports` are the TCP ports known to carry AMQP (others are still auto-detected); `connection`
    keeps only that connection id ("CLIENT_IP:PORT->SERVER_IP:PORT"); `tls_keylog` an NSS key log
    file that decrypts TLS connections (their frames then appear like plaintext ones). `tables`
    names the per-packet tables to collect (default all of analyzer.tables.TABLES; `connections`
    and `findings` always are): `tables=("frames",)` on a big capture skips the segments, and
    `tables=()` runs as fast as `amqp-hb analyze`. `progress=False` turns off the progress bar a
    load shows after PROGRESS_AFTER seconds (tqdm's; in Jupyter its notebook bar).
    """
    keys = read_keylog(tls_keylog) if tls_keylog is not None else None
    collector = TableCollector(tables, connection)
    files = capture_paths(path)  # a list of paths: a rotated series, read as one capture (in time order)
    bar = (_ProgressBar(sum(os.path.getsize(f) for f in files))
           if progress and all(os.path.isfile(f) for f in files) else None)
    try:
        result = analyze_file(path, ports=tuple(ports), connection=connection,
                              observer=collector if collector.chunks else None, tls_keys=keys,
                              progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    return Analysis(path=result.path, result=result, tables=Tables(collector, result.summary.start_epoch or 0.0))


class _ProgressBar:
    """The engine's progress calls as a tqdm bar in bytes of the file, shown only once the load has
    taken PROGRESS_AFTER seconds; nothing without tqdm (the `notebook` extra brings it)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.started = time.monotonic()
        self.bar: Any = None
        self.done = 0

    def update(self, _packets: int, file_bytes: int) -> None:
        if self.bar is None:
            if time.monotonic() - self.started < PROGRESS_AFTER:
                return
            try:
                from tqdm.auto import tqdm  # type: ignore[import-untyped]  # Jupyter's bar there, text elsewhere
            except ImportError:
                self.update = lambda *_: None  # type: ignore[method-assign]
                return
            self.bar = tqdm(total=self.total, unit="B", unit_scale=True, desc=f"loading {self.total / 1e6:.0f} MB")
        self.bar.update(file_bytes - self.done)
        self.done = file_bytes

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(self.total - self.done)
            self.bar.close()


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
    """One capture, tabulated. Iterate it (or index with `.connection(...)`) for Connection views.

    The per-packet tables (frames, segments, gaps, decode_errors, tls_records) are built on first
    access; one left out by `load(..., tables=...)` raises UsageError."""

    path: str
    result: FileAnalysis
    tables: Tables
    metadata: dict = field(default_factory=dict)  # a scenario capture's ground truth (load_scenario)
    _connections: Any = field(default=None, init=False, repr=False)  # built on first access, then kept
    _findings: Any = field(default=None, init=False, repr=False)

    def table(self, name: str):
        """A per-packet table by name (analyzer.tables.TABLES), built now if not yet."""
        if not self.tables.loaded(name):
            raise UsageError(f"{self.path}: the {name} table was not loaded (load(..., tables=...) left it out)")
        return self.tables.frame(name)

    @property
    def frames(self):
        """One row per AMQP frame (analyzer.tables.FRAME_COLUMNS)."""
        return self.table("frames")

    @property
    def segments(self):
        """One row per TCP segment of an AMQP connection."""
        return self.table("segments")

    @property
    def gaps(self):
        """Bytes the capture lost, one row per hole."""
        return self.table("gaps")

    @property
    def decode_errors(self):
        return self.table("decode_errors")

    @property
    def tls_records(self):
        """One row per TLS record of a TLS connection (empty without TLS)."""
        return self.table("tls_records")

    @property
    def connections(self):
        """One row per connection: the scalar fields of `amqp-hb analyze --format csv`."""
        if self._connections is None:
            import pandas as pd

            from analyzer.render.analysis_json import connection_row

            rows = [connection_row(self.path, d) for d in self.diagnoses]
            self._connections = _nullable(pd.DataFrame(rows, columns=_connection_columns()))
        return self._connections

    @property
    def findings(self):
        """One row per finding of each connection (FINDING_COLUMNS)."""
        if self._findings is None:
            import pandas as pd

            rows = [(d.timeline.info.id, f.time, f.kind, f.channel, f.detail) for d in self.diagnoses
                    for f in d.findings]
            self._findings = _nullable(pd.DataFrame(rows, columns=list(FINDING_COLUMNS)))
        return self._findings

    def _frames_shown(self) -> str:
        return f"{self.tables.rows('frames')} frames" if self.tables.loaded("frames") else "frames not loaded"

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
        return (f"<Analysis {self.path}: {len(self)} connections, {self._frames_shown()}, "
                f"{self.summary.packets} packets>")

    def _repr_html_(self) -> str:
        s = self.summary
        head = (f"<p><b>{html.escape(str(self.path))}</b> · {html.escape(s.format)} · {s.packets} packets · "
                f"{s.duration:.3f} s · {len(self)} AMQP connection{'s' if len(self) != 1 else ''} · "
                f"{self._frames_shown()}</p>")
        # The reports' summary block and order (render.summary: problems first), when jinja2 is here
        # (the notebook extra); else the warnings alone above the table.
        try:
            from analyzer.render.html import summary_html

            overview = summary_html(s, CaptureOverview.of(self.diagnoses))
        except ImportError:
            overview = "".join(f"<p style='color:#a60'>warning: {html.escape(w)}</p>" for w in s.warnings)
        rows = "".join(
            "<tr>" + "".join(f"<td style='text-align:left'>{cell}</td>" for cell in _summary_cells(d)) + "</tr>"
            for d in by_attention(self.diagnoses))
        header = "".join(f"<th style='text-align:left'>{h}</th>" for h in SUMMARY_HEADERS)
        return f"{head}{overview}<table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>"


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
        """The heartbeat timeline (see analyzer.render.plot.plot_connection). Without `ax`, a Figure
        of its own (not pyplot's: Jupyter shows it once, as the cell's result). With `ax`, like
        pandas' plot: drawn into the caller's Axes and that Axes returned, so the caller's figure
        (pyplot's, if they made it with plt.subplots) is shown once, by pyplot or plt.show()."""
        _display_figures_in_ipython()
        from analyzer.render.plot import plot_connection

        frames = self.frames
        if self.diagnosis.inferred_from_tls:
            # No frames without keys: the encrypted records stand in, heartbeat-sized ones as heartbeats.
            records = self.tls_records
            kind = records["guess"].map(lambda g: "heartbeat" if g == HEARTBEAT else "tls record")
            frames = records.assign(type=kind)
        fig = plot_connection(self.diagnosis, frames, self.segments, self.gaps, ax=ax, xlim=xlim, checks=checks)
        return fig if ax is None else ax

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
