"""analyzer.load against `amqp-hb analyze --format json`, side by side (issue 19).

    .venv/bin/python benchmarks/load.py                     # data/big.pcap and its first 200,000 packets
    .venv/bin/python benchmarks/load.py --rounds 7 FILE ... # other captures
    .venv/bin/python benchmarks/load.py --baseline ../before --only slice   # also another checkout's load

Each round runs every command once, in turn, each a fresh process (run.py's run_once: wall clock,
peak RSS from wait4), so a slow spell of the shared machine hits all of them alike; the ratio
load / analyze is taken within each round and its median reported with its spread. "load, all
tables" builds every table (DataFrames are built on first access: a load that was never looked
at would not count; the `args` dicts are made when first read, so "every args read" reads them
all too). The slice is written once, to data/ (never committed), as data/big-200k.pcap.
"""
from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys

from run import AMQP_HB, HERE, run_once

SLICE_PACKETS = 200_000

LOAD = """
import sys
import analyzer
from analyzer.tables import TABLES
tables = tuple(TABLES) if sys.argv[2].startswith("all") else tuple(name for name in sys.argv[2].split(",") if name)
a = analyzer.load(sys.argv[1], progress=False, tables=tables)
print([len(a.table(name)) for name in tables], len(a.connections), len(a.findings))
if sys.argv[2] == "all+args":  # the args dicts are made when first read: read them all
    print(sum(args is not None for args in a.frames["args"].tolist()))
"""


def write_slice(source: str, out: str, packets: int) -> None:
    """The first `packets` records of a classic pcap (what `editcap -r SOURCE OUT 1-N` writes)."""
    with open(source, "rb") as f, open(out + ".tmp", "wb") as w:
        header = f.read(24)
        endian = "<" if header[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
        w.write(header)
        for _ in range(packets):
            record = f.read(16)
            if len(record) < 16:
                break
            (caplen,) = struct.unpack_from(endian + "I", record, 8)
            w.write(record + f.read(caplen))
    os.replace(out + ".tmp", out)


def commands(path: str, baseline: str | None) -> dict[str, list[str]]:
    # -P: no working directory on sys.path, so that a baseline's PYTHONPATH wins over a checkout here.
    python = [sys.executable, "-P"]
    out = {
        "analyze --format json": [AMQP_HB, "analyze", path, "--format", "json", "--quiet"],
        "load, all tables": [*python, "-c", LOAD, path, "all"],
        "load, all tables, every args read": [*python, "-c", LOAD, path, "all+args"],
        "load, frames only": [*python, "-c", LOAD, path, "frames"],
        "load, no per-packet table": [*python, "-c", LOAD, path, ""],
    }
    if baseline:  # another checkout's load (before issue 19 it had no tables=: all of them, as attributes)
        before = "import sys, analyzer; a = analyzer.load(sys.argv[1]); print(len(a.frames), len(a.segments))"
        out["load, all tables (baseline)"] = ["env", f"PYTHONPATH={os.path.abspath(baseline)}", *python,
                                              "-c", before, path]
    return out


def bench(path: str, rounds: int, baseline: str | None) -> dict:
    cmds = commands(path, baseline)
    times: dict[str, list[float]] = {name: [] for name in cmds}
    peaks: dict[str, int] = {name: 0 for name in cmds}
    for r in range(rounds):
        for name, argv in cmds.items():
            elapsed, peak = run_once(argv)
            times[name].append(elapsed)
            peaks[name] = max(peaks[name], peak)
            print(f"  round {r + 1} {name:30s} {elapsed:7.2f} s {peak:6d} MB", file=sys.stderr)
    return {"file": path, "bytes": os.path.getsize(path), "rounds": rounds, "times": times, "peaks": peaks}


def report(result: dict) -> str:
    times, peaks = result["times"], result["peaks"]
    analyze = times["analyze --format json"]
    lines = [f"{result['file']}: {result['bytes'] / 1e6:.0f} MB, {result['rounds']} rounds",
             "| command | median s | min-max s | this / analyze (median of rounds) | min-max ratio | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, seconds in times.items():
        ratios = [s / a for s, a in zip(seconds, analyze, strict=True)]
        lines.append(f"| {name} | {statistics.median(seconds):.2f} | {min(seconds):.2f}-{max(seconds):.2f} | "
                     f"{statistics.median(ratios):.2f}x | {min(ratios):.2f}-{max(ratios):.2f} | {peaks[name]} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=("slice", "whole"), help="with no FILE: only the slice or the whole file")
    parser.add_argument("--baseline", metavar="DIR", help="a checkout of another commit: its load too")
    args = parser.parse_args()
    files = args.files
    if not files:
        big = os.path.join(HERE, "data", "big.pcap")
        if not os.path.exists(big):
            raise SystemExit(f"{big}: missing; make it with benchmarks/make_capture.py real")
        piece = os.path.join(HERE, "data", "big-200k.pcap")
        if not os.path.exists(piece):
            write_slice(big, piece, SLICE_PACKETS)
        files = {"slice": [piece], "whole": [big]}.get(args.only or "", [piece, big])
    for path in files:
        print(report(bench(path, args.rounds, args.baseline)))
        print()


if __name__ == "__main__":
    main()
