"""File → ConnectionTimelines (analyze) or frames (frames) without an event per packet and frame.

Why it exists: the plain path (pipeline.iter_events → TimelineBuilder.feed) builds a Segment, a
SegmentEvent and a Frame for every packet and frame and dispatches each one; on a publish/deliver
capture that is most of the time. A timeline needs none of them for the common packet.

Strategy: the *same* state objects as the plain path (Flow, HalfStream, FrameDecoder,
TimelineBuilder), the same order of updates, at three speeds:
  - batch.py: within a read block, each run of ordinary packets (no SYN/FIN/RST, in sequence,
    whole frames, ...) is applied at once from numpy columns; with keep_frames its frames are
    listed as FrameColumns. Packets of a flow are batched from the first block that starts after
    its handshake.
  - _fast_packet: any other packet of an AMQP flow with no SYN/FIN/RST that starts at the next
    expected byte (or is a whole retransmission), with no reordering buffer or pending
    capture-loss ACK in either direction, is applied to HalfStream's counters directly and its
    whole frames scanned with one struct call each; connection-class methods and channel.close
    become a Frame for TimelineBuilder (their arguments are needed there). Not used with
    keep_frames, which needs every frame listed.
  - everything else — the first packets of a flow, probing, SYN/FIN/RST, holes, split or damaged
    frames, bodies spanning packets — goes through the plain stage that owns it (Flow.feed,
    FrameDecoder.feed) and its events through TimelineBuilder.feed.
So the rare cases have exactly one implementation, and tests/test_fastpath.py checks that
timelines, diagnoses and frame listings equal the plain path's on every shipped capture and on
synthetic edge cases, with read blocks as shipped and of a few records.

With on_retire, connections closed RETIRE_AFTER seconds of capture time earlier are handed over
and forgotten (_Retirement), so memory follows the connections open at once.
"""
from __future__ import annotations

import gc
import struct
from collections import deque
from contextlib import contextmanager
from typing import BinaryIO, Callable, Iterable, Iterator

import numpy as np

from analyzer.amqp import framing
from analyzer.amqp.spec import METHOD_NAMES
from analyzer.net.packets import IP_OFFSETS, PacketDecoder
from analyzer.engine.batch import MIN_RUN, FastSide, FrameColumns, Plan
from analyzer.sources.pcap import RecordBlock, open_capture
from analyzer.engine.pipeline import DEFAULT_PORTS, PROGRESS_EVERY, ProgressCallback, _new_flow, _summarise
from analyzer.records import (
    ACK,
    FIN,
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_HEARTBEAT_OLD,
    FRAME_METHOD,
    RST,
    SYN,
    CaptureSummary,
    Frame,
    RawPacket,
)
from analyzer.flows import AMQP, Flow
from analyzer.net.tcp import SEQ_HALF, SEQ_MOD
from analyzer.timeline import CHANNEL_CLOSE, FRAME_KIND_NAMES, ConnectionTimeline, TimelineBuilder

# From the ethertype to the TCP flags, for a 20-byte IPv4 header: ethertype, version/IHL, total length,
# flags/fragment offset, protocol, (addresses, ports skipped), seq, ack, data offset, TCP flags.
_ETH_IPV4_TCP = struct.Struct("!HBxH2xHxB2x8x4xIIBB")
_PORTS = struct.Struct("!HH")
_FRAME_HEADER = framing._HEADER  # type, channel, size: the decoder's own format
_IDS = framing._IDS
_FRAMES = framing._FRAMES  # decoder mode: between frames
_FRAME_END = framing.FRAME_END
_MAX_BUFFERED_FRAME = framing.MAX_BUFFERED_FRAME
_NOT_ACK_ONLY = SYN | FIN | RST


def analyze_timelines(
    fileobj: BinaryIO,
    summary: CaptureSummary,
    *,
    ports: Iterable[int] = DEFAULT_PORTS,
    show_secrets: bool = False,
    progress: ProgressCallback | None = None,
    on_retire: Callable[[ConnectionTimeline], None] | None = None,
) -> list:
    """The ConnectionTimelines TimelineBuilder would build from iter_events, in its order.

    With `on_retire`, a connection closed (FIN both ways, or RST) more than RETIRE_AFTER seconds
    of capture time ago is handed to it and forgotten — its flow, decoders and timeline — so memory
    follows the connections open at once, not all of them; the list returned holds the rest.
    A packet that still arrives for a retired connection is not analyzed (summary warning).
    """
    builder = TimelineBuilder(show_secrets=show_secrets)
    with _no_cyclic_gc():
        for _ in _drive(fileobj, summary, builder, ports=ports, progress=progress, keep_frames=False,
                        on_retire=on_retire):
            pass
    return builder.result()


def iter_frames(
    fileobj: BinaryIO,
    summary: CaptureSummary,
    *,
    ports: Iterable[int] = DEFAULT_PORTS,
    progress: ProgressCallback | None = None,
) -> Iterator[Frame | FrameColumns]:
    """Every AMQP frame iter_events would give, in its order: a Frame for each frame of a packet
    that took the plain path, a FrameColumns for each run of ordinary packets. Connections closed
    RETIRE_AFTER seconds earlier are forgotten, as with analyze_timelines' on_retire."""
    builder = TimelineBuilder()
    with _no_cyclic_gc():
        for items in _drive(fileobj, summary, builder, ports=ports, progress=progress, keep_frames=True,
                            on_retire=_forget):
            yield from items


def _forget(timeline: ConnectionTimeline) -> None:
    """A retired connection's timeline, when only frames are listed: nothing to keep."""


@contextmanager
def _no_cyclic_gc():
    # The cyclic garbage collector rescans every tracked object whenever enough new ones pile up;
    # timelines, flows and their decoders live until the end, so on 50,000 short connections
    # those rescans were 45% of the run (5.6 s -> 3.0 s without them). Nothing here makes
    # reference cycles per packet, so plain reference counting frees everything in the meantime.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc_was_enabled:
            gc.enable()


def _drive(fileobj: BinaryIO, summary: CaptureSummary, builder: TimelineBuilder, *, ports: Iterable[int],
           progress: ProgressCallback | None, keep_frames: bool,
           on_retire: Callable[[ConnectionTimeline], None] | None = None) -> Iterator[list]:
    """The engine: feeds `builder` everything iter_events would, block by block. With
    `keep_frames`, yields after each block the frames it completed (Frames and FrameColumns, in
    capture order); the per-packet inlined path, which counts frames without listing them, is
    then not used."""
    reader = open_capture(fileobj)
    summary.format = reader.format
    packets = PacketDecoder(summary)
    feed_event = builder.feed
    timelines = builder.timelines
    amqp_ports = frozenset(ports)
    # key: src address + dst address + ports as bytes (one slice of the packet for IPv4)
    # value: [flow, side, FastSide or None], or _RETIRED
    flows: dict[bytes, list] = {}
    all_flows: dict[int, Flow] = {}  # by id(flow), in creation order
    unpack_headers = _ETH_IPV4_TCP.unpack_from
    out: list = []  # this block's frames, when kept
    retiring = _Retirement(flows, all_flows, timelines, on_retire, summary) if on_retire is not None else None

    def side_for_key(key: bytes) -> FastSide | None:
        entry = flows.get(key)
        if entry is None or entry is _RETIRED:
            return None
        fast = entry[2]
        if fast is None:
            fast = entry[2] = _make_fast(entry, timelines)
        return fast

    def one_packet(record: tuple) -> None:
        """One packet the per-packet way: the inlined common case, else the plain stages."""
        index, timestamp, linktype, data, orig_len = record
        # ---- Ethernet/SLL + 20-byte IPv4 header + TCP, unpacked at once ------------------------
        ip = IP_OFFSETS.get(linktype)
        if ip is not None and len(data) >= ip + 40 and not keep_frames:
            ethertype, ver_ihl, total_len, frag, proto, seq, ack, data_off, flags = unpack_headers(data, ip - 2)
            if (ethertype == 0x0800 and ver_ihl == 0x45 and proto == 6 and not frag & 0x3FFF
                    and not flags & _NOT_ACK_ONLY and flags & ACK):
                entry = flows.get(data[ip + 12 : ip + 24])  # addresses and ports: the flow key
                if entry is not None and entry is not _RETIRED:
                    fast = entry[2]
                    if fast is None:
                        fast = entry[2] = _make_fast(entry, timelines)
                    ip_end = ip + total_len if total_len else orig_len
                    start = ip + 20 + (data_off >> 4) * 4
                    if (fast is not None and data_off >= 0x50 and start <= ip_end and start <= len(data)
                            and _fast_packet(fast, data, start, ip_end, seq, ack, timestamp, index, feed_event)):
                        return
        # ---- the plain path: PacketDecoder, Flow.feed and TimelineBuilder.feed -------------------
        seg = packets.decode(RawPacket(*record))
        if seg is None:
            return
        key = seg.src + seg.dst + _PORTS.pack(seg.sport, seg.dport)
        entry = flows.get(key)
        if entry is _RETIRED:
            if seg.flags & (SYN | ACK) != SYN:
                retiring.late_packets += 1
                return
            entry = None  # a new connection on the 4-tuple
        if (entry is not None and seg.flags & (SYN | ACK) == SYN and entry[0].closed
                and entry[0].streams[entry[1]].syn_seq != seg.seq):
            entry = None  # the 4-tuple is reused by a new connection (as in pipeline.iter_events)
        if entry is None:
            flow = _new_flow(seg, amqp_ports, 0)
            if flow is None:
                return
            all_flows[id(flow)] = flow
            entry = flows[key] = [flow, 0, None]
            flows[seg.dst + seg.src + _PORTS.pack(seg.dport, seg.sport)] = [flow, 1, None]
        for event in entry[0].feed(seg, entry[1]):
            feed_event(event)
            if keep_frames and type(event) is Frame:
                out.append(event)
        if retiring is not None and seg.flags & (FIN | RST):
            retiring.closing(entry[0], key, seg.dst + seg.src + _PORTS.pack(seg.dport, seg.sport), seg.timestamp)

    index = 0
    timestamp = 0.0
    next_progress = PROGRESS_EVERY
    try:
        for block in reader.blocks():
            n = len(block.data_start)
            if summary.start_epoch is None:
                summary.start_epoch = float(block.timestamp[0])
            plan = Plan(block, side_for_key, keep_frames)
            records = None
            i = 0
            while i < n:
                hard = plan.next_hard(i)
                if hard - i >= MIN_RUN:
                    end = plan.run_end(i, hard)
                    if end - i >= MIN_RUN:
                        if keep_frames:
                            out.append(plan.run_frames(i, end))
                        plan.apply(i, end)
                        i = end
                        continue
                    hard = end
                # Packets i..hard (the hard one included) one by one, in capture order.
                if records is None:
                    records = _BlockRecords(block)
                stop = min(hard + 1, n)
                for k in range(i, stop):
                    one_packet(records.record(k))
                i = stop
            index = block.first_index + n
            timestamp = float(block.timestamp[-1])
            if progress is not None and index >= next_progress:
                next_progress = index + PROGRESS_EVERY
                progress(index, fileobj.tell())
            if out:
                yield out
                out = []
            if retiring is not None:
                retiring.retire(timestamp)
    finally:
        summary.warnings.extend(reader.warnings)
        if index:
            summary.packets = index
            summary.end_epoch = timestamp
    if retiring is not None:
        retiring.report()
    if index:
        for flow in all_flows.values():
            for event in flow.finish(timestamp, index):
                feed_event(event)
                if keep_frames and type(event) is Frame:
                    out.append(event)
        _summarise(summary)
    if out:
        yield out


# Capture seconds after a connection's close before it is retired (on_retire). A FIN retransmitted
# with exponential backoff (0.2 + 0.4 + 0.8 + 1.6 s) still arrives within it.
RETIRE_AFTER = 5.0
# A retired connection's 4-tuple is remembered this long, so that its stragglers are counted
# rather than taken for a new connection seen mid-stream; then it is forgotten too.
RETIRED_KEYS_KEPT = 15.0
_RETIRED: list = [None, 0, None]  # the flows-dict entry of a retired connection


class _Retirement:
    """Closed connections waiting out RETIRE_AFTER, and the retired ones' keys."""

    def __init__(self, flows: dict, all_flows: dict, timelines: dict, on_retire, summary: CaptureSummary) -> None:
        self.flows = flows
        self.all_flows = all_flows
        self.timelines = timelines
        self.on_retire = on_retire
        self.summary = summary
        self.waiting: dict[int, tuple] = {}  # id(flow) -> (flow, its two keys, time of its last FIN or RST)
        self.retired_keys: deque = deque()  # (retired at, key, reverse key)
        self.late_packets = 0

    def closing(self, flow: Flow, key: bytes, reverse: bytes, t: float) -> None:
        if flow.closed:
            self.waiting[id(flow)] = (flow, key, reverse, t)

    def retire(self, now: float) -> None:
        """Hand over and forget the connections closed before now - RETIRE_AFTER."""
        flows = self.flows
        for flow_id, (flow, key, reverse, closed_at) in list(self.waiting.items()):
            if now - closed_at <= RETIRE_AFTER:
                continue
            del self.waiting[flow_id]
            if flows.get(key, _RETIRED)[0] is flow:
                flows[key] = _RETIRED
            if flows.get(reverse, _RETIRED)[0] is flow:
                flows[reverse] = _RETIRED
            self.retired_keys.append((now, key, reverse))
            self.all_flows.pop(flow_id, None)
            timeline = self.timelines.pop(id(flow.info), None)
            if timeline is not None:
                self.on_retire(timeline)
        while self.retired_keys and now - self.retired_keys[0][0] > RETIRED_KEYS_KEPT:
            _, key, reverse = self.retired_keys.popleft()
            for k in (key, reverse):
                if flows.get(k) is _RETIRED:
                    del flows[k]

    def report(self) -> None:
        n = self.late_packets
        if n:
            one = n == 1
            self.summary.warnings.append(
                f"{n} packet{'' if one else 's'} arrived more than {RETIRE_AFTER:g} s after "
                f"{'its' if one else 'their'} connection closed and {'was' if one else 'were'} not analyzed "
                "(the connection was already reported)")


class _BlockRecords:
    """A block's records as the per-packet tuples (index, timestamp, linktype, data, orig_len)."""

    __slots__ = ("buf", "first", "start", "caplen", "timestamp", "orig_len", "linktype")

    def __init__(self, block: RecordBlock) -> None:
        self.buf = block.buf
        self.first = block.first_index + 1
        self.start = block.data_start.tolist()
        self.caplen = block.caplen.tolist()
        self.timestamp = block.timestamp.tolist()
        self.orig_len = block.orig_len.tolist()
        linktype = block.linktype
        self.linktype = linktype.tolist() if isinstance(linktype, np.ndarray) else linktype

    def record(self, k: int) -> tuple:
        start = self.start[k]
        linktype = self.linktype if type(self.linktype) is int else self.linktype[k]
        return (self.first + k, self.timestamp[k], linktype, self.buf[start : start + self.caplen[k]],
                self.orig_len[k])


def _make_fast(entry: list, timelines: dict) -> FastSide | None:
    """The cached fast-path view of a flow side, once the flow is AMQP (roles final) and has a timeline."""
    flow, side = entry[0], entry[1]
    if flow.state != AMQP:
        return None
    timeline = timelines.get(id(flow.info))
    if timeline is None:
        return None
    decoder = flow.decoders[side]
    return FastSide(timeline, timeline.side(decoder.direction), flow.streams[side], flow.streams[1 - side], decoder,
                 decoder.direction)


def _fast_packet(fast: FastSide, data: bytes, start: int, ip_end: int, seq: int, ack: int, t: float, index: int,
                 feed_event) -> bool:
    """Apply one ACK-flagged segment without SYN/FIN/RST as Flow.feed + TimelineBuilder would; False
    (nothing changed) when it is not the common case."""
    timeline = fast.timeline
    stream = fast.stream
    peer_stream = fast.peer_stream
    if (timeline.teardown is not None or stream.pending or stream.unseen_ack is not None
            or peer_stream.unseen_ack is not None or stream.next_seq is None):
        return False
    payload_len = ip_end - start
    retransmission = False
    if payload_len:
        if len(data) < ip_end:
            return False  # snapped: the stream records a gap
        ahead = (seq - stream.next_seq) % SEQ_MOD
        if ahead:
            if ahead < SEQ_HALF or SEQ_MOD - ahead < payload_len:
                return False  # a hole or a partial overlap: HalfStream.segment sorts it out
            retransmission = True
    # The peer's ACK of this direction's bytes (HalfStream.peer_ack) only matters past what we saw.
    peer_next = peer_stream.next_seq
    if peer_next is None or 0 < (ack - peer_next) % SEQ_MOD < SEQ_HALF:
        peer_stream.peer_ack(ack, t, index, [])
    # ---- TimelineBuilder.feed(SegmentEvent) with no SYN/FIN/RST and no teardown yet -------------
    if t > timeline.last_seen:
        timeline.last_seen = t
    side = fast.side
    side.segments += 1
    side.last_segment = t
    if payload_len and not retransmission:
        side.payload_bytes += payload_len
        if side.first_payload is None:
            side.first_payload = t
        side.last_payload = t
        side.ack_only_since_payload = 0
        side.first_ack_only_since_payload = None
    else:
        if retransmission:
            side.retransmissions += 1
        side.ack_only += 1
        side.ack_only_since_payload += 1
        side.last_ack_only = t
        if side.first_ack_only_since_payload is None:
            side.first_ack_only_since_payload = t
    if not payload_len or retransmission:
        return True
    # ---- HalfStream._deliver then FrameDecoder.feed ---------------------------------------------
    stream.offset += payload_len
    stream.next_seq = (stream.next_seq + payload_len) % SEQ_MOD
    decoder = fast.decoder
    if decoder.mode != _FRAMES:
        for event in decoder.feed(data[start:ip_end], t, index):
            feed_event(event)
        return True
    if decoder.buf:
        # The rest of a frame split across segments: scan it joined, as the decoder's buffer would.
        buf = bytes(decoder.buf) + data[start:ip_end]
        decoder.buf.clear()
        pos = 0
    else:
        buf = data
        pos = start
    first = pos
    end_buf = ip_end if buf is data else len(buf)
    count = 0
    last_type = 0
    last_ids = None
    unpack_header = _FRAME_HEADER.unpack_from
    while end_buf - pos >= 8:
        frame_type, channel, size = unpack_header(buf, pos)
        end = pos + 7 + size
        if end >= end_buf or buf[end] != _FRAME_END or size > _MAX_BUFFERED_FRAME:
            break  # incomplete, a body to count through, damage or a size to judge: the decoder's job
        if frame_type == FRAME_METHOD:
            if size < 4:
                break
            ids = _IDS.unpack_from(buf, pos + 7)
            if ids[0] == 10 or ids == CHANNEL_CLOSE:
                # Arguments needed: the plain TimelineBuilder path, after the frames before it.
                if count:
                    _apply_frames(side, t, count, last_type, last_ids)
                    count = 0
                frame = Frame(timeline.info, fast.direction, t, index, decoder.base + pos - first, FRAME_METHOD,
                              channel, size, bytes(buf[pos + 7 : end]), ids[0], ids[1])
                feed_event(frame)
                pos = end + 1
                continue
            last_ids = ids
        elif frame_type == FRAME_HEARTBEAT or frame_type == FRAME_HEARTBEAT_OLD:
            if count:
                _apply_frames(side, t, count, last_type, last_ids)
                count = 0
            side.frames += 1
            side.last_frame = t
            side.last_frame_name = "heartbeat"
            side.heartbeats += 1
            side.keep_heartbeat_time(t)
            if frame_type == FRAME_HEARTBEAT_OLD or size or channel:
                side.nonstandard_heartbeats += 1
                if side.first_nonstandard_heartbeat is None:
                    side.first_nonstandard_heartbeat = t
            pos = end + 1
            continue
        elif frame_type != FRAME_HEADER and frame_type != FRAME_BODY:
            break  # an unknown frame type: the decoder reports it and resynchronises
        count += 1
        last_type = frame_type
        pos = end + 1
    if count:
        _apply_frames(side, t, count, last_type, last_ids)
    decoder.base += pos - first
    if pos < end_buf:
        for event in decoder.feed(buf[pos:end_buf], t, index):
            feed_event(event)
    return True


def _apply_frames(side, t: float, count: int, last_type: int, last_ids) -> None:
    """`count` method/header/body frames completed at time t, the last of type `last_type`."""
    side.frames += count
    side.last_frame = t
    if last_type == FRAME_METHOD:
        side.last_frame_name = METHOD_NAMES.get(last_ids, "unknown method")
    else:
        side.last_frame_name = FRAME_KIND_NAMES[last_type]
