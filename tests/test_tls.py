"""TLS (issue 13): the record layer, the hellos, what encrypted records tell without keys, and the
end-to-end analysis of real TLS runs with and without their key logs.

Decryption itself (key schedules, every AEAD suite, lost records) is tests/test_tls_decrypt.py; the
frame-for-frame agreement with Wireshark on decrypted captures is tests/test_wireshark_agreement.py.
"""
from __future__ import annotations

import itertools
import json
import pathlib
import random
import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.api import analyze_file, read_frames
from analyzer.cli import main
from analyzer.render.analysis_json import connection_document
from analyzer.tls.handshake import HELLO_RETRY_RANDOM, HandshakeReader, parse_client_hello, parse_server_hello
from analyzer.tls.inference import HEARTBEAT, PROTOCOL_HEADER, TUNE, TUNE_OK, AmqpGuesser, looks_like_close_handshake
from analyzer.tls.keylog import KeyLog
from analyzer.tls.records import (
    APPLICATION_DATA,
    HANDSHAKE,
    MAX_FRAGMENT,
    RECORD_HEADER_SIZE,
    Record,
    RecordDecoder,
    RecordError,
)
from analyzer.tls.suites import record_overhead

REPO = pathlib.Path(__file__).resolve().parent.parent
CAPTURES = REPO / "captures"
TLS_CAPTURES = ["tls12-blocked-callback", "tls13-blocked-callback"]
# How close a prediction must come to the observed teardown (issue 13's check).
WITHIN = 0.050


def header(content_type: int, length: int, version: int = 0x0303) -> bytes:
    return struct.pack("!BHH", content_type, version, length)


def records_strategy():
    kinds = st.sampled_from([20, 21, 22, 23])
    return st.lists(st.tuples(kinds, st.binary(min_size=1, max_size=300)), min_size=1, max_size=12)


def feed_in_pieces(decoder: RecordDecoder, data: bytes, cuts: list[int]) -> list:
    out = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        out.extend(decoder.feed(data[a:b], 1.0 + a, a))
    return out


# ---- the record layer ---------------------------------------------------------------------------------


@given(records_strategy(), st.lists(st.integers(min_value=0), max_size=20), st.booleans())
def test_records_come_out_whole_however_the_stream_is_cut(records, cuts, keep):
    stream = b"".join(header(kind, len(body)) + body for kind, body in records)
    out = feed_in_pieces(RecordDecoder(keep_application_data=keep), stream, cuts)
    assert all(type(r) is Record for r in out)
    assert [(r.content_type, r.length) for r in out] == [(kind, len(body)) for kind, body in records]
    offsets = [0]
    for _, body in records[:-1]:
        offsets.append(offsets[-1] + RECORD_HEADER_SIZE + len(body))
    assert [r.offset for r in out] == offsets
    for r, (kind, body) in zip(out, records, strict=True):
        assert r.fragment == (None if kind == APPLICATION_DATA and not keep else body)


def test_records_fed_byte_by_byte():
    stream = header(HANDSHAKE, 4) + b"\x01\x00\x00\x00" + header(APPLICATION_DATA, 3) + b"abc"
    decoder = RecordDecoder(keep_application_data=True)
    out = []
    for i in range(len(stream)):
        out.extend(decoder.feed(stream[i : i + 1], float(i), i))
    assert [(r.content_type, r.fragment, r.packet) for r in out] == [(22, b"\x01\x00\x00\x00", 8), (23, b"abc", 16)]


def test_a_gap_resynchronises_at_the_next_believable_records():
    a, b = header(APPLICATION_DATA, 30) + bytes(30), header(APPLICATION_DATA, 25) + bytes(25)
    decoder = RecordDecoder()
    assert len(decoder.feed(a + a[:10], 1.0, 1)) == 1
    decoder.gap(100, 2.0, 2)  # the rest of that record and more were not captured
    out = decoder.feed(bytes(7) + b + a, 3.0, 3)  # 7 stray bytes of a record whose start was lost
    errors = [r for r in out if type(r) is RecordError]
    assert [r.skipped for r in errors] == [7]
    assert [(r.length, r.offset) for r in out if type(r) is Record] == [(25, 35 + 110 + 7), (30, 35 + 110 + 7 + 30)]


def test_a_capture_that_starts_mid_record_finds_the_records():
    tail = bytes(range(40))  # the end of a record whose header was before the capture
    stream = tail + header(APPLICATION_DATA, 25) + bytes(25) + header(APPLICATION_DATA, 30) + bytes(30)
    out = RecordDecoder(synced=False).feed(stream, 1.0, 1)
    assert [r.length for r in out if type(r) is Record] == [25, 30]


def test_a_damaged_header_is_one_error_and_decoding_resumes():
    good = header(APPLICATION_DATA, 25) + bytes(25)
    out = RecordDecoder().feed(good + b"\x99\x03\x03\x00\x05" + bytes(5) + good + good, 1.0, 1)
    assert [type(r).__name__ for r in out][:2] == ["Record", "RecordError"]
    assert [r.length for r in out if type(r) is Record] == [25, 25, 25]


@settings(max_examples=300)
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0), max_size=10), st.booleans(), st.booleans())
def test_arbitrary_bytes_never_raise_and_buffering_stays_bounded(data, cuts, synced, keep):
    decoder = RecordDecoder(synced=synced, keep_application_data=keep)
    feed_in_pieces(decoder, data, cuts)
    decoder.gap(13, 9.0, 9)
    decoder.feed(data[::-1], 10.0, 10)
    assert len(decoder.buf) <= 2 * (MAX_FRAGMENT + RECORD_HEADER_SIZE)


def test_a_long_application_record_is_counted_through_not_buffered():
    decoder = RecordDecoder()
    decoder.feed(header(APPLICATION_DATA, MAX_FRAGMENT) + bytes(100), 1.0, 1)
    assert not decoder.buf
    out = decoder.feed(bytes(MAX_FRAGMENT - 100), 2.0, 2)
    assert [(r.length, r.packet, r.fragment) for r in out] == [(MAX_FRAGMENT, 2, None)]


# ---- the hellos -------------------------------------------------------------------------------------


def client_hello_bytes(alpn: list[str] | None = None, maximum=ssl.TLSVersion.TLSv1_3) -> bytes:
    """The first flight of a real OpenSSL client (no server needed): one ClientHello record."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.maximum_version = maximum
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="rabbit.example")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def test_a_real_client_hello_gives_random_sni_alpn_and_versions():
    wire = client_hello_bytes(["amqp"])
    (msg_type, body), = HandshakeReader().feed(wire[RECORD_HEADER_SIZE:])
    hello = parse_client_hello(body)
    assert msg_type == 1 and hello is not None
    assert hello.sni == "rabbit.example" and hello.alpn == ("amqp",)
    assert 0x0304 in hello.versions and 0x0303 in hello.versions and len(hello.random) == 32
    assert 0x1301 in hello.cipher_suites


def test_a_tls12_only_client_hello():
    (_, body), = HandshakeReader().feed(client_hello_bytes(maximum=ssl.TLSVersion.TLSv1_2)[RECORD_HEADER_SIZE:])
    hello = parse_client_hello(body)
    assert hello is not None and 0x0304 not in hello.versions


def test_handshake_messages_split_over_records_are_joined():
    body = client_hello_bytes()[RECORD_HEADER_SIZE:]
    reader = HandshakeReader()
    assert reader.feed(body[:50]) == []
    (_, whole), = reader.feed(body[50:])
    assert parse_client_hello(whole) is not None


def test_a_hello_retry_request_is_not_the_server_hello():
    body = struct.pack("!H", 0x0303) + HELLO_RETRY_RANDOM + b"\x00" + struct.pack("!HB", 0x1301, 0)
    body += struct.pack("!H", 6) + struct.pack("!HHH", 43, 2, 0x0304)
    hello = parse_server_hello(body)
    assert hello is not None and hello.retry and hello.version == 0x0304


@given(st.binary(max_size=400))
def test_hello_parsers_never_raise(data):
    parse_client_hello(data)
    parse_server_hello(data)


@given(st.integers(min_value=0, max_value=600))
def test_every_cut_of_a_real_client_hello_is_none_or_whole(cut):
    body = _REAL_HELLO[4:]
    hello = parse_client_hello(body[:cut])
    assert hello is None or cut >= len(body) or hello.random == parse_client_hello(body).random


_REAL_HELLO = client_hello_bytes()[RECORD_HEADER_SIZE:]


# ---- reading encrypted records without keys ------------------------------------------------------------


@pytest.mark.parametrize(("version", "suite", "overhead"), [
    (0x0303, 0xC02F, 24), (0x0303, 0xC030, 24), (0x0303, 0xCCA8, 16), (0x0304, 0x1301, 17), (0x0304, 0x1303, 17),
    (0x0303, 0xC013, None), (0x0303, 0x1301, None), (None, None, None)])
def test_record_overhead_per_suite(version, suite, overhead):
    assert record_overhead(version, suite) == overhead


def test_field_notes_heartbeat_record_sizes():
    """../shared/field-notes.md: a heartbeat travels in a 37-byte record with TLS 1.2 AES-GCM, 29 with
    ChaCha20-Poly1305, 30 with TLS 1.3 (header included)."""
    for version, suite, total in ((0x0303, 0xC02F, 37), (0x0303, 0xCCA8, 29), (0x0304, 0x1302, 30)):
        assert 8 + record_overhead(version, suite) + RECORD_HEADER_SIZE == total


def test_guesses_follow_the_amqp_handshake_order():
    g = AmqpGuesser()
    assert g.guess(True, 36, 53) is None  # TLS 1.3: the client's Finished comes first
    assert g.guess(True, 8, 25) == PROTOCOL_HEADER
    assert g.guess(False, 514, 531) is None  # connection.start
    assert g.guess(True, 328, 345) is None  # start-ok
    assert g.guess(False, 20, 37) == TUNE
    assert g.guess(True, 20, 37) == TUNE_OK
    assert g.guess(True, 16, 33) is None  # connection.open
    assert g.guess(False, 8, 25) == HEARTBEAT and g.guess(True, 8, 25) == HEARTBEAT
    assert g.guess(False, 2, 19) == "alert"


def test_midstream_guesses_know_only_heartbeats():
    g = AmqpGuesser(midstream=True)
    assert [g.guess(False, None, n) for n in (24, 25, 32, 40)] == [HEARTBEAT, HEARTBEAT, HEARTBEAT, None]


def test_close_handshake_sizes():
    assert looks_like_close_handshake(34, 12)  # connection.close "Normal shutdown", close-ok
    assert not looks_like_close_handshake(8, 12) and not looks_like_close_handshake(34, 8)


# ---- real TLS runs, end to end --------------------------------------------------------------------------


def ground_truth(name: str) -> dict:
    return json.loads((CAPTURES / f"{name}.json").read_text())


def consumer_of(analysis, meta):
    cid = next(cid for cid, c in meta["connections"].items() if c["role"] == "consumer")
    (d,) = [d for d in analysis.connections if d.timeline.info.id == cid]
    return d


@pytest.mark.parametrize("name", TLS_CAPTURES)
def test_without_keys_the_verdict_t_and_prediction_come_from_record_sizes(name):
    meta = ground_truth(name)
    analysis = analyze_file(CAPTURES / f"{name}.pcap")
    d = consumer_of(analysis, meta)
    consumer = next(c for c in meta["connections"].values() if c["role"] == "consumer")
    assert d.verdict == consumer["expected_verdict"] == "missed-client-heartbeats"
    assert d.heartbeat.source == "inferred" and d.heartbeat.effective == meta["parameters"]["heartbeat"]
    assert d.tls is not None and d.tls.inferred and d.tls.tune_ok_on_grid
    assert d.tls.version == {"1.2": "TLS 1.2", "1.3": "TLS 1.3"}[meta["tls"]["version_requested"]]
    assert abs(d.prediction.error(d.close.time)) < WITHIN
    doc = connection_document(d)
    assert doc["source"] == doc["prediction"]["source"] == "inferred"
    assert doc["tls"]["decryption"] == "not attempted" and doc["tls"]["heartbeat_records"] >= 3
    assert "inferred" in d.explanation and "encrypted records" in d.explanation


@pytest.mark.parametrize("name", TLS_CAPTURES)
def test_with_keys_the_analysis_is_the_plaintext_one(name):
    meta = ground_truth(name)
    keys = KeyLog.parse((CAPTURES / f"{name}.keys").read_bytes())
    keyed = consumer_of(analyze_file(CAPTURES / f"{name}.pcap", tls_keys=keys), meta)
    keyless = consumer_of(analyze_file(CAPTURES / f"{name}.pcap"), meta)
    assert keyed.tls.decryption == "decrypted" and not keyed.inferred_from_tls
    assert keyed.heartbeat.source == "negotiated" and keyed.heartbeat.effective == meta["parameters"]["heartbeat"]
    assert keyed.client.library == "pika" and keyed.verdict == keyless.verdict
    assert abs(keyed.prediction.predicted - keyless.prediction.predicted) < WITHIN
    assert abs(keyed.prediction.error(keyed.close.time)) < WITHIN
    assert keyed.timeline.tune_ok.time - keyed.t0 == pytest.approx(keyless.tls.tune_ok, abs=0.002)
    assert any(what.startswith("alert close_notify") for _, direction, what in keyed.tls.alerts if direction == "s2c")


@pytest.mark.parametrize("name", TLS_CAPTURES)
def test_the_publisher_closes_gracefully_with_and_without_keys(name):
    meta = ground_truth(name)
    keys = KeyLog.parse((CAPTURES / f"{name}.keys").read_bytes())
    for analysis in (analyze_file(CAPTURES / f"{name}.pcap"), analyze_file(CAPTURES / f"{name}.pcap", tls_keys=keys)):
        publishers = {cid: c for cid, c in meta["connections"].items() if c["role"] == "publisher"}
        assert publishers
        for cid, conn in publishers.items():
            (d,) = [d for d in analysis.connections if d.timeline.info.id == cid]
            assert d.verdict == conn["expected_verdict"] == "graceful"


def test_frames_are_listed_only_with_keys():
    path = CAPTURES / "tls13-blocked-callback.pcap"
    assert list(read_frames(path)) == []
    keys = KeyLog.parse((CAPTURES / "tls13-blocked-callback.keys").read_bytes())
    names = [f.method for f in read_frames(path, tls_keys=keys)]
    assert names[:4] == ["connection.start", "connection.start-ok", "connection.tune", "connection.tune-ok"]


def run(argv):
    import io

    out, err = io.StringIO(), io.StringIO()
    return main(argv, stdout=out, stderr=err), out.getvalue(), err.getvalue()


def test_cli_keylog_never_prints_key_material():
    keys_path = CAPTURES / "tls12-blocked-callback.keys"
    secrets = {line.split()[-1].lower() for line in keys_path.read_text().splitlines() if line and line[0] != "#"}
    for argv in (["analyze"], ["analyze", "--format", "json"], ["frames", "--format", "jsonl", "--payload", "64"],
                 ["analyze", "--format", "csv"]):
        status, out, err = run([*argv, "--tls-keylog", str(keys_path), str(CAPTURES / "tls12-blocked-callback.pcap")])
        assert status == 0
        assert not any(s in (out + err).lower() for s in secrets)


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file"), (b"not a key log\n", "no TLS secrets"), (b"", "no TLS secrets")])
def test_a_bad_key_log_is_one_line_and_status_2(tmp_path, content, message):
    path = tmp_path / "keys.txt"
    if content is not None:
        path.write_bytes(content)
    status, out, err = run(["analyze", "--tls-keylog", str(path), str(CAPTURES / "tls12-blocked-callback.pcap")])
    assert status == 2 and out == "" and err.count("\n") == 1 and message in err and str(path) in err


def test_a_key_log_of_other_sessions_warns_per_connection_and_keeps_the_timing(tmp_path):
    other = tmp_path / "other.keys"
    other.write_bytes((CAPTURES / "tls13-blocked-callback.keys").read_bytes())
    status, out, _err = run(["analyze", "--tls-keylog", str(other), str(CAPTURES / "tls12-blocked-callback.pcap")])
    assert status == 0
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all("the key log has no secrets for this session" in w for w in warnings)
    assert "verdict: missed-client-heartbeats" in out and "inferred" in out


def test_a_partial_key_log_decrypts_what_it_can(tmp_path):
    lines = (CAPTURES / "tls13-blocked-callback.keys").read_text().splitlines()
    partial = tmp_path / "partial.keys"
    partial.write_text("\n".join(line for line in lines if "TRAFFIC_SECRET_0" not in line) + "\n")
    status, out, _err = run(["analyze", "--tls-keylog", str(partial), str(CAPTURES / "tls13-blocked-callback.pcap")])
    assert status == 0 and "verdict: missed-client-heartbeats" in out and "not decrypted" in out


@pytest.mark.parametrize("name", TLS_CAPTURES)
def test_tls_records_split_byte_by_byte_give_the_same_analysis(tmp_path, name):
    """Every TCP payload byte in its own segment (records split over many segments, the ClientHello
    over hundreds): the same verdicts and predictions, with and without keys."""
    from scapy.all import TCP, rdpcap, wrpcap

    source = CAPTURES / f"{name}.pcap"
    split = tmp_path / "split.pcap"
    packets = []
    for pkt in rdpcap(str(source)):
        data = bytes(pkt[TCP].payload) if TCP in pkt else b""
        if len(data) <= 1:
            packets.append(pkt)
            continue
        for i in range(len(data)):
            piece = pkt.copy()
            piece[TCP].seq = (pkt[TCP].seq + i) % 2**32
            piece[TCP].remove_payload()
            piece[TCP].add_payload(data[i : i + 1])
            del piece["IP"].len, piece["IP"].chksum, piece[TCP].chksum
            piece.time = pkt.time
            packets.append(piece)
    wrpcap(str(split), packets)
    keys = KeyLog.parse((CAPTURES / f"{name}.keys").read_bytes())
    for tls_keys in (None, keys):
        a, b = analyze_file(source, tls_keys=tls_keys), analyze_file(split, tls_keys=tls_keys)
        assert [d.verdict for d in a.connections] == [d.verdict for d in b.connections]
        assert [round(d.prediction.predicted, 3) if d.prediction else None for d in a.connections] == \
               [round(d.prediction.predicted, 3) if d.prediction else None for d in b.connections]


@pytest.mark.parametrize("name", TLS_CAPTURES)
def test_a_capture_started_after_the_handshake_still_infers_t(tmp_path, name):
    from tests.mutations import split_pcap

    header_bytes, records, _ = split_pcap((CAPTURES / f"{name}.pcap").read_bytes())
    late = tmp_path / "late.pcap"
    late.write_bytes(header_bytes + b"".join(records[30:]))  # from inside the idle heartbeats on
    analysis = analyze_file(late)
    consumer = max(analysis.connections, key=lambda d: d.timeline.s2c.heartbeats)
    assert consumer.tls is not None and consumer.tls.version is None
    assert consumer.heartbeat.effective == ground_truth(name)["parameters"]["heartbeat"]
    assert consumer.verdict == "missed-client-heartbeats"


@given(st.lists(st.binary(max_size=200), max_size=8), st.integers(0, 2**31))
@settings(max_examples=100)
def test_a_tls_session_fed_garbage_never_raises(chunks, seed):
    from analyzer.amqp.framing import FrameDecoder
    from analyzer.records import C2S, S2C, ConnectionInfo, Endpoint
    from analyzer.tls.session import TlsSession

    info = ConnectionInfo("a->b", Endpoint("10.0.0.1", 1), Endpoint("10.0.0.2", 5671), 0.0, "port")
    keys = KeyLog.parse((CAPTURES / "tls13-blocked-callback.keys").read_bytes())
    rng = random.Random(seed)
    session = TlsSession(info, synced=rng.random() < 0.5, keys=keys if rng.random() < 0.5 else None)
    decoders = [FrameDecoder(info, C2S), FrameDecoder(info, S2C)]
    out: list = []
    real = (CAPTURES / "tls13-blocked-callback.pcap").read_bytes()
    for i, chunk in enumerate(chunks):
        side = rng.randrange(2)
        if rng.random() < 0.2:
            session.gap(side, decoders[side], rng.randrange(100), float(i), i, out)
        start = rng.randrange(len(real))
        session.feed(side, decoders[side], chunk + real[start : start + rng.randrange(300)], float(i), i, out)


def test_notebook_tables_and_plot_of_a_tls_capture():
    from analyzer.notebook import load, load_scenario

    name = "tls13-blocked-callback"
    keyless = load(CAPTURES / f"{name}.pcap")
    consumer = next(c for c in keyless if c.verdict == "missed-client-heartbeats")
    records = consumer.tls_records
    assert len(keyless.frames) == 0 and not records["decrypted"].any()
    assert (records["guess"] == "heartbeat").sum() == consumer.diagnosis.timeline.c2s.heartbeats + \
        consumer.diagnosis.timeline.s2c.heartbeats
    figure = consumer.plot()
    heartbeat_markers = [c for ax in figure.axes for c in ax.collections if "heartbeat" in str(c.get_label())]
    assert heartbeat_markers, "the heartbeat-sized records are drawn as heartbeats"
    keyed = load_scenario(name, CAPTURES)  # the metadata names the key log
    assert keyed.tls_records["decrypted"].any() and len(keyed.frames) > 20
    assert set(keyed.frames["method"].dropna()) >= {"connection.tune-ok", "basic.deliver"}


@pytest.mark.parametrize("name", TLS_CAPTURES)
def test_a_snap_length_that_keeps_a_heartbeat_record_keeps_the_timing(tmp_path, name):
    """`tcpdump -s 96` on loopback keeps 30 bytes of each segment's payload: the hellos are cut, but
    each idle heartbeat record (29-37 bytes) starts its own segment; the decoder stays in sync across
    the cut bytes (it knows where each cut record ends), T is inferred and the verdict holds."""
    from tests.mutations import split_pcap

    header_bytes, records, endian = split_pcap((CAPTURES / f"{name}.pcap").read_bytes())
    snapped = [header_bytes]
    for rec in records:
        caplen = min(struct.unpack_from(endian + "I", rec, 8)[0], 96)
        snapped.append(rec[:8] + struct.pack(endian + "I", caplen) + rec[12:16] + rec[16 : 16 + caplen])
    path = tmp_path / "snapped.pcap"
    path.write_bytes(b"".join(snapped))
    consumer = consumer_of(analyze_file(path), ground_truth(name))
    assert consumer.heartbeat.effective == ground_truth(name)["parameters"]["heartbeat"]
    assert consumer.verdict == "missed-client-heartbeats"
    assert abs(consumer.prediction.error(consumer.close.time)) < WITHIN


def test_a_record_cut_by_the_snap_length_keeps_the_decoder_in_sync():
    decoder = RecordDecoder()
    assert decoder.feed(header(HANDSHAKE, 300) + bytes(25), 1.0, 1) == []
    assert [(r.length, r.fragment) for r in decoder.gap(275, 1.0, 1)] == [(300, None)]  # whole, its bytes cut
    out = decoder.feed(header(APPLICATION_DATA, 25) + bytes(25), 2.0, 2)
    assert [(r.content_type, r.length) for r in out] == [(APPLICATION_DATA, 25)]


def test_tls_on_an_unknown_port_is_found_from_its_record_sizes(tmp_path):
    """No --port, no keys: a TLS connection on another port whose first records have the sizes of
    AMQP's protocol header and connection.tune is listed; its verdict is the same as on 5671."""
    from scapy.all import TCP, rdpcap, wrpcap

    name = "tls13-blocked-callback"
    packets = rdpcap(str(CAPTURES / f"{name}.pcap"))
    for pkt in packets:
        if TCP in pkt:
            for field in ("sport", "dport"):
                if getattr(pkt[TCP], field) == 5671:
                    setattr(pkt[TCP], field, 48897)
            del pkt[TCP].chksum
    moved = tmp_path / "moved.pcap"
    wrpcap(str(moved), packets)
    analysis = analyze_file(moved)
    verdicts = sorted(d.verdict for d in analysis.connections)
    assert verdicts == sorted(d.verdict for d in analyze_file(CAPTURES / f"{name}.pcap").connections)
    assert all(d.timeline.info.server.port == 48897 for d in analysis.connections)
