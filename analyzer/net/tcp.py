"""TCP reassembly for one direction of one connection: ordered bytes and explicit gaps.

Sans-IO: fed segment fields, it appends StreamData / StreamGap records to the caller's list.
Sequence numbers are compared modulo 2**32 (RFC 9293 §3.4). Retransmitted and overlapping bytes
are delivered once; out-of-order segments wait in a bounded buffer. Bytes the capture lost
become a StreamGap with their count: never zero-filled, never skipped silently. A hole is
declared lost when
  - the peer acknowledges bytes past it (the receiver got them; the capture did not),
  - the out-of-order buffer exceeds MAX_PENDING_BYTES,
  - the stream ends (FIN/RST or end of capture), or
  - the snap length cut the payload (the missing tail of that segment).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SEQ_MOD = 1 << 32
SEQ_HALF = 1 << 31
SEQ_MASK = SEQ_MOD - 1
# Twice Linux's default initial receive window (64 KiB) times 4: a capture that reorders more
# than this is lossy, not reordered.
MAX_PENDING_BYTES = 512 * 1024
# A capture can hold a segment after the peer's ACK for it (two capture points merged, `-i any`,
# multi-queue NICs). An ACK past unseen bytes is therefore held this long before the bytes are
# declared lost; the gap keeps the ACK's time. Reordering in captures spans microseconds to a few
# milliseconds; 20 ms covers it while frames after a real hole wait at most that long (they keep
# their own timestamps, but reach the output up to 20 ms of capture time late).
REORDER_WINDOW = 0.02


# Where a segment's bytes fall against what a direction has delivered (HalfStream.placement).
IN_ORDER = 0  # it starts at the next expected byte
REPEATED = 1  # every byte of it was delivered before: a retransmission
ELSEWHERE = 2  # a hole before it, or a partial overlap: HalfStream.segment sorts it out


def seq_after(a: int, b: int) -> bool:
    """Sequence number `a` lies after `b`, modulo 2**32 (RFC 9293 3.4)."""
    return 0 < (a - b) % SEQ_MOD < SEQ_HALF


def seq_after_columns(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64] | int) -> npt.NDArray[np.bool_]:
    """seq_after for columns of sequence numbers (the batch stage's form; tests hold the two equal)."""
    ahead = (a - b) & SEQ_MASK
    return (ahead > 0) & (ahead < SEQ_HALF)


@dataclass(slots=True)
class StreamData:
    offset: int  # stream offset of data[0] (bytes since the first byte seen in this direction)
    data: bytes
    timestamp: float
    packet: int


@dataclass(slots=True)
class StreamGap:
    offset: int
    missing: int
    timestamp: float
    packet: int
    reason: str  # "sequence-hole", "snapped", "acked-unseen"


class HalfStream:
    """Reassembles one direction. `next_seq` is None until the first SYN or payload byte."""

    __slots__ = (
        "fin_seq",
        "next_seq",
        "offset",
        "peer_acked",
        "pending",
        "pending_bytes",
        "started_at_syn",
        "syn_seq",
        "unseen_ack",
    )

    def __init__(self) -> None:
        self.next_seq: int | None = None
        self.offset = 0
        self.pending: dict[int, tuple[bytes, int, float, int]] = {}
        self.pending_bytes = 0
        self.fin_seq: int | None = None
        self.started_at_syn = False
        self.syn_seq: int | None = None  # the SYN's own sequence number (tells a retransmitted SYN)
        # The highest ACK the peer sent before any byte of this direction was seen: the peer had
        # every byte below it, so a first captured segment above it follows bytes the capture lost
        # (e.g. a SYN-ACK and connection.start both missing, the client's handshake ACK captured).
        self.peer_acked: int | None = None
        # (ack, timestamp, packet) of the first peer ACK past bytes not yet seen, while REORDER_WINDOW runs.
        self.unseen_ack: tuple[int, float, int] | None = None

    @property
    def settled(self) -> bool:
        """Nothing held back: the next byte's sequence number is known, no out-of-order bytes wait,
        and no ACK past unseen bytes is running out its REORDER_WINDOW. Only then can a segment at
        the next byte be applied without the rest of this class (the engine's quick paths)."""
        return self.next_seq is not None and not self.pending and self.unseen_ack is None

    def placement(self, seq: int, payload_len: int) -> int:
        """IN_ORDER, REPEATED or ELSEWHERE for a segment with payload; next_seq must be known."""
        assert self.next_seq is not None
        ahead = (seq - self.next_seq) % SEQ_MOD
        if ahead == 0:
            return IN_ORDER
        if ahead >= SEQ_HALF and SEQ_MOD - ahead >= payload_len:
            return REPEATED
        return ELSEWHERE

    def advance(self, nbytes: int) -> None:
        """`nbytes` in-order bytes were consumed by the caller: move the stream past them."""
        assert self.next_seq is not None
        self.offset += nbytes
        self.next_seq = (self.next_seq + nbytes) % SEQ_MOD

    def syn(self, seq: int) -> None:
        if self.syn_seq is None:
            self.syn_seq = seq
        if self.next_seq is None:
            self.next_seq = (seq + 1) % SEQ_MOD
            self.started_at_syn = True

    def fin(self, seq: int, payload_len: int) -> None:
        self.fin_seq = (seq + payload_len) % SEQ_MOD

    def segment(self, seq: int, payload: bytes, payload_len: int, timestamp: float, packet: int,
                out: list[StreamData | StreamGap]) -> bool:
        """Feed one segment with payload; returns True when all of it was seen before."""
        if self.next_seq is None:
            self.next_seq = seq if self.peer_acked is None else self.peer_acked
        where = self.placement(seq, payload_len)
        if where == REPEATED:
            return True
        if where == ELSEWHERE:
            ahead = self._distance(seq)
            if ahead < SEQ_HALF:
                return self._hold(seq, payload, payload_len, timestamp, packet, out)
            behind = SEQ_MOD - ahead  # a partial overlap: deliver what is new
            payload = payload[behind:]
            payload_len -= behind
        self._deliver(payload, payload_len, timestamp, packet, out)
        if self.pending:
            self._drain(out)
        if self.unseen_ack is not None and not seq_after(self.unseen_ack[0], self.next_seq):
            self.unseen_ack = None  # the acknowledged bytes arrived after their ACK: reordered, not lost
        return False

    def _hold(self, seq: int, payload: bytes, payload_len: int, timestamp: float, packet: int,
              out: list[StreamData | StreamGap]) -> bool:
        """An out-of-order segment waits in `pending`; True when a copy as long is already held
        (a retransmission of bytes still waiting)."""
        held = self.pending.get(seq)
        if held is not None:
            if held[1] >= payload_len:
                return True
            self.pending_bytes -= held[1]  # the longer copy replaces the held one
        self.pending[seq] = (payload, payload_len, timestamp, packet)
        self.pending_bytes += payload_len
        if self.pending_bytes > MAX_PENDING_BYTES:
            self._skip_to(min(self.pending, key=self._distance), timestamp, packet, "sequence-hole", out)
        return False

    def peer_ack(self, ack: int, timestamp: float, packet: int) -> None:
        """The other side acknowledged `ack`: bytes before it that are still unseen after
        REORDER_WINDOW were lost by the capture (see `expire`)."""
        if self.next_seq is None:
            if self.peer_acked is None or seq_after(ack, self.peer_acked):
                self.peer_acked = ack
            return
        if not seq_after(ack, self.next_seq):
            return
        held = self.unseen_ack
        if held is None:
            self.unseen_ack = (ack, timestamp, packet)
        elif seq_after(ack, held[0]):
            self.unseen_ack = (ack, held[1], held[2])  # the hole dates from the first ACK past it

    def expire(self, now: float, out: list[StreamData | StreamGap]) -> None:
        """Declare bytes lost whose ACK is older than REORDER_WINDOW and that still did not show up."""
        held = self.unseen_ack
        if held is not None and now - held[1] >= REORDER_WINDOW:
            self.unseen_ack = None
            self._declare_acked(*held, out)

    def _declare_acked(self, ack: int, timestamp: float, packet: int, out: list[StreamData | StreamGap]) -> None:
        if self.fin_seq is not None and seq_after(ack, self.fin_seq):
            ack = self.fin_seq  # the FIN takes one sequence number and no byte
        while True:
            if not seq_after(ack, self._next()):
                return
            ahead = self._distance(ack)
            if self.pending:
                first = min(self.pending, key=self._distance)
                if self._distance(first) < ahead:
                    # Every hole below the ACK is lost, not just the first one.
                    before = self.next_seq
                    self._skip_to(first, timestamp, packet, "acked-unseen", out)
                    if self.next_seq == before:
                        return
                    continue
            self._skip_to(ack, timestamp, packet, "acked-unseen", out)
            return

    def flush(self, timestamp: float, packet: int, out: list[StreamData | StreamGap]) -> None:
        """End of stream: whatever still waits behind a hole is delivered after an explicit gap."""
        if self.unseen_ack is not None:
            held, self.unseen_ack = self.unseen_ack, None
            self._declare_acked(*held, out)
        while self.pending:
            self._skip_to(min(self.pending, key=self._distance), timestamp, packet, "sequence-hole", out)
        if self.fin_seq is not None and self.next_seq is not None:
            self._skip_to(self.fin_seq, timestamp, packet, "sequence-hole", out)  # the FIN's seq says what was sent

    def _next(self) -> int:
        assert self.next_seq is not None  # callers run after the first SYN or payload byte
        return self.next_seq

    def _distance(self, seq: int) -> int:
        return (seq - self._next()) % SEQ_MOD

    def _deliver(self, payload: bytes, payload_len: int, timestamp: float, packet: int,
                 out: list[StreamData | StreamGap]) -> None:
        if payload:
            out.append(StreamData(self.offset, payload, timestamp, packet))
        if len(payload) < payload_len:
            out.append(StreamGap(self.offset + len(payload), payload_len - len(payload), timestamp, packet, "snapped"))
        self.advance(payload_len)

    def _drain(self, out: list[StreamData | StreamGap]) -> None:
        """Deliver pending segments that now start at or before next_seq."""
        while self.pending:
            progressed = False
            for seq in list(self.pending):
                ahead = self._distance(seq)
                if ahead != 0 and ahead < SEQ_HALF:
                    continue
                payload, payload_len, timestamp, packet = self.pending.pop(seq)
                self.pending_bytes -= payload_len
                behind = 0 if ahead == 0 else SEQ_MOD - ahead
                if behind < payload_len:
                    self._deliver(payload[behind:], payload_len - behind, timestamp, packet, out)
                progressed = True
            if not progressed:
                return

    def _skip_to(self, seq: int, timestamp: float, packet: int, reason: str, out: list[StreamData | StreamGap]) -> None:
        missing = self._distance(seq)
        if missing and missing < SEQ_HALF:
            out.append(StreamGap(self.offset, missing, timestamp, packet, reason))
            self.offset += missing
            self.next_seq = seq
        self._drain(out)
