"""Many files (issue 17 §2): 200 captures analyzed on a Dask LocalCluster of 2 workers, with
`--jobs 2` and in one process, in the same rounds: wall time and peak memory.

    .venv/bin/python benchmarks/archive.py --rounds 2      # makes data/archive-*/ first (2 x 200 files)

Not a unit test. Two sets of FILES files, made once in benchmarks/data/ (git-ignored), never
committed: `shipped`, the shipped Ethernet captures (captures/*.pcap, a few KB each) copied
round-robin, each copy shifted in time and with its client ports moved (as make_capture.py's
`scale` does inside one file); `short`, synthetic captures of SHORT_CONNECTIONS short connections
each (tests/synth.py). Each file starts a day after the previous one, so none continue each other:
independent captures, as an archive of many hosts holds.

Each command is its own process (`amqp-hb analyze FILES --format csv --quiet`, stdout to
/dev/null; CSV because it joins no pairs, which would add the same work to every row). Memory:
the peak of the sum of the resident sets of the command and every process under it (the pool's or
the cluster's workers), sampled every SAMPLE seconds, and the largest single process (wait4's
ru_maxrss). The `--scheduler` row uses a LocalCluster of 2 workers started by this script before
the command and closed after it (its start is not timed; its workers' memory is counted).
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DATA = os.path.join(HERE, "data", "archive")  # + "-shipped" or "-short"
AMQP_HB = os.path.join(os.path.dirname(sys.executable), "amqp-hb")
FILES = 200
SHORT_CONNECTIONS = 500  # per file of the `short` set: about 0.3 MB, a tenth of a second or two to analyze
SAMPLE = 0.05  # seconds between memory samples
EPHEMERAL = 32768  # Linux's first ephemeral port: the client side of every shipped loopback capture

sys.path.insert(0, HERE)
from make_capture import _PCAP_RECORD, _tcp_port_offsets  # noqa: E402  (the same pcap walk as `scale`)


def _shifted(body: bytes, linktype: int, copy: int, span: int) -> bytes:
    """The records of `body`, `copy * span` seconds later, client ports moved by copy * 7 (no
    two copies share a connection id, which `analyze` would take for one connection seen twice)."""
    shifted = bytearray(body)
    pos = 0
    while pos + 16 <= len(shifted):
        sec, usec, incl, orig = _PCAP_RECORD.unpack_from(shifted, pos)
        _PCAP_RECORD.pack_into(shifted, pos, sec + copy * span, usec, incl, orig)
        tcp = _tcp_port_offsets(bytes(shifted[pos + 16 : pos + 16 + 60]), linktype)
        if tcp is not None:
            for port_at in (pos + 16 + tcp, pos + 16 + tcp + 2):
                (port,) = struct.unpack_from("!H", shifted, port_at)
                if port >= EPHEMERAL:
                    struct.pack_into("!H", shifted, port_at, EPHEMERAL + (port - EPHEMERAL + copy * 7) % 28000)
        pos += 16 + incl
    return bytes(shifted)


def make_files(kind: str, count: int) -> list[str]:
    """data/archive-KIND/NNN-....pcap, made once (kept while there are `count` of them). Each file a
    day after the previous one: no two continue each other, so none is read as a rotated series."""
    folder = f"{DATA}-{kind}"
    made = sorted(glob.glob(os.path.join(folder, "*.pcap")))
    if len(made) == count:
        return made
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    day = 86_400
    out = []
    if kind == "short":
        sys.path.insert(0, REPO)
        from tests import synth

        for i in range(count):
            out.append(os.path.join(folder, f"{i:03d}-short.pcap"))
            with open(out[-1], "wb") as w:
                synth.short_connections_pcap(w, SHORT_CONNECTIONS, start=1_700_000_000.0 + i * day)
        return out
    sources = []
    for path in sorted(glob.glob(os.path.join(REPO, "captures", "*.pcap"))):
        with open(path, "rb") as f:
            header, body = f.read(24), f.read()
        if header[:4] == b"\xd4\xc3\xb2\xa1" and struct.unpack_from("<I", header, 20)[0] == 1:  # Ethernet pcap
            sources.append((os.path.basename(path), header, body))
    for i in range(count):
        name, header, body = sources[i % len(sources)]
        out.append(os.path.join(folder, f"{i:03d}-{name}"))
        with open(out[-1], "wb") as w:
            w.write(header + _shifted(body, 1, i + 1, day))
    return out


def run_once(argv: list[str]) -> tuple[float, float, float]:
    """(wall seconds, peak summed RSS of the process tree in MB, largest process's peak RSS in MB)."""
    import psutil  # comes with dask.distributed (the archive extra)

    with open(os.devnull, "wb") as devnull, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=devnull, stderr=err)
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            here = psutil.Process()
            while not done.is_set():
                total = 0  # every process under this script: the command's tree, a standing cluster's workers
                for p in here.children(recursive=True):
                    try:
                        if not any("resource_tracker" in part for part in p.cmdline()):  # (multiprocessing's, idle)
                            total += p.memory_info().rss
                    except psutil.Error:  # gone meanwhile
                        pass
                peak = max(peak, total)
                done.wait(SAMPLE)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        done.set()
        sampler.join()
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            err.seek(0)
            raise SystemExit(f"{argv[:4]}... failed ({code}): {err.read()[-800:].decode(errors='replace')}")
    return elapsed, peak / 2**20, usage.ru_maxrss / 1024


def bench(files: list[str], rounds: int) -> dict:
    from distributed import LocalCluster

    base = [AMQP_HB, "analyze", *files, "--format", "csv", "--quiet"]
    rows = {
        "one process": base,
        "--jobs 2 (process pool)": [*base, "--jobs", "2"],
        "--engine dask (own LocalCluster, 2 workers)": [*base, "--engine", "dask"],
        "--engine dask --scheduler (running LocalCluster, 2 workers)": [*base, "--engine", "dask", "--scheduler"],
        "--engine dask --output-dir (own LocalCluster)": [*base, "--engine", "dask", "--output-dir"],
    }
    times: dict[str, list[float]] = {k: [] for k in rows}
    tree: dict[str, float] = dict.fromkeys(rows, 0.0)
    largest: dict[str, float] = dict.fromkeys(rows, 0.0)
    for r in range(rounds):
        for name, argv in rows.items():
            cluster = None
            with tempfile.TemporaryDirectory(prefix="amqp-hb-archive-") as out:
                if argv[-1] == "--scheduler":
                    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                           scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                                           silence_logs=logging.CRITICAL)
                    argv = [*argv, cluster.scheduler_address]
                elif argv[-1] == "--output-dir":
                    argv = [*argv, out]
                try:
                    elapsed, peak_tree, peak_one = run_once(argv)
                finally:
                    if cluster is not None:
                        cluster.close()
            times[name].append(elapsed)
            tree[name] = max(tree[name], peak_tree)
            largest[name] = max(largest[name], peak_one)
            print(f"  round {r + 1} {name:58s} {elapsed:7.2f} s {peak_tree:7.0f} MB tree {peak_one:6.0f} MB largest",
                  file=sys.stderr)
    return {"files": len(files), "bytes": sum(os.path.getsize(f) for f in files), "rounds": rounds,
            "median_s": {k: statistics.median(v) for k, v in times.items()}, "all_s": times,
            "peak_tree_mb": tree, "peak_largest_mb": largest}


def report(result: dict) -> str:
    med = result["median_s"]
    one = med["one process"]
    lines = [f"{result['files']} files, {result['bytes'] / 1e6:.1f} MB, median of {result['rounds']} rounds",
             f"| {'command':58s} | median s | one process / this | peak RSS, all processes MB | largest process MB |",
             f"|{'-' * 60}|---------:|-------------------:|---------------------------:|-------------------:|"]
    for name, seconds in med.items():
        lines.append(f"| {name:58s} | {seconds:8.2f} | {one / seconds:17.2f}x | {result['peak_tree_mb'][name]:26.0f} "
                     f"| {result['peak_largest_mb'][name]:18.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--files", type=int, default=FILES)
    parser.add_argument("--set", choices=("shipped", "short", "both"), default="both",
                        help="shipped: copies of captures/*.pcap (a few KB each); short: synthetic files of "
                             f"{SHORT_CONNECTIONS} short connections each")
    parser.add_argument("--json", metavar="OUT", help="also write the raw numbers here")
    args = parser.parse_args()
    results = []
    for kind in ("shipped", "short") if args.set == "both" else (args.set,):
        result = bench(make_files(kind, args.files), args.rounds)
        result["set"] = kind
        results.append(result)
        print(f"{kind}: " + report(result), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
