"""The engine's quick path for one packet: the common segment applied straight to its owners' state.

Why: the plain path builds a Segment, a SegmentEvent, a StreamData and a Frame for every packet
and frame, and dispatches each; a timeline needs none of them for the common packet. Here that
packet — an ACK without SYN/FIN/RST, at the next expected byte or a whole retransmission, of a
flow whose streams hold nothing back — is applied by calling the owners directly:
HalfStream.placement/advance/peer_ack (net/tcp.py), walk_whole_frames (amqp/frames.py) and
FrameDecoder.skip_whole_frames (amqp/framing.py), Direction.add_segment/add_frames/add_heartbeat
(timeline.py). Connection and channel methods still become Frame events for TimelineBuilder,
which reads the arguments of some. No rule lives here: only the choice of calls.
"""
from __future__ import annotations

from collections.abc import Callable

from analyzer.amqp.arguments import CONTROL_CLASSES
from analyzer.amqp.frames import FRAME_HEADER_SIZE, WholeFrame, walk_whole_frames, whole_frames
from analyzer.amqp.framing import FrameDecoder
from analyzer.flows import AMQP, Flow, FlowSide
from analyzer.net.packets import QuickTcp
from analyzer.net.tcp import ELSEWHERE, REPEATED, HalfStream
from analyzer.records import FRAME_METHOD, ConnectionInfo, Event, Frame
from analyzer.timeline import ConnectionTimeline, Direction, TimelineBuilder, frame_name

# Methods of these classes have their arguments read (the timeline: connection methods and
# channel.close; the frame listing: every connection and channel method): they stay single Frame
# events, never counted in bulk nor inside a run.
SINGLE_FRAME_CLASSES = frozenset(CONTROL_CLASSES)


class QuickSide:
    """What the quick paths touch of one side of one AMQP flow: the owners' state objects."""

    __slots__ = ("decoder", "direction", "flow", "info", "peer_stream", "side", "stream", "timeline")

    def __init__(self, flow: Flow, timeline: ConnectionTimeline, stream: HalfStream, peer_stream: HalfStream,
                 decoder: FrameDecoder) -> None:
        self.flow = flow
        self.timeline = timeline
        self.info: ConnectionInfo = timeline.info
        self.direction: str = decoder.direction
        self.side: Direction = timeline.side(decoder.direction)  # what this side sends
        self.stream = stream  # this side's bytes
        self.peer_stream = peer_stream  # the other side's bytes (this side's ACKs move it)
        self.decoder = decoder

    def ready(self) -> bool:
        """Nothing the quick paths cannot see is pending: no teardown yet, neither stream holds
        bytes or an ACK back (HalfStream.settled), and the flow is not TLS (its bytes are records)."""
        return (self.timeline.teardown is None and self.stream.settled and self.peer_stream.unseen_ack is None
                and self.flow.tls is None)


def quick_side(entry: FlowSide[QuickSide], builder: TimelineBuilder) -> QuickSide | None:
    """The flow side's QuickSide, made once its flow is AMQP (roles final) and has a timeline."""
    quick = entry.cache
    if quick is not None:
        return quick
    flow = entry.flow
    if flow.state != AMQP or flow.tls is not None:
        return None  # TLS flows take the plain path (a flow not yet decided is decided by quick_packet)
    timeline = builder.timeline_of(flow.info)
    decoder = flow.decoders[entry.side]
    if timeline is None or decoder is None:
        return None
    quick = entry.cache = QuickSide(flow, timeline, flow.streams[entry.side], flow.streams[1 - entry.side], decoder)
    return quick


def quick_packet(quick: QuickSide, data: bytes, fields: QuickTcp, t: float, index: int,
                 feed_event: Callable[[Event], None]) -> bool:
    """Apply one ACK segment without SYN/FIN/RST as Flow.feed + TimelineBuilder.feed would; False
    (and nothing changed) when it is not the common case."""
    if not quick.ready():
        return False
    stream = quick.stream
    _, seq, ack, _, start, end = fields
    payload_len = end - start
    retransmission = False
    if payload_len:
        where = stream.placement(seq, payload_len)
        if where == ELSEWHERE:
            return False
        retransmission = where == REPEATED
        if not retransmission and quick.flow.undecided and not quick.flow.decide_plain(data[start:end],
                                                                                         stream.offset == 0):
            return False  # the stream's first bytes are TLS: the plain path starts its session
    quick.peer_stream.peer_ack(ack, t, index)
    quick.timeline.saw(t)
    side = quick.side
    new_bytes = 0 if retransmission else payload_len
    side.add_segment(t, new_bytes, retransmission, True, False)
    if not new_bytes:
        return True
    stream.advance(new_bytes)
    decoder = quick.decoder
    if not decoder.at_frame_boundary:
        for event in decoder.feed(data[start:end], t, index):
            feed_event(event)
        return True
    stop = start
    while True:
        walked = walk_whole_frames(data, stop, end, SINGLE_FRAME_CLASSES)
        if walked.frame_count:
            for nonstandard in walked.heartbeats:
                side.add_heartbeat(t, nonstandard)
            side.add_frames(t, walked.frame_count - len(walked.heartbeats),
                            frame_name(walked.last_type, walked.last_ids))
        stop = walked.stop
        if stop == end:
            break
        # Stopped at a method whose arguments are read (a Frame event for TimelineBuilder), or at
        # a frame that is not whole (the decoder's).
        following, _ = whole_frames(data, stop, end)
        if not following:
            break
        feed_event(_method_frame(quick, data, following[0], decoder.base + stop - start, t, index))
        stop += FRAME_HEADER_SIZE + following[0][3] + 1
    decoder.skip_whole_frames(stop - start)
    if stop < end:
        for event in decoder.feed(data[stop:end], t, index):
            feed_event(event)
    return True


def _method_frame(quick: QuickSide, data: bytes, frame: WholeFrame, stream_offset: int, t: float, index: int) -> Frame:
    offset, _, channel, size, ids = frame
    payload = data[offset + FRAME_HEADER_SIZE : offset + FRAME_HEADER_SIZE + size]
    return Frame(quick.info, quick.direction, t, index, stream_offset, FRAME_METHOD, channel, size, payload,
                 ids >> 16, ids & 0xFFFF)
