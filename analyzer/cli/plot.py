"""`amqp-hb plot FILE -o out.png`: the timeline figure of each connection, from the command line.

Registered by analyzer.cli. matplotlib and pandas come with the
`plot` extra; without them the command says so (exit 2) and the rest of the CLI still works.
Figures are drawn with the Agg backend (no display needed); the format follows the extension.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, TextIO

from analyzer.cli.options import (
    CONNECTION_EXAMPLES,
    CONNECTION_HELP,
    file_error,
    input_files,
    output_file,
    port_number,
    require_extra,
)
from analyzer.errors import CaptureFileError, ExitStatus, UsageError

FORMATS = (".png", ".svg")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser("plot", help="draw each connection's heartbeat timeline (PNG or SVG)",
                              description="Draw each AMQP connection's heartbeat timeline: frames, heartbeats "
                                          "and bare ACKs per direction, the broker's checks, the model's window, "
                                          "the predicted and the observed teardown.",
                              epilog=f"Examples: {CONNECTION_EXAMPLES}.")
    input_files(p, "pcap or pcapng capture file", most=1)
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file, .png or .svg; with several connections and no --connection, one file "
                        "per connection named OUT-1.png, OUT-2.png, ...")
    p.add_argument("--connection", metavar="ID", help=CONNECTION_HELP)
    p.add_argument("--port", type=port_number, action="append", metavar="N",
                   help="TCP port carrying AMQP (repeatable; default 5672 and 5671; other ports are auto-detected)")
    p.add_argument("--tls-keylog", metavar="FILE",
                   help="NSS key log (SSLKEYLOGFILE) to decrypt TLS connections with")
    p.add_argument("--checks", choices=("auto", "broker", "client", "pika", "both", "none"), default="auto",
                   help="which peer's heartbeat checks to draw: the broker's, the client library's own "
                        "('pika' is the same as 'client'), both or none (default: the one that decided the "
                        "teardown)")
    p.add_argument("--all", action="store_true",
                   help="also draw connections with nothing to show (closed normally within a second or one "
                        "heartbeat interval, no finding), which are otherwise listed in one line each")
    p.set_defaults(handler=run_plot)


def output_paths(output: str, count: int) -> list[str]:
    """One path per connection: OUT itself for one, OUT-1.ext, OUT-2.ext, ... for several."""
    if count == 1:
        return [output]
    stem, ext = os.path.splitext(output)
    return [f"{stem}-{i}{ext}" for i in range(1, count + 1)]


def run_plot(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> ExitStatus:
    output_file(args.output, FORMATS, ".png or .svg")
    require_extra("plot", "plot", ("matplotlib", "pandas"))
    from analyzer.engine import DEFAULT_PORTS
    from analyzer.notebook import load
    from analyzer.render.plot import save, worth_plotting

    (capture,) = args.files
    try:
        analysis = load(capture, ports=tuple(args.port) if args.port else DEFAULT_PORTS, tls_keylog=args.tls_keylog)
        views = [analysis.connection(args.connection)] if args.connection is not None else list(analysis)
    except (CaptureFileError, UsageError) as exc:
        raise type(exc)(file_error(capture, exc)) from exc
    if not views:
        raise UsageError(f"{capture}: no AMQP connection in this capture")
    if args.connection is None and not args.all:
        shown = [view for view in views if worth_plotting(view.diagnosis)] or views
        for view in views:
            if view not in shown:
                lasted = view.diagnosis.timeline.last_seen - view.diagnosis.timeline.first_seen
                stdout.write(f"not drawn: {view.id} ({view.verdict}, {lasted:.3f} s, nothing to show; "
                             "--all or --connection draws it)\n")
        views = shown
    for view, path in zip(views, output_paths(args.output, len(views)), strict=True):
        save(view.plot(checks=args.checks), path)
        stdout.write(f"{path}: {view.id} ({view.verdict})\n")
    for warning in analysis.summary.warnings:
        stderr.write(f"amqp-hb: warning: {capture}: {warning}\n")
    return ExitStatus.OK

