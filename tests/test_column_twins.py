"""Each rule that has a column form for the engine's runs is held equal to its scalar form, which
stays the rule's home: the frame walk (frames.whole_frames / whole_frames_columns, and the
decoder on whole frames), the heartbeat rule, the common IPv4/TCP packet
(packets.ipv4_tcp_fields / ipv4_tcp_columns), sequence comparison (tcp.seq_after /
seq_after_columns) and the segment counters (timeline.Direction.add_segment / add_segments)."""
from __future__ import annotations

import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.amqp import frames as frame_format
from analyzer.amqp import framing
from analyzer.amqp.arguments import CONTROL_CLASSES
from analyzer.amqp.frames import (
    heartbeat_is_nonstandard,
    heartbeat_is_nonstandard_columns,
    whole_frames,
    whole_frames_columns,
)
from analyzer.amqp.framing import FrameDecoder
from analyzer.net.packets import IP_OFFSETS, ipv4_tcp_columns, ipv4_tcp_fields
from analyzer.net.tcp import SEQ_MOD, seq_after, seq_after_columns
from analyzer.records import C2S, FRAME_METHOD, ConnectionInfo, Endpoint, Frame
from analyzer.timeline import Direction
from tests import synth

FRAME_TYPES = st.sampled_from([1, 2, 3, 4, 8, 0, 9, 206])


@st.composite
def frame_bytes(draw) -> bytes:
    """A frame, mostly well-formed: method (with known or unknown ids), header, body or heartbeat;
    sometimes with a wrong type, size or frame-end."""
    frame_type = draw(FRAME_TYPES)
    channel = draw(st.sampled_from([0, 1, 7, 65535]))
    if frame_type == FRAME_METHOD:
        payload = struct.pack("!HH", draw(st.sampled_from([10, 20, 50, 60, 85, 999])), draw(st.integers(0, 120)))
        payload += draw(st.binary(max_size=12))
        if draw(st.integers(0, 9)) == 0:
            payload = payload[: draw(st.integers(0, 3))]  # a method frame without its ids
    else:
        payload = draw(st.binary(max_size=24))
    end = 0xCE if draw(st.integers(0, 9)) else draw(st.integers(0, 255))
    size = len(payload) if draw(st.integers(0, 9)) else draw(st.integers(0, 40))
    return struct.pack("!BHI", frame_type, channel, size) + payload + bytes([end])


@st.composite
def payloads(draw) -> list[bytes]:
    out = []
    for _ in range(draw(st.integers(0, 130))):
        frames = b"".join(draw(st.lists(frame_bytes(), min_size=1, max_size=6)))
        if draw(st.integers(0, 7)) == 0:
            frames = frames[: draw(st.integers(0, len(frames)))]  # cut: a frame split across segments
        out.append(frames)
    return out


@settings(max_examples=60, deadline=None)
@given(payloads(), st.sampled_from([frozenset(), frozenset(CONTROL_CLASSES)]), st.sampled_from([1, 64, 1 << 30]),
       st.booleans())
def test_whole_frames_columns_equal_the_scalar_walk(parts, stop_classes, python_tail, keep_frames) -> None:
    python_tail_was = frame_format.PYTHON_TAIL
    frame_format.PYTHON_TAIL = python_tail  # numpy rounds for all, for some, or none
    try:
        buf = b"\x00" * 5 + b"".join(parts) + b"\x00" * 3
        starts = np.cumsum([5] + [len(p) for p in parts[:-1]]).astype(np.int64) if parts else np.zeros(0, np.int64)
        ends = starts + np.array([len(p) for p in parts], dtype=np.int64)
        walk = whole_frames_columns(buf, starts, ends, stop_classes, keep_frames)
    finally:
        frame_format.PYTHON_TAIL = python_tail_was
    kept = []
    beats = []
    for k, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=False)):
        frames, stop = whole_frames(buf, start, end, stop_classes)
        whole = stop == end
        assert walk.whole[k] == whole
        if not whole:
            continue
        assert walk.frame_count[k] == len(frames)
        if frames:
            assert (walk.last_type[k], walk.last_ids[k]) == (frames[-1][1], frames[-1][4])
        kept += [(k, *f) for f in frames]
        beats += [(k, heartbeat_is_nonstandard(f[1], f[2], f[3])) for f in frames if f[1] in (4, 8)]
    assert list(zip(walk.heartbeat_payload.tolist(), walk.heartbeat_nonstandard.tolist(), strict=False)) == beats
    if keep_frames:
        assert walk.frames is not None
        assert list(zip(*(column.tolist() for column in walk.frames), strict=False)) == kept


@settings(max_examples=100, deadline=None)
@given(st.lists(frame_bytes(), max_size=12))
def test_the_decoder_emits_exactly_the_whole_frames_of_a_buffer(frames) -> None:
    buf = b"".join(frames)
    whole, stop = whole_frames(buf, 0, len(buf))
    info = ConnectionInfo("c->s", Endpoint("127.0.0.1", 1), Endpoint("127.0.0.1", 5672), 0.0, "syn")
    decoder = FrameDecoder(info, C2S)
    decoder.mode = framing._FRAMES  # past the protocol header
    events = decoder.feed(buf, 1.0, 1)
    decoded = [e for e in events if type(e) is Frame][: len(whole)]
    assert [(e.offset, e.type, e.channel, e.size, (e.class_id or 0) << 16 | (e.method_id or 0))
            for e in decoded] == whole
    if stop == len(buf):
        assert decoder.at_frame_boundary and decoder.base == len(buf)


@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 65535), st.integers(0, 1 << 20)), max_size=50))
def test_heartbeat_rule_in_columns(rows) -> None:
    columns = [np.array(c, dtype=np.int64) for c in zip(*rows, strict=False)] if rows else [np.zeros(0, np.int64)] * 3
    assert heartbeat_is_nonstandard_columns(*columns).tolist() == [heartbeat_is_nonstandard(*r) for r in rows]


@given(st.lists(st.tuples(st.integers(0, SEQ_MOD - 1), st.integers(0, SEQ_MOD - 1)), max_size=50))
def test_seq_after_in_columns(pairs) -> None:
    a = np.array([p[0] for p in pairs], dtype=np.int64)
    b = np.array([p[1] for p in pairs], dtype=np.int64)
    assert seq_after_columns(a, b).tolist() == [seq_after(x, y) for x, y in pairs]


@st.composite
def records(draw) -> bytes:
    """One link-layer record: mostly IPv4/TCP over Ethernet, damaged now and then."""
    payload = draw(st.binary(max_size=40))
    flags = draw(st.integers(0, 0x3F))
    ip = synth.tcp_packet("10.0.0.1", "10.0.0.2", 40000, 5672, draw(st.integers(0, SEQ_MOD - 1)),
                          draw(st.integers(0, SEQ_MOD - 1)), flags, payload)
    if draw(st.integers(0, 4)) == 0:
        at = draw(st.integers(0, len(ip) - 1))
        ip = ip[:at] + bytes([draw(st.integers(0, 255))]) + ip[at + 1:]
    record = synth.ethernet(ip)
    if draw(st.integers(0, 6)) == 0:
        record = record[: draw(st.integers(0, len(record)))]
    return record


@settings(max_examples=100, deadline=None)
@given(st.lists(records(), min_size=1, max_size=30))
def test_ipv4_tcp_columns_equal_the_scalar_rule(packets) -> None:
    ip = IP_OFFSETS[synth.LINKTYPE_ETHERNET]
    buf = b"".join(packets) + b"\x00" * 64
    data_start = np.cumsum([0] + [len(p) for p in packets[:-1]]).astype(np.int64)
    caplen = np.array([len(p) for p in packets], dtype=np.int64)
    columns = ipv4_tcp_columns(buf, data_start, caplen, ip, True)
    for k, packet in enumerate(packets):
        fields = ipv4_tcp_fields(packet, ip)
        assert bool(columns.ok[k]) == (fields is not None)
        if fields is not None:
            base = int(data_start[k])
            assert (columns.key[k].tobytes(), int(columns.seq[k]), int(columns.ack[k]), int(columns.flags[k]),
                    int(columns.start[k]) - base, int(columns.end[k]) - base) == tuple(fields)


@given(st.lists(st.tuples(st.floats(0, 1e4), st.sampled_from([0, 0, 1, 8, 1460])), max_size=40),
       st.booleans())
def test_add_segments_equals_add_segment_one_by_one(segments, warm) -> None:
    one_by_one, at_once = Direction(), Direction()
    if warm:  # counters already running from earlier packets
        for d in (one_by_one, at_once):
            d.add_segment(0.5, 10, False, True, False)
            d.add_segment(0.6, 0, False, True, False)
    for t, n in segments:
        one_by_one.add_segment(t, n, False, True, False)
    at_once.add_segments(np.array([t for t, _ in segments], dtype=np.float64),
                         np.array([n for _, n in segments], dtype=np.int64))
    assert at_once == one_by_one
