"""The command line edge: argument parsing, output streams, and the one place errors become exit codes.

httpie is the model: an ExitStatus enum, streams injected so tests run the CLI in-process,
`--traceback` to see what a one-line message hides.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import itertools
import json
import os
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

from analyzer import __version__
from analyzer.cli.archive import distributed_outcomes
from analyzer.cli.archive import register as register_archive
from analyzer.cli.options import (
    CONNECTION_EXAMPLES,
    CONNECTION_HELP,
    CommandParser,
    check_input_files,
    file_error,
    format_choice,
    group_input_files,
    ignore_sigint,
    input_files,
    int_in_range,
    port_number,
    series_options,
)
from analyzer.cli.plot import register as register_plot
from analyzer.cli.report import register as register_report
from analyzer.cli.watch import register as register_watch
from analyzer.engine import DEFAULT_PORTS
from analyzer.errors import AmqpHbError, CaptureFileError, ExitStatus, UsageError
from analyzer.lab.scenarios.cli import register as register_scenarios

if TYPE_CHECKING:  # the stages are imported when a command runs
    from concurrent.futures import ProcessPoolExecutor

    from analyzer.api import FileAnalysis
    from analyzer.diagnosis.results import Diagnosis
    from analyzer.tls.keylog import KeyLog

    Render = Callable[[Diagnosis], str]  # one connection as it appears in the output

__all__ = ["ExitStatus", "build_parser", "main"]


FRAMES_FORMATS = ("text", "jsonl", "csv")
ANALYZE_FORMATS = ("text", "json", "csv")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="amqp-hb",
        description="Explain AMQP 0-9-1 heartbeat timeouts and connection teardowns from packet captures.",
        epilog="--traceback is accepted after the command too.",
    )
    parser.add_argument("--version", action="version", version=f"amqp-hb {__version__}")
    parser.set_defaults(traceback=False)  # CommandParser adds --traceback; a subcommand's keeps this value
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def capture_args(p: argparse.ArgumentParser) -> None:
        input_files(p, "pcap or pcapng capture files")
        p.add_argument("--port", type=port_number, action="append", metavar="N",
                       help="TCP port carrying AMQP or AMQPS (repeatable; default "
                            f"{' and '.join(map(str, DEFAULT_PORTS))}; other ports are auto-detected, TLS from its "
                            "ClientHello)")
        p.add_argument("--connection", metavar="ID", help=CONNECTION_HELP)
        p.add_argument("--tls-keylog", metavar="FILE",
                       help="NSS key log (SSLKEYLOGFILE) to decrypt TLS connections with; pcapng Decryption "
                            "Secrets Blocks are used without it. Without keys, TLS timing is inferred")
        p.add_argument("-q", "--quiet", action="store_true",
                       help="no progress line on stderr (it is shown only on a terminal, for files taking over 1 s)")
        series_options(p)

    frames = sub.add_parser(
        "frames", help="list every AMQP frame, one line each",
        description="List every AMQP frame of each capture, one line each, in capture order.",
        epilog=f"Examples: {CONNECTION_EXAMPLES}. With --connection the file is read twice: a first pass "
               "lists the connections (as analyze does) to resolve ID, then the frames of that one are "
               "listed as they are read.")
    capture_args(frames)
    frames.add_argument("--format", choices=FRAMES_FORMATS, default="text",
                        type=format_choice(FRAMES_FORMATS, {"json": "jsonl"}, {}),
                        help="text (one line a frame), jsonl (one JSON object a line; json is accepted for it) "
                             "or csv (default: %(default)s)")
    frames.add_argument("--args", action="store_true",
                        help="decode every method's and content header's arguments (default: connection and "
                             "channel methods only, which is several times faster on a busy capture)")
    frames.add_argument("--payload", type=int_in_range(0), default=0, metavar="N",
                        help="show the first N bytes of bodies")
    frames.add_argument("--show-secrets", action="store_true", help="do not redact passwords in start-ok")
    frames.set_defaults(handler=run_frames)

    analyze = sub.add_parser(
        "analyze", help="explain each connection's heartbeats and teardown",
        description="Explain each AMQP connection's heartbeats and teardown: verdict, timing model, findings.",
        epilog=f"Examples: {CONNECTION_EXAMPLES}.")
    capture_args(analyze)
    analyze.add_argument("--format", choices=ANALYZE_FORMATS, default="text",
                         type=format_choice(ANALYZE_FORMATS, {}, {
                             "jsonl": "analyze writes json, one amqp-hb/analysis/1 document per file (indented, "
                                      "not one object a line)"}),
                         help="text (a report per connection), json (one amqp-hb/analysis/1 document per file) "
                              "or csv (one row per connection) (default: %(default)s)")
    analyze.add_argument("--show-secrets", action="store_true",
                         help="do not redact the start-ok password (the JSON's auth field)")
    analyze.add_argument("--pair", action="store_true",
                         help="join connections seen in two of the files (captures on the client's and the broker's "
                              "host): clock offset, one-way delay, segments lost on the way (automatic when two "
                              "files share a connection id)")
    analyze.add_argument("-j", "--jobs", type=int_in_range(1), default=None, metavar="N",
                         help="analyze N files at once in N processes (output stays in argument order; default 1; "
                              "with --engine dask the LocalCluster's workers)")
    analyze.add_argument("--problems", action="store_true",
                         help="only the connections that need attention: a teardown verdict (missed heartbeats, "
                              "reset, closed with an error) or a finding (every format; the summary still counts all)")
    analyze.add_argument("--all", action="store_true",
                         help="text: the connections that need no attention in full too (default: one line each)")
    register_archive(analyze)  # --engine dask, --scheduler, --output-dir, --frames
    analyze.set_defaults(handler=run_analyze)

    register_scenarios(sub)  # capture, scenario
    register_plot(sub)  # plot (matplotlib is imported only when it runs)
    register_report(sub)  # report (jinja2 and matplotlib are imported only when it runs)
    register_watch(sub)  # watch (the live table and metrics import rich and prometheus_client when asked for)
    return parser


def _ports(args: argparse.Namespace) -> tuple[int, ...]:
    return tuple(args.port) if args.port else DEFAULT_PORTS


def _tls_keys(args: argparse.Namespace) -> KeyLog | None:
    """The --tls-keylog file's secrets, read once (a UsageError names the file)."""
    if getattr(args, "tls_keylog", None) is None:
        return None
    if getattr(args, "tls_keys", None) is None:
        from analyzer.api import read_keylog

        args.tls_keys = read_keylog(args.tls_keylog)
    keys: KeyLog = args.tls_keys
    return keys


class Progress:
    """One self-rewriting stderr line: file bytes read and packets/s, for files taking over DELAY s.

    Hand-written rather than tqdm/rich: it is one line of text, and the pipeline calls it only
    every few ten thousand packets. Silent when stderr is not a terminal or with --quiet.
    """

    DELAY = 1.0  # seconds before the line appears: a short file finishes with no flicker

    def __init__(self, path: str, stream: TextIO, enabled: bool) -> None:
        self.path = path
        self.stream = stream
        self.enabled = enabled
        self.started = time.monotonic()
        self.shown = False
        try:
            self.size = os.path.getsize(path)
        except OSError:
            self.size = 0

    def __call__(self, packets: int, bytes_read: int) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.started
        if elapsed < self.DELAY:
            return
        done = min(bytes_read, self.size) if self.size else bytes_read
        share = f" ({100 * done / self.size:.0f}%)" if self.size else ""
        self.stream.write(f"\r\x1b[K{self.path}: {done / 1e6:.1f} of {self.size / 1e6:.1f} MB{share}, "
                          f"{packets:,} packets, {packets / elapsed:,.0f} packets/s")
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")  # erase the line: results and warnings start clean
            self.stream.flush()
            self.shown = False


def _progress(args: argparse.Namespace, path: str, stderr: TextIO) -> Progress:
    enabled = not args.quiet and getattr(stderr, "isatty", lambda: False)()
    return Progress(path, stderr, enabled)


def run_frames(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> ExitStatus:
    from analyzer.api import FrameBatch, read_frame_batches, read_frames
    from analyzer.records import CaptureSummary
    from analyzer.render.frames import JsonLines, frame_fields
    from analyzer.render.text import frame_line

    status = ExitStatus.OK
    writer = None
    group_input_files(args, stderr)  # rotated files that continue each other: one capture
    several = len(args.files) > 1
    _tls_keys(args)  # a bad key log stops here, once, before any file
    for path in args.files:
        summary = CaptureSummary()
        progress = _progress(args, path, stderr)
        jsonl = JsonLines(path if several else None)
        try:
            connection = None if args.connection is None else _resolve_streaming(path, args, progress)
            options = dict(ports=_ports(args), connection=connection, payload_bytes=args.payload,
                           show_secrets=args.show_secrets, summary=summary, progress=progress,
                           all_arguments=args.args, tls_keys=_tls_keys(args))
            if args.format == "jsonl":
                for item in read_frame_batches(path, **options):
                    stdout.write(jsonl.batch(item) if isinstance(item, FrameBatch) else jsonl.line(item))
            for frame in read_frames(path, **options) if args.format != "jsonl" else ():
                if args.format == "csv":
                    record = frame_fields(frame, path if several else None)
                    if writer is None:
                        writer = csv.DictWriter(stdout, fieldnames=list(record))
                        writer.writeheader()
                    record["args"] = json.dumps(record["args"], ensure_ascii=False) if record["args"] else ""
                    writer.writerow(record)
                else:
                    stdout.write(frame_line(frame) + "\n")
        except (CaptureFileError, UsageError) as exc:
            stderr.write(f"amqp-hb: {file_error(path, exc)}\n")
            status = ExitStatus.BAD_INPUT
        finally:
            progress.done()
        for warning in summary.warnings:
            stderr.write(f"amqp-hb: warning: {path}: {warning}\n")
        if summary.tls_not_decrypted:
            count = summary.tls_not_decrypted
            many = count > 1
            stderr.write(f"amqp-hb: warning: {path}: {count} TLS connection{'s were' if many else ' was'} not "
                         f"decrypted: no frames are listed for {'them' if many else 'it'} (--tls-keylog FILE; "
                         f"`analyze` still reads {'their' if many else 'its'} timing)\n")
    return status


def _resolve_streaming(path: str, args: argparse.Namespace, progress: Progress) -> str:
    """The id of the connection --connection names in `path`, for frames: a first pass over the file
    lists its connections in analyze's order (frames streams, so it cannot hold the frames of every
    candidate until the file's end shows which key is unique)."""
    from analyzer.api import analyze_file, find_connection
    from analyzer.timeline import timeline_order

    seen: list[tuple[tuple[float, int], str]] = []
    analyze_file(path, ports=_ports(args), progress=progress, tls_keys=_tls_keys(args),
                 on_connection=lambda d: seen.append((timeline_order(d.timeline), d.timeline.info.id)))
    ids = [cid for _, cid in sorted(seen)]
    return ids[find_connection(args.connection, ids)]


def run_analyze(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> ExitStatus:
    from analyzer.render.analysis_json import CSV_COLUMNS, connection_json, connection_row, write_document
    from analyzer.render.summary import CaptureOverview, needs_attention
    from analyzer.render.text import connection_block, connection_line, others_heading, report_head

    status = ExitStatus.OK
    colour = args.format == "text" and stdout.isatty() and not os.environ.get("NO_COLOR")
    _tls_keys(args)  # a bad key log stops here, once, before any file
    group_input_files(args, stderr)  # rotated files that continue each other: one capture
    if args.pair and len(set(args.files)) < 2:
        raise UsageError("--pair joins a connection seen in two captures: give two files (the client host's and "
                         "the broker host's)")
    csv_header = args.format == "csv"

    overviews: dict[str, CaptureOverview] = {}  # path -> the summary of all its connections
    in_full = args.all or args.connection is not None  # text: also the connections that need no attention

    def render(path: str) -> Render:
        """What one connection of `path` becomes in the output (and the file's summary counts it)."""
        overview = overviews[path] = CaptureOverview()

        def rendered(d: Diagnosis) -> str:
            overview.add(d)
            if args.format == "json":
                return connection_json(d)
            if args.format == "csv":
                return _csv_line(connection_row(path, d), CSV_COLUMNS)
            if in_full or needs_attention(d):
                return connection_block(d, colour=colour)
            return connection_line(d, colour=colour) + "\n"

        return rendered

    seen_in: dict[str, list[str]] = {}  # connection id -> the files it is in
    # closing: on Ctrl-C (or any error) while a file is written, the generator stops its workers at once.
    with contextlib.closing(_analyses(args, stderr, render)) as analyses:
        for path, outcome, connections in analyses:
            with connections:
                for cid in connections.ids if not isinstance(outcome, CaptureFileError) else ():
                    seen_in.setdefault(cid, []).append(path)
                try:
                    if isinstance(outcome, CaptureFileError):
                        raise outcome
                    if args.connection is not None:
                        connections.select(args.connection)
                    if args.problems:
                        connections.keep_problems()
                except (CaptureFileError, UsageError) as exc:
                    stderr.write(f"amqp-hb: {file_error(path, exc)}\n")
                    status = ExitStatus.BAD_INPUT
                    continue
                analysis = outcome
                overview = overviews[path]
                if args.format == "json":
                    write_document(analysis, connections, len(connections), stdout, overview)
                elif args.format == "csv":
                    if csv_header:
                        csv.DictWriter(stdout, fieldnames=CSV_COLUMNS).writeheader()
                        csv_header = False
                    stdout.writelines(connections)
                else:
                    shown = (f"{len(connections)} of {overview.connections} (--connection)" if args.connection
                             else f"the {len(connections)} that need attention (--problems)" if args.problems
                             else None)
                    stdout.write(report_head(analysis, overview, colour=colour, shown=shown))
                    texts = iter(connections)  # problems first (attention order), then the others
                    problems = len(connections) if shown else overview.need_attention
                    stdout.writelines(itertools.islice(texts, problems))
                    if len(connections) > problems:
                        stdout.write(others_heading(len(connections) - problems, full=args.all))
                    stdout.writelines(texts)
            if args.format != "text":
                for warning in analysis.summary.warnings:
                    stderr.write(f"amqp-hb: warning: {path}: {warning}\n")
    _pairs(args, seen_in, stdout, stderr, colour)
    return status


def _pairs(args: argparse.Namespace, seen_in: Mapping[str, list[str]], stdout: TextIO, stderr: TextIO,
           colour: bool) -> None:
    """Connections seen in two of the files (a capture on each host), joined: with --pair every
    pair of files (NAT-proof: by initial sequence numbers), else the files that share a connection id."""
    from analyzer.api import pair_files
    from analyzer.render.analysis_json import pairs_document
    from analyzer.render.text import pair_block

    if args.pair:  # the files analyzed (a file already reported unusable is left out)
        paths = list(dict.fromkeys(p for files in seen_in.values() for p in files))
    else:
        paths = list(dict.fromkeys(p for files in seen_in.values() if len(set(files)) > 1 for p in files))
    if len(paths) < 2:
        return
    if args.format == "csv":
        if args.pair:
            stderr.write("amqp-hb: warning: --pair has no CSV form: use --format text or json\n")
        return
    reports = pair_files(paths, ports=_ports(args), tls_keys=_tls_keys(args))
    if args.format == "json" and (reports or args.pair):
        json.dump(pairs_document(reports), stdout, indent=2, ensure_ascii=False)
        stdout.write("\n")
    elif args.format == "json":
        return
    elif reports:
        stdout.write("".join(pair_block(r, colour=colour) for r in reports))
    elif args.pair:  # (matched ids alone, without --pair, are often just a reused client port)
        stdout.write("\nno connection of these files was seen in two of them (--pair matches by initial sequence "
                     "numbers: both captures need the connection's SYNs, or the same connection id)\n")


def _csv_line(row: Mapping[str, object], columns: list[str]) -> str:
    """One CSV row; booleans spelled as in JSON (true/false: pandas and DuckDB read them as booleans)."""
    line = io.StringIO()
    spelled = {k: ("true" if v else "false") if isinstance(v, bool) else v for k, v in row.items()}
    csv.DictWriter(line, fieldnames=columns).writerow(spelled)
    return line.getvalue()


class _RenderedConnections:
    """One file's connections, rendered as they are handed over (in closing order) and kept on an
    unnamed temporary file; read back in connection order, or with `by_attention` in the reports'
    order (render.summary.attention_key: problems first). Memory: 33 bytes a connection, and its id
    (for --connection, resolved once the file's end shows which key is unique)."""

    def __init__(self, render: Render, *, by_attention: bool = False) -> None:
        self._render = render
        self._by_attention = by_attention
        self._attention = array("b")
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by __exit__: this object is the context)
        self._first_seen = array("d")
        self._number = array("q")
        self._offset = array("q")
        self._length = array("q")
        self._ids: list[str] = []
        self._end = 0
        self._shown: list[int] | None = None  # by select: the indices written, in connection order

    def add(self, diagnosis: Diagnosis) -> None:
        from analyzer.render.summary import attention

        data = self._render(diagnosis).encode("utf-8")
        self._attention.append(attention(diagnosis))
        self._file.write(data)
        self._first_seen.append(diagnosis.timeline.first_seen)
        self._number.append(diagnosis.timeline.number)
        self._offset.append(self._end)
        self._length.append(len(data))
        self._ids.append(diagnosis.timeline.info.id)
        self._end += len(data)

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def _order(self, by_attention: bool = False) -> list[int]:
        first_seen, number, group = self._first_seen, self._number, self._attention
        if by_attention:
            return sorted(range(len(self._offset)), key=lambda i: (group[i], first_seen[i], number[i]))
        return sorted(range(len(self._offset)), key=lambda i: (first_seen[i], number[i]))

    def select(self, key: str) -> None:
        """Keep only the connection(s) with the id --connection names (analyzer.api.find_connection;
        a position counts in connection order, whatever the output's order)."""
        order = self._order()
        self._shown = _selected(key, [self._ids[i] for i in order], order)

    def keep_problems(self) -> None:
        """Keep only the connections that need attention (--problems: render.summary.needs_attention)."""
        from analyzer.render.summary import NO_ATTENTION

        shown = self._order(self._by_attention) if self._shown is None else self._shown
        self._shown = [i for i in shown if self._attention[i] != NO_ATTENTION]

    def __len__(self) -> int:
        return len(self._offset) if self._shown is None else len(self._shown)

    def __iter__(self) -> Iterator[str]:
        self._file.flush()
        for i in self._order(self._by_attention) if self._shown is None else self._shown:
            self._file.seek(self._offset[i])
            yield self._file.read(self._length[i]).decode("utf-8")

    def __enter__(self) -> _RenderedConnections:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._file.close()


def _selected(key: str, ids: list[str], indices: Sequence[int]) -> list[int]:
    """The `indices` (one per id, in connection order) of the connections --connection `key` names:
    every connection with the id it finds (the filter analyze_file's `connection` applies)."""
    from analyzer.api import find_connection

    chosen = ids[find_connection(key, ids)]
    return [i for i, cid in zip(indices, ids, strict=True) if cid == chosen]


def _analyze_one(path: str, ports: tuple[int, ...], show_secrets: bool, progress: Progress | None = None,
                 on_connection: Callable[[Diagnosis], None] | None = None,
                 tls_keys: KeyLog | None = None) -> FileAnalysis | CaptureFileError:
    """One file's FileAnalysis, or the CaptureFileError that says why there is none (run in a worker
    process with --jobs, where the result is sent back whole; other errors propagate to main's one
    place that maps them)."""
    from analyzer.api import analyze_file

    try:
        return analyze_file(path, ports=ports, show_secrets=show_secrets, progress=progress,
                            on_connection=on_connection, tls_keys=tls_keys)
    except CaptureFileError as exc:
        return exc
    finally:
        if progress is not None:
            progress.done()


def _analyses(args: argparse.Namespace, stderr: TextIO, render: Callable[[str], Render],
              ) -> Generator[tuple[str, FileAnalysis | CaptureFileError, _RenderedConnections], None, None]:
    """(path, FileAnalysis or CaptureFileError, its rendered connections) in argument order. One
    file at a time, connections are rendered as they close and kept on a temporary file (memory
    follows the connections open at once); with --jobs N, files in parallel, each process sending
    its whole result back. Every connection is rendered: --connection is resolved (select) once a
    file's list is complete. Text lists them in the reports' order (problems first). With --engine dask,
    files are analyzed on the workers of a Dask cluster (analyzer/cli/archive.py), whole results sent back."""
    ports = _ports(args)
    by_attention = args.format == "text"
    distributed = distributed_outcomes(args, ports, _tls_keys(args))  # None: the local engine
    if distributed is not None:
        with contextlib.closing(distributed):  # a Ctrl-C stops the cluster's work and closes it
            yield from _rendered(distributed, render, by_attention)
        return
    jobs = args.jobs or 1
    if jobs == 1 or len(args.files) == 1:
        for path in args.files:
            connections = _RenderedConnections(render(path), by_attention=by_attention)
            outcome = _analyze_one(path, ports, args.show_secrets, _progress(args, path, stderr),
                                   on_connection=connections.add, tls_keys=_tls_keys(args))
            yield path, outcome, connections
        return
    from concurrent.futures import ProcessPoolExecutor

    # Each file is read, decoded and diagnosed in its own process; only the (bounded) results come
    # back. map() hands them over in argument order, whichever finishes first. The workers ignore
    # SIGINT: a Ctrl-C is the parent's alone to report (main), and it stops them (_stop_workers).
    count = len(args.files)
    pool = ProcessPoolExecutor(max_workers=min(jobs, count), initializer=ignore_sigint)
    try:
        outcomes = pool.map(_analyze_one, args.files, [ports] * count, [args.show_secrets] * count,
                            [None] * count, [None] * count, [_tls_keys(args)] * count)
        yield from _rendered(zip(args.files, outcomes, strict=True), render, by_attention)
    except BaseException:  # KeyboardInterrupt, or GeneratorExit when the caller stopped early
        _stop_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _rendered(outcomes: Iterable[tuple[str, FileAnalysis | CaptureFileError]], render: Callable[[str], Render],
              by_attention: bool) -> Iterator[tuple[str, FileAnalysis | CaptureFileError, _RenderedConnections]]:
    """Whole results from other processes (the pool's, the Dask workers'), rendered as _analyses
    hands a file over."""
    for path, outcome in outcomes:
        connections = _RenderedConnections(render(path), by_attention=by_attention)
        for d in outcome.connections if not isinstance(outcome, CaptureFileError) else ():
            connections.add(d)
        yield path, outcome, connections


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's workers now, mid-file (ProcessPoolExecutor.terminate_workers from Python
    3.14; shutdown alone waits for the files they are reading)."""
    for process in list((pool._processes or {}).values()):
        process.terminate()


def main(argv: list[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = build_parser()
    try:  # argparse writes --help, --version and its one-line errors to the injected streams too
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = parser.parse_args(argv)
            if "files" in args:
                check_input_files(args)
    except SystemExit as exc:  # argparse already printed its one-line usage error
        return ExitStatus.OK if exc.code == 0 else ExitStatus.BAD_INPUT
    handler: Callable[[argparse.Namespace, TextIO, TextIO], int] = args.handler
    try:
        return ExitStatus(handler(args, stdout, stderr))
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
