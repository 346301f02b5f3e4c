"""Damage real captures the way the world does, and check the one outcome contract on the result.

Shared by the hypothesis suite (tests/test_fuzz.py) and the long run (`make fuzz`,
tests/fuzz_pipeline.py). Seeds are the real recordings in captures/ (plus pcapng and big-endian
re-encodings of two of them, so the pcapng and byte-swapped readers are damaged too). Mutations
work on the file's bytes (bit flips, insertions, deletions, truncation, splices) and on its
records (lengths corrupted, packets dropped, duplicated, reordered; an AMQP frame size rewritten).

The contract (`check_outcome`), for any bytes at all: the CLI gives results (status 0, possibly
with warnings on stderr) or exit status 2 with exactly one line on stderr; `analyze_file` returns
or raises CaptureFileError. Status 1 (internal error), any other exception, running past the
time bound, or a large Python allocation is a bug.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import random
import signal
import struct
import tracemalloc
from dataclasses import dataclass

from analyzer.api import analyze_file
from analyzer.cli import ExitStatus, main
from analyzer.errors import CaptureFileError

CAPTURES = pathlib.Path(__file__).resolve().parent.parent / "captures"
PCAP_HEADER = 24
RECORD_HEADER = 16
_MAGICS = {b"\xd4\xc3\xb2\xa1": "<", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\xa1\xb2\x3c\x4d": ">"}
# An AMQP frame header: method/header/heartbeat type, channel, size; what `huge_frame_size` rewrites.
FRAME_TYPES = (1, 2, 3, 8)
# Per-example bounds: the real captures are about 10 KB and analyze in a few ms, so a second is
# a hang, and a few MiB of Python allocations is a buffer the size of a declared length.
TIME_LIMIT = 5.0
MEMORY_LIMIT = 64 << 20


class Hang(BaseException):
    """Raised by the per-example alarm; a BaseException so the CLI's `except Exception` (which
    turns bugs into status 1) cannot swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float = TIME_LIMIT):
    """Interrupt the body after `seconds` (SIGALRM: main thread, POSIX only)."""
    def on_alarm(_signum, _frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        # None: the previous handler was not installed from Python (libFuzzer's); no alarm is due.
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_IGN)


# ---- seeds ---------------------------------------------------------------------------------------


def split_pcap(data: bytes) -> tuple[bytes, list[bytes], str]:
    """A classic pcap's header, its whole records (header + data) and byte order; stops at damage."""
    endian = _MAGICS[data[:4]]
    records, pos = [], PCAP_HEADER
    while pos + RECORD_HEADER <= len(data):
        incl = struct.unpack_from(endian + "I", data, pos + 8)[0]
        end = pos + RECORD_HEADER + incl
        if end > len(data):
            break
        records.append(data[pos:end])
        pos = end
    return data[:PCAP_HEADER], records, endian


def to_pcapng(data: bytes, byteorder: str = "<", tls_keylog: bytes | None = None) -> bytes:
    """The same packets as pcapng (one SHB, one IDB, EPBs with microsecond timestamps); with
    `tls_keylog`, a Decryption Secrets Block holding it first, as `editcap --inject-secrets` writes."""
    from tests import synth

    header, records, endian = split_pcap(data)
    linktype = struct.unpack_from(endian + "I", header, 20)[0]
    out = [synth.shb(byteorder=byteorder), synth.idb(linktype, byteorder=byteorder)]
    if tls_keylog is not None:
        out.append(synth.dsb(tls_keylog, byteorder=byteorder))
    for rec in records:
        sec, usec, _incl, orig = struct.unpack_from(endian + "IIII", rec)
        out.append(synth.epb(0, sec * 10**6 + usec, rec[RECORD_HEADER:], orig_len=orig, byteorder=byteorder))
    return b"".join(out)


def byteswapped(data: bytes) -> bytes:
    """A little-endian pcap rewritten big-endian (headers only; packet bytes are network order)."""
    header, records, endian = split_pcap(data)
    other = ">" if endian == "<" else "<"
    out = [struct.pack(other + "IHHiIII", *struct.unpack(endian + "IHHiIII", header))]
    for rec in records:
        out.append(struct.pack(other + "IIII", *struct.unpack_from(endian + "IIII", rec)) + rec[RECORD_HEADER:])
    return b"".join(out)


def seed_captures() -> dict[str, bytes]:
    seeds = {p.name: p.read_bytes() for p in sorted(CAPTURES.glob("*.pcap"))}
    if "blocked-callback.pcap" in seeds:
        seeds["blocked-callback.pcapng"] = to_pcapng(seeds["blocked-callback.pcap"])
        seeds["blocked-callback-be.pcap"] = byteswapped(seeds["blocked-callback.pcap"])
    if "proxy.pcap" in seeds:
        seeds["proxy-be.pcapng"] = to_pcapng(seeds["proxy.pcap"], ">")
    for name in ("tls12-blocked-callback", "tls13-blocked-callback"):  # the decrypting path, keys in the file
        keys = CAPTURES / f"{name}.keys"
        if f"{name}.pcap" in seeds and keys.exists():
            seeds[f"{name}-dsb.pcapng"] = to_pcapng(seeds[f"{name}.pcap"], tls_keylog=keys.read_bytes())
    return seeds


# ---- mutations: (data, rng, other seed) -> data ----------------------------------------------------


def flip_bits(data: bytes, rng: random.Random, _other: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 16)):
        if buf:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    return bytes(buf)


def set_bytes(data: bytes, rng: random.Random, _other: bytes) -> bytes:
    """Overwrite a few bytes with the values that break parsers: 0, 0xff, 0x7f, 0x80, 0xce."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if buf:
            buf[rng.randrange(len(buf))] = rng.choice((0, 0xFF, 0x7F, 0x80, 0xCE, 0x01, 0x08))
    return bytes(buf)


def insert_bytes(data: bytes, rng: random.Random, _other: bytes) -> bytes:
    at = rng.randint(0, len(data))
    return data[:at] + rng.randbytes(rng.randint(1, 64)) + data[at:]


def delete_bytes(data: bytes, rng: random.Random, _other: bytes) -> bytes:
    at = rng.randint(0, len(data))
    return data[:at] + data[at + rng.randint(1, 64):]


def truncate(data: bytes, rng: random.Random, _other: bytes) -> bytes:
    return data[: rng.randint(0, len(data))]


def splice(data: bytes, rng: random.Random, other: bytes) -> bytes:
    """The start of one capture and the end of another, cut at arbitrary offsets."""
    return data[: rng.randint(0, len(data))] + other[rng.randint(0, len(other)):]


def _records_op(data: bytes, rng: random.Random, op) -> bytes:
    try:
        header, records, _ = split_pcap(data)
    except (KeyError, struct.error):
        return data  # not (or no longer) a classic pcap: leave it to the byte-level mutations
    if not records:
        return data
    return header + b"".join(op(records, rng))


def drop_packets(data: bytes, rng: random.Random, _other: bytes) -> bytes:
    def op(records, rng):
        start = rng.randrange(len(records))
        stop = min(len(records), start + rng.choice((1, 1, 2, 5, 20)))
        return records[:start] + records[stop:]
    return _records_op(data, rng, op)


def duplicate_packets(data: bytes, rng: random.Random, _other: bytes) -> bytes:
    def op(records, rng):
        i = rng.randrange(len(records))
        j = rng.randint(i, len(records))  # the copy arrives at once or later (a late retransmission)
        return records[:j] + [records[i]] * rng.randint(1, 3) + records[j:]
    return _records_op(data, rng, op)


def reorder_packets(data: bytes, rng: random.Random, _other: bytes) -> bytes:
    def op(records, rng):
        records = list(records)
        i = rng.randrange(len(records))
        j = min(len(records) - 1, i + rng.randint(1, 6))
        records[i], records[j] = records[j], records[i]
        return records
    return _records_op(data, rng, op)


def interleave_captures(data: bytes, rng: random.Random, other: bytes) -> bytes:
    """Records of two captures merged into one file (a splice at the packet level)."""
    try:
        header, mine, _ = split_pcap(data)
        other_header, theirs, _ = split_pcap(other)
    except (KeyError, struct.error):
        return data
    if other_header[4:] != header[4:]:
        return data
    merged = []
    while mine or theirs:
        source = mine if (mine and (not theirs or rng.random() < 0.5)) else theirs
        merged.append(source.pop(0))
    return header + b"".join(merged)


def corrupt_record_length(data: bytes, rng: random.Random, _other: bytes) -> bytes:
    """Rewrite one record's captured or original length: off by a little, huge, or zero."""
    try:
        header, records, endian = split_pcap(data)
    except (KeyError, struct.error):
        return data
    if not records:
        return data
    i = rng.randrange(len(records))
    rec = bytearray(records[i])
    field = rng.choice((8, 12))  # incl_len, orig_len
    (value,) = struct.unpack_from(endian + "I", rec, field)
    value = rng.choice((0, 1, value - 1, value + 1, value + 4096, 0xFFFF, 1 << 24, 0x7FFFFFFF, 0xFFFFFFFF,
                        rng.getrandbits(32)))
    struct.pack_into(endian + "I", rec, field, value & 0xFFFFFFFF)
    records[i] = bytes(rec)
    return header + b"".join(records)


def snap_records(data: bytes, rng: random.Random, _other: bytes) -> bytes:
    """Cut some records' captured bytes short, keeping orig_len (what a small snap length does)."""
    try:
        header, records, endian = split_pcap(data)
    except (KeyError, struct.error):
        return data
    snap = rng.choice((14, 40, 54, 66, 96, 128))
    out = []
    for rec in records:
        if rng.random() < 0.5:
            sec, frac, incl, orig = struct.unpack_from(endian + "IIII", rec)
            if incl > snap:
                rec = struct.pack(endian + "IIII", sec, frac, snap, orig) + rec[RECORD_HEADER:RECORD_HEADER + snap]
        out.append(rec)
    return header + b"".join(out)


def huge_frame_size(data: bytes, rng: random.Random, _other: bytes) -> bytes:
    """Find an AMQP frame header in the file and declare a size of 4 GiB (or another odd size)."""
    positions = [m for m in range(len(data) - 7) if data[m] in FRAME_TYPES and data[m + 1] == 0
                 and data[m + 3:m + 5] == b"\x00\x00"]
    if not positions:
        return data
    at = rng.choice(positions)
    size = rng.choice((0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, 1 << 20, (1 << 20) + 1, 0x10000, 0))
    return data[:at + 3] + struct.pack("!I", size) + data[at + 7:]


MUTATIONS = (flip_bits, set_bytes, insert_bytes, delete_bytes, truncate, splice, drop_packets,
             duplicate_packets, reorder_packets, interleave_captures, corrupt_record_length, snap_records,
             huge_frame_size)


def mutate(data: bytes, other: bytes, rng: random.Random, steps: int) -> bytes:
    for _ in range(steps):
        data = rng.choice(MUTATIONS)(data, rng, other)
    return data


# ---- the outcome contract ------------------------------------------------------------------------


@dataclass
class Outcome:
    status: int
    stdout: str
    stderr: str


# What each run checks: (argv, how to validate stdout when the status is 0).
RUNS = (
    (["analyze", "--format", "json"], "json"),
    (["frames", "--format", "jsonl", "--payload", "16"], "jsonl"),
    (["analyze"], "text"),
    (["analyze", "--format", "csv"], "text"),
    (["frames", "--format", "csv"], "text"),
)


def run_cli(argv: list[str]) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    status = main(argv, stdout=out, stderr=err)
    return Outcome(status, out.getvalue(), err.getvalue())


def check_outcome(path: str | os.PathLike, *, runs=RUNS, api: bool = True, measure_memory: bool = False) -> list[Outcome]:
    """Run the CLI (and the API) on `path` and assert the contract; returns the CLI outcomes."""
    outcomes = []
    if measure_memory:
        tracemalloc.start()
    try:
        with time_limit():
            for argv, kind in runs:
                o = run_cli([*argv, str(path)])
                outcomes.append(o)
                assert o.status in (ExitStatus.OK, ExitStatus.BAD_INPUT), f"{argv}: status {o.status}: {o.stderr}"
                if o.status == ExitStatus.BAD_INPUT:
                    assert o.stdout == "", argv
                    assert o.stderr.count("\n") == 1 and o.stderr.endswith("\n"), f"{argv}: {o.stderr!r}"
                    assert o.stderr.startswith("amqp-hb: ") and "Traceback" not in o.stderr
                    continue
                for line in o.stderr.splitlines():
                    assert line.startswith("amqp-hb: warning: "), f"{argv}: {line!r}"
                if kind == "json":
                    json.loads(o.stdout)
                elif kind == "jsonl":
                    for line in o.stdout.splitlines():
                        json.loads(line)
            if api:
                try:
                    analysis = analyze_file(path)
                except CaptureFileError:
                    assert outcomes[0].status == ExitStatus.BAD_INPUT
                else:
                    assert outcomes[0].status == ExitStatus.OK
                    for d in analysis.connections:
                        assert isinstance(d.explanation, str)
        if measure_memory:
            _, peak = tracemalloc.get_traced_memory()
            assert peak < MEMORY_LIMIT, f"peak Python allocation {peak} bytes"
    finally:
        if measure_memory:
            tracemalloc.stop()
    return outcomes
