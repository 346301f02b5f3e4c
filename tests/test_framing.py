"""FrameDecoder (analyzer/amqp/framing.py): the sans-IO AMQP 0-9-1 frame decoder.

Every stream is fed three ways — whole, byte by byte, and in random chunks — and must give the
same events (h11/tests/test_io.py's habit). Frames are built with pamqp 4 so the bytes are what
a real peer sends.
"""
from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import body as pamqp_body
from pamqp import commands
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header
from pamqp import heartbeat as pamqp_heartbeat

from analyzer.amqp.frames import MAX_BUFFERED_FRAME, MAX_FRAME_SIZE
from analyzer.amqp.framing import FrameDecoder
from analyzer.records import (
    C2S,
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    ConnectionInfo,
    DecodeError,
    Endpoint,
    Frame,
    ProtocolHeader,
)

CONN = ConnectionInfo("10.0.0.1:52018->10.0.0.2:5672", Endpoint("10.0.0.1", 52018), Endpoint("10.0.0.2", 5672), 0.0, "syn")

PROTOCOL_HEADER = pamqp_header.ProtocolHeader().marshal()
HEARTBEAT = pamqp_heartbeat.Heartbeat().marshal()
assert HEARTBEAT == b"\x08\x00\x00\x00\x00\x00\x00\xce"


def method(cmd, channel: int = 0) -> bytes:
    return pamqp_frame.marshal(cmd, channel)


def content_header(body_size: int, channel: int = 1, **props) -> bytes:
    return pamqp_frame.marshal(pamqp_header.ContentHeader(0, body_size, commands.Basic.Properties(**props)), channel)


def body(data: bytes, channel: int = 1) -> bytes:
    return pamqp_frame.marshal(pamqp_body.ContentBody(data), channel)


def raw_frame(frame_type: int, channel: int, payload: bytes, end: int = 0xCE) -> bytes:
    return struct.pack("!BHI", frame_type, channel, len(payload)) + payload + bytes([end])


def publish(data: bytes, channel: int = 1) -> bytes:
    """basic.publish + content header + one body frame."""
    return (method(commands.Basic.Publish(exchange="amq.direct", routing_key="rk"), channel)
            + content_header(len(data), channel, content_type="text/plain", delivery_mode=2)
            + body(data, channel))


CLIENT_STREAM = (
    PROTOCOL_HEADER
    + method(commands.Connection.StartOk(client_properties={"product": "pika"}, mechanism="PLAIN",
                                         response="\x00guest\x00guest", locale="en_US"))
    + method(commands.Connection.TuneOk(channel_max=2047, frame_max=131072, heartbeat=60))
    + method(commands.Connection.Open(virtual_host="/"))
    + method(commands.Channel.Open(), 1)
    + HEARTBEAT
    + publish(b"hello world")
    + publish(b"")  # a zero-length body frame
    + publish(bytes(range(256)) * 20, channel=7)
    + HEARTBEAT
    + method(commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
)
CLIENT_UNITS = 1 + 4 + 1 + 3 + 3 + 3 + 1 + 1


def decoder(*, synced: bool = True, payload_bytes: int = 0) -> FrameDecoder:
    return FrameDecoder(CONN, C2S, synced=synced, payload_bytes=payload_bytes)


def key(event) -> tuple:
    """An event without its timestamp/packet (which depend on how the bytes were fed)."""
    if isinstance(event, Frame):
        return ("frame", event.type, event.channel, event.size, event.offset, event.class_id, event.method_id,
                event.payload)
    if isinstance(event, ProtocolHeader):
        return ("header", event.offset, event.raw, event.protocol)
    assert isinstance(event, DecodeError), event
    return ("error", event.offset, event.reason, event.skipped)


def feed_chunks(chunks, **kwargs) -> tuple[FrameDecoder, list]:
    dec = decoder(**kwargs)
    events: list = []
    for n, chunk in enumerate(chunks):
        events.extend(dec.feed(chunk, float(n), n))
    return dec, events


def random_chunks(data: bytes, rng: random.Random, max_chunk: int = 40) -> list[bytes]:
    chunks, pos = [], 0
    while pos < len(data):
        n = rng.randint(1, max_chunk)
        chunks.append(data[pos : pos + n])
        pos += n
    return chunks


def three_ways(data: bytes, **kwargs) -> list[tuple]:
    """Decode `data` whole, byte by byte and in random chunks; assert the same events; return them."""
    whole = [key(e) for e in feed_chunks([data], **kwargs)[1]]
    byte_by_byte = [key(e) for e in feed_chunks([data[i : i + 1] for i in range(len(data))], **kwargs)[1]]
    assert byte_by_byte == whole
    rng = random.Random(len(data))
    for _ in range(3):
        chunked = [key(e) for e in feed_chunks(random_chunks(data, rng), **kwargs)[1]]
        assert chunked == whole
    return whole


def frames(events: list[tuple]) -> list[tuple]:
    """(type, channel, size, offset, class_id, method_id) of the frame events."""
    return [e[1:7] for e in events if e[0] == "frame"]


# ---- whole / byte by byte / random chunks ---------------------------------------------------------


@pytest.mark.parametrize("payload_bytes", [0, 5, 100000])
def test_client_stream_same_events_three_ways(payload_bytes: int) -> None:
    events = three_ways(CLIENT_STREAM, payload_bytes=payload_bytes)
    assert events[0] == ("header", 0, PROTOCOL_HEADER, "amqp-0-9-1")
    assert all(e[0] in ("header", "frame") for e in events)
    assert len(events) == CLIENT_UNITS
    got = frames(events)
    # Offsets are contiguous: each frame starts where the previous one ended.
    offset = 8
    for _frame_type, _channel, size, off, _class_id, _method_id in got:
        assert off == offset
        offset += 8 + size
    assert offset == len(CLIENT_STREAM)
    assert [(t, c, cls, m) for t, c, _s, _o, cls, m in got] == [
        (FRAME_METHOD, 0, 10, 11), (FRAME_METHOD, 0, 10, 31), (FRAME_METHOD, 0, 10, 40), (FRAME_METHOD, 1, 20, 10),
        (FRAME_HEARTBEAT, 0, None, None),
        (FRAME_METHOD, 1, 60, 40), (FRAME_HEADER, 1, None, None), (FRAME_BODY, 1, None, None),
        (FRAME_METHOD, 1, 60, 40), (FRAME_HEADER, 1, None, None), (FRAME_BODY, 1, None, None),
        (FRAME_METHOD, 7, 60, 40), (FRAME_HEADER, 7, None, None), (FRAME_BODY, 7, None, None),
        (FRAME_HEARTBEAT, 0, None, None), (FRAME_METHOD, 0, 10, 50),
    ]
    bodies = [e for e in events if e[0] == "frame" and e[1] == FRAME_BODY]
    assert [b[-1] for b in bodies] == [b"hello world"[:payload_bytes], b"", (bytes(range(256)) * 20)[:payload_bytes]]
    assert [b[3] for b in bodies] == [11, 0, 5120]
    # Method and header payloads are kept whole, whatever payload_bytes says.
    tune_ok = next(e for e in events if e[0] == "frame" and e[5:7] == (10, 31))
    assert tune_ok[-1] == method(commands.Connection.TuneOk(channel_max=2047, frame_max=131072, heartbeat=60))[7:-1]


def test_server_stream_without_protocol_header_three_ways() -> None:
    stream = (method(commands.Connection.Start(server_properties={"product": "RabbitMQ"}, mechanisms="PLAIN",
                                               locales="en_US"))
              + method(commands.Connection.Tune(channel_max=0, frame_max=131072, heartbeat=60)) + HEARTBEAT)
    events = three_ways(stream)
    assert [(e[5], e[6]) for e in events] == [(10, 10), (10, 30), (None, None)]


def test_many_frames_in_one_feed() -> None:
    dec = decoder()
    events = dec.feed(HEARTBEAT * 50 + method(commands.Basic.Ack(delivery_tag=1), 1) * 50, 1.0, 1)
    assert len(events) == 100
    assert [e.offset for e in events] == [8 * i for i in range(50)] + [400 + 21 * i for i in range(50)]
    assert len(dec.buf) == 0


def test_frame_split_over_many_feeds_completes_on_the_last_byte() -> None:
    frame = method(commands.Connection.Start(server_properties={"product": "RabbitMQ"}, mechanisms="PLAIN",
                                             locales="en_US"))
    dec = decoder()
    for n in range(len(frame) - 1):
        assert dec.feed(frame[n : n + 1], float(n), n) == []
    [event] = dec.feed(frame[-1:], 99.0, 99)
    assert (event.class_id, event.method_id, event.offset, event.size) == (10, 10, 0, len(frame) - 8)
    assert (event.timestamp, event.packet) == (99.0, 99)  # the packet that completed the frame


def test_body_split_over_feeds_reports_the_completing_packet() -> None:
    frame = body(b"x" * 100)
    dec = decoder(payload_bytes=4)
    assert dec.feed(frame[:50], 1.0, 1) == []
    assert dec.feed(frame[50:-1], 2.0, 2) == []
    [event] = dec.feed(frame[-1:], 3.0, 3)
    assert (event.type, event.size, event.payload, event.packet, event.timestamp) == (FRAME_BODY, 100, b"xxxx", 3, 3.0)


# ---- protocol headers -----------------------------------------------------------------------------

TLS_CLIENT_HELLO = bytes.fromhex("16030100c8010000c40303") + bytes(range(32)) + b"\x00" * 150


@pytest.mark.parametrize(("head", "protocol"), [
    (b"AMQP\x00\x00\x09\x01", "amqp-0-9-1"),
    (b"AMQP\x00\x01\x00\x00", "amqp-1.0"),
    (b"AMQP\x03\x01\x00\x00", "amqp-1.0-sasl"),
    (b"AMQP\x01\x01\x00\x0a", "amqp-0-10"),
    (b"AMQP\x07\x07\x07\x07", "amqp-other"),
])
def test_protocol_header_is_recognised(head: bytes, protocol: str) -> None:
    events = three_ways(head + HEARTBEAT + method(commands.Connection.Close(reply_code=200, reply_text="", class_id=0,
                                                                          method_id=0)))
    assert events[0] == ("header", 0, head, protocol)
    if protocol == "amqp-0-9-1":
        assert [e[1] for e in events[1:]] == [FRAME_HEARTBEAT, FRAME_METHOD]
    else:
        assert events[1:] == []  # not 0-9-1: decoding stops


def test_tls_client_hello_is_recognised_and_decoding_stops() -> None:
    events = three_ways(TLS_CLIENT_HELLO + HEARTBEAT * 3)
    assert events == [("header", 0, TLS_CLIENT_HELLO[:8], "tls")]


def test_stopped_decoder_ignores_everything_after() -> None:
    dec = decoder()
    dec.feed(b"AMQP\x00\x01\x00\x00", 0.0, 0)
    for _ in range(100):
        assert dec.feed(HEARTBEAT * 100, 1.0, 1) == []
        assert dec.gap(10, 1.0, 1) == []
    assert len(dec.buf) < 64


# ---- bodies are counted, not buffered -------------------------------------------------------------


def test_ten_megabyte_body_in_64k_chunks_is_never_buffered() -> None:
    size = 10 * 1024 * 1024
    payload = bytes(range(256)) * (size // 256)
    stream = content_header(size) + body(payload) + HEARTBEAT
    dec = decoder(payload_bytes=16)
    events: list = []
    biggest = 0
    chunk = 64 * 1024
    for n, pos in enumerate(range(0, len(stream), chunk)):
        events.extend(dec.feed(stream[pos : pos + chunk], float(n), n))
        biggest = max(biggest, len(dec.buf))
    assert biggest < 64  # only the odd frame header ever waits in the buffer
    assert [(e.type, e.size) for e in events] == [(FRAME_HEADER, 14), (FRAME_BODY, size), (FRAME_HEARTBEAT, 0)]
    assert events[1].payload == payload[:16]
    assert events[1].offset == 22
    assert events[2].offset == 22 + 8 + size


# ---- errors and resynchronisation -----------------------------------------------------------------

OPEN_OK = method(commands.Channel.OpenOk(), 1)


def test_bad_frame_end_is_an_error_then_decoding_resumes_at_the_next_frame() -> None:
    bad = HEARTBEAT[:-1] + b"\xcd"
    events = three_ways(OPEN_OK + bad + OPEN_OK + HEARTBEAT)
    n = len(OPEN_OK)
    assert events[0][0] == "frame"
    assert events[1] == ("error", n, "bad frame-end 0xcd after a 0-byte frame", 0)
    assert events[2] == ("error", n + 1, "resynchronised after skipping 7 bytes", 7)
    assert frames(events[3:]) == [(FRAME_METHOD, 1, len(OPEN_OK) - 8, n + 8, 20, 11), (FRAME_HEARTBEAT, 0, 0, 2 * n + 8, None, None)]


def test_bad_frame_end_after_a_body_resumes_after_the_body() -> None:
    bad_body = body(b"abcdef")[:-1] + b"\x00"
    events = three_ways(bad_body + HEARTBEAT)
    # Reported at the frame's start; the body's bytes are not rescanned, whole or chunked.
    assert events[0] == ("error", 0, "bad frame-end 0x00 after a 6-byte body frame", 0)
    assert [e[0] for e in events] == ["error", "frame"]
    assert frames(events)[0] == (FRAME_HEARTBEAT, 0, 0, len(bad_body), None, None)


def test_unknown_frame_type_is_an_error_then_resync() -> None:
    events = three_ways(raw_frame(9, 0, b"abc") + HEARTBEAT)
    assert events[0] == ("error", 0, "unknown frame type 9", 0)
    assert events[1] == ("error", 1, "resynchronised after skipping 10 bytes", 10)
    assert frames(events) == [(FRAME_HEARTBEAT, 0, 0, 11, None, None)]


def test_method_frame_too_short_for_its_ids_is_an_error() -> None:
    events = three_ways(raw_frame(FRAME_METHOD, 0, b"\x00\x0a") + HEARTBEAT)
    assert events[0] == ("error", 0, "method frame of 2 bytes has no class/method ids", 0)
    assert frames(events) == [(FRAME_HEARTBEAT, 0, 0, 10, None, None)]


@pytest.mark.parametrize("frame_type", [FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT])
def test_four_gigabyte_frame_size_is_rejected_on_its_header(frame_type: int) -> None:
    dec = decoder()
    header = struct.pack("!BHI", frame_type, 1, 0xFFFFFFFF)
    [error] = dec.feed(header, 1.0, 1)  # only the 7-byte header has arrived
    assert isinstance(error, DecodeError)
    assert (error.offset, error.packet) == (0, 1)
    assert error.reason.startswith("impossible frame size 4294967295")
    events: list = []
    for n in range(40):  # 40 x 64 KiB of what the bogus frame claimed as its payload
        events.extend(dec.feed(b"\x00\xce\x05" * 21845, 2.0, 2 + n))
        assert len(dec.buf) < MAX_BUFFERED_FRAME
    assert events == []
    events = dec.feed(HEARTBEAT, 3.0, 99)
    assert [type(e) for e in events] == [DecodeError, Frame]
    assert events[0].reason == f"resynchronised after skipping {6 + 40 * 65535} bytes"
    assert events[1].type == FRAME_HEARTBEAT and events[1].offset == 7 + 40 * 65535


def test_method_frame_bigger_than_the_buffer_cap_is_rejected() -> None:
    dec = decoder()
    [error] = dec.feed(struct.pack("!BHI", FRAME_METHOD, 0, MAX_BUFFERED_FRAME + 1), 1.0, 1)
    assert "impossible frame size" in error.reason


def test_body_frame_above_the_largest_message_is_rejected() -> None:
    dec = decoder()
    [error] = dec.feed(struct.pack("!BHI", FRAME_BODY, 1, MAX_FRAME_SIZE + 1), 1.0, 1)
    assert "impossible frame size" in error.reason
    assert dec.feed(struct.pack("!BHI", FRAME_BODY, 1, MAX_FRAME_SIZE)[1:], 1.0, 1) == []


# ---- starting mid-stream and capture gaps ---------------------------------------------------------


def test_mid_stream_start_inside_a_body_resyncs_on_the_next_frame() -> None:
    frame = body(b"m" * 300)
    tail = frame[100:]  # the capture starts 93 bytes into the body's payload
    rest = HEARTBEAT + OPEN_OK + publish(b"later")
    events = three_ways(tail + rest, synced=False)
    assert events[0] == ("error", 0, f"resynchronised after skipping {len(tail)} bytes", len(tail))
    got = frames(events[1:])
    assert [(t, cls, m) for t, _c, _s, _o, cls, m in got] == [
        (FRAME_HEARTBEAT, None, None), (FRAME_METHOD, 20, 11), (FRAME_METHOD, 60, 40), (FRAME_HEADER, None, None),
        (FRAME_BODY, None, None)]
    assert got[0][3] == len(tail)
    assert len(events) == 6


def test_mid_stream_start_exactly_on_a_frame_boundary_has_no_error() -> None:
    events = three_ways(OPEN_OK + HEARTBEAT, synced=False)
    assert [e[0] for e in events] == ["frame", "frame"]


def test_unsynced_start_on_a_protocol_header_recognises_it() -> None:
    """A capture that missed the SYN but starts right on the protocol header."""
    events = three_ways(PROTOCOL_HEADER + OPEN_OK, synced=False)
    assert events[0] == ("header", 0, PROTOCOL_HEADER, "amqp-0-9-1")
    assert [e[0] for e in events] == ["header", "frame"]
    assert three_ways(b"AMQP\x00\x01\x00\x00" + OPEN_OK, synced=False) == [("header", 0, b"AMQP\x00\x01\x00\x00", "amqp-1.0")]


def test_unsynced_start_on_text_that_merely_begins_like_a_header_resyncs() -> None:
    events = three_ways(b"AMQPXYZW" + OPEN_OK, synced=False)
    assert events[0] == ("error", 0, "resynchronised after skipping 8 bytes", 8)
    assert [e[0] for e in events] == ["error", "frame"]


def test_protocol_header_after_a_gap_is_not_taken_for_the_stream_start() -> None:
    dec = decoder(synced=False)
    dec.gap(100, 1.0, 1)
    events = dec.feed(PROTOCOL_HEADER + OPEN_OK, 2.0, 2)
    assert [type(e) for e in events] == [DecodeError, Frame]


def test_gap_inside_a_body_keeps_sync() -> None:
    frame = body(b"b" * 1000)
    dec = decoder(payload_bytes=3)
    assert dec.feed(frame[:200], 1.0, 1) == []
    assert dec.gap(500, 2.0, 2) == []
    events = dec.feed(frame[700:] + HEARTBEAT, 3.0, 3)
    assert [(type(e), e.type, e.offset) for e in events] == [(Frame, FRAME_BODY, 0), (Frame, FRAME_HEARTBEAT, len(frame))]
    assert events[0].size == 1000
    assert events[0].payload == b"bbb"


def test_gap_inside_the_kept_prefix_of_a_body_does_not_splice_bytes() -> None:
    """Kept payload bytes must be contiguous stream bytes: never bytes from both sides of a hole."""
    frame = body(bytes(range(100)))
    dec = decoder(payload_bytes=50)
    dec.feed(frame[:7 + 10], 1.0, 1)  # payload bytes 0..9
    dec.gap(20, 2.0, 2)  # payload bytes 10..29 lost
    [event] = dec.feed(frame[7 + 30 :], 3.0, 3)
    assert event.type == FRAME_BODY and event.size == 100
    assert bytes(range(100)).startswith(event.payload)


def test_gap_that_ends_a_body_exactly_keeps_sync() -> None:
    frame = body(b"q" * 100)
    dec = decoder()
    dec.feed(frame[:50], 1.0, 1)
    assert dec.gap(100 + 7 - 50, 2.0, 2) == []  # the rest of the payload, not the frame-end
    events = dec.feed(b"\xce" + HEARTBEAT, 3.0, 3)
    assert [e.type for e in events] == [FRAME_BODY, FRAME_HEARTBEAT]


def test_gap_past_the_end_of_a_body_resyncs() -> None:
    frame = body(b"q" * 100)
    dec = decoder()
    dec.feed(frame[:50], 1.0, 1)
    dec.gap(len(frame) - 50 + 5, 2.0, 2)  # the body's tail and 5 bytes of the next frame
    events = dec.feed(OPEN_OK[5:] + HEARTBEAT, 3.0, 3)
    assert [type(e) for e in events] == [DecodeError, Frame]
    assert events[0].offset == len(frame) + 5
    assert events[0].skipped == len(OPEN_OK) - 5
    assert events[1].offset == len(frame) + len(OPEN_OK)


def test_gap_on_a_frame_boundary_resumes_without_error() -> None:
    dec = decoder()
    dec.feed(OPEN_OK, 1.0, 1)
    assert dec.gap(len(OPEN_OK), 2.0, 2) == []
    events = dec.feed(HEARTBEAT + OPEN_OK, 3.0, 3)
    assert [(type(e), e.offset) for e in events] == [(Frame, 2 * len(OPEN_OK)), (Frame, 2 * len(OPEN_OK) + 8)]


def test_gap_inside_a_method_frame_resyncs_on_the_next_anchor() -> None:
    start = method(commands.Connection.Start(server_properties={"product": "RabbitMQ"}, mechanisms="PLAIN",
                                             locales="en_US"))
    dec = decoder()
    assert dec.feed(start[:30], 1.0, 1) == []
    assert dec.gap(20, 2.0, 2) == []
    events = dec.feed(start[50:] + HEARTBEAT, 3.0, 3)
    assert [type(e) for e in events] == [DecodeError, Frame]
    assert events[0].reason == f"resynchronised after skipping {len(start) - 50} bytes"
    assert (events[0].offset, events[0].skipped) == (50, len(start) - 50)
    assert (events[1].type, events[1].offset) == (FRAME_HEARTBEAT, len(start))


def test_gap_before_the_first_byte_resyncs() -> None:
    dec = decoder()
    assert dec.gap(8, 1.0, 1) == []  # the protocol header was lost
    events = dec.feed(OPEN_OK, 2.0, 2)
    assert [(type(e), e.offset) for e in events] == [(Frame, 8)]


# ---- fuzz -----------------------------------------------------------------------------------------

VALID_UNITS = [HEARTBEAT, OPEN_OK, PROTOCOL_HEADER, content_header(5), body(b"12345"), publish(b"p" * 40),
               method(commands.Connection.Tune(channel_max=0, frame_max=131072, heartbeat=60)),
               b"\x08\x00\x00", b"\xce", struct.pack("!BHI", FRAME_BODY, 1, 0xFFFFFFFF),
               struct.pack("!BHI", FRAME_METHOD, 0, 60000)]

# Streams that look like AMQP: valid units, their fragments and random bytes mixed.
amqp_like = st.lists(
    st.one_of(st.sampled_from(VALID_UNITS), st.binary(max_size=30),
              st.sampled_from(VALID_UNITS).flatmap(lambda u: st.integers(0, len(u)).map(lambda n: u[:n]))),
    max_size=30).map(b"".join)


@st.composite
def fed(draw):
    """(synced, payload_bytes, [("data", bytes) | ("gap", n)])."""
    data = draw(st.one_of(amqp_like, st.binary(max_size=3000)))
    steps = []
    pos = 0
    while pos < len(data):
        n = draw(st.integers(1, 700))
        steps.append(("data", data[pos : pos + n]))
        pos += n
        if draw(st.integers(0, 9)) == 0:
            steps.append(("gap", draw(st.one_of(st.integers(1, 50), st.integers(1, 2**32)))))
    return draw(st.booleans()), draw(st.sampled_from([0, 3, 1 << 20])), steps


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fed())
def test_fuzz_decoder_never_raises_and_stays_bounded(case) -> None:
    """Bad bytes become events; any exception is a bug. The buffer never holds more than the
    largest frame it may buffer (MAX_BUFFERED_FRAME) plus one chunk."""
    synced, payload_bytes, steps = case
    dec = decoder(synced=synced, payload_bytes=payload_bytes)
    for n, (kind, value) in enumerate(steps):
        if kind == "data":
            events = dec.feed(value, float(n), n)
            assert len(dec.buf) <= MAX_BUFFERED_FRAME + len(value)
        else:
            events = dec.gap(value, float(n), n)
        for event in events:
            assert isinstance(event, (Frame, ProtocolHeader, DecodeError))
            if isinstance(event, Frame):
                assert len(event.payload) <= max(event.size if event.type in (FRAME_METHOD, FRAME_HEADER) else 0,
                                                 min(event.size, payload_bytes))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(amqp_like, st.binary(max_size=2000)), st.booleans(), st.randoms(use_true_random=False))
def test_fuzz_events_do_not_depend_on_chunking(data: bytes, synced: bool, rng: random.Random) -> None:
    """Whatever the bytes, how they are cut into feeds does not change the events."""
    whole = [key(e) for e in feed_chunks([data], synced=synced, payload_bytes=4)[1]]
    chunked = [key(e) for e in feed_chunks(random_chunks(data, rng, 17), synced=synced, payload_bytes=4)[1]]
    assert chunked == whole
