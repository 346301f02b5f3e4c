"""`amqp-hb watch`: warn before the broker (or the client) closes a connection, live.

The edge around analyzer.watch.Watch (sans-IO): it reads a pcap/pcapng stream (a live capture by
tcpdump, dumpcap or scapy through analyzer.lab.capture, a file still being written, or standard
input) in a reader thread, feeds the blocks to the Watch in the main thread, and between packets
moves the Watch's clock on so that a look that finds silence is judged when it happens, not at the
next packet. Output: a live table on a terminal (rich, the `watch` extra), else a JSON Lines event
stream (or text lines); optional Prometheus metrics (prometheus_client, the `watch` extra).

The clock: with packets stamped by this machine's clock (a live capture, or `tcpdump -w - | ...`)
it is the wall clock; otherwise (a replayed file) it is the last packet's time plus the wall time
since it was read, so a file piped in at full speed is judged on its own packet times.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import sys
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, TextIO

from analyzer.cli.options import port_number
from analyzer.errors import AmqpHbError, EnvironmentProblem, ExitStatus, UsageError

if TYPE_CHECKING:
    from analyzer.lab.capture import LiveCapture
    from analyzer.watch import Watch, WatchEvent

FORMATS = ("table", "jsonl", "text")
EXIT_ON = ("at-risk", "teardown")
WATCH_EXTRA_HINT = "pip install 'amqp-hb[watch]' (pipx: pipx inject amqp-hb rich prometheus_client)"
# A live capture's packets reach us a few ms after their timestamps: a look is judged this long after
# its instant, so that a byte stamped just before it is in.
LIVE_GRACE = 0.03
# The longest the main loop sleeps without input: the table's refresh and the metrics' period.
IDLE_WAKE = 0.5
# Packet times within this of the wall clock are live: the clock is then the wall clock itself.
LIVE_SKEW = 5.0
FOLLOW_POLL = 0.2  # how often a followed file is looked at for new bytes
STATS_EVERY = 60.0  # how often tcpdump is asked for its drop count
METRICS_ADDRESS = "127.0.0.1"
METRICS_EVERY = 1.0  # seconds between metric refreshes (each walks every open connection)
# Packets that reach us later than this after their timestamps (a capture tool buffering: tcpdump
# without --immediate-mode hands them over up to a second late) make the wait before each judgement
# grow to the lag seen, up to MAX_GRACE, and are reported once.
LAG_WARNING = 0.25
MAX_GRACE = 5.0
LAG_MEMORY = 64  # blocks the lag is remembered over


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "watch", help="warn before RabbitMQ (or the client) closes a connection, live",
        description="Watch AMQP connections live and warn as soon as a heartbeat teardown is certain: after "
                    "RabbitMQ's first look that finds the client silent, it closes at its next look unless the "
                    "client sends a byte. Events: connection-opened, at-risk, recovered, teardown (with the "
                    "verdict analyze gives), still-open (at the end of the input), warning.",
        epilog="Examples: amqp-hb watch -i lo;  tcpdump --immediate-mode -U -w - -i eth0 'tcp port 5672' | "
               "amqp-hb watch -r - "
               "--format jsonl;  amqp-hb watch -r growing.pcap --follow --exit-on at-risk")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("-i", "--interface", metavar="IFACE", help="capture live on IFACE (needs root or CAP_NET_RAW)")
    source.add_argument("-r", "--read", metavar="FILE",
                        help="read a pcap or pcapng stream from FILE, or from standard input with -")
    p.add_argument("--follow", action="store_true",
                   help="with -r FILE: keep reading as the file grows (like tail -f) until Ctrl-C")
    p.add_argument("--port", type=port_number, action="append", metavar="N",
                   help="TCP port carrying AMQP or AMQPS (repeatable; default 5672 and 5671)")
    p.add_argument("--backend", choices=("auto", "tcpdump", "dumpcap", "scapy"), default="auto",
                   help="with -i: the capture tool (default: tcpdump, else dumpcap, else scapy)")
    p.add_argument("--tls-keylog", metavar="FILE", help="NSS key log to decrypt TLS connections with")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="table (a live table, most urgent first; needs the watch extra), jsonl (one event a "
                        "line, amqp-hb/watch/1) or text (one event a line) (default: table on a terminal, "
                        "jsonl otherwise)")
    p.add_argument("--exit-on", choices=EXIT_ON, metavar="EVENT",
                   help="stop at the first EVENT (at-risk or teardown): exit status 0 if it came, 3 if the input "
                        "ended first")
    p.add_argument("--metrics-port", type=port_number, metavar="N",
                   help="serve Prometheus metrics on 127.0.0.1:N (--metrics-address to change; the watch extra)")
    p.add_argument("--metrics-address", default=METRICS_ADDRESS, metavar="ADDR", help="address for --metrics-port")
    p.set_defaults(handler=run_watch)


# ---- sources: a stream of pcap bytes -------------------------------------------------------------


class _Following:
    """A file still being written, read like a pipe: at its end, wait for more until stopped."""

    def __init__(self, path: str, stop: threading.Event) -> None:
        self.file = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by close())
        self.stop = stop

    def read(self, n: int) -> bytes:
        while True:
            data = self.file.read(n)
            if data or self.stop.is_set():
                return data or b""
            self.stop.wait(FOLLOW_POLL)

    def tell(self) -> int:
        return self.file.tell()

    def close(self) -> None:
        self.file.close()


class _Source:
    """Where the pcap bytes come from, and how to stop it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.stop = threading.Event()
        self.capture: LiveCapture | None = None
        self.reported_drops = 0  # the kernel drop count last reported as a warning
        self.name = args.read or args.interface
        self.live = args.interface is not None
        if args.interface is not None:
            from analyzer.lab.capture import STREAM, LiveCapture

            ports = args.port or [5672, 5671]
            self.capture = LiveCapture(STREAM, iface=args.interface, ports=ports, backend=args.backend, settle=0)
            self.capture.start()
            assert self.capture.stream is not None
            self.stream: Any = self.capture.stream
        elif args.read == "-":
            self.name = "standard input"
            # raw: read(n) returns what the pipe holds instead of waiting for n bytes
            self.stream = getattr(sys.stdin.buffer, "raw", sys.stdin.buffer)
        else:
            if not os.path.exists(args.read):
                raise UsageError(f"{args.read}: no such file")
            self.stream = _Following(args.read, self.stop) if args.follow else open(args.read, "rb")  # noqa: SIM115

    def close(self) -> None:
        self.stop.set()
        if self.capture is not None:
            self.capture.stop(settle=False)
        elif self.name != "standard input":
            with contextlib.suppress(OSError):
                self.stream.close()

    def problem(self) -> str | None:
        """Why a live capture ended on its own, if it did."""
        return self.capture.exit_problem() if self.capture is not None else None


def _read_blocks(source: _Source, out: queue.Queue[tuple[str, Any]]) -> None:
    """The reader thread: blocks (and pcapng key logs) into `out`, then ("end", warnings) or ("error", exc)."""
    from analyzer.sources.pcap import open_capture

    try:
        reader = open_capture(source.stream)
        for block in reader.blocks():
            if reader.tls_secrets:
                out.put(("secrets", b"\n".join(reader.tls_secrets)))
                reader.tls_secrets.clear()
            out.put(("block", block))
            if source.stop.is_set():
                break
        out.put(("end", list(reader.warnings)))
    except AmqpHbError as exc:
        out.put(("error", exc))
    except (OSError, ValueError) as exc:  # the stream closed under the reader (Ctrl-C, the capture stopped)
        out.put(("end", [] if source.stop.is_set() else [f"reading stopped: {exc}"]))


# ---- outputs -------------------------------------------------------------------------------------


class _Lines:
    """jsonl or text: one event a line, flushed at once (an alerting pipe reads them as they come)."""

    def __init__(self, stdout: TextIO, fmt: str) -> None:
        from analyzer.render.watch import event_fields, event_line

        self.stdout = stdout
        self.format_event = (lambda e: json.dumps(event_fields(e), ensure_ascii=False)) if fmt == "jsonl" \
            else event_line

    def events(self, events: list[WatchEvent]) -> None:
        for event in events:
            self.stdout.write(self.format_event(event) + "\n")
        if events:
            self.stdout.flush()

    def refresh(self, watch: Watch, now: float, *, force: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


class _Table:
    """The live table (rich): one line per connection, most urgent first, countdowns; events that
    matter (at-risk, recovered, teardown, warnings) printed above it as text lines."""

    REFRESH = 0.2  # seconds between redraws

    def __init__(self, stdout: TextIO, source: str) -> None:
        from rich.console import Console
        from rich.live import Live

        self.drawn = 0.0
        # Not a terminal (a file, a pipe): rich would draw 80 columns; COLUMNS still wins when set.
        width = None if getattr(stdout, "isatty", lambda: False)() or os.environ.get("COLUMNS") else 200
        self.console = Console(file=stdout, width=width)
        self.source = source
        self.live = Live(console=self.console, auto_refresh=False, transient=False)
        self.live.start()

    def events(self, events: list[WatchEvent]) -> None:
        from analyzer.render.watch import event_line
        from analyzer.watch import OPENED

        for event in events:
            if event.kind != OPENED:
                self.console.print(event_line(event), highlight=False, markup=False)

    def refresh(self, watch: Watch, now: float, *, force: bool = False) -> None:
        from rich.table import Table

        from analyzer.render.watch import STATUS_HEADERS, clock, status_cells

        if not force and time.monotonic() - self.drawn < self.REFRESH:
            return
        self.drawn = time.monotonic()
        rows = watch.statuses()
        height = max(5, self.console.size.height - 6)
        table = Table(title=f"amqp-hb watch {self.source}  {clock(now)}  {len(watch.connections)} open, "
                            f"{watch.teardowns} torn down", title_justify="left", expand=False)
        for header in STATUS_HEADERS:
            table.add_column(header, no_wrap=header == "connection")
        for row in rows[:height]:
            style = "bold red" if row.state == "at-risk" else "dim" if row.state == "torn-down" else None
            table.add_row(*status_cells(row, now), style=style)
        if len(rows) > height:
            table.caption = f"{len(rows) - height} more"
        self.live.update(table, refresh=True)

    def close(self) -> None:
        self.live.stop()


class _Metrics:
    """Prometheus gauges and counters, refreshed from the Watch; label sets of gone connections removed."""

    def __init__(self, address: str, port: int) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

        self.registry = CollectorRegistry()
        self.silence = Gauge("amqp_hb_silence_seconds", "Seconds since the peer's last byte",
                             ["connection", "peer"], registry=self.registry)
        self.at_risk = Gauge("amqp_hb_at_risk", "1 while a heartbeat close is certain unless the silent peer sends",
                             ["connection", "closer"], registry=self.registry)
        self.seconds_left = Gauge("amqp_hb_seconds_to_predicted_close", "Seconds left before the predicted close",
                                  ["connection", "closer"], registry=self.registry)
        self.open = Gauge("amqp_hb_connections_open", "AMQP connections open", registry=self.registry)
        self.teardowns = Counter("amqp_hb_teardowns", "Connections torn down, by verdict", ["verdict"],
                                 registry=self.registry)
        self.dropped = Gauge("amqp_hb_capture_dropped_packets", "Packets the capture tool reported dropped",
                             registry=self.registry)
        self.labelled: set[str] = set()
        try:
            start_http_server(port, addr=address, registry=self.registry)
        except OSError as exc:
            raise EnvironmentProblem(f"--metrics-port {port}: cannot listen on {address}: {exc.strerror}") from None

    def events(self, events: list[WatchEvent]) -> None:
        from analyzer.watch import TEARDOWN

        for event in events:
            if event.kind == TEARDOWN and event.diagnosis is not None:
                self.teardowns.labels(event.diagnosis.verdict).inc()

    def refresh(self, watch: Watch, now: float, dropped: int | None) -> None:
        from analyzer.watch import closing_since

        current: set[str] = set()
        for connection in watch.connections.values():
            tl = connection.timeline
            if closing_since(tl) is not None:
                continue  # closing: no longer open, its teardown is counted when its verdict is final
            cid = tl.info.id
            current.add(cid)
            for peer, t in (("client", tl.c2s.last_payload), ("broker", tl.s2c.last_payload)):
                if t is not None:
                    self.silence.labels(cid, peer).set(max(0.0, now - t))
            for closer in ("broker", "client"):
                announced = connection.announced.get(closer)
                self.at_risk.labels(cid, closer).set(1 if announced is not None else 0)
                risk = announced or connection.risks.get(closer)
                if risk is not None:
                    self.seconds_left.labels(cid, closer).set(risk.predicted_close - now)
                else:
                    with contextlib.suppress(KeyError):  # no pending close now (monitor paused, say)
                        self.seconds_left.remove(cid, closer)
        for gone in self.labelled - current:
            for gauge, labels in ((self.silence, ("client", "broker")), (self.at_risk, ("broker", "client")),
                                  (self.seconds_left, ("broker", "client"))):
                for label in labels:
                    with contextlib.suppress(KeyError):
                        gauge.remove(gone, label)
        self.labelled = current
        self.open.set(len(current))
        if dropped is not None:
            self.dropped.set(dropped)


# ---- the loop ------------------------------------------------------------------------------------


def run_watch(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> ExitStatus:
    from analyzer.lab.scenarios.cli import sigterm_as_interrupt
    from analyzer.watch import Watch

    if args.follow and (args.read is None or args.read == "-"):
        raise UsageError("--follow goes with -r FILE (a file being written), not with -i or -r -")
    if args.metrics_address != METRICS_ADDRESS and args.metrics_port is None:
        raise UsageError("--metrics-address goes with --metrics-port")
    if args.read is not None and args.read != "-" and os.path.isdir(args.read):
        raise UsageError(f"{args.read}: is a directory, not a capture file")
    fmt = args.format or ("table" if getattr(stdout, "isatty", lambda: False)() else "jsonl")
    metrics = None
    if fmt == "table" and not _importable("rich"):
        if args.format is None:
            stderr.write(f"amqp-hb: the live table needs the `watch` extra (rich is missing): {WATCH_EXTRA_HINT}; "
                         "writing text lines instead\n")
            fmt = "text"
        else:
            raise EnvironmentProblem(f"the live table needs the `watch` extra (rich is missing): {WATCH_EXTRA_HINT}")
    if args.metrics_port is not None and not _importable("prometheus_client"):
        raise EnvironmentProblem(f"--metrics-port needs the `watch` extra (prometheus_client is missing): "
                                 f"{WATCH_EXTRA_HINT}")
    keys = None
    if args.tls_keylog is not None:
        from analyzer.api import read_keylog

        keys = read_keylog(args.tls_keylog)
    watch = Watch(ports=tuple(args.port) if args.port else (5672, 5671), tls_keys=keys,
                  grace=LIVE_GRACE if args.interface is not None or args.read == "-" or args.follow else 0.0)
    with sigterm_as_interrupt():
        source = _Source(args)
        if args.interface is not None:
            stderr.write(f"watching {args.interface} ({source.capture.backend if source.capture else ''}); "
                         "Ctrl-C to stop\n")
            stderr.flush()
        if args.metrics_port is not None:
            metrics = _Metrics(args.metrics_address, args.metrics_port)
        output: _Lines | _Table = _Table(stdout, source.name) if fmt == "table" else _Lines(stdout, fmt)
        try:
            return _loop(args, watch, source, output, metrics, stderr)
        finally:
            output.close()
            source.close()


def _loop(args: argparse.Namespace, watch: Watch, source: _Source, output: _Lines | _Table,
          metrics: _Metrics | None, stderr: TextIO) -> ExitStatus:
    from analyzer.tls.keylog import KeyLog

    blocks: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=16)  # bounded: a stalled watch slows the reader
    reader = threading.Thread(target=_read_blocks, args=(source, blocks), daemon=True, name="pcap-reader")
    reader.start()
    clock = _Clock()
    status = ExitStatus.OK
    seen_exit_event = False
    next_stats = time.monotonic() + STATS_EVERY
    next_metrics = 0.0

    def emit(events: list[WatchEvent]) -> bool:
        """Output the events; True (and nothing after it) at the --exit-on event."""
        awaited = next((i for i, e in enumerate(events) if _awaited(e, args.exit_on)), None)
        if awaited is not None:
            events = events[: awaited + 1]
        output.events(events)
        if metrics is not None:
            metrics.events(events)
        return awaited is not None

    try:
        while True:
            due = watch.next_due
            wait = IDLE_WAKE if due is None else min(IDLE_WAKE, max(0.0, due - clock.now(watch)))
            try:
                kind, item = blocks.get(timeout=wait)
            except queue.Empty:
                kind, item = "tick", None
            if kind == "block":
                events = watch.feed_block(item)
                lag = clock.fed(watch, item)
                if lag is not None:
                    events += _judge_later(watch, clock, lag, source)
            elif kind == "secrets":
                watch.add_tls_secrets(KeyLog.parse(item))
                continue
            elif kind == "tick":
                events = watch.advance(clock.now(watch)) if clock.started else []
            elif kind == "error":
                raise type(item)(f"{source.name}: {item}")
            else:  # end of the stream
                for warning in item:
                    watch.summary.warnings.append(f"{source.name}: {warning}")
                problem = source.problem()
                if problem is not None:
                    watch.summary.warnings.append(f"{source.name}: {problem}")
                    status = ExitStatus.BAD_INPUT
                break
            if emit(events):
                seen_exit_event = True
                return ExitStatus.OK
            now = clock.now(watch)
            output.refresh(watch, now)
            if metrics is not None and time.monotonic() >= next_metrics:  # a scrape every few s needs no more
                next_metrics = time.monotonic() + METRICS_EVERY
                stats = source.capture.poll_stats() if source.capture is not None else None
                metrics.refresh(watch, now, None if stats is None else stats.dropped)
            if source.capture is not None and time.monotonic() >= next_stats:
                next_stats = time.monotonic() + STATS_EVERY
                emit(_report_drops(watch, source))
    except KeyboardInterrupt:
        status = ExitStatus.INTERRUPTED
    if source.capture is not None:
        source.capture.stop(settle=False)
        emit(_report_drops(watch, source, final=True))
    output.refresh(watch, clock.now(watch), force=True)  # the last table before the final states
    if emit(watch.finish()):
        seen_exit_event = True
    if status == ExitStatus.OK and args.exit_on is not None and not seen_exit_event:
        status = ExitStatus.EVENT_NOT_SEEN
    return status


def _judge_later(watch: Watch, clock: _Clock, lag: float, source: _Source) -> list[WatchEvent]:
    """Wait as long before judging a look as packets take to reach us (the largest recent lag), so
    that a byte stamped before a look is in when it is judged; say so once when that is long."""
    clock.lags.append(lag)
    watch.grace = min(MAX_GRACE, max(LIVE_GRACE, max(clock.lags) + LIVE_GRACE))
    if lag <= LAG_WARNING or clock.lag_reported:
        return []
    clock.lag_reported = True
    return [_warning(watch, f"{source.name}: packets arrive up to {lag:.2f} s after their timestamps (a capture tool "
                            "buffering: tcpdump needs --immediate-mode -U); each look is judged that much later")]


def _warning(watch: Watch, message: str) -> WatchEvent:
    from analyzer.watch import WARNING, WatchEvent

    return WatchEvent(WARNING, watch.now, "", message=message)


def _awaited(event: WatchEvent, exit_on: str | None) -> bool:
    """--exit-on: at-risk, or a teardown that needs attention (not a graceful close)."""
    from analyzer.diagnosis.results import GRACEFUL

    if event.kind != exit_on:
        return False
    return event.kind != "teardown" or (event.diagnosis is not None and event.diagnosis.verdict != GRACEFUL)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _report_drops(watch: Watch, source: _Source, *, final: bool = False) -> list[WatchEvent]:
    """Capture loss is a warning, never silence: tcpdump's kernel drop count, asked for now and then."""
    capture = source.capture
    assert capture is not None
    stats = capture.poll_stats()
    if not final:
        capture.request_stats()  # the answer is read at the next report
    dropped = stats.dropped or 0
    reported = source.reported_drops
    if dropped <= reported:
        return []
    source.reported_drops = dropped
    return [_warning(watch, f"{capture.backend} reported {dropped} packets dropped by the kernel so far: "
                            "connections may show capture gaps")]


class _Clock:
    """Capture time now: the wall clock when the packets are stamped by it, else the last packet's
    time plus the wall time since it was read."""

    def __init__(self) -> None:
        self.started = False
        self.live = False
        self.fed_at = 0.0  # monotonic
        self.fed_capture = 0.0
        self.lags: deque[float] = deque(maxlen=LAG_MEMORY)
        self.lag_reported = False

    def fed(self, watch: Watch, block: Any) -> float | None:
        """A block was fed; for live packets, how late the newest one reached us (seconds)."""
        self.started = True
        self.fed_at = time.monotonic()
        self.fed_capture = watch.now
        lag = time.time() - float(block.timestamp.max())
        self.live = abs(lag) < LIVE_SKEW
        return max(0.0, lag) if self.live else None

    def now(self, watch: Watch) -> float:
        if not self.started:
            return watch.now
        if self.live:
            return max(watch.now, time.time())
        return max(watch.now, self.fed_capture + time.monotonic() - self.fed_at)

