"""The command line edge: argument parsing, output streams, and the one place errors become exit codes.

httpie is the model: an ExitStatus enum, streams injected so tests run the CLI in-process,
`--traceback` to see what a one-line message hides.
"""
from __future__ import annotations

import argparse
import csv
import enum
import json
import os
import sys
from typing import TextIO

from analyzer import __version__
from analyzer.errors import AmqpHbError, CaptureFileError
from analyzer.pipeline import DEFAULT_PORTS
from analyzer.render.plot_cli import register as register_plot
from analyzer.scenarios.cli import register as register_scenarios


class ExitStatus(enum.IntEnum):
    OK = 0
    INTERNAL_ERROR = 1  # a bug: please report it with --traceback
    BAD_INPUT = 2  # unusable file or arguments, missing tool or privilege
    INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amqp-hb",
        description="Explain AMQP 0-9-1 heartbeat timeouts and connection teardowns from packet captures.",
    )
    parser.add_argument("--version", action="version", version=f"amqp-hb {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the Python traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def capture_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("files", nargs="+", metavar="FILE", help="pcap or pcapng capture files")
        p.add_argument("--port", type=int, action="append", metavar="N",
                       help=f"TCP port carrying AMQP (repeatable; default {DEFAULT_PORTS[0]}; other ports are "
                            "auto-detected)")
        p.add_argument("--connection", metavar="ID", help="only this connection (CLIENT_IP:PORT->SERVER_IP:PORT)")

    frames = sub.add_parser("frames", help="list every AMQP frame, one line each")
    capture_args(frames)
    frames.add_argument("--format", choices=("text", "jsonl", "csv"), default="text")
    frames.add_argument("--payload", type=int, default=0, metavar="N", help="show the first N bytes of bodies")
    frames.add_argument("--show-secrets", action="store_true", help="do not redact passwords in start-ok")
    frames.set_defaults(handler=run_frames)

    analyze = sub.add_parser("analyze", help="explain each connection's heartbeats and teardown")
    capture_args(analyze)
    analyze.add_argument("--format", choices=("text", "json", "csv"), default="text")
    analyze.add_argument("--show-secrets", action="store_true",
                         help="do not redact the start-ok password (the JSON's auth field)")
    analyze.set_defaults(handler=run_analyze)

    register_scenarios(sub)  # capture, scenario
    register_plot(sub)  # plot (matplotlib is imported only when it runs)
    return parser


def _ports(args: argparse.Namespace) -> tuple[int, ...]:
    return tuple(args.port) if args.port else DEFAULT_PORTS


def run_frames(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from analyzer.api import read_frames
    from analyzer.records import CaptureSummary
    from analyzer.render.text import frame_line

    status = ExitStatus.OK
    writer = None
    for path in args.files:
        summary = CaptureSummary()
        try:
            for frame in read_frames(path, ports=_ports(args), connection=args.connection,
                                     payload_bytes=args.payload, show_secrets=args.show_secrets, summary=summary):
                record = {"file": path, **_frame_dict(frame)} if len(args.files) > 1 else _frame_dict(frame)
                if args.format == "jsonl":
                    stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
                elif args.format == "csv":
                    if writer is None:
                        writer = csv.DictWriter(stdout, fieldnames=list(record))
                        writer.writeheader()
                    record["args"] = json.dumps(record["args"], ensure_ascii=False) if record["args"] else ""
                    writer.writerow(record)
                else:
                    stdout.write(frame_line(frame) + "\n")
        except CaptureFileError as exc:
            stderr.write(f"amqp-hb: {exc}\n")
            status = ExitStatus.BAD_INPUT
        for warning in summary.warnings:
            stderr.write(f"amqp-hb: warning: {path}: {warning}\n")
    return status


def _frame_dict(frame) -> dict:
    return {
        "t": round(frame.t, 6), "epoch": frame.epoch, "connection": frame.connection, "direction": frame.direction,
        "channel": frame.channel, "type": frame.type, "method": frame.method, "size": frame.size,
        "packet": frame.packet, "args": frame.args,
    }


def run_analyze(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from analyzer.api import analyze_file
    from analyzer.render.analysis_json import CSV_COLUMNS, analysis_document, connection_row
    from analyzer.render.text import analysis_report

    status = ExitStatus.OK
    writer = None
    colour = args.format == "text" and stdout.isatty() and not os.environ.get("NO_COLOR")
    for path in args.files:
        try:
            analysis = analyze_file(path, ports=_ports(args), connection=args.connection,
                                    show_secrets=args.show_secrets)
        except CaptureFileError as exc:
            stderr.write(f"amqp-hb: {exc}\n")
            status = ExitStatus.BAD_INPUT
            continue
        if args.format == "json":
            stdout.write(json.dumps(analysis_document(analysis), indent=2, ensure_ascii=False) + "\n")
        elif args.format == "csv":
            if writer is None:
                writer = csv.DictWriter(stdout, fieldnames=CSV_COLUMNS)
                writer.writeheader()
            for diagnosis in analysis.connections:
                writer.writerow(connection_row(analysis.path, diagnosis))
        else:
            stdout.write(analysis_report(analysis, colour=colour))
        if args.format != "text":
            for warning in analysis.summary.warnings:
                stderr.write(f"amqp-hb: warning: {path}: {warning}\n")
    return status


def main(argv: list[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed its one-line usage error
        return ExitStatus.OK if exc.code == 0 else ExitStatus.BAD_INPUT
    try:
        return int(args.handler(args, stdout, stderr))
    except AmqpHbError as exc:
        if args.traceback:
            raise
        stderr.write(f"amqp-hb: {exc}\n")
        return ExitStatus.BAD_INPUT
    except KeyboardInterrupt:
        stderr.write("amqp-hb: interrupted\n")
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:
        # `amqp-hb frames big.pcap | head`: the reader left; not an error. Point stdout at devnull so
        # Python's flush at exit does not fail again (the recipe in the signal module's docs).
        if stdout is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitStatus.OK
    except Exception as exc:  # the one place a bug is turned into a message instead of a traceback
        if args.traceback:
            raise
        stderr.write(f"amqp-hb: internal error: {type(exc).__name__}: {exc} (rerun with --traceback and "
                     "report it)\n")
        return ExitStatus.INTERNAL_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
