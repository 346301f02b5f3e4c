"""Defined outcomes for damaged captures, capture loss that must never read as silence, and safety.

Reader-level damage (not a capture, empty, cut header, cut record, huge or unknown pcapng blocks)
is tested in tests/test_pcap.py and the CLI's one-line errors in tests/test_cli.py, on synthetic
files. Here the same damage is done to the real recordings in captures/, end to end through the
CLI and the API, plus what only the whole pipeline can show: a small snap length, a 4 GiB frame
size inside a real connection, packets lost in the silent period, and redaction in every output.
"""
from __future__ import annotations

import csv
import io
import json
import pathlib
import re
import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands

from analyzer.api import analyze_file
from analyzer.cli import ExitStatus
from analyzer.engine import DEFAULT_PORTS
from analyzer.records import ACK, C2S, FIN, PSH, S2C
from tests import synth
from tests.mutations import RECORD_HEADER, run_cli, split_pcap, to_pcapng

CAPTURES = pathlib.Path(__file__).resolve().parent.parent / "captures"
REAL = sorted(CAPTURES.glob("*.pcap"))
BLOCKED = CAPTURES / "blocked-callback.pcap"
ANALYZER = pathlib.Path(__file__).resolve().parent.parent / "analyzer"


def write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def frames_jsonl(path: str) -> tuple[int, list[dict], str]:
    o = run_cli(["frames", "--format", "jsonl", path])
    return o.status, [json.loads(line) for line in o.stdout.splitlines()], o.stderr


def snapped(data: bytes, snaplen: int) -> bytes:
    """What `tcpdump -s snaplen` would have written: every record cut, orig_len kept."""
    header, records, endian = split_pcap(data)
    out = [header[:16] + struct.pack(endian + "I", snaplen) + header[20:]]
    for rec in records:
        sec, frac, _incl, orig = struct.unpack_from(endian + "IIII", rec)
        body = rec[RECORD_HEADER:RECORD_HEADER + snaplen]
        out.append(struct.pack(endian + "IIII", sec, frac, len(body), orig) + body)
    return b"".join(out)


def by_id(analysis) -> dict:
    return {d.timeline.info.id: d for d in analysis.connections}


# ---- a capture cut short or with a broken record -------------------------------------------------


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_header_only_capture_is_no_connection_and_status_0(tmp_path, fmt):
    data = synth.pcap_header(synth.LINKTYPE_ETHERNET) if fmt == "pcap" else synth.shb() + synth.idb(1)
    path = write(tmp_path, f"empty.{fmt}", data)
    o = run_cli(["analyze", path])
    assert o.status == ExitStatus.OK and o.stderr == ""
    assert "0 packets" in o.stdout and "no AMQP 0-9-1 connection found" in o.stdout
    assert frames_jsonl(path) == (ExitStatus.OK, [], "")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=24, max_value=BLOCKED.stat().st_size - 1))
def test_real_capture_cut_anywhere_gives_every_frame_before_the_cut(tmp_path, cut):
    data = BLOCKED.read_bytes()
    path = write(tmp_path, "cut.pcap", data[:cut])
    status, frames, err = frames_jsonl(path)
    _, full, _ = frames_jsonl(str(BLOCKED))
    assert status == ExitStatus.OK
    # Every frame carried by whole records before the cut, in order, with nothing invented.
    whole = sum(1 for _ in _record_ends(data) if _ <= cut)
    kept = [f for f in full if f["packet"] <= whole]
    assert [(f["packet"], f["type"], f["method"]) for f in frames] == [
        (f["packet"], f["type"], f["method"]) for f in kept]
    if cut not in [24, *_record_ends(data)]:  # not on a record boundary
        assert f"cut at byte {cut}" in err
    analysis = analyze_file(path)
    assert analysis.summary.packets == whole


def _record_ends(data: bytes) -> list[int]:
    header, records, _ = split_pcap(data)
    ends, pos = [], len(header)
    for rec in records:
        pos += len(rec)
        ends.append(pos)
    return ends


def test_record_length_larger_than_the_file(tmp_path):
    header, records, endian = split_pcap(BLOCKED.read_bytes())
    last = bytearray(records[-1])
    struct.pack_into(endian + "I", last, 8, 1 << 20)
    path = write(tmp_path, "long.pcap", header + b"".join(records[:-1]) + bytes(last))
    o = run_cli(["analyze", "--format", "json", path])
    assert o.status == ExitStatus.OK
    doc = json.loads(o.stdout)
    assert doc["packets"] == len(records) - 1
    assert any(f"packet {len(records)} declares 1048576 bytes" in w for w in doc["warnings"])
    assert f"packet {len(records)} declares 1048576 bytes" in o.stderr


def test_record_length_larger_than_the_snap_length_is_read_with_a_warning(tmp_path):
    data = bytearray(BLOCKED.read_bytes())
    struct.pack_into("<I", data, 16, 64)  # the file header's snap length
    path = write(tmp_path, "snaplen.pcap", bytes(data))
    o = run_cli(["analyze", "--format", "json", path])
    assert o.status == ExitStatus.OK and "longer than the snap length 64" in o.stderr
    reference = json.loads(run_cli(["analyze", "--format", "json", str(BLOCKED)]).stdout)
    verdicts = [c["verdict"] for c in json.loads(o.stdout)["connections"]]
    assert verdicts and verdicts == [c["verdict"] for c in reference["connections"]]


def test_pcapng_unknown_block_in_a_real_capture_is_skipped(tmp_path):
    pcapng = to_pcapng(BLOCKED.read_bytes())
    cut = _pcapng_block_offsets(pcapng)[10]
    unknown = synth.pcapng_block(0x0BAD0001, b"custom block, whatever it holds")
    path = write(tmp_path, "unknown.pcapng", pcapng[:cut] + unknown + pcapng[cut:])
    status, frames, err = frames_jsonl(path)
    assert status == ExitStatus.OK and err == ""
    assert frames == frames_jsonl(write(tmp_path, "plain.pcapng", pcapng))[1]


def test_pcapng_bad_block_length_stops_there_with_a_warning(tmp_path):
    pcapng = to_pcapng(BLOCKED.read_bytes())
    offsets = _pcapng_block_offsets(pcapng)
    at = offsets[30]  # block 30: SHB, IDB, then packet 29
    damaged = bytearray(pcapng)
    struct.pack_into("<I", damaged, at + 4, 13)  # not a multiple of 4
    path = write(tmp_path, "badlen.pcapng", bytes(damaged))
    status, frames, err = frames_jsonl(path)
    assert status == ExitStatus.OK
    assert f"bad pcapng block length 13 at byte {at}: stopped reading there" in err
    _, full, _ = frames_jsonl(str(BLOCKED))
    assert frames == [f for f in full if f["packet"] <= 28]


def _pcapng_block_offsets(data: bytes) -> list[int]:
    offsets, pos = [], 0
    while pos < len(data):
        offsets.append(pos)
        pos += struct.unpack_from("<I", data, pos + 4)[0]
    return offsets


# ---- a small snap length: headers present, payload missing ---------------------------------------


def _fixed_headers(data: bytes) -> int:
    """Link + IP + the fixed 20-byte TCP header of the capture's first packet: the smallest snap
    length that keeps every header a segment needs (TCP options cut)."""
    header, records, endian = split_pcap(data)
    link = {1: 14, 113: 16, 276: 20}[struct.unpack_from(endian + "I", header, 20)[0] & 0x0FFFFFFF]
    ip = records[0][RECORD_HEADER + link] >> 4
    return link + (20 if ip == 4 else 40) + 20


@pytest.mark.parametrize("snaplen", [96, "fixed-headers"])
@pytest.mark.parametrize("pcap", REAL, ids=lambda p: p.stem)
def test_small_snap_length_is_capture_gaps_never_silence(tmp_path, pcap, snaplen):
    """`tcpdump -s 96` (payload cut) or `-s 54` (even the TCP options cut): every segment still
    counts, the missing bytes are `snapped` capture gaps, the last-byte times do not move, and no
    connection is blamed for missed heartbeats because bytes are missing."""
    no_payload = snaplen == "fixed-headers"
    if no_payload:
        snaplen = _fixed_headers(pcap.read_bytes())
    full = by_id(analyze_file(pcap))
    path = write(tmp_path, "snapped.pcap", snapped(pcap.read_bytes(), snaplen))
    analysis = analyze_file(path)
    assert not any("malformed" in w for w in analysis.summary.warnings)
    found = by_id(analysis)
    assert found and set(found) <= set(full)
    # Every connection is still found, but AMQP on a port other than the default one when not a
    # byte of payload survives: such a connection is recognised by its bytes (the protocol header).
    missing = sorted(set(full) - set(found))
    assert not missing or (no_payload and all(full[cid].timeline.info.server.port not in DEFAULT_PORTS
                                              for cid in missing)), missing
    for cid, d in found.items():
        reference = full[cid]
        assert (d.last_client_byte, d.last_server_byte) == (reference.last_client_byte, reference.last_server_byte)
        assert d.timeline.c2s.segments == reference.timeline.c2s.segments
        if d.verdict.startswith("missed-"):
            assert d.verdict == reference.verdict, d.explanation
        if d.verdict != reference.verdict:
            assert any(f.kind == "capture-gap" and "(snapped)" in f.detail for f in d.findings)
            assert "snap length" in d.explanation, d.explanation


def test_snapped_close_handshake_is_unknown_not_a_reset(tmp_path):
    path = write(tmp_path, "s96.pcap", snapped(BLOCKED.read_bytes(), 96))
    full = by_id(analyze_file(BLOCKED))
    publisher = next(cid for cid, d in full.items() if d.verdict == "graceful")
    d = by_id(analyze_file(path))[publisher]
    assert d.verdict == "unknown"
    assert "whether an AMQP connection.close came first cannot be told" in d.explanation
    assert "may have held a connection.close" in d.explanation


# ---- a frame header declaring 4 GiB inside a real connection -------------------------------------


def test_four_gigabyte_frame_size_in_a_real_capture(tmp_path):
    data = BLOCKED.read_bytes()
    consumer = next(d for d in analyze_file(BLOCKED).connections if d.verdict == "missed-client-heartbeats")
    heartbeats_before = consumer.timeline.s2c.heartbeats
    # The broker's second heartbeat frame: rewrite its size field to 0xFFFFFFFF.
    at = [m.start() for m in re.finditer(re.escape(synth.HEARTBEAT_FRAME), data)][1]
    damaged = data[:at + 3] + b"\xff\xff\xff\xff" + data[at + 7:]
    path = write(tmp_path, "4gib.pcap", damaged)
    tracemalloc.start()
    try:
        analysis = analyze_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # never a buffer the size of the declared length
    d = by_id(analysis)[consumer.timeline.info.id]
    errors = [f for f in d.findings if f.kind == "decode-error"]
    assert any("impossible frame size 4294967295" in f.detail for f in errors)
    side = d.timeline.s2c if any("s2c" in f.detail for f in errors) else d.timeline.c2s
    reference = consumer.timeline.s2c if side is d.timeline.s2c else consumer.timeline.c2s
    assert side.heartbeats == reference.heartbeats - 1  # only the damaged frame is lost: resynced
    assert d.verdict == consumer.verdict
    assert heartbeats_before
    o = run_cli(["frames", "--format", "jsonl", path])
    assert o.status == ExitStatus.OK


# ---- capture loss is never silence ---------------------------------------------------------------


def _drop_client_payload(src: pathlib.Path, client_port: int, when) -> bytes:
    """The capture without the client's data segments whose relative time satisfies `when`."""
    data = src.read_bytes()
    header, records, endian = split_pcap(data)
    t0 = None
    kept = []
    for rec in records:
        sec, usec = struct.unpack_from(endian + "II", rec)
        t = sec + usec / 1e6
        t0 = t if t0 is None else t0
        frame = rec[RECORD_HEADER:]
        ip = 14 + (4 if frame[12:14] == b"\x81\x00" else 0)
        is_v4 = frame[ip] >> 4 == 4
        tcp = ip + ((frame[ip] & 0x0F) * 4 if is_v4 else 40)
        total = struct.unpack_from("!H", frame, ip + 2)[0] + (0 if is_v4 else 40)
        payload = total - (tcp - ip) - (frame[tcp + 12] >> 4) * 4
        if struct.unpack_from("!H", frame, tcp)[0] == client_port and payload > 0 and when(t - t0):
            continue
        kept.append(rec)
    return header + b"".join(kept)


def _consumer():
    return next(d for d in analyze_file(BLOCKED).connections if d.verdict == "missed-client-heartbeats")


def test_client_bytes_lost_in_the_silent_period_are_a_gap_and_the_verdict_says_so(tmp_path):
    consumer = _consumer()
    last = consumer.last_client_byte
    path = write(tmp_path, "lost.pcap",
                 _drop_client_payload(BLOCKED, consumer.timeline.info.client.port, lambda t: abs(t - last) < 1e-3))
    d = by_id(analyze_file(path))[consumer.timeline.info.id]
    gaps = [f for f in d.findings if f.kind == "capture-gap"]
    assert len(gaps) == 1 and "8 bytes c2s" in gaps[0].detail and "acked-unseen" in gaps[0].detail
    assert d.last_client_byte < last - 1.0  # the capture's view moved back a heartbeat period...
    assert d.gap_last == pytest.approx(last, abs=0.01)  # ...and the loss bounds the real last byte
    assert re.search(r"the client may have sent data during that 1\.\d s capture gap", d.explanation)
    assert d.verdict == "missed-client-heartbeats" and d.gap_fits
    assert "the verdict holds either way" in d.explanation


def test_a_verdict_that_depends_on_a_gap_says_so(tmp_path):
    consumer = _consumer()
    last = consumer.last_client_byte
    # Two heartbeats lost: the captured client goes quiet 3 s early, so the RST looks too late for
    # RabbitMQ's window; the ACK that reveals the loss puts the real last byte back in range.
    path = write(tmp_path, "lost2.pcap", _drop_client_payload(
        BLOCKED, consumer.timeline.info.client.port, lambda t: last - 1.6 < t < last + 1e-3))
    d = by_id(analyze_file(path))[consumer.timeline.info.id]
    assert d.verdict != "missed-client-heartbeats"
    assert d.gap_fits is True
    assert "this verdict depends on what the capture lost" in d.explanation
    assert any(f.kind == "capture-gap" for f in d.findings)


def _same_story(path: str) -> None:
    reference = by_id(analyze_file(BLOCKED))
    analysis = analyze_file(path)
    assert reference and sorted(by_id(analysis)) == sorted(reference)  # every connection is still found
    for cid, d in by_id(analysis).items():
        ref = reference[cid]
        assert d.verdict == ref.verdict
        assert (d.last_client_byte, d.last_server_byte) == (ref.last_client_byte, ref.last_server_byte)
        assert not [f for f in d.findings if f.kind in ("capture-gap", "decode-error")], d.findings
        for mine, theirs in ((d.timeline.c2s, ref.timeline.c2s), (d.timeline.s2c, ref.timeline.s2c)):
            assert mine.frames == theirs.frames and mine.heartbeats == theirs.heartbeats


def test_duplicated_packets_are_retransmissions_decoded_once(tmp_path):
    header, records, _ = split_pcap(BLOCKED.read_bytes())
    damaged = list(records)
    for i in (45, 30, 12, 5):
        damaged.insert(i + 3, records[i])  # a duplicate a few packets after the original
    path = write(tmp_path, "dup.pcap", header + b"".join(damaged))
    _same_story(path)
    total = sum(d.timeline.c2s.retransmissions + d.timeline.s2c.retransmissions
                for d in analyze_file(path).connections)
    assert total >= 1  # duplicated data segments are counted as retransmissions, not decoded twice


@pytest.mark.parametrize("swap", ["data-and-its-ack", "two-client-segments"])
def test_reordered_segments_are_reassembled_not_gaps(tmp_path, swap):
    header, records, _ = split_pcap(BLOCKED.read_bytes())
    damaged = list(records)
    if swap == "data-and-its-ack":
        i, j = 20, 21  # the broker's data, then the client's ACK of it
    else:
        port = _consumer().timeline.info.client.port.to_bytes(2, "big")
        data_idx = [k for k, r in enumerate(records) if r[RECORD_HEADER + 34:RECORD_HEADER + 36] == port
                    and len(r) > RECORD_HEADER + 66]
        i, j = data_idx[2], data_idx[3]
    damaged[i], damaged[j] = damaged[j], damaged[i]
    path = write(tmp_path, "ack-first.pcap", header + b"".join(damaged))
    _same_story(path)


# ---- packets: options cut by the snap length ----------------------------------------------------


def test_tcp_header_with_options_cut_by_the_snap_length_is_still_a_segment():
    from scapy.layers.inet import IP, TCP
    from scapy.packet import Raw

    from analyzer.net.packets import PacketDecoder
    from analyzer.records import CaptureSummary, RawPacket

    ip = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=5672, seq=1, ack=2, flags="PA",
               options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]) / Raw(b"x" * 100))
    frame = synth.ethernet(ip)
    summary = CaptureSummary()
    seg = PacketDecoder(summary).decode(RawPacket(1, 1.0, synth.LINKTYPE_ETHERNET, frame[:54], len(frame)))
    assert seg is not None and summary.malformed == 0
    assert (seg.sport, seg.seq, seg.payload, seg.payload_len) == (40000, 1, b"", 100)


# ---- safety: nothing from a capture is executed; credentials are redacted everywhere -------------


SECRETS = ("Pl41nS3cret", "AmqpL41nS3cret", "S3cureOkS3cret", "Upd4teS3cret")


def _secret_capture() -> bytes:
    """Two connections: PLAIN start-ok, then secure-ok and update-secret; AMQPLAIN start-ok."""
    steps = synth.handshake_steps(heartbeat=5)
    start_ok = synth.method_frame(commands.Connection.StartOk(
        client_properties={"product": "test"}, mechanism="PLAIN", response=f"\x00alice\x00{SECRETS[0]}",
        locale="en_US"))
    steps[5] = (steps[5][0], C2S, PSH | ACK, start_ok)
    steps += [
        (0.02, C2S, PSH | ACK, synth.method_frame(commands.Connection.SecureOk(response=SECRETS[2]))),
        (0.03, C2S, PSH | ACK, synth.method_frame(commands.Connection.UpdateSecret(new_secret=SECRETS[3],
                                                                                   reason="rotate"))),
        (0.04, S2C, PSH | ACK, synth.method_frame(commands.Connection.UpdateSecretOk())),
        (1.0, C2S, FIN | ACK, b""), (1.001, S2C, FIN | ACK, b""), (1.002, C2S, ACK, b""),
    ]
    first = synth.scripted_conversation(steps, client=("127.0.0.1", 40001))
    table = _amqplain_response("bob", SECRETS[1])
    steps2 = synth.handshake_steps(heartbeat=5)
    steps2[5] = (steps2[5][0], C2S, PSH | ACK, _start_ok_raw("AMQPLAIN", table))
    steps2 += [(1.0, C2S, FIN | ACK, b""), (1.001, S2C, FIN | ACK, b""), (1.002, C2S, ACK, b"")]
    second = synth.scripted_conversation(steps2, client=("127.0.0.1", 40002), start=1700000002.0)
    packets = sorted(first.packets() + second.packets(), key=lambda p: p[0])
    return synth.pcap_bytes(packets)


def _amqplain_response(user: str, password: str) -> bytes:
    """A field table body without its length prefix (RabbitMQ's AMQPLAIN response)."""
    def entry(key: str, value: str) -> bytes:
        return bytes([len(key)]) + key.encode() + b"S" + struct.pack("!I", len(value)) + value.encode()
    return entry("LOGIN", user) + entry("PASSWORD", password)


def _start_ok_raw(mechanism: str, response: bytes) -> bytes:
    args = (struct.pack("!I", 0)  # empty client_properties table
            + bytes([len(mechanism)]) + mechanism.encode()
            + struct.pack("!I", len(response)) + response
            + bytes([5]) + b"en_US")
    payload = struct.pack("!HH", 10, 11) + args
    return struct.pack("!BHI", 1, 0, len(payload)) + payload + b"\xce"


def _leaks(text: str | bytes) -> list[str]:
    blob = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    found = []
    for secret in SECRETS:
        for form in (secret.encode(), secret.encode().hex().encode()):
            if form in blob:
                found.append(secret)
    return found


@pytest.fixture()
def secret_pcap(tmp_path):
    return write(tmp_path, "secrets.pcap", _secret_capture())


OUTPUTS = [
    ["frames"], ["frames", "--format", "jsonl"], ["frames", "--format", "csv"], ["frames", "--payload", "64"],
    ["analyze"], ["analyze", "--format", "json"], ["analyze", "--format", "csv"],
]


@pytest.mark.parametrize("argv", OUTPUTS, ids=lambda a: "-".join(a))
def test_credentials_are_redacted_in_every_cli_output(secret_pcap, argv):
    o = run_cli([*argv, secret_pcap])
    assert o.status == ExitStatus.OK, o.stderr
    assert "<redacted>" in o.stdout or (argv[0] == "analyze" and "--format" not in argv) or "csv" in argv
    assert _leaks(o.stdout + o.stderr) == []


def test_the_secret_capture_really_carries_the_secrets(secret_pcap):
    o = run_cli(["frames", "--format", "jsonl", "--show-secrets", secret_pcap])
    assert sorted(set(_leaks(o.stdout))) == sorted(SECRETS)
    doc = json.loads(run_cli(["analyze", "--format", "json", "--show-secrets", secret_pcap]).stdout)
    auth = [c["auth"] for c in doc["connections"]]
    assert {"user": "alice", "password": SECRETS[0]} in [a["response"] for a in auth]
    assert {"user": "bob", "password": SECRETS[1]} in [a["response"] for a in auth]
    redacted = json.loads(run_cli(["analyze", "--format", "json", secret_pcap]).stdout)
    assert [c["auth"]["response"]["password"] for c in redacted["connections"]] == ["<redacted>"] * 2


def test_credentials_are_redacted_in_the_notebook_tables_and_plots(secret_pcap, tmp_path):
    pytest.importorskip("pandas")
    pytest.importorskip("matplotlib")
    import analyzer

    analysis = analyzer.load(secret_pcap)
    assert len(analysis) == 2  # the PLAIN and the AMQPLAIN connection
    for name in ("frames", "segments", "gaps", "decode_errors", "connections", "findings"):
        table = getattr(analysis, name)
        assert _leaks(table.to_json(default_handler=str)) == [], name
    assert "<redacted>" in analysis.frames.to_json(default_handler=str)
    out = tmp_path / "plot.svg"
    o = run_cli(["plot", secret_pcap, "-o", str(out)])
    assert o.status == ExitStatus.OK, o.stderr
    figures = sorted(tmp_path.glob("plot*.svg"))
    assert [svg.name for svg in figures] == ["plot-1.svg", "plot-2.svg"]  # one per connection
    for svg in figures:
        assert _leaks(svg.read_bytes()) == []


# Modules that touch capture bytes: every module of the analysis stack (all but the lab, which runs
# brokers and clients, and the CLI, which starts them). None may evaluate, unpickle or run anything.
CAPTURE_MODULES = sorted(str(p.relative_to(ANALYZER)) for p in ANALYZER.rglob("*.py")
                         if p.relative_to(ANALYZER).parts[0] not in ("lab", "cli"))
FORBIDDEN = re.compile(r"(?<!re\.)\b(eval|exec|compile|__import__)\s*\(|\bpickle\b|\bmarshal\b|\bsubprocess\b"
                       r"|\bos\.system\b|\bos\.popen\b|\byaml\.load\b|\bshelve\b|\bctypes\b")


def test_the_capture_modules_cover_every_stage():
    """The check below runs once per module found: it must find the whole stack, not nothing."""
    stages = {pathlib.PurePath(module).parts[0] for module in CAPTURE_MODULES}
    assert {"sources", "net", "amqp", "engine", "diagnosis", "render", "records.py", "api.py"} <= stages


@pytest.mark.parametrize("module", CAPTURE_MODULES)
def test_capture_data_is_never_executed(module):
    source = (ANALYZER / module).read_text()
    code = "\n".join(line.split("#", 1)[0] for line in source.splitlines())
    assert not FORBIDDEN.findall(code), f"{module}: {FORBIDDEN.findall(code)}"


def test_analysis_writes_nothing_but_its_output(tmp_path, monkeypatch, secret_pcap):
    """frames and analyze only read: no file is opened for writing, anywhere, but analyze's
    unnamed temporary file (O_TMPFILE: never in the file system, gone when closed) where it keeps
    the connections it has already rendered."""
    import builtins
    import os

    writes = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            writes.append((file, mode))
        return real_open(file, mode, *args, **kwargs)

    def spy_os_open(path, flags, *args, **kwargs):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            return real_os_open(path, flags, *args, **kwargs)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            writes.append((path, flags))
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    for argv in OUTPUTS:
        assert run_cli([*argv, secret_pcap]).status == ExitStatus.OK
    assert writes == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_csv_outputs_parse(secret_pcap):
    rows = list(csv.DictReader(io.StringIO(run_cli(["frames", "--format", "csv", secret_pcap]).stdout)))
    start_oks = [r for r in rows if r["method"] == "connection.start-ok"]
    assert len(start_oks) == 2 and all("<redacted>" in r["args"] for r in start_oks)
