"""The engine's runs: stretches of ordinary packets of a read block applied at once, from columns.

Why: in pure Python the cheapest per-packet loop that reads a TCP header and finds its flow
already costs about 0.45 µs; a busy capture has ~1.5 frames per packet and ten-odd counters to
update per packet. Done by column it is a fraction of that.

An *ordinary* packet is one the quick path (quick.py) would apply with no branch taken: the
common IPv4/TCP packet (packets.ipv4_tcp_columns) with ACK and no SYN/FIN/RST, of a flow side
whose QuickSide existed when the block started, new bytes exactly at the next expected sequence
number, an ACK that does not pass what the capture saw of the peer, and a payload that is whole
AMQP frames with no connection- or channel-class method (frames.whole_frames_columns; their
arguments are read one frame at a time). A run is a stretch of consecutive ordinary packets.
For a run, every counter is a sum, a count, a last or a first over columns, applied by the
owners' column methods (Direction.add_segments, HalfStream.advance,
FrameDecoder.skip_whole_frames); heartbeats are the only per-frame Python work. Every other
packet ("hard") goes through the engine one by one, in capture order.

How ordinary is decided without the state of the packets before it: a payload packet's sequence
number is compared with the end of the previous payload packet of its side *in the block*, and
an ACK with the end of the peer's latest payload packet before it. The first of each inside a
run is compared with the live state instead, when the run starts (`Plan.run_end`). Frames are
walked per packet on the guess that each payload starts on a frame boundary: a packet whose walk
does not end exactly at its end is hard, which also makes the guess right for the packet after it.
"""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from analyzer.amqp.frames import FRAME_HEADER_SIZE, FrameTable, kept_payload_size, whole_frames_columns
from analyzer.engine.quick import SINGLE_FRAME_CLASSES, QuickSide
from analyzer.net.packets import IP_OFFSETS, IPV4_TTL_OFFSET, QUICK_HEADER_BYTES, ipv4_tcp_columns
from analyzer.net.tcp import SEQ_MASK, seq_after_columns
from analyzer.records import ACK, FIN, FRAME_METHOD, RST, SYN, Frame, SegmentEvent
from analyzer.sources.pcap import RecordBlock
from analyzer.timeline import frame_name

# A run shorter than this is cheaper packet by packet than its fixed numpy cost (measured on
# big.pcap: ~100 µs per run against ~1.5 µs per packet).
MIN_RUN = 64
_I64 = npt.NDArray[np.int64]


class FrameColumns(NamedTuple):
    """The frames of one run, in capture order, as columns."""

    sides: list[QuickSide]  # by side number
    side: _I64
    timestamp: npt.NDArray[np.float64]
    packet: _I64  # record number in the file (1-based)
    offset: _I64  # stream offset of the frame's first byte in its direction
    type: _I64
    channel: _I64
    size: _I64
    ids: _I64  # class_id << 16 | method_id for method frames
    position: _I64  # of the frame's first byte in the read block's buffer


class SegmentColumns(NamedTuple):
    """The packets of one run, in capture order, as columns: the SegmentEvents `PacketRun.events()`
    gives (none of a run's packets is a retransmission or snapped: retransmission False, missing 0)."""

    sides: list[QuickSide]  # by side number
    side: _I64
    timestamp: npt.NDArray[np.float64]
    packet: _I64  # record number in the file (1-based)
    flags: npt.NDArray[np.uint8]
    seq: _I64
    ack: _I64
    payload_len: _I64


class Plan:
    """One block's packets sorted into ordinary and hard; runs of ordinary packets applied at once.

    `side_for_key(key)` returns the QuickSide for a flow key (flows.flow_key's 12 bytes) or None.
    With `keep_frames`, the walk also keeps every frame, for `run_frames`.
    """

    def __init__(self, block: RecordBlock, side_for_key: Callable[[bytes], QuickSide | None],
                 keep_frames: bool = False) -> None:
        self.block = block
        self.keep_frames = keep_frames
        n = self.n = len(block.data_start)
        buf = block.buf
        self.side_id = side_id = np.full(n, -1, dtype=np.int64)
        self.sides: list[QuickSide] = []
        self.frame_table: FrameTable | None = None
        self.ttl: npt.NDArray[np.uint8] = np.zeros(n, dtype=np.uint8)
        self.window: npt.NDArray[np.int64] = np.zeros(n, dtype=np.int64)
        offsets = _ip_offsets(block)
        if offsets is None or len(buf) < QUICK_HEADER_BYTES:
            self._finish(np.zeros(n, dtype=bool))
            return
        ip, handled = offsets
        tcp = ipv4_tcp_columns(buf, block.data_start, block.caplen, ip, handled)
        self.window = tcp.window
        if keep_frames:  # observers get SegmentEvents, which carry the TTL (IPv4 header byte 8)
            at = np.minimum(block.data_start + ip + IPV4_TTL_OFFSET, len(buf) - 1)
            self.ttl = np.frombuffer(buf, dtype=np.uint8)[at]
        flags = self.flags = tcp.flags
        ordinary = tcp.ok & ((flags & ACK) != 0) & ((flags & (SYN | FIN | RST)) == 0)
        self.seq = tcp.seq
        self.ack = tcp.ack
        self.payload_start = tcp.start
        self.payload_len = np.where(ordinary, tcp.end - tcp.start, 0)

        # ---- flow sides: one dict lookup per distinct key, not per packet ------------------------
        words = tcp.key.copy().view("<u4").reshape(n, 3)
        addresses = words[:, 0].astype(np.uint64) << np.uint64(32) | words[:, 1]
        ports = words[:, 2]
        key_hash = addresses ^ (ports.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        # A SYN may start a new connection on a reused 4-tuple mid-block (a new Flow object): its
        # key's packets stay on the per-packet path for this block. (Flags of records that are not
        # the common packet are junk: blocking a few more keys only sends more packets one by one.)
        syn_keys = key_hash[(flags & SYN) != 0]
        candidates = np.flatnonzero(ordinary)
        keys, first, inverse = np.unique(key_hash[candidates], return_index=True, return_inverse=True)
        side_of_key = np.full(len(keys), -1, dtype=np.int64)
        stream_side: dict[int, int] = {}
        blocked = set(syn_keys.tolist()) if len(syn_keys) else set()
        for k, (hash_value, rep) in enumerate(zip(keys.tolist(), candidates[first].tolist(), strict=True)):
            if hash_value in blocked:
                continue
            side = side_for_key(tcp.key[rep].tobytes())
            if side is None:
                continue
            side_of_key[k] = len(self.sides)
            stream_side[id(side.stream)] = len(self.sides)
            self.sides.append(side)
        side_id[candidates] = side_of_key[inverse.reshape(-1)]
        # Two keys with one hash would share a side: such packets stay on the per-packet path.
        reps = candidates[first][inverse.reshape(-1)]
        side_id[candidates[(addresses[candidates] != addresses[reps]) | (ports[candidates] != ports[reps])]] = -1
        ordinary &= side_id >= 0
        self.peer_id = np.array([stream_side.get(id(s.peer_stream), -1) for s in self.sides], dtype=np.int64)

        # ---- frames, sequence numbers and ACKs, judged within the block -------------------------
        payload = np.flatnonzero(ordinary & (self.payload_len > 0))
        starts = self.payload_start[payload]
        walk = whole_frames_columns(buf, starts, starts + self.payload_len[payload], SINGLE_FRAME_CLASSES,
                                    keep_frames)
        ordinary[payload[~walk.whole]] = False
        self.frames = np.zeros(n, dtype=np.int64)
        self.last_type = np.zeros(n, dtype=np.int64)
        self.last_ids = np.zeros(n, dtype=np.int64)
        self.frames[payload] = walk.frame_count
        self.last_type[payload] = walk.last_type
        self.last_ids[payload] = walk.last_ids
        self.heartbeat_packets = payload[walk.heartbeat_payload]
        self.heartbeat_nonstandard = walk.heartbeat_nonstandard
        if walk.frames is not None:
            table = walk.frames
            self.frame_table = table._replace(payload=payload[table.payload])  # by packet, not payload
        self.has_payload = self.payload_len > 0
        self._check_sequence(ordinary)
        self._check_acks(ordinary)
        self._finish(ordinary)

    # ---- static judgement ------------------------------------------------------------------------
    def _finish(self, ordinary: npt.NDArray[np.bool_]) -> None:
        self.ordinary = ordinary
        self.hard_list: list[int] = np.flatnonzero(~ordinary).tolist()
        self.hard_list.append(self.n)  # a sentinel: the block's end ends every run
        if self.sides:
            self._index_sides()

    def _index_sides(self) -> None:
        """Per side, its packets / payload packets / ACK-only packets / heartbeats in block order."""
        side_id = np.where(self.ordinary, self.side_id, -1)
        members = np.flatnonzero(side_id >= 0)
        order = members[np.argsort(side_id[members], kind="stable")]
        bounds = np.searchsorted(side_id[order], np.arange(len(self.sides) + 1))
        self.packets_of = [order[bounds[s] : bounds[s + 1]] for s in range(len(self.sides))]
        self.payload_of = [p[self.has_payload[p]] for p in self.packets_of]
        hb_side = side_id[self.heartbeat_packets]
        self.heartbeats_of = [(self.heartbeat_packets[hb_side == s], self.heartbeat_nonstandard[hb_side == s])
                              for s in range(len(self.sides))]

    def _check_sequence(self, ordinary: npt.NDArray[np.bool_]) -> None:
        """New bytes must start where the side's previous payload packet in the block ended."""
        payload = np.flatnonzero(ordinary & self.has_payload)
        if len(payload) < 2:
            return
        order = payload[np.argsort(self.side_id[payload], kind="stable")]
        before, after = order[:-1], order[1:]
        expected = (self.seq[before] + self.payload_len[before]) & SEQ_MASK
        bad = (self.side_id[before] == self.side_id[after]) & (self.seq[after] != expected)
        ordinary[after[bad]] = False

    def _check_acks(self, ordinary: npt.NDArray[np.bool_]) -> None:
        """An ACK must not pass the end of the peer's latest payload packet before it (else the
        capture lost bytes: HalfStream.peer_ack's business, packet by packet)."""
        members = np.flatnonzero(ordinary)
        peer = self.peer_id[self.side_id[members]]
        members, peer = members[peer >= 0], peer[peer >= 0]
        payload = np.flatnonzero(ordinary & self.has_payload)
        if not len(members) or not len(payload):
            return
        n = self.n
        # Payload packets sorted by (side, index); a packet's peer payload before it is found by
        # searching (peer side, index) in that order.
        sorted_payload = np.sort(self.side_id[payload] * n + payload)
        at = np.searchsorted(sorted_payload, peer * n + members) - 1
        found = at >= 0
        found[found] = sorted_payload[at[found]] // n == peer[found]
        members, at = members[found], at[found]
        latest = sorted_payload[at] % n
        peer_end = (self.seq[latest] + self.payload_len[latest]) & SEQ_MASK
        ordinary[members[seq_after_columns(self.ack[members], peer_end)]] = False

    # ---- runs --------------------------------------------------------------------------------------
    def next_hard(self, i: int) -> int:
        """The first packet at or after i that is hard on its own (n at the block's end)."""
        return self.hard_list[bisect_left(self.hard_list, i)]

    def run_end(self, i: int, limit: int) -> int:
        """Where the run of ordinary packets starting at i ends (≤ limit, the next hard packet), now
        that the live state is known: the first packet of each side in the run is checked against
        what the packets before the run left in its HalfStream, FrameDecoder and timeline."""
        end = limit
        for s in np.unique(self.side_id[i:limit]).tolist():
            quick = self.sides[s]
            packets = self.packets_of[s]
            first = int(packets[np.searchsorted(packets, i)])
            if first >= end:
                continue
            if not quick.ready():
                end = first
                continue
            payload = self.payload_of[s]
            at = np.searchsorted(payload, i)
            if at < len(payload) and payload[at] < end:
                first_payload = int(payload[at])
                if not quick.decoder.at_frame_boundary or int(self.seq[first_payload]) != quick.stream.next_seq:
                    end = first_payload
            # ACKs before the peer's first payload packet in the run: against the peer's live state.
            peer = int(self.peer_id[s])
            peer_first = end
            if peer >= 0:
                peer_payload = self.payload_of[peer]
                at = np.searchsorted(peer_payload, i)
                if at < len(peer_payload):
                    peer_first = min(end, int(peer_payload[at]))
            early = _between(packets, i, peer_first)
            if not len(early):
                continue
            peer_next = quick.peer_stream.next_seq
            if peer_next is None:
                end = min(end, int(early[0]))
                continue
            past = np.flatnonzero(seq_after_columns(self.ack[early], peer_next))
            if len(past):
                end = min(end, int(early[past[0]]))
        return end

    def run_frames(self, i: int, j: int) -> FrameColumns:
        """The frames of packets i..j-1 (a run checked by run_end, before `apply` moves the
        decoders on: a frame's stream offset counts from where its decoder stands)."""
        assert self.frame_table is not None, "Plan(keep_frames=True) keeps the frames"
        packet, position, frame_type, channel, size, ids = self.frame_table
        lo, hi = np.searchsorted(packet, (i, j))
        packet, position = packet[lo:hi], position[lo:hi]
        # Stream offset of each payload packet's first byte: its side's decoder base, plus the
        # payload of that side's packets before it in the run.
        first_byte = np.zeros(self.n, dtype=np.int64)
        for s in np.unique(self.side_id[i:j]).tolist():
            payload = _between(self.payload_of[s], i, j)
            lengths = self.payload_len[payload]
            first_byte[payload] = self.sides[s].decoder.base + np.cumsum(lengths) - lengths
        return FrameColumns(self.sides, self.side_id[packet], self.block.timestamp[packet],
                            packet + self.block.first_index + 1,
                            first_byte[packet] + position - self.payload_start[packet],
                            frame_type[lo:hi], channel[lo:hi], size[lo:hi], ids[lo:hi], position)

    def apply(self, i: int, j: int) -> None:
        """Packets i..j-1, all ordinary and checked by run_end: what quick_packet would have done to
        each, in one go per side."""
        timestamp = self.block.timestamp
        for s in np.unique(self.side_id[i:j]).tolist():
            quick = self.sides[s]
            packets = _between(self.packets_of[s], i, j)
            payload = _between(self.payload_of[s], i, j)
            side = quick.side
            quick.timeline.saw(float(timestamp[packets].max()))
            side.add_segments(timestamp[packets], self.payload_len[packets])
            if not len(payload):
                continue
            nbytes = int(self.payload_len[payload].sum())
            quick.stream.advance(nbytes)
            quick.decoder.skip_whole_frames(nbytes)
            beats, nonstandard = self.heartbeats_of[s]
            lo, hi = np.searchsorted(beats, (i, j)).tolist()
            for packet, odd in zip(beats[lo:hi].tolist(), nonstandard[lo:hi].tolist(), strict=True):
                side.add_heartbeat(float(timestamp[packet]), odd)
            last = int(payload[-1])
            side.add_frames(float(timestamp[last]), int(self.frames[payload].sum()) - (hi - lo),
                            frame_name(int(self.last_type[last]), int(self.last_ids[last])))


class PacketRun:
    """A run as the engine hands it to observers: its frames as columns, or, from `events()`, the
    very SegmentEvents and Frames the per-packet path would have emitted for its packets."""

    def __init__(self, plan: Plan, i: int, j: int, payload_bytes: int) -> None:
        self.plan = plan
        self.i = i
        self.j = j
        self.payload_bytes = payload_bytes
        self.frames = plan.run_frames(i, j)  # before the run is applied: offsets count from the decoders

    def segments(self) -> SegmentColumns:
        plan = self.plan
        i, j = self.i, self.j
        first = plan.block.first_index + 1
        return SegmentColumns(plan.sides, plan.side_id[i:j], plan.block.timestamp[i:j],
                              np.arange(first + i, first + j, dtype=np.int64), plan.flags[i:j], plan.seq[i:j],
                              plan.ack[i:j], plan.payload_len[i:j])

    def events(self) -> Iterator[SegmentEvent | Frame]:
        plan = self.plan
        frames = self.frames
        i, j = self.i, self.j
        buf = plan.block.buf
        first_index = plan.block.first_index + 1 + i
        frame_packets = frames.packet.tolist()
        columns = zip(frames.offset.tolist(), frames.type.tolist(), frames.channel.tolist(), frames.size.tolist(),
                      frames.ids.tolist(), frames.position.tolist(), strict=True)
        f = 0
        # The run's packets only, as Python values once (not the whole block per run).
        packets = zip(plan.side_id[i:j].tolist(), plan.block.timestamp[i:j].tolist(), plan.flags[i:j].tolist(),
                      plan.seq[i:j].tolist(), plan.ack[i:j].tolist(), plan.payload_len[i:j].tolist(),
                      plan.ttl[i:j].tolist(), plan.window[i:j].tolist(), strict=True)
        for k, (side, t, flags, seq, ack, payload_len, ttl, window) in enumerate(packets):
            quick = plan.sides[side]
            index = first_index + k
            yield SegmentEvent(quick.info, quick.direction, t, index, flags, seq, ack, payload_len, False, 0, ttl,
                               window)
            while f < len(frame_packets) and frame_packets[f] == index:
                offset, frame_type, channel, size, ids, position = next(columns)
                keep = kept_payload_size(frame_type, size, self.payload_bytes)
                payload = buf[position + FRAME_HEADER_SIZE : position + FRAME_HEADER_SIZE + keep]
                method = frame_type == FRAME_METHOD
                yield Frame(quick.info, quick.direction, t, index, offset, frame_type, channel, size, payload,
                            ids >> 16 if method else None, ids & 0xFFFF if method else None)
                f += 1


def _between(indices: _I64, i: int, j: int) -> _I64:
    lo, hi = np.searchsorted(indices, (i, j))
    return indices[lo:hi]


def _ip_offsets(block: RecordBlock) -> tuple[int | _I64, bool | npt.NDArray[np.bool_]] | None:
    """(where the IPv4 header would start in each record, which records have a link type handled
    here): scalars when the block has one link type; None when no record is handled."""
    if not isinstance(block.linktype, np.ndarray):
        offset = IP_OFFSETS.get(block.linktype)
        return None if offset is None else (offset, True)
    offsets = np.full(len(block.linktype), 14, dtype=np.int64)
    handled = np.zeros(len(block.linktype), dtype=bool)
    for linktype, offset in IP_OFFSETS.items():
        mine = block.linktype == linktype
        offsets[mine] = offset
        handled |= mine
    return (offsets, handled) if handled.any() else None
