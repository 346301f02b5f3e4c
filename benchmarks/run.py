"""Run the benchmark side by side: our analyze and frames, tshark, and a bare scapy RawPcapReader loop.

    .venv/bin/python benchmarks/run.py                       # benchmarks/data/big.pcap, 3 rounds
    .venv/bin/python benchmarks/run.py --rounds 5 FILE ...   # other captures
    .venv/bin/python benchmarks/run.py --baseline ../before  # also the analyzer of another checkout

Each round runs every command once, in turn (alternating, so a slow spell of the machine hits all
of them alike); each command is a fresh process, timed by wall clock, its peak RSS read from
wait4's rusage. Prints per-command medians, ratios against tshark and RawPcapReader, and peaks.
Make the captures first with benchmarks/make_capture.py.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
VENV_BIN = os.path.dirname(sys.executable)
AMQP_HB = os.path.join(VENV_BIN, "amqp-hb")

RAW_LOOP = """
import sys
from scapy.utils import RawPcapReader
n = 0
for _data, _meta in RawPcapReader(sys.argv[1]):
    n += 1
print(n)
"""


def commands(path: str, port: int, baseline: str | None = None) -> dict[str, list[str]]:
    port_args = [] if port == 5672 else ["--port", str(port)]
    decode_as = [] if port == 5672 else ["-d", f"tcp.port=={port},amqp"]
    ours = {
        "analyze --format json": [AMQP_HB, "analyze", path, "--format", "json", "--quiet", *port_args],
        "frames --format jsonl": [AMQP_HB, "frames", path, "--format", "jsonl", "--quiet", *port_args],
    }
    # The same commands run from another checkout's analyzer package (PYTHONPATH goes before the
    # editable install), in the same rounds: before and after a change, measured alike.
    before = {f"{name} (baseline)": ["env", f"PYTHONPATH={os.path.abspath(baseline)}", *argv]
              for name, argv in ours.items()} if baseline else {}
    return {
        **ours,
        **before,
        "tshark -Y amqp -T fields": ["tshark", "-r", path, *decode_as, "-Y", "amqp", "-T", "fields",
                                     "-e", "frame.time_epoch", "-e", "amqp.type"],
        "scapy RawPcapReader loop": [sys.executable, "-c", RAW_LOOP, path],
    }


def run_once(argv: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS in MB) of one run; stdout to /dev/null, as `> /dev/null` would."""
    with open(os.devnull, "wb") as devnull:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=devnull, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed ({proc.returncode}): {err[-500:]}")
    return elapsed, usage.ru_maxrss // 1024  # Linux: ru_maxrss in KiB


def bench(path: str, rounds: int, only: list[str] | None, baseline: str | None = None) -> dict:
    meta_path = os.path.splitext(path)[0] + ".json"
    meta = {}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
    cmds = commands(path, meta.get("amqp_port", 5672), baseline)
    if only:
        cmds = {k: v for k, v in cmds.items() if any(o in k for o in only)}
    times: dict[str, list[float]] = {k: [] for k in cmds}
    peaks: dict[str, int] = {k: 0 for k in cmds}
    for r in range(rounds):
        for name, argv in cmds.items():
            elapsed, peak = run_once(argv)
            times[name].append(elapsed)
            peaks[name] = max(peaks[name], peak)
            print(f"  round {r + 1} {name:34s} {elapsed:7.2f} s {peak:6d} MB", file=sys.stderr)
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {"file": path, "bytes": os.path.getsize(path), "packets": meta.get("packets"), "rounds": rounds,
            "median_s": medians, "peak_rss_mb": peaks, "all_s": times}


def report(result: dict) -> str:
    med, peaks = result["median_s"], result["peak_rss_mb"]
    tshark = med.get("tshark -Y amqp -T fields")
    raw = med.get("scapy RawPcapReader loop")
    lines = [f"{result['file']}: {result['bytes'] / 1e6:.0f} MB, {result['packets'] or '?'} packets, "
             f"median of {result['rounds']} rounds",
             f"| {'command':34s} | median s | tshark / this | RawPcapReader / this | peak RSS MB |",
             f"|{'-' * 36}|---------:|--------------:|---------------------:|------------:|"]
    for name, seconds in med.items():
        vs_tshark = f"{tshark / seconds:.2f}x" if tshark else "-"
        vs_raw = f"{raw / seconds:.2f}x" if raw else "-"
        lines.append(f"| {name:34s} | {seconds:8.2f} | {vs_tshark:>13s} | {vs_raw:>20s} | {peaks[name]:11d} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", default=[os.path.join(HERE, "data", "big.pcap")])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", action="append", help="run only commands whose name contains this")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    parser.add_argument("--baseline", metavar="DIR",
                        help="a checkout of another commit (git worktree add DIR REV): its analyze and frames too")
    args = parser.parse_args()
    results = []
    for path in args.files:
        if not os.path.exists(path):
            raise SystemExit(f"{path}: missing; make it with benchmarks/make_capture.py")
        result = bench(path, args.rounds, args.only, args.baseline)
        results.append(result)
        print(report(result))
        print()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
