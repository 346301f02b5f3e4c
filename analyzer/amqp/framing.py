"""Sans-IO AMQP 0-9-1 frame decoder for one direction of one connection.

Shape of h11's Connection: `feed(data, timestamp, packet)` and `gap(...)` return events
(Frame, ProtocolHeader, DecodeError); no file, socket or clock inside. Fuzz invariant: bad
bytes become DecodeError events and decoding resumes; any exception escaping is a bug.

The frame format and the whole-frame walk are frames.py's; the decoder walks whole frames with it
and handles everything else here:
- Method and header frames are buffered whole (they are small; capped at MAX_BUFFERED_FRAME).
- Body frames are counted through, never buffered: only their first `payload_bytes` bytes are
  kept. A capture gap inside a body does not lose sync, since the body's end is known.
- After a gap, a decode error, or when the capture starts mid-stream, the decoder scans for
  a frame it can verify completely (known type, plausible size, 0xCE at the right place, known
  class/method ids): a lone 8-byte heartbeat frame is the ideal anchor.
"""
from __future__ import annotations

import re

from analyzer.amqp.frames import (
    FRAME_END,
    FRAME_HEADER_FORMAT,
    FRAME_HEADER_SIZE,
    FRAME_TYPES,
    MAX_BUFFERED_FRAME,
    MAX_FRAME_SIZE,
    METHOD_IDS,
    WholeFrame,
    kept_payload_size,
    whole_frames,
)
from analyzer.amqp.spec import CLASS_NAMES, METHOD_NAMES
from analyzer.records import (
    FRAME_BODY,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    ConnectionInfo,
    DecodeError,
    Frame,
    FrameEvent,
    ProtocolHeader,
)

# A resync anchor must be verifiable without holding much: small frames only.
MAX_ANCHOR_SIZE = 64 * 1024

PROTOCOL_HEADERS = {
    b"AMQP\x00\x00\x09\x01": "amqp-0-9-1",
    b"AMQP\x01\x01\x00\x09": "amqp-0-9-1",  # the 0-9 style header some old clients send
    b"AMQP\x00\x01\x00\x00": "amqp-1.0",
    b"AMQP\x03\x01\x00\x00": "amqp-1.0-sasl",
    b"AMQP\x02\x01\x00\x00": "amqp-1.0-tls",
    b"AMQP\x01\x01\x00\x0a": "amqp-0-10",
}

_ANCHOR_START = re.compile(rb"[\x01\x02\x08]")

_TLS_HANDSHAKE = 0x16  # TLS record content type "handshake" (RFC 8446 5.1): a ClientHello starts with it


def _bad_body_end(end_byte: int, size: int) -> str:
    return f"bad frame-end 0x{end_byte:02x} after a {size}-byte body frame"


# Decoder modes.
_START = 0  # stream offset 0: a protocol header or a first frame
_FRAMES = 1
_BODY = 2  # counting through a body frame's payload
_RESYNC = 3
_STOPPED = 4  # not AMQP 0-9-1: nothing more to decode


class FrameDecoder:
    """Decodes one direction. `synced=False` when the stream's start was not captured."""

    # Two decoders live as long as each connection (tens of thousands in one capture): slots
    # halve their size and speed up the attribute reads of the hot loop.
    __slots__ = (
        "base",
        "body",
        "body_keep",
        "body_left",
        "buf",
        "connection",
        "direction",
        "header_possible",
        "mode",
        "payload_bytes",
        "resync_from",
    )

    def __init__(self, connection: ConnectionInfo, direction: str, *, synced: bool = True,
                 payload_bytes: int = 0) -> None:
        self.connection = connection
        self.direction = direction
        self.payload_bytes = payload_bytes
        self.mode = _START if synced else _RESYNC
        # Without the SYN the first captured byte may still be the stream's first: a capture
        # started between the handshake and the protocol header. An exact known 8-byte header
        # there is taken as one (mid-stream bytes matching it by chance are not plausible).
        self.header_possible = not synced
        self.buf = bytearray()
        self.base = 0  # stream offset of buf[0]
        self.resync_from = 0  # stream offset where the current resync scan started
        # The body frame being counted through (mode _BODY).
        self.body: Frame | None = None
        self.body_left = 0  # payload bytes still to come, then one frame-end byte
        self.body_keep = False  # still copying the body's first payload_bytes (False after a gap)

    # ---- input ----------------------------------------------------------------------------------

    def feed(self, data: bytes, timestamp: float, packet: int) -> list[FrameEvent]:
        out: list[FrameEvent] = []
        if self.mode == _STOPPED or not data:
            return out
        if self.mode == _BODY:
            data = self._count_body(data, timestamp, packet, out)
            if not data:
                return out
        self.buf += data
        self._parse(timestamp, packet, out)
        return out

    def gap(self, missing: int, timestamp: float, packet: int) -> list[FrameEvent]:
        """`missing` bytes of this direction were not captured."""
        out: list[FrameEvent] = []
        if self.mode == _STOPPED:
            return out
        self.header_possible = False
        if self.mode == _BODY and missing <= self.body_left:
            # The lost bytes fall inside a body whose end we know: still in sync.
            self.body_left -= missing
            self.body_keep = False  # kept bytes must be contiguous: never splice across a hole
            self.base += missing
            return out
        if self.mode == _BODY:
            missing -= self.body_left
            self.base += self.body_left
            self.body = None
        self.base += len(self.buf) + missing
        self.buf.clear()
        self.mode = _RESYNC
        self.resync_from = self.base
        return out

    # ---- framing --------------------------------------------------------------------------------

    def _parse(self, timestamp: float, packet: int, out: list[FrameEvent]) -> None:
        buf = self.buf
        pos = 0
        while True:
            mode = self.mode
            if mode == _RESYNC:
                if self.header_possible:
                    head = bytes(buf[pos : pos + 8])
                    if len(head) < 8 and b"AMQP".startswith(head[:4]):
                        break  # maybe a protocol header: wait for all 8 bytes
                    self.header_possible = False
                    if head in PROTOCOL_HEADERS:
                        self.mode = _START
                        continue
                pos = self._resync(pos, out, timestamp, packet)
                if self.mode == _RESYNC:
                    break
                continue
            if mode == _START:
                if len(buf) - pos < 8 and (buf[pos : pos + 4] in (b"AMQP"[: len(buf) - pos], b"AMQP")
                                           or buf[pos] == _TLS_HANDSHAKE):
                    break  # maybe a protocol header or a TLS record: wait for 8 bytes, however they are fed
                pos = self._start(pos, out, timestamp, packet)
                if self.mode != _FRAMES:
                    break
                continue
            frames, pos = whole_frames(buf, pos, len(buf))
            for whole in frames:
                out.append(self._whole_frame(whole, timestamp, packet))
            # The frame at pos, if any, is not whole: incomplete, a body to count through, or damage.
            avail = len(buf) - pos
            if avail < FRAME_HEADER_SIZE:
                break
            frame_type, channel, size = FRAME_HEADER_FORMAT.unpack_from(buf, pos)
            if frame_type not in FRAME_TYPES:
                pos = self._error(pos, f"unknown frame type {frame_type}", out, timestamp, packet)
                continue
            if size > MAX_FRAME_SIZE or (size > MAX_BUFFERED_FRAME and frame_type != FRAME_BODY):
                pos = self._error(pos, f"impossible frame size {size} for a {frame_type} frame", out, timestamp, packet)
                continue
            end = pos + FRAME_HEADER_SIZE + size
            if end >= len(buf):
                if frame_type == FRAME_BODY:
                    self._start_body(pos, channel, size, timestamp, packet)
                    pos = len(buf)
                    break
                break
            if buf[end] != FRAME_END and frame_type == FRAME_BODY:
                # As when the body is counted through over several feeds (_count_body): its bytes
                # are not rescanned, so the events do not depend on how the stream was chunked.
                out.append(DecodeError(self.connection, self.direction, timestamp, packet, self.base + pos,
                                       _bad_body_end(buf[end], size)))
                self.mode = _RESYNC
                self.resync_from = self.base + end + 1
                pos = end + 1
                continue
            if buf[end] != FRAME_END:
                reason = f"bad frame-end 0x{buf[end]:02x} after a {size}-byte frame"
                pos = self._error(pos, reason, out, timestamp, packet)
                continue
            frame = self._frame(pos, frame_type, channel, size, timestamp, packet)
            if frame_type == FRAME_METHOD:
                if size < 4:
                    reason = f"method frame of {size} bytes has no class/method ids"
                    pos = self._error(pos, reason, out, timestamp, packet)
                    continue
                frame.class_id, frame.method_id = METHOD_IDS.unpack_from(buf, pos + FRAME_HEADER_SIZE)
            out.append(frame)
            pos = end + 1
        self._consume(pos)

    def _frame(self, pos: int, frame_type: int, channel: int, size: int, timestamp: float, packet: int) -> Frame:
        keep = kept_payload_size(frame_type, size, self.payload_bytes)
        payload = bytes(self.buf[pos + FRAME_HEADER_SIZE : pos + FRAME_HEADER_SIZE + keep])
        return Frame(self.connection, self.direction, timestamp, packet, self.base + pos, frame_type, channel, size,
                     payload)

    def _whole_frame(self, whole: WholeFrame, timestamp: float, packet: int) -> Frame:
        offset, frame_type, channel, size, ids = whole
        frame = self._frame(offset, frame_type, channel, size, timestamp, packet)
        if frame_type == FRAME_METHOD:
            frame.class_id, frame.method_id = ids >> 16, ids & 0xFFFF
        return frame

    # ---- for the engine's quick paths, which walk whole frames themselves (whole_frames) ----------

    @property
    def at_frame_boundary(self) -> bool:
        """Between frames with nothing buffered: bytes that are whole frames can be walked by the
        caller and passed over with skip_whole_frames."""
        return self.mode == _FRAMES and not self.buf

    def skip_whole_frames(self, nbytes: int) -> None:
        """The caller walked `nbytes` of whole frames itself, at a frame boundary."""
        self.base += nbytes

    def _start(self, pos: int, out: list[FrameEvent], timestamp: float, packet: int) -> int:
        """Stream offset 0: a protocol header, TLS, or straight into frames."""
        head = bytes(self.buf[pos : pos + 8])
        if head[:4] == b"AMQP":
            protocol = PROTOCOL_HEADERS.get(head, "amqp-other")
            out.append(ProtocolHeader(self.connection, self.direction, timestamp, packet, self.base + pos, head,
                                      protocol))
            self.mode = _FRAMES if protocol == "amqp-0-9-1" else _STOPPED
            return pos + 8
        if head[:1] == b"\x16" and head[1:2] == b"\x03":
            out.append(ProtocolHeader(self.connection, self.direction, timestamp, packet, self.base + pos, head, "tls"))
            self.mode = _STOPPED
            return len(self.buf)
        self.mode = _FRAMES
        return pos

    def _error(self, pos: int, reason: str, out: list[FrameEvent], timestamp: float, packet: int) -> int:
        out.append(DecodeError(self.connection, self.direction, timestamp, packet, self.base + pos, reason))
        self.mode = _RESYNC
        self.resync_from = self.base + pos + 1
        return pos + 1

    # ---- bodies ---------------------------------------------------------------------------------

    def _start_body(self, pos: int, channel: int, size: int, timestamp: float, packet: int) -> None:
        have = len(self.buf) - pos - FRAME_HEADER_SIZE
        kept = bytes(self.buf[pos + FRAME_HEADER_SIZE : pos + FRAME_HEADER_SIZE + min(have, self.payload_bytes)])
        self.body = Frame(self.connection, self.direction, timestamp, packet, self.base + pos, FRAME_BODY, channel,
                          size, kept)
        self.body_left = size - have
        self.body_keep = True
        self.mode = _BODY

    def _count_body(self, data: bytes, timestamp: float, packet: int, out: list[FrameEvent]) -> bytes:
        """Consume body bytes from `data`; returns what follows the body's frame-end."""
        body = self.body
        assert body is not None  # mode _BODY
        take = min(len(data), self.body_left)
        if self.body_keep and len(body.payload) < self.payload_bytes:
            body.payload += data[: min(take, self.payload_bytes - len(body.payload))]
        self.body_left -= take
        self.base += take
        if self.body_left or take == len(data):
            return b""
        end_byte = data[take]
        self.base += 1
        self.body = None
        if end_byte != FRAME_END:
            out.append(DecodeError(self.connection, self.direction, timestamp, packet, body.offset,
                                   _bad_body_end(end_byte, body.size)))
            self.mode = _RESYNC
            self.resync_from = self.base
        else:
            body.timestamp, body.packet = timestamp, packet
            out.append(body)
            self.mode = _FRAMES
        return data[take + 1 :]

    # ---- resynchronisation ----------------------------------------------------------------------

    def _resync(self, pos: int, out: list[FrameEvent], timestamp: float, packet: int) -> int:
        """Scan for a verifiable frame; on success switch to _FRAMES at it."""
        buf = self.buf
        while True:
            match = _ANCHOR_START.search(buf, pos)
            if match is None:
                return len(buf)
            pos = match.start()
            if len(buf) - pos < 8:
                return pos
            frame_type, channel, size = FRAME_HEADER_FORMAT.unpack_from(buf, pos)
            if size > MAX_ANCHOR_SIZE:
                pos += 1
                continue
            end = pos + FRAME_HEADER_SIZE + size
            if end >= len(buf):
                return pos  # might be an anchor: wait for the rest of it
            if buf[end] == FRAME_END and self._is_anchor(frame_type, channel, size, pos):
                skipped = self.base + pos - self.resync_from
                if skipped:
                    out.append(DecodeError(self.connection, self.direction, timestamp, packet, self.resync_from,
                                           f"resynchronised after skipping {skipped} bytes", skipped))
                self.mode = _FRAMES
                return pos
            pos += 1

    def _is_anchor(self, frame_type: int, channel: int, size: int, pos: int) -> bool:
        if frame_type == FRAME_HEARTBEAT:
            return channel == 0 and size == 0
        if frame_type == FRAME_METHOD:
            return size >= 4 and METHOD_IDS.unpack_from(self.buf, pos + FRAME_HEADER_SIZE) in METHOD_NAMES
        # A content header: class id (2), weight 0 (2), body size (8), property flags (2).
        return (size >= 14 and METHOD_IDS.unpack_from(self.buf, pos + FRAME_HEADER_SIZE)[0] in CLASS_NAMES
                and self.buf[pos + 9 : pos + 11] == b"\x00\x00")

    def _consume(self, pos: int) -> None:
        if pos:
            del self.buf[:pos]
            self.base += pos
