"""The engine's quick path for one packet: the common segment applied straight to its owners' state.

Why: the plain path builds a Segment, a SegmentEvent, a StreamData and a Frame for every packet
and frame, and dispatches each; a timeline needs none of them for the common packet. Here that
packet — an ACK without SYN/FIN/RST, at the next expected byte or a whole retransmission, of a
flow whose streams hold nothing back — is applied by calling the owners directly:
HalfStream.placement/advance/peer_ack (net/tcp.py), whole_frames and
FrameDecoder.skip_whole_frames (amqp/framing.py), Direction.add_segment/add_frames/add_heartbeat
(timeline.py). Connection methods and channel.close still become Frame events for
TimelineBuilder, which reads their arguments. No rule lives here: only the choice of calls.
"""
from __future__ import annotations

from collections.abc import Callable

from analyzer.amqp.framing import (
    FRAME_HEADER_SIZE,
    HEARTBEAT_TYPES,
    FrameDecoder,
    WholeFrame,
    heartbeat_is_nonstandard,
    whole_frames,
)
from analyzer.flows import AMQP, FlowSide
from analyzer.net.packets import QuickTcp
from analyzer.net.tcp import ELSEWHERE, REPEATED, HalfStream
from analyzer.records import FRAME_METHOD, ConnectionInfo, Event, Frame
from analyzer.timeline import ConnectionTimeline, Direction, TimelineBuilder, frame_name, reads_arguments


class QuickSide:
    """What the quick paths touch of one side of one AMQP flow: the owners' state objects."""

    __slots__ = ("decoder", "direction", "info", "peer_stream", "side", "stream", "timeline")

    def __init__(self, timeline: ConnectionTimeline, stream: HalfStream, peer_stream: HalfStream,
                 decoder: FrameDecoder) -> None:
        self.timeline = timeline
        self.info: ConnectionInfo = timeline.info
        self.direction: str = decoder.direction
        self.side: Direction = timeline.side(decoder.direction)  # what this side sends
        self.stream = stream  # this side's bytes
        self.peer_stream = peer_stream  # the other side's bytes (this side's ACKs move it)
        self.decoder = decoder

    def ready(self) -> bool:
        """Nothing the quick paths cannot see is pending: no teardown yet, neither stream holds
        bytes or an ACK back (HalfStream.settled)."""
        return self.timeline.teardown is None and self.stream.settled and self.peer_stream.unseen_ack is None


def quick_side(entry: FlowSide[QuickSide], builder: TimelineBuilder) -> QuickSide | None:
    """The flow side's QuickSide, made once its flow is AMQP (roles final) and has a timeline."""
    quick = entry.cache
    if quick is not None:
        return quick
    flow = entry.flow
    if flow.state != AMQP:
        return None
    timeline = builder.timeline_of(flow.info)
    decoder = flow.decoders[entry.side]
    if timeline is None or decoder is None:
        return None
    quick = entry.cache = QuickSide(timeline, flow.streams[entry.side], flow.streams[1 - entry.side], decoder)
    return quick


def quick_packet(quick: QuickSide, data: bytes, fields: QuickTcp, t: float, index: int,
                 feed_event: Callable[[Event], None]) -> bool:
    """Apply one ACK segment without SYN/FIN/RST as Flow.feed + TimelineBuilder.feed would; False
    (and nothing changed) when it is not the common case."""
    if not quick.ready():
        return False
    stream = quick.stream
    payload_len = fields.end - fields.start
    retransmission = False
    if payload_len:
        where = stream.placement(fields.seq, payload_len)
        if where == ELSEWHERE:
            return False
        retransmission = where == REPEATED
    quick.peer_stream.peer_ack(fields.ack, t, index)
    quick.timeline.saw(t)
    side = quick.side
    new_bytes = 0 if retransmission else payload_len
    side.add_segment(t, new_bytes, retransmission, True, False)
    if not new_bytes:
        return True
    stream.advance(new_bytes)
    decoder = quick.decoder
    start, end = fields.start, fields.end
    if not decoder.at_frame_boundary:
        for event in decoder.feed(data[start:end], t, index):
            feed_event(event)
        return True
    frames, stop = whole_frames(data, start, end)
    count = 0
    last: WholeFrame | None = None
    for frame in frames:
        if frame.type in HEARTBEAT_TYPES:
            if last is not None:
                side.add_frames(t, count, frame_name(last.type, last.ids))
                count, last = 0, None
            side.add_heartbeat(t, heartbeat_is_nonstandard(frame.type, frame.channel, frame.size))
        elif frame.type == FRAME_METHOD and reads_arguments(frame.ids >> 16, frame.ids & 0xFFFF):
            if last is not None:
                side.add_frames(t, count, frame_name(last.type, last.ids))
                count, last = 0, None
            feed_event(_method_frame(quick, data, frame, decoder.base + frame.offset - start, t, index))
        else:
            count += 1
            last = frame
    if last is not None:
        side.add_frames(t, count, frame_name(last.type, last.ids))
    decoder.skip_whole_frames(stop - start)
    if stop < end:
        for event in decoder.feed(data[stop:end], t, index):
            feed_event(event)
    return True


def _method_frame(quick: QuickSide, data: bytes, frame: WholeFrame, offset: int, t: float, index: int) -> Frame:
    payload = data[frame.offset + FRAME_HEADER_SIZE : frame.offset + FRAME_HEADER_SIZE + frame.size]
    return Frame(quick.info, quick.direction, t, index, offset, FRAME_METHOD, frame.channel, frame.size, payload,
                 frame.ids >> 16, frame.ids & 0xFFFF)
