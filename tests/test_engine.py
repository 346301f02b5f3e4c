"""The engine's runs (runs.py) and quick path (quick.py) build exactly the timelines (and so the
diagnoses), and emit exactly the events, of its plain path (every packet one by one through
PacketDecoder, Flow.feed and TimelineBuilder), on every shipped capture and on synthetic edge cases:
frames split and packed across segments, retransmissions, reordering, loss, mid-stream starts,
snapped payloads, other ports and link types, damaged bytes, and random mixes of those."""
from __future__ import annotations

import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import body as pamqp_body
from pamqp import commands
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header

from analyzer.api import FrameBatch, frame_record, frame_records
from analyzer.diagnosis.diagnose import diagnose
from analyzer.engine import Engine, EventObserver, analyze_timelines, iter_events
from analyzer.records import ACK, C2S, FIN, PSH, RST, S2C, CaptureSummary, Frame
from analyzer.render.analysis_json import connection_document
from analyzer.sources.pcap import open_capture
from analyzer.timeline import TimelineBuilder, timeline_order
from tests import synth
from tests.conftest import CAPTURES
from tests.synth import ConvSegment, amqp_conversation, handshake_steps, scripted_conversation

HB = synth.HEARTBEAT_FRAME


@pytest.fixture(autouse=True, params=["as-shipped", "every-run-batched-numpy-walk", "every-run-batched-python-walk"])
def batch_settings(request, monkeypatch):
    """Every test three times: as shipped (short captures go packet by packet: a flow's packets
    are batched from the first block that starts after its handshake), and with blocks of a few
    records and every stretch of ordinary packets, however short, applied as a run (runs.py),
    its frames walked by the numpy rounds or by the Python loop."""
    if request.param != "as-shipped":
        monkeypatch.setattr("analyzer.sources.pcap.CHUNK_SIZE", 600)
        monkeypatch.setattr("analyzer.engine.engine.MIN_RUN", 1)
        monkeypatch.setattr("analyzer.amqp.frames.PYTHON_TAIL", 1 if "numpy" in request.param else 1 << 40)
    return request.param


def plain(data: bytes, **kwargs):
    """The reference: every packet one by one, events fed to a TimelineBuilder of the test's own."""
    summary = CaptureSummary()
    builder = TimelineBuilder().feed_all(iter_events(io.BytesIO(data), summary, batch=False, **kwargs))
    return builder.result(), summary


class Recorder(EventObserver):
    def __init__(self) -> None:
        self.events: list = []

    def event(self, event) -> None:
        self.events.append(event)


def fast(data: bytes, **kwargs):
    summary = CaptureSummary()
    return analyze_timelines(io.BytesIO(data), summary, **kwargs), summary


def assert_same(data: bytes, **kwargs) -> list:
    """Timelines, diagnoses, events and the frame listing (`frames` without --args) equal the plain
    path's, with and without an observer (which turns the quick path off and expands runs)."""
    expected, expected_summary = plain(data, **kwargs)
    got, got_summary = fast(data, **kwargs)
    assert got_summary == expected_summary
    assert got == expected
    t0 = expected_summary.start_epoch or 0.0
    diagnoses = [diagnose(t, t0) for t in got]
    assert diagnoses == [diagnose(t, t0) for t in expected]
    for d in diagnoses:  # equal values, and plain Python ones: a numpy integer would not serialise
        json.dumps(connection_document(d))
    recorder = Recorder()
    observed_summary = CaptureSummary()
    assert analyze_timelines(io.BytesIO(data), observed_summary, observer=recorder, **kwargs) == expected
    assert observed_summary == expected_summary
    assert recorder.events == list(iter_events(io.BytesIO(data), CaptureSummary(), batch=False, **kwargs))
    assert_same_frames(data, **kwargs)
    return got


def assert_same_frames(data: bytes, **kwargs) -> None:
    summary = CaptureSummary()
    expected = [frame_record(event, summary.start_epoch, all_arguments=False)
                for event in iter_events(io.BytesIO(data), summary, batch=False, **kwargs) if type(event) is Frame]
    fast_summary = CaptureSummary()
    got = []
    for item in frame_records(io.BytesIO(data), fast_summary, all_arguments=False, **kwargs):
        got.extend(item.records() if isinstance(item, FrameBatch) else [item])
    assert fast_summary == summary
    assert got == expected


def publish(n: int, channel: int = 1) -> bytes:
    """n basic.publish + content header + 16-byte body, back to back."""
    one = (pamqp_frame.marshal(commands.Basic.Publish(exchange="", routing_key="q"), channel)
           + pamqp_frame.marshal(pamqp_header.ContentHeader(0, 16, commands.Basic.Properties()), channel)
           + pamqp_frame.marshal(pamqp_body.ContentBody(b"x" * 16), channel))
    return one * n


def busy_conversation(**kwargs):
    """Handshake, a channel, publishes packed several to a segment, heartbeats both ways, bare ACKs,
    a channel.close, connection.close and a FIN exchange."""
    steps = [*handshake_steps(10), (0.01, C2S, PSH | ACK, synth.method_frame(commands.Channel.Open(), 1)), (0.011, S2C, PSH | ACK, synth.method_frame(commands.Channel.OpenOk(), 1))]
    t = 0.02
    for i in range(12):
        steps.append((t, C2S, PSH | ACK, publish(1 + i % 4)))
        steps.append((t + 0.0005, S2C, ACK, b""))
        if i % 4 == 3:
            steps.append((t + 0.001, S2C, PSH | ACK, HB))
            steps.append((t + 0.002, C2S, PSH | ACK, HB + publish(1)))
        t += 0.01
    steps += [
        (t, S2C, PSH | ACK, synth.method_frame(commands.Channel.Close(reply_code=406, reply_text="PRECONDITION", class_id=60, method_id=40), 1)),
        (t + 0.001, C2S, PSH | ACK, synth.method_frame(commands.Channel.CloseOk(), 1)),
        (t + 0.002, C2S, PSH | ACK, synth.method_frame(commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))),
        (t + 0.003, S2C, PSH | ACK, synth.method_frame(commands.Connection.CloseOk())),
        (t + 0.004, C2S, FIN | ACK, b""),
        (t + 0.005, S2C, FIN | ACK, b""),
        (t + 0.006, C2S, ACK, b""),
    ]
    return scripted_conversation(steps, **kwargs)


def split(segs: list, index: int, at: int) -> list:
    """Cut data segment `index` in two at byte `at` (the second keeps the time + 1 µs)."""
    s = segs[index]
    if not 0 < at < len(s.payload):
        return segs
    first = ConvSegment(s.timestamp, s.direction, s.flags, s.seq, s.ack, s.payload[:at])
    second = ConvSegment(round(s.timestamp + 1e-6, 6), s.direction, s.flags, s.seq + at, s.ack, s.payload[at:])
    return [*segs[:index], first, second, *segs[index + 1:]]


# ---- shipped captures -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CAPTURES.glob("*.pcap*")), ids=lambda p: p.name)
def test_every_shipped_capture(path) -> None:
    assert assert_same(path.read_bytes())


# ---- synthetic edge cases ---------------------------------------------------------------------------


def test_clean_and_busy_conversations() -> None:
    assert_same(synth.pcap_bytes(amqp_conversation().packets()))
    timelines = assert_same(synth.pcap_bytes(busy_conversation().packets()))
    assert timelines[0].c2s.frames > 40 and timelines[0].channel_closes


@pytest.mark.parametrize("linktype", [synth.LINKTYPE_ETHERNET, synth.LINKTYPE_LINUX_SLL, synth.LINKTYPE_RAW,
                                      synth.LINKTYPE_LINUX_SLL2, synth.LINKTYPE_NULL])
def test_link_types(linktype: int) -> None:
    assert_same(synth.pcap_bytes(busy_conversation().packets(linktype)))


def test_ipv6_and_vlan_take_the_plain_decoder_and_agree() -> None:
    conv = busy_conversation(client=("fd00::1", 40000), server=("fd00::2", 5672))
    assert_same(synth.pcap_bytes(conv.packets()))
    assert_same(synth.pcap_bytes(busy_conversation().packets(vlans=[7])))


def test_pcapng() -> None:
    packets = busy_conversation().packets()
    assert_same(synth.pcapng_bytes([{"interfaces": [(synth.LINKTYPE_ETHERNET, 6)], "packets": [
        (0, ts, data) for ts, _lt, data in packets]}]))


def test_frames_split_across_segments_at_every_offset() -> None:
    conv = busy_conversation()
    index = next(i for i, s in enumerate(conv.segments) if len(s.payload) > 100 and s.direction == C2S)
    for at in range(1, len(conv.segments[index].payload)):
        assert_same(synth.pcap_bytes(conv.packets(segments=split(conv.segments, index, at))))


def test_retransmission_reordering_and_loss() -> None:
    conv = busy_conversation()
    segs = conv.segments
    data = [i for i, s in enumerate(segs) if s.payload and i > 12]
    a, b, c = data[0], data[3], data[6]
    assert_same(synth.pcap_bytes(conv.packets(segments=[*segs[:a + 1], segs[a], *segs[a + 1:]])))  # duplicate
    assert_same(synth.pcap_bytes(conv.packets(segments=[*segs[:b], segs[b + 1], segs[b], *segs[b + 2:]])))  # swap
    assert_same(synth.pcap_bytes(conv.packets(segments=segs[:c] + segs[c + 1:])))  # lost


def test_mid_stream_start_and_non_standard_port() -> None:
    conv = busy_conversation(server=("127.0.0.1", 5999))
    assert_same(synth.pcap_bytes(conv.packets()))  # probed, proven by the protocol header
    assert_same(synth.pcap_bytes(conv.packets()), ports=(5999,))
    mid = busy_conversation()
    assert_same(synth.pcap_bytes(mid.packets(segments=mid.segments[16:])))


def test_snapped_payloads() -> None:
    packets = [(ts, lt, data[:80]) for ts, lt, data in busy_conversation().packets()]
    assert_same(b"".join([synth.pcap_header(synth.LINKTYPE_ETHERNET, snaplen=80)]
                         + [synth.pcap_record(ts, data, orig_len=len(full))
                            for (ts, _lt, data), (_t, _l, full) in zip(packets, busy_conversation().packets(), strict=False)]))


def test_reset_and_data_after_teardown() -> None:
    conv = busy_conversation()
    segs = conv.segments
    fin = next(i for i, s in enumerate(segs) if s.flags & FIN)
    rst = ConvSegment(segs[fin].timestamp, S2C, RST | ACK, segs[fin].seq, segs[fin].ack, b"")
    late = [ConvSegment(round(s.timestamp + 1, 6), s.direction, s.flags, s.seq, s.ack, s.payload)
            for s in segs[fin - 6 : fin - 2]]
    assert_same(synth.pcap_bytes(conv.packets(segments=[*segs[:fin], rst, *late])))


def test_new_data_after_a_reset() -> None:
    """The broker resets; the client, not yet aware, keeps publishing new bytes: payload after the
    teardown is 'late', not liveness."""
    steps = [*handshake_steps(10), (0.01, C2S, PSH | ACK, synth.method_frame(commands.Channel.Open(), 1)), (0.011, S2C, PSH | ACK, synth.method_frame(commands.Channel.OpenOk(), 1))]
    t = 0.02
    for _i in range(20):
        steps.append((t, C2S, PSH | ACK, publish(1)))
        steps.append((t + 0.0005, S2C, ACK, b""))
        t += 0.01
    steps.append((t, S2C, RST | ACK, b""))
    for _i in range(20):
        t += 0.01
        steps.append((t, C2S, PSH | ACK, publish(2)))
    timelines = assert_same(synth.pcap_bytes(scripted_conversation(steps).packets()))
    assert timelines[0].c2s.late_payload is not None


# ---- random mixes -----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_cuts_drops_duplicates_swaps_and_flipped_bytes(data) -> None:
    conv = busy_conversation()
    segs = list(conv.segments)
    for _ in range(data.draw(st.integers(0, 4), label="cuts")):
        index = data.draw(st.integers(0, len(segs) - 1))
        segs = split(segs, index, data.draw(st.integers(1, 200)))
    for _ in range(data.draw(st.integers(0, 3), label="edits")):
        index = data.draw(st.integers(10, len(segs) - 2))
        kind = data.draw(st.sampled_from(["drop", "dup", "swap"]))
        if kind == "drop":
            segs.pop(index)
        elif kind == "dup":
            segs.insert(index, segs[index])
        else:
            segs[index], segs[index + 1] = segs[index + 1], segs[index]
    blob = bytearray(synth.pcap_bytes(conv.packets(segments=segs)))
    for _ in range(data.draw(st.integers(0, 2), label="flips")):
        at = data.draw(st.integers(100, len(blob) - 1))
        blob[at] ^= data.draw(st.integers(1, 255))
    assert_same(bytes(blob))


# ---- bounded memory: connections handed over once closed (analyze_file(on_connection=...)) --------


def analyses(tmp_path, data: bytes):
    from analyzer.api import analyze_file

    path = tmp_path / "capture.pcap"
    path.write_bytes(data)
    whole = analyze_file(path)
    handed_over = []
    bounded = analyze_file(path, on_connection=handed_over.append)
    assert bounded.connections == []
    return whole, bounded, sorted(handed_over, key=lambda d: timeline_order(d.timeline))


def test_retired_connections_are_diagnosed_the_same(tmp_path, monkeypatch) -> None:
    """300 short connections 1 ms apart, each retired 2 ms after its close: the same diagnoses in
    the same order as when all are kept to the end."""
    monkeypatch.setattr("analyzer.flows.RETIRE_AFTER", 0.002)
    monkeypatch.setattr("analyzer.flows.RETIRED_KEYS_KEPT", 0.01)
    buf = io.BytesIO()
    synth.short_connections_pcap(buf, 300)
    whole, bounded, retired = analyses(tmp_path, buf.getvalue())
    assert len(retired) == 300
    assert retired == whole.connections
    assert bounded.summary == whole.summary


def test_a_straggler_after_retirement_is_counted_and_a_reused_port_is_a_new_connection(tmp_path, monkeypatch) -> None:
    """After RETIRE_AFTER (5 s) a closed connection is reported; a late ACK for it is not analyzed
    (and says so), a new SYN on the same ports is a new connection."""
    monkeypatch.setattr("analyzer.sources.pcap.CHUNK_SIZE", 600)  # retiring happens between read blocks
    first = busy_conversation()
    close = first.segments[-1].timestamp - 1_700_000_000.0
    other = scripted_conversation(handshake_steps(10), client=("127.0.0.1", 41000), start=1_700_000_000.0 + close + 6)
    last = first.segments[-1]
    straggler = ConvSegment(round(last.timestamp + 7, 6), C2S, ACK, last.seq, last.ack, b"")
    again = scripted_conversation(handshake_steps(10), start=1_700_000_000.0 + close + 8, client_isn=90_000)
    packets = (first.packets() + other.packets() + first.packets(segments=[straggler]) + again.packets())
    whole, bounded, retired = analyses(tmp_path, synth.pcap_bytes(sorted(packets, key=lambda p: p[0])))
    assert [d.timeline.info.id for d in retired] == [d.timeline.info.id for d in whole.connections]
    assert len(retired) == 3 and retired[0].timeline.info.id == retired[2].timeline.info.id
    assert retired[1:] == whole.connections[1:]
    assert retired[0].timeline.c2s.segments == whole.connections[0].timeline.c2s.segments - 1
    assert any("1 packet arrived more than 5 s after its connection closed" in w for w in bounded.summary.warnings)


# ---- a live source: packets one at a time, the clock advanced between them ----------------------


@pytest.mark.parametrize("path", sorted(CAPTURES.glob("*.pcap*")), ids=lambda p: p.name)
def test_packets_fed_one_at_a_time_as_a_live_source_would(path) -> None:
    """Engine.feed + advance (what a live watch does) gives the file's timelines and diagnoses,
    retiring the closed connections as it goes."""
    expected, expected_summary = plain(path.read_bytes())
    summary = CaptureSummary()
    retired: list = []
    engine = Engine(summary, on_retire=retired.append)
    reader = open_capture(io.BytesIO(path.read_bytes()))
    summary.format = reader.format
    for packet in reader:
        engine.feed(packet)
        engine.advance(packet.timestamp)
    summary.warnings.extend(reader.warnings)
    got = sorted(retired + engine.finish(), key=timeline_order)
    assert summary == expected_summary
    assert got == expected
    t0 = summary.start_epoch or 0.0
    assert [diagnose(t, t0) for t in got] == [diagnose(t, t0) for t in expected]
