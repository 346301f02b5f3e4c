"""Captures → one self-contained HTML report (`amqp-hb report`): summary, sortable table, and per
problem connection its plot, facts, findings, explanation and the frames around its teardown.

Strategy: Jinja2 templates (analyzer/render/templates/, autoescaped) fed plain values; plots are
matplotlib figures written as SVG text and inlined (ids prefixed per plot, so several in one page
never share one); the one script (sorting the table) is inlined and allowed by its SHA-256 in a
Content-Security-Policy of `default-src 'none'`, so the page cannot load anything, even if a
capture's strings tried. Facts and wording come from render.text and render.summary (one home);
the order and "needs attention" from render.summary. jinja2 and matplotlib are imported only here,
when a report is built (the `report` extra).
"""
from __future__ import annotations

import base64
import hashlib
import io
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

from analyzer.api import FileAnalysis
from analyzer.diagnosis.results import Diagnosis
from analyzer.records import CaptureSummary
from analyzer.render.summary import (
    ATTENTION_GROUPS,
    CaptureOverview,
    attention,
    by_attention,
    capture_span,
    client_label,
    heartbeat_label,
    heartbeat_words,
    needs_attention,
)
from analyzer.render.text import VERDICT_COLOURS, connection_facts
from analyzer.timeline import timeline_order

if TYPE_CHECKING:
    import jinja2
    from matplotlib.figure import Figure, SubFigure

# A page stays a few MB and opens in a second with 1,000 connections: plots (about 60 KB of SVG
# each) are drawn for the first MAX_PLOTS problem connections, details (facts, findings, frames)
# given for the first MAX_DETAILS; the page says how many were left out and how to see them.
MAX_PLOTS = 25
MAX_DETAILS = 200
# Frames around a teardown: the last FRAMES_BEFORE up to it and the first FRAMES_AFTER after it
# (enough for the last heartbeats, the close handshake or the RST, and what the late side sent).
FRAMES_BEFORE = 10
FRAMES_AFTER = 5
ARGS_WIDTH = 120  # characters of a frame's arguments shown in its row

LINK_TYPE_NAMES = {0: "NULL (BSD loopback)", 1: "Ethernet", 12: "raw IP", 14: "raw IP", 101: "raw IP",
                   108: "OpenBSD loopback", 113: "Linux cooked (SLL)", 228: "raw IPv4", 229: "raw IPv6",
                   276: "Linux cooked v2 (SLL2)"}

# One row of frames or segments (the notebook's tables, as dicts): column name -> value.
Row = Mapping[str, Any]


@dataclass
class ConnectionDetail:
    """What the page shows of one problem connection below the table."""

    diagnosis: Diagnosis
    anchor: str
    plot_svg: str | None  # inline <svg> element, or None when MAX_PLOTS were drawn already
    around: list[dict[str, str]]  # the frames and FIN/RST segments around the teardown


@dataclass
class CaptureReport:
    """One capture file as the page shows it."""

    analysis: FileAnalysis
    link_types: list[int]
    overview: CaptureOverview
    ordered: list[Diagnosis]  # every connection, in the reports' order
    positions: dict[int, int]  # timeline number -> position in start order (what --connection N names)
    details: list[ConnectionDetail] = field(default_factory=list)
    plots_left_out: int = 0
    details_left_out: int = 0


@dataclass
class ReportPage:
    html: str
    connections: int
    problems: int
    plots: int


def capture_report(analysis: FileAnalysis, *, link_types: Sequence[int], index: int = 0,
                   plot: Callable[[Diagnosis], Figure | SubFigure] | None = None,
                   rows: Callable[[Diagnosis], tuple[Iterable[Row], Iterable[Row]]] | None = None,
                   plots_drawn: int = 0) -> CaptureReport:
    """The CaptureReport of `analysis` (capture number `index` of the page). `plot` draws a problem
    connection's timeline (render.plot via the notebook's Connection.plot); `rows` gives its frames
    and segments (the notebook's tables) for the rows around the teardown. `plots_drawn` counts
    the page's earlier captures' plots against MAX_PLOTS."""
    ordered = by_attention(analysis.connections)
    in_start_order = sorted(analysis.connections, key=lambda d: timeline_order(d.timeline))
    positions = {d.timeline.number: i for i, d in enumerate(in_start_order)}
    report = CaptureReport(analysis, list(link_types), CaptureOverview.of(ordered), ordered, positions)
    problems = [d for d in ordered if needs_attention(d)]
    for number, d in enumerate(problems):
        if number >= MAX_DETAILS:
            report.details_left_out = len(problems) - MAX_DETAILS
            break
        anchor = connection_anchor(index, d)
        svg = None
        if plot is not None and plots_drawn < MAX_PLOTS:
            svg = figure_svg(plot(d), prefix=f"{anchor}-")
            plots_drawn += 1
        elif plot is not None:
            report.plots_left_out += 1
        frames, segments = rows(d) if rows is not None else ((), ())
        report.details.append(ConnectionDetail(d, anchor, svg, around_teardown(d, frames, segments)))
    return report


def connection_anchor(index: int, d: Diagnosis) -> str:
    """The page's id of a connection's details: capture index and timeline number (ids hold "->")."""
    return f"c{index}-{d.timeline.number}"


def figure_svg(fig: Figure | SubFigure, *, prefix: str) -> str:
    """`fig` as an inline <svg> element: text kept as text (smaller, selectable), no metadata block
    (it links to purl.org and creativecommons.org), every id prefixed with `prefix` so that several
    plots share a page."""
    import matplotlib
    from matplotlib.figure import Figure

    root = fig if isinstance(fig, Figure) else fig.figure  # (a SubFigure is drawn by the figure holding it)
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": prefix}):
        root.savefig(buf, format="svg", bbox_inches="tight", pad_inches=0.15,
                    metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.DOTALL)
    text = re.sub(r'\bid="([^"]*)"', _unique_ids(prefix), text)
    text = re.sub(r'(xlink:href|href)="#', rf'\1="#{prefix}', text)
    text = text.replace("url(#", f"url(#{prefix}")
    # Scaled by the page's CSS: the fixed pt size would overflow a laptop screen's column.
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 role="img"', text, count=1)


def _unique_ids(prefix: str) -> Callable[[re.Match[str]], str]:
    """An id="..." replacement: `prefix` + the id, and a -2, -3, ... for an id seen again (render.plot
    gives several artists one gid, e.g. each "decisive-check"; those ids are never referred to)."""
    seen: Counter[str] = Counter()

    def unique(match: re.Match[str]) -> str:
        name = match.group(1)
        seen[name] += 1
        return f'id="{prefix}{name}"' if seen[name] == 1 else f'id="{prefix}{name}-{seen[name]}"'

    return unique


def around_teardown(d: Diagnosis, frames: Iterable[Row], segments: Iterable[Row]) -> list[dict[str, str]]:
    """The frames and FIN/RST segments around the connection's end (its close, else the capture's
    last packet of it): the last FRAMES_BEFORE up to it and the first FRAMES_AFTER after it, in time
    order, as display strings (t, direction, what, detail). Arguments are as the tables hold them
    (start-ok's password redacted; message bodies never loaded)."""
    end = d.close.time if d.close.time is not None else d.rel(d.timeline.last_seen)
    events: list[tuple[float, int, dict[str, str]]] = []
    for r in frames:
        what = r.get("method") or r.get("type") or "?"
        args = r.get("args")
        detail = _compact(args) if isinstance(args, dict) and args else ""
        if r.get("type") != "method":
            detail = f"{r.get('size', '')} bytes" if r.get("type") in ("body", "header") else ""
        events.append((float(r["t"]), 0, {"t": f"{float(r['t']):.3f}", "direction": str(r["direction"]),
                                          "what": f"ch{r.get('channel', 0)} {what}", "detail": detail}))
    for r in segments:
        flags = str(r.get("flags") or "")
        if "F" in flags or "R" in flags:
            names = " ".join(name for letter, name in (("F", "FIN"), ("R", "RST")) if letter in flags)
            events.append((float(r["t"]), 1, {"t": f"{float(r['t']):.3f}", "direction": str(r["direction"]),
                                              "what": f"TCP {names}", "detail": f"flags {flags}"}))
    events.sort(key=lambda e: (e[0], e[1]))
    before = [e for e in events if e[0] <= end + 1e-6][-FRAMES_BEFORE:]
    after = [e for e in events if e[0] > end + 1e-6][:FRAMES_AFTER]
    return [row for _, _, row in before + after]


def auth_text(d: Diagnosis) -> str | None:
    """The start-ok mechanism and response as the timeline holds them: the password redacted unless
    the capture was read with show_secrets (`report --show-secrets`)."""
    start_ok = d.timeline.start_ok
    if start_ok is None or "mechanism" not in start_ok.args:
        return None
    response = start_ok.args.get("response")
    who = ", ".join(f"{k} {v}" for k, v in response.items()) if isinstance(response, dict) else str(response)
    return f"{start_ok.args['mechanism']}: {who}"


def _compact(args: Mapping[str, Any]) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in args.items())
    return text if len(text) <= ARGS_WIDTH else text[: ARGS_WIDTH - 1] + "…"


def report_html(captures: Sequence[CaptureReport], *, version: str, generated: datetime | None = None) -> ReportPage:
    """The page of `captures`: one section each (summary, table, details), and their metadata."""
    from markupsafe import Markup

    env = _environment()
    script = _template_text("report.js")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    generated = generated or datetime.now(UTC)
    html = env.get_template("report.html.j2").render(
        captures=captures, version=version, generated=generated.isoformat(timespec="seconds").replace("+00:00", "Z"),
        script=Markup(script), style=Markup(_template_text("summary.css") + _template_text("report.css")),
        max_plots=MAX_PLOTS, max_details=MAX_DETAILS,
        csp=f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; img-src data:")
    return ReportPage(html, sum(c.overview.connections for c in captures),
                      sum(c.overview.need_attention for c in captures),
                      sum(1 for c in captures for detail in c.details if detail.plot_svg is not None))


def summary_html(capture: CaptureSummary, overview: CaptureOverview) -> str:
    """One capture's summary as an HTML fragment with its own scoped style: the report's summary
    block, for the notebook's Analysis._repr_html_ (pair it with by_attention for the rows)."""
    from markupsafe import Markup

    fragment = _environment().get_template("summary.html.j2").render(o=overview, capture=capture,
                                                                      summary_id="amqphb-summary")
    return str(Markup('<div class="amqphb"><style>{}</style>{}</div>').format(
        Markup(_template_text("summary.css")), Markup(fragment)))


def _template_text(name: str) -> str:
    return (resources.files("analyzer.render") / "templates" / name).read_text(encoding="utf-8")


def _environment() -> jinja2.Environment:
    """The templates' environment: autoescaped, strict about undefined names, with the wording
    helpers the templates call (the text report's and render.summary's own)."""
    import jinja2
    from markupsafe import Markup

    env = jinja2.Environment(loader=jinja2.PackageLoader("analyzer.render", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.globals.update({
        "markup": Markup, "facts": connection_facts, "auth": auth_text, "attention": attention,
        "group_names": ATTENTION_GROUPS, "span": capture_span, "client_label": client_label,
        "heartbeat_label": heartbeat_label, "heartbeat_words": heartbeat_words, "verdict_class": _verdict_class,
        "link_type_name": lambda lt: f"{LINK_TYPE_NAMES.get(lt, 'link type')} ({lt})",
    })
    return env


def _verdict_class(verdict: str) -> str:
    """The CSS class of a verdict's badge: the text report's colour for it, by name."""
    return {"31": "bad", "33": "warn", "32": "good", "36": "open"}.get(VERDICT_COLOURS.get(verdict, ""), "other")
