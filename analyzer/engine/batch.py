"""The fast path's batch stage: long runs of ordinary packets applied with numpy, a block at a time.

Why: in pure Python the cheapest per-packet loop that reads a TCP header and finds its flow
already costs about 0.45 µs; a busy capture has ~1.5 frames per packet and ten-odd counters to
update per packet. Done packet by packet that is about 1.5 µs/packet; done by column it is a
fraction of that.

What a run is. Within one RecordBlock (pcap.py), an *ordinary* packet is one that the per-packet
fast path (fastpath._fast_packet) would apply with no branch taken: IPv4 + TCP, ACK set and no
SYN/FIN/RST, not snapped, of a flow side whose FastSide existed when the block started, new
bytes exactly at the next expected sequence number, an ACK that does not pass what the capture
saw of the peer, and a payload that is whole AMQP frames (no split frame, no damage, no
connection- or channel-class method: their arguments are read). A run is a stretch of
consecutive ordinary packets. For a run, every counter TimelineBuilder and HalfStream would have ended with is a sum,
a count, a last or a first over columns, so `Plan.apply` sets them at once; heartbeats are the
only per-frame Python work. Every other packet ("hard") goes through the per-packet path, in
capture order, so rare cases keep their one implementation. tests/test_fastpath.py holds the
result equal to the plain pipeline's.

How ordinary is decided without the state of the packets before it: a payload packet's sequence
number is compared with the end of the previous payload packet of its side *in the block*, and
an ACK with the end of the peer's latest payload packet before it. The first of each inside a
run is compared with the live state instead, when the run starts (`Plan.run_end`). Frames are
walked per packet on the guess that each payload starts on a frame boundary: all packets advance
one frame per numpy round, and a packet whose walk does not end exactly at its end is hard —
which also makes the guess right for the packet after it.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Callable, NamedTuple

import numpy as np

from analyzer.amqp import framing
from analyzer.amqp.arguments import CONTROL_CLASSES
from analyzer.amqp.spec import METHOD_NAMES
from analyzer.sources.pcap import RecordBlock
from analyzer.net.packets import IP_OFFSETS
from analyzer.records import ACK, FIN, FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_HEARTBEAT_OLD, FRAME_METHOD, RST, SYN
from analyzer.net.tcp import SEQ_HALF, SEQ_MOD
from analyzer.timeline import FRAME_KIND_NAMES

# A run shorter than this is cheaper packet by packet than its fixed numpy cost (measured on
# big.pcap: ~100 µs per run against ~1.5 µs per packet).
MIN_RUN = 64
# When fewer packets than this still have frames to walk, the rest of their frames are walked in
# Python: a numpy round costs the same for 3 packets as for 3,000.
_PYTHON_TAIL = 64

_SEQ_MASK = SEQ_MOD - 1
_FRAME_END = framing.FRAME_END
_MAX_BUFFERED_FRAME = framing.MAX_BUFFERED_FRAME
_FRAME_HEADER = framing._HEADER
_IDS = framing._IDS
# From the ethertype (2 bytes before the IP header) to the TCP flags, for a 20-byte IPv4 header.
_HEADERS = np.dtype({
    "names": ["ethertype", "ver_ihl", "total_len", "frag", "proto", "key", "seq", "ack", "data_off", "flags"],
    "formats": [">u2", "u1", ">u2", ">u2", "u1", "V12", ">u4", ">u4", "u1", "u1"],
    "offsets": [0, 2, 4, 8, 11, 14, 26, 30, 34, 35],
    "itemsize": 36,
})
_HEADER_WIDTH = 36


class FastSide:
    """What the fast paths touch of one side of one AMQP flow (the state objects themselves)."""

    __slots__ = ("timeline", "side", "stream", "peer_stream", "decoder", "direction")

    def __init__(self, timeline, side, stream, peer_stream, decoder, direction) -> None:
        self.timeline = timeline
        self.side = side  # the timeline's Direction for what this side sends
        self.stream = stream  # tcp.HalfStream of this side's bytes
        self.peer_stream = peer_stream
        self.decoder = decoder  # framing.FrameDecoder of this side
        self.direction = direction


class _Walk(NamedTuple):
    """Frames of each payload packet, walked on the guess that it starts on a frame boundary."""

    ok: np.ndarray  # bool per packet: whole ordinary frames ending exactly at the payload's end
    frames: np.ndarray  # frames per packet
    last_type: np.ndarray  # type of its last frame
    last_ids: np.ndarray  # (class_id << 16 | method_id) of its last frame when a method
    heartbeat_packets: np.ndarray  # block packet index of each heartbeat frame, ascending
    heartbeat_nonstandard: np.ndarray  # bool per heartbeat: type 4, or a channel or a size


class FrameColumns(NamedTuple):
    """The frames of one run, in capture order, as columns (for `frames`: Plan.run_frames)."""

    sides: list  # FastSide by side number
    side: np.ndarray
    timestamp: np.ndarray
    packet: np.ndarray  # record number in the file (1-based)
    offset: np.ndarray  # stream offset of the frame's first byte in its direction
    type: np.ndarray
    channel: np.ndarray
    size: np.ndarray
    ids: np.ndarray  # class_id << 16 | method_id for method frames


class Plan:
    """One block's packets sorted into ordinary and hard; runs of ordinary packets applied at once.

    `side_for_key(key)` returns the FastSide for a flow key (addresses + ports, 12 bytes) or None.
    With `keep_frames`, the walk also keeps every frame, for `run_frames`.
    """

    def __init__(self, block: RecordBlock, side_for_key: Callable[[bytes], FastSide | None],
                 keep_frames: bool = False) -> None:
        self.block = block
        self.keep_frames = keep_frames
        self.frame_table: tuple | None = None
        n = self.n = len(block.data_start)
        buf = block.buf
        self.bytes = np.frombuffer(buf, np.uint8)
        ordinary = np.zeros(n, dtype=bool)
        self.side_id = side_id = np.full(n, -1, dtype=np.int64)
        self.sides: list[FastSide] = []

        offsets = _ip_offsets(block)
        if offsets is None or len(buf) < 64:  # 64: no Ethernet + IPv4 + TCP packet with a payload is shorter
            self._finish(ordinary)
            return
        ip, handled = offsets
        # A record too short for these headers reads the end of the buffer instead: its caplen check fails.
        h = _gather(self.bytes, np.minimum(block.data_start + ip - 2, len(buf) - _HEADER_WIDTH),
                    _HEADER_WIDTH).view(_HEADERS)[:, 0]
        flags = h["flags"]
        tcp4 = (handled & (block.caplen >= ip + 40) & (h["ethertype"] == 0x0800) & (h["ver_ihl"] == 0x45)
                & (h["proto"] == 6) & ((h["frag"] & 0x3FFF) == 0))
        ip_end = ip + h["total_len"].astype(np.int64)
        start = ip + 20 + (h["data_off"] >> 4).astype(np.int64) * 4
        ordinary = (tcp4 & ((flags & ACK) != 0) & ((flags & (SYN | FIN | RST)) == 0) & (h["data_off"] >= 0x50)
                    & (h["total_len"] > 0) & (start <= ip_end) & (ip_end <= block.caplen))
        self.seq = h["seq"].astype(np.int64)
        self.ack = h["ack"].astype(np.int64)
        self.payload_start = block.data_start + start
        self.payload_len = np.where(ordinary, ip_end - start, 0)

        # ---- flow sides: one dict lookup per distinct key, not per packet ------------------------
        words = h["key"].copy().view("<u4").reshape(n, 3)
        addresses = words[:, 0].astype(np.uint64) << np.uint64(32) | words[:, 1]
        ports = words[:, 2]
        key_hash = addresses ^ (ports.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        # A SYN may start a new connection on a reused 4-tuple mid-block (a new Flow object):
        # its key's packets stay on the per-packet path for this block.
        syn_keys = key_hash[tcp4 & ((flags & SYN) != 0)]
        candidates = np.flatnonzero(ordinary)
        keys, first, inverse = np.unique(key_hash[candidates], return_index=True, return_inverse=True)
        side_of_key = np.full(len(keys), -1, dtype=np.int64)
        stream_side: dict[int, int] = {}
        blocked = set(syn_keys.tolist()) if len(syn_keys) else ()
        for k, (hash_value, rep) in enumerate(zip(keys.tolist(), candidates[first].tolist())):
            if hash_value in blocked:
                continue
            data_at = int(block.data_start[rep]) + (int(ip[rep]) if isinstance(ip, np.ndarray) else ip)
            side = side_for_key(buf[data_at + 12 : data_at + 24])
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
        self.walk = self._walk_frames(payload)
        ordinary[payload[~self.walk.ok[payload]]] = False
        self.has_payload = self.payload_len > 0
        self._check_sequence(ordinary)
        self._check_acks(ordinary)
        self._finish(ordinary)

    # ---- static judgement ------------------------------------------------------------------------
    def _finish(self, ordinary: np.ndarray) -> None:
        self.ordinary = ordinary
        self.hard_list = np.flatnonzero(~ordinary).tolist()
        self.hard_list.append(self.n)  # a sentinel: the block's end ends every run
        if self.sides:
            self._index_sides()

    def _index_sides(self) -> None:
        """Per side, its packets / payload packets / ACK-only packets in block order."""
        side_id = np.where(self.ordinary, self.side_id, -1)
        members = np.flatnonzero(side_id >= 0)
        order = members[np.argsort(side_id[members], kind="stable")]
        sorted_ids = side_id[order]
        bounds = np.searchsorted(sorted_ids, np.arange(len(self.sides) + 1))
        self.packets_of = [order[bounds[s] : bounds[s + 1]] for s in range(len(self.sides))]
        self.payload_of = [p[self.has_payload[p]] for p in self.packets_of]
        self.ack_only_of = [p[~self.has_payload[p]] for p in self.packets_of]
        hb = self.walk.heartbeat_packets
        hb_side = side_id[hb]
        self.heartbeats_of = []
        for s in range(len(self.sides)):
            mine = hb_side == s
            self.heartbeats_of.append((hb[mine], self.walk.heartbeat_nonstandard[mine]))

    def _check_sequence(self, ordinary: np.ndarray) -> None:
        """New bytes must start where the side's previous payload packet in the block ended."""
        payload = np.flatnonzero(ordinary & self.has_payload)
        if len(payload) < 2:
            return
        order = payload[np.argsort(self.side_id[payload], kind="stable")]
        before, after = order[:-1], order[1:]
        expected = (self.seq[before] + self.payload_len[before]) & _SEQ_MASK
        bad = (self.side_id[before] == self.side_id[after]) & (self.seq[after] != expected)
        ordinary[after[bad]] = False

    def _check_acks(self, ordinary: np.ndarray) -> None:
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
        peer_end = (self.seq[latest] + self.payload_len[latest]) & _SEQ_MASK
        ahead = (self.ack[members] - peer_end) & _SEQ_MASK
        ordinary[members[(ahead > 0) & (ahead < SEQ_HALF)]] = False

    def _walk_frames(self, payload: np.ndarray) -> _Walk:
        """All payload packets one frame per round; stragglers with many frames finish in Python."""
        n = self.n
        b = self.bytes
        ok = np.zeros(n, dtype=bool)
        frames = np.zeros(n, dtype=np.int64)
        last_type = np.zeros(n, dtype=np.int64)
        last_ids = np.zeros(n, dtype=np.int64)
        hb_packets: list[np.ndarray] = []
        hb_nonstandard: list[np.ndarray] = []
        kept: list[tuple] | None = [] if self.keep_frames else None  # (packet, position, type, channel, size, ids)
        pos = self.payload_start.copy()
        end = pos + self.payload_len
        ok[payload] = True
        active = payload
        while len(active) >= _PYTHON_TAIL:
            c = pos[active]
            e = end[active]
            # Reads are clipped to the buffer: a frame header (7 bytes) is only used where 8 bytes
            # remain, and a method frame's ids (4 more) only where the frame ends after them.
            at = np.minimum(c, len(b) - 7)
            frame_type = b[at].astype(np.int64)
            channel = b[at + 1].astype(np.int64) << 8 | b[at + 2]
            size = (b[at + 3].astype(np.int64) << 24 | b[at + 4].astype(np.int64) << 16
                    | b[at + 5].astype(np.int64) << 8 | b[at + 6])
            frame_end = c + 7 + size
            good = (e - c >= 8) & (frame_end < e) & (size <= _MAX_BUFFERED_FRAME)
            good &= b[np.where(good, frame_end, c)] == _FRAME_END
            at = np.minimum(c, len(b) - 11)
            ids = (b[at + 7].astype(np.int64) << 24 | b[at + 8].astype(np.int64) << 16
                   | b[at + 9].astype(np.int64) << 8 | b[at + 10])
            method = frame_type == FRAME_METHOD
            heartbeat = (frame_type == FRAME_HEARTBEAT) | (frame_type == FRAME_HEARTBEAT_OLD)
            # Connection and channel methods: TimelineBuilder reads the arguments of some (tune,
            # close, channel.close) and `frames` shows all of theirs; they are few.
            class_id = ids >> 16
            needs_arguments = np.zeros(len(c), dtype=bool)
            for control in CONTROL_CLASSES:
                needs_arguments |= class_id == control
            needs_arguments &= method
            good &= (method & (size >= 4) & ~needs_arguments) | heartbeat | (frame_type == FRAME_HEADER) | (
                frame_type == FRAME_BODY)
            ok[active[~good]] = False
            moved = active[good]
            frames[moved] += 1
            last_type[moved] = frame_type[good]
            last_ids[moved] = ids[good]
            beat = heartbeat & good
            if beat.any():
                hb_packets.append(active[beat])
                hb_nonstandard.append(((frame_type == FRAME_HEARTBEAT_OLD) | (size != 0) | (channel != 0))[beat])
            if kept is not None:
                kept.append((moved, c[good], frame_type[good], channel[good], size[good], ids[good]))
            pos[moved] = frame_end[good] + 1
            active = moved[pos[moved] < end[moved]]
        if len(active):
            self._walk_in_python(active.tolist(), pos, end, ok, frames, last_type, last_ids, hb_packets,
                                 hb_nonstandard, kept)
        if kept is not None:
            self._keep_frames(kept, ok)
        if hb_packets:
            packets = np.concatenate(hb_packets)
            order = np.argsort(packets, kind="stable")
            heartbeats = (packets[order], np.concatenate(hb_nonstandard)[order])
        else:
            heartbeats = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool))
        return _Walk(ok, frames, last_type, last_ids, *heartbeats)

    def _keep_frames(self, kept: list[tuple], ok: np.ndarray) -> None:
        """Every frame of the packets whose walk succeeded, sorted into capture order."""
        if not kept:
            self.frame_table = tuple(np.zeros(0, dtype=np.int64) for _ in range(6))
            return
        packet, position, frame_type, channel, size, ids = (np.concatenate(column) for column in zip(*kept))
        whole = ok[packet]
        packet, position = packet[whole], position[whole]
        order = np.argsort(packet << 32 | position, kind="stable")
        self.frame_table = (packet[order], position[order], frame_type[whole][order], channel[whole][order],
                            size[whole][order], ids[whole][order])

    def _walk_in_python(self, active, pos, end, ok, frames, last_type, last_ids, hb_packets, hb_nonstandard,
                        kept):
        """The same walk as the numpy rounds, for the few packets that still have frames."""
        buf = self.block.buf
        unpack_header = _FRAME_HEADER.unpack_from
        unpack_ids = _IDS.unpack_from
        beats: list[int] = []
        nonstandard: list[bool] = []
        rows: list[tuple] | None = [] if kept is not None else None
        for packet in active:
            p = int(pos[packet])
            e = int(end[packet])
            count = 0
            frame_type = ids = 0
            good = True
            while p < e:
                if e - p < 8:
                    good = False
                    break
                frame_type, channel, size = unpack_header(buf, p)
                frame_end = p + 7 + size
                # (size <= _MAX_BUFFERED_FRAME follows: a frame ends inside one packet's payload.)
                if frame_end >= e or buf[frame_end] != _FRAME_END:
                    good = False
                    break
                if frame_type == FRAME_METHOD:
                    if size < 4:
                        good = False
                        break
                    class_id, method_id = unpack_ids(buf, p + 7)
                    if class_id in CONTROL_CLASSES:
                        good = False
                        break
                    ids = class_id << 16 | method_id
                elif frame_type == FRAME_HEARTBEAT or frame_type == FRAME_HEARTBEAT_OLD:
                    beats.append(packet)
                    nonstandard.append(frame_type == FRAME_HEARTBEAT_OLD or size != 0 or channel != 0)
                elif frame_type != FRAME_HEADER and frame_type != FRAME_BODY:
                    good = False
                    break
                if rows is not None:
                    rows.append((packet, p, frame_type, channel, size, ids if frame_type == FRAME_METHOD else 0))
                count += 1
                p = frame_end + 1
            if not good:
                ok[packet] = False
                continue
            frames[packet] += count
            last_type[packet] = frame_type
            last_ids[packet] = ids
        if beats:
            hb_packets.append(np.array(beats, dtype=np.int64))
            hb_nonstandard.append(np.array(nonstandard, dtype=bool))
        if rows:
            kept.append(tuple(np.array(column, dtype=np.int64) for column in zip(*rows)))

    # ---- runs --------------------------------------------------------------------------------------
    def next_hard(self, i: int) -> int:
        """The first packet at or after i that is hard on its own (n at the block's end)."""
        return self.hard_list[bisect_left(self.hard_list, i)]

    def run_end(self, i: int, limit: int) -> int:
        """Where the run of ordinary packets starting at i ends (≤ limit, the next hard packet), now
        that the live state is known: the first packet of each side in the run is checked against
        what the packets before the run left in its HalfStream, FrameDecoder and timeline."""
        end = limit
        present = np.unique(self.side_id[i:limit]).tolist()
        for s in present:
            fast = self.sides[s]
            packets = self.packets_of[s]
            first = int(packets[np.searchsorted(packets, i)])
            if first >= end:
                continue
            stream = fast.stream
            if (fast.timeline.teardown is not None or stream.pending or stream.unseen_ack is not None
                    or fast.peer_stream.unseen_ack is not None or stream.next_seq is None):
                end = first
                continue
            payload = self.payload_of[s]
            at = np.searchsorted(payload, i)
            if at < len(payload) and payload[at] < end:
                first_payload = int(payload[at])
                decoder = fast.decoder
                if (decoder.mode != framing._FRAMES or decoder.buf
                        or int(self.seq[first_payload]) != stream.next_seq):
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
            peer_next = fast.peer_stream.next_seq
            if peer_next is None:
                end = min(end, int(early[0]))
                continue
            ahead = (self.ack[early] - peer_next) & _SEQ_MASK
            past = np.flatnonzero((ahead > 0) & (ahead < SEQ_HALF))
            if len(past):
                end = min(end, int(early[past[0]]))
        return end

    def run_frames(self, i: int, j: int) -> FrameColumns:
        """The frames of packets i..j-1 (a run checked by run_end, before `apply` moves the
        decoders on: a frame's stream offset counts from where its decoder stands)."""
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
                            frame_type[lo:hi], channel[lo:hi], size[lo:hi], ids[lo:hi])

    def apply(self, i: int, j: int) -> None:
        """Packets i..j-1, all ordinary and checked by run_end: what _fast_packet would have done to
        each, in one go per side."""
        timestamp = self.block.timestamp
        for s in np.unique(self.side_id[i:j]).tolist():
            fast = self.sides[s]
            packets = _between(self.packets_of[s], i, j)
            payload = _between(self.payload_of[s], i, j)
            ack_only = _between(self.ack_only_of[s], i, j)
            timeline = fast.timeline
            side = fast.side
            latest = float(timestamp[packets].max())
            if latest > timeline.last_seen:
                timeline.last_seen = latest
            side.segments += len(packets)
            side.last_segment = float(timestamp[packets[-1]])
            if len(ack_only):
                side.ack_only += len(ack_only)
                side.last_ack_only = float(timestamp[ack_only[-1]])
            if len(payload):
                last = int(payload[-1])
                nbytes = int(self.payload_len[payload].sum())
                side.payload_bytes += nbytes
                if side.first_payload is None:
                    side.first_payload = float(timestamp[payload[0]])
                side.last_payload = float(timestamp[last])
                after = ack_only[np.searchsorted(ack_only, last):]
                side.ack_only_since_payload = len(after)
                side.first_ack_only_since_payload = float(timestamp[after[0]]) if len(after) else None
                stream = fast.stream
                stream.offset += nbytes
                stream.next_seq = (stream.next_seq + nbytes) % SEQ_MOD
                fast.decoder.base += nbytes
                walk = self.walk
                side.frames += int(walk.frames[payload].sum())
                side.last_frame = float(timestamp[last])
                kind = int(walk.last_type[last])
                if kind == FRAME_METHOD:
                    ids = int(walk.last_ids[last])
                    side.last_frame_name = METHOD_NAMES.get((ids >> 16, ids & 0xFFFF), "unknown method")
                else:
                    side.last_frame_name = FRAME_KIND_NAMES[kind]
                beats, nonstandard = self.heartbeats_of[s]
                lo, hi = np.searchsorted(beats, (i, j))
                for packet, odd in zip(beats[lo:hi].tolist(), nonstandard[lo:hi].tolist()):
                    t = float(timestamp[packet])
                    side.heartbeats += 1
                    side.keep_heartbeat_time(t)
                    if odd:
                        side.nonstandard_heartbeats += 1
                        if side.first_nonstandard_heartbeat is None:
                            side.first_nonstandard_heartbeat = t
            elif len(ack_only):
                if side.first_ack_only_since_payload is None:
                    side.first_ack_only_since_payload = float(timestamp[ack_only[0]])
                side.ack_only_since_payload += len(ack_only)


def _between(indices: np.ndarray, i: int, j: int) -> np.ndarray:
    lo, hi = np.searchsorted(indices, (i, j))
    return indices[lo:hi]


def _gather(b: np.ndarray, positions: np.ndarray, width: int) -> np.ndarray:
    windows = np.lib.stride_tricks.sliding_window_view(b, width)
    return windows[positions]


def _ip_offsets(block: RecordBlock):
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
