"""The `capture` and `scenario` subcommands (edge): parse arguments, run, print one line per fact.

analyzer/cli.py calls register(subparsers) and turns analyzer.errors exceptions into one line and
exit status 2. SIGTERM is turned into KeyboardInterrupt while a command runs, so the context
managers that stop the broker, the capture and the client run on `kill` exactly as on Ctrl-C.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
from typing import TextIO

from analyzer.errors import EnvironmentProblem, ExitStatus, UsageError
from analyzer.lab.capture import BACKENDS
from analyzer.lab.scenarios import catalog

# The analyzer contradicts the ground truth: a bug in one of them (status 1, as the README says).
DISAGREE = ExitStatus.INTERNAL_ERROR


def register(subparsers) -> None:
    cap = subparsers.add_parser("capture", help="record TCP traffic on an interface to a pcap file")
    cap.add_argument("-i", "--interface", required=True, metavar="IFACE", help="interface, e.g. lo or eth0")
    cap.add_argument("--port", type=int, action="append", metavar="N",
                     help="only TCP port N (repeatable; default 5672; 0 for all TCP)")
    cap.add_argument("-o", "--output", required=True, metavar="FILE", help="pcap file to write")
    cap.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: Ctrl-C)")
    cap.add_argument("--backend", choices=("auto", *BACKENDS), default="auto",
                     help="capture tool (default: tcpdump or dumpcap when installed, else scapy)")
    cap.set_defaults(handler=run_capture_command)

    sc = subparsers.add_parser("scenario", help="run scripted client programs (pika, py-amqp, aio-pika, amqplib) "
                               "against a real RabbitMQ")
    ssub = sc.add_subparsers(dest="scenario_command", metavar="{list,run}")
    ssub.required = True
    ls = ssub.add_parser("list", help="each scenario with a one-line description and its parameters")
    ls.set_defaults(handler=run_list)
    run = ssub.add_parser("run", help="run one scenario while capturing loopback traffic")
    run.add_argument("name", metavar="NAME", help="scenario name (see `scenario list`)")
    run.add_argument("--broker", metavar="URL", help="use this broker (amqp://user:pass@host:port/vhost) "
                     "instead of starting a throwaway node")
    run.add_argument("--heartbeat", type=int, metavar="T", help="heartbeat timeout the client requests (s)")
    run.add_argument("--work", type=float, metavar="S", help="seconds of work per message")
    run.add_argument("--messages", type=int, metavar="N", help="messages to publish")
    run.add_argument("--out", default=".", metavar="DIR", help="output directory (default: current)")
    run.add_argument("--basename", metavar="NAME", help="file name without extension (default: NAME-UTCSTAMP)")
    run.add_argument("--backend", choices=("auto", *BACKENDS), default="auto", help="capture tool")
    run.add_argument("--analyze", action="store_true", help="analyze the capture and compare with the truth")
    run.add_argument("-i", "--interface", metavar="IFACE",
                     help="capture interface (default lo; `any` records Linux cooked SLL2 like `tcpdump -i any`)")
    run.add_argument("--ipv6", action="store_true", help="clients connect to a local broker over [::1]")
    run.add_argument("--tls", action="store_true",
                     help="every client connection uses TLS (AMQPS, the node's port 5671 when free) and writes "
                          "its secrets to OUT/BASENAME.keys beside the pcap (Wireshark: -o tls.keylog_file:FILE)")
    run.add_argument("--tls-version", choices=("1.2", "1.3"), metavar="{1.2,1.3}",
                     help="pin the clients' TLS version (implies --tls; default: negotiated, TLS 1.3 here)")
    run.set_defaults(handler=run_scenario_command)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While inside, SIGTERM raises KeyboardInterrupt (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_capture_command(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> ExitStatus:
    from analyzer.lab.capture import run_capture

    if args.duration is not None and args.duration <= 0:
        raise UsageError("--duration must be positive")
    ports = [] if args.port == [0] else (args.port or [5672])
    stop = threading.Event()
    with sigterm_as_interrupt():
        try:
            if args.duration is None:
                stderr.write(f"capturing on {args.interface}; Ctrl-C to stop\n")
            stats = run_capture(args.output, args.interface, ports, args.duration, args.backend, stop)
        except KeyboardInterrupt:
            stop.set()
            raise
    dropped = "unknown" if stats.dropped is None else str(stats.dropped)
    stdout.write(f"{stats.path}: {stats.packets} packets recorded, {dropped} dropped ({stats.backend}, "
                 f"{stats.interface}, {stats.filter})\n")
    return ExitStatus.OK


def run_list(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> ExitStatus:
    width = max(len(n) for n in catalog.ALL)
    for s in catalog.ALL.values():
        stdout.write(f"{s.name:<{width}}  {s.summary}\n")
        if s.client != catalog.PIKA:
            stdout.write(f"{'':<{width}}  client: {s.client}\n")
        if s.fault:
            stdout.write(f"{'':<{width}}  network fault (root): client, mid and broker namespaces; captures "
                         "BASENAME-client.pcap and BASENAME-broker.pcap, each with its .json\n")
        extra = "".join(f" {k}={v}" for k, v in s.broker_settings.items())
        stdout.write(f"{'':<{width}}  --heartbeat {s.heartbeat} --work {s.work:g} ({s.work_means})"
                     f" --messages {s.messages}{extra}\n")
    return ExitStatus.OK


def run_scenario_command(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> ExitStatus:
    from analyzer.lab.scenarios.runner import client_problem, run_scenario

    scenario = catalog.get(args.name)  # unknown name: one line, before anything starts
    if args.basename is not None and (not args.basename.strip() or "/" in args.basename):
        raise UsageError("--basename is a file name without directory or extension (the directory is --out)")
    missing = client_problem(scenario)  # the client library it runs (the `lab` extra, or Node.js and amqplib)
    if missing:
        raise EnvironmentProblem(missing)

    def progress(msg: str) -> None:
        stderr.write(f"amqp-hb: {msg}\n")
        stderr.flush()

    with sigterm_as_interrupt():
        result = run_scenario(args.name, out_dir=args.out, broker_url=args.broker, heartbeat=args.heartbeat,
                              work=args.work, messages=args.messages, backend=args.backend, progress=progress,
                              interface=args.interface, ipv6=args.ipv6, basename=args.basename,
                              tls=args.tls, tls_version=args.tls_version)
    meta = result.metadata
    cap = meta["capture"]
    for side, run in (result.sides or {"": result}).items():
        c = run.metadata["capture"]
        dropped = "unknown" if c["dropped"] is None else c["dropped"]
        where = f", {side} side: {c['namespace']} {c['interface']}" if side else ""
        stdout.write(f"capture:  {run.pcap} ({c['packets']} packets, {dropped} dropped, {c['backend']}{where})\n")
        stdout.write(f"metadata: {run.metadata_path}\n")
    if result.keylog:
        tls = meta["tls"]
        sessions = ", ".join(f"{s['version']} {s['cipher']}" for s in tls["negotiated"]) or "none logged"
        stdout.write(f"key log:  {result.keylog} (TLS on port {tls['port']}: {sessions})\n")
    client = meta["client"]
    stdout.write(f"broker:   {meta['broker']['product']} {meta['broker']['version']}, "
                 f"{client['library']} {client['version']}\n")
    observed = ", ".join(meta["observed_exceptions"]) or "none"
    stdout.write(f"client exception: {observed} (expected {meta['expected_exception'] or 'none'})\n")
    for side, run in (result.sides or {"": result}).items():
        for cid, verdict in run.metadata["expected_verdicts"].items():
            stdout.write(f"expected  {cid}  {verdict}{f'  ({side} side)' if side else ''}\n")
    if "fault" in meta:
        write_fault(meta, stdout)
    if cap["dropped"]:
        stderr.write(f"amqp-hb: warning: the kernel dropped {cap['dropped']} packets: the capture is incomplete\n")
    if not meta["as_expected"]:
        stderr.write("amqp-hb: warning: the run did not go as the scenario claims (see the event log)\n")
    if args.analyze:
        statuses = [compare_with_analysis(run.pcap, run.metadata, stdout, stderr)
                    for run in (result.sides or {"": result}).values()]
        return max(statuses)
    return ExitStatus.OK


def write_fault(meta: dict, stdout: TextIO) -> None:
    """The fault's ground truth, its times relative to the client's connection (one line)."""
    fault = meta["fault"]
    t0 = next((e["t"] for e in meta["events"] if e["event"] == "connected"), meta["started_epoch"])
    times = ", ".join(f"{key} +{value - t0:.3f} s" for key, value in fault.items()
                      if key.endswith("_at") and isinstance(value, float))
    stdout.write(f"fault:    {fault['kind']}: {times or 'no times recorded'} (after connecting)\n")


def compare_with_analysis(pcap: str, meta: dict, stdout: TextIO, stderr: TextIO) -> ExitStatus:
    """Analyze the capture and say, per connection, whether the verdict matches the ground truth.

    A TLS run is analyzed with its key log (metadata `tls.keylog`, beside the capture)."""
    from analyzer.api import analyze_file, read_keylog

    # Only the broker's port(s) are named: the proxy port must be auto-detected as AMQP.
    ports = tuple(meta["ports"][kind] for kind in ("amqp", "amqps") if kind in meta["ports"])
    keylog = meta.get("tls", {}).get("keylog")
    tls_keys = read_keylog(os.path.join(os.path.dirname(pcap), keylog)) if keylog else None
    analysis = analyze_file(pcap, ports=ports, tls_keys=tls_keys)
    found = {c.timeline.info.id: c.verdict for c in analysis.connections}
    status = ExitStatus.OK
    for cid, expected in meta["expected_verdicts"].items():
        got = found.pop(cid, None)
        agree = got == expected
        status = status if agree else DISAGREE
        stdout.write(f"{'agree' if agree else 'DISAGREE':<8}  {cid}  expected {expected}, analyzer says "
                     f"{got or 'nothing (connection not found)'}\n")
    for cid, verdict in found.items():
        stdout.write(f"extra     {cid}  analyzer says {verdict}; the scenario did not open it\n")
    return status
