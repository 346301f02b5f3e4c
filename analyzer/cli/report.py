"""`amqp-hb report FILE... -o report.html`: one self-contained HTML file to share (an incident ticket).

Registered by analyzer.cli. Jinja2 comes with the `report` extra, and the plots need matplotlib
and pandas (the `plot` extra, which `report` pulls in); without them the command says so in one
line (exit 2) and the rest of the CLI still works. The page itself is built by
analyzer.render.html; this module reads the files and draws the problem connections' plots.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, TextIO

from analyzer.cli.options import (
    file_error,
    group_input_files,
    input_files,
    output_file,
    port_number,
    require_extra,
    series_options,
)
from analyzer.errors import CaptureFileError, ExitStatus, UsageError

if TYPE_CHECKING:
    from analyzer.diagnosis.results import Diagnosis
    from analyzer.notebook import Analysis
    from analyzer.render.html import CaptureReport


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "report", help="write one self-contained HTML report of the captures (to share)",
        description="Write one self-contained HTML file: the summary, a sortable table of the connections, "
                    "and for each connection that needs attention its timeline plot, explanation, findings "
                    "and the frames around its teardown. It loads nothing from the network and prints well.")
    input_files(p, "pcap or pcapng capture files")
    p.add_argument("-o", "--output", required=True, metavar="OUT.html", help="the HTML file to write")
    series_options(p)
    p.add_argument("--port", type=port_number, action="append", metavar="N",
                   help="TCP port carrying AMQP (repeatable; default 5672 and 5671; other ports are auto-detected)")
    p.add_argument("--tls-keylog", metavar="FILE", help="NSS key log (SSLKEYLOGFILE) to decrypt TLS connections with")
    p.add_argument("--show-secrets", action="store_true",
                   help="show the start-ok password (redacted by default; key material is never shown)")
    p.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> ExitStatus:
    output_file(args.output, (".html", ".htm"), ".html")
    require_extra("report", "report", ("jinja2", "matplotlib", "pandas"))
    from analyzer import __version__
    from analyzer.engine import DEFAULT_PORTS
    from analyzer.render.html import report_html

    ports = tuple(args.port) if args.port else DEFAULT_PORTS
    group_input_files(args, stderr)  # rotated files that continue each other: one capture
    captures: list[CaptureReport] = []
    status = ExitStatus.OK
    for path in args.files:
        try:
            plots = sum(1 for c in captures for detail in c.details if detail.plot_svg is not None)
            captures.append(_capture_report(path, len(captures), plots, ports, args.tls_keylog, args.show_secrets))
        except (CaptureFileError, UsageError) as exc:
            stderr.write(f"amqp-hb: {file_error(path, exc)}\n")
            status = ExitStatus.BAD_INPUT
    if not captures:
        return status
    page = report_html(captures, version=__version__)
    with open(args.output, "w", encoding="utf-8") as out:
        out.write(page.html)
    for capture in captures:
        for warning in capture.analysis.summary.warnings:
            stderr.write(f"amqp-hb: warning: {capture.analysis.path}: {warning}\n")
    size = len(page.html.encode("utf-8"))
    stdout.write(f"{args.output}: {page.connections} connection{'s' if page.connections != 1 else ''}, "
                 f"{page.problems} needing attention, {page.plots} plot{'s' if page.plots != 1 else ''}, "
                 f"{size / 1e6:.2f} MB\n")
    return status


def _capture_report(path: str, index: int, plots_drawn: int, ports: tuple[int, ...], tls_keylog: str | None,
                    show_secrets: bool) -> CaptureReport:
    """One file read into what the page shows: the analysis, the link types and, for each problem
    connection, its timeline plot and the frames and segments around its teardown."""
    from analyzer.api import analyze_file, read_keylog
    from analyzer.notebook import load
    from analyzer.render.html import capture_report

    analysis: Analysis = load(path, ports=ports, tls_keylog=tls_keylog)
    result = analysis.result
    if show_secrets:  # the notebook's tables redact start-ok; the unredacted handshake takes a second pass
        keys = read_keylog(tls_keylog) if tls_keylog is not None else None
        result = analyze_file(path, ports=ports, show_secrets=True, tls_keys=keys)

    def rows(d: Diagnosis) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        view = analysis.connection(d.timeline.info.id)
        return view.frames.to_dict("records"), view.segments.to_dict("records")

    return capture_report(result, link_types=_link_types(path), index=index, plots_drawn=plots_drawn,
                          plot=lambda d: analysis.connection(d.timeline.info.id).plot(), rows=rows)


def _link_types(path: str) -> list[int]:
    """The link types of the file's packets, in order of appearance (a pcap has one; a pcapng one per
    interface that carried packets)."""
    import numpy as np

    from analyzer.api import open_file
    from analyzer.sources.pcap import CaptureReader, open_capture

    seen: dict[int, None] = {}
    with open_file(path) as f:
        for block in (f if isinstance(f, CaptureReader) else open_capture(f)).blocks():
            for linktype in np.unique(block.linktype).tolist() if isinstance(block.linktype, np.ndarray) \
                    else [block.linktype]:
                seen.setdefault(int(linktype))
    return list(seen)
