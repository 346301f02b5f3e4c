"""Sans-IO TLS record decoder for one direction of one connection (RFC 8446 5.1, RFC 5246 6.2).

Shape of amqp/framing.py's FrameDecoder: `feed(data, timestamp, packet)` and `gap(...)` return
records and errors; no file, socket or clock inside, and no exception escapes (fuzz contract).
- A record is the 5-byte header (content type, legacy version, length) and its fragment. Records
  split over many feeds are joined; many records in one feed are each returned. A record carries
  the time and packet of the feed that completed it, as a Frame does.
- Buffering is bounded by one record (at most MAX_FRAGMENT + 5 bytes). Fragments nobody asked to
  keep (application data when there are no keys) are counted through, never buffered.
- After a capture gap, a damaged header, or a capture that starts mid-stream, the decoder scans for
  a header it can believe: a known content type, version 3.0-3.4, a possible length, and the next
  record's header just as believable (or the record ending exactly where the captured bytes end,
  as records usually end with their segment).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23
HEARTBEAT = 24  # RFC 6520; never used by AMQP peers, kept so that it is a known type
CONTENT_TYPE_NAMES = {
    CHANGE_CIPHER_SPEC: "change_cipher_spec",
    ALERT: "alert",
    HANDSHAKE: "handshake",
    APPLICATION_DATA: "application_data",
    HEARTBEAT: "heartbeat",
}
RECORD_HEADER = struct.Struct("!BHH")  # content type, legacy record version, fragment length
RECORD_HEADER_SIZE = 5
# TLSCiphertext.length is at most 2^14 + 2048 in TLS 1.2 (RFC 5246 6.2.3) and 2^14 + 256 in TLS 1.3
# (RFC 8446 5.2): the larger bound serves both.
MAX_FRAGMENT = (1 << 14) + 2048
# Record-layer versions a peer writes: SSL 3.0 (0x0300) to TLS 1.2 (0x0303); TLS 1.3 writes 0x0303
# but 0x0304 is accepted, as some stacks put it in their first records.
_VERSIONS = range(0x0300, 0x0305)

# Decoder modes.
_SYNCED = 0
_COUNTING = 1  # inside an application-data fragment nobody keeps
_RESYNC = 2


@dataclass(slots=True)
class Record:
    """One TLS record. `fragment` is None for a fragment counted through (not kept)."""

    offset: int  # stream offset of the record header
    content_type: int
    version: int
    length: int  # fragment length, from the header
    timestamp: float  # of the packet that completed the record
    packet: int
    fragment: bytes | None


@dataclass(slots=True)
class RecordError:
    """Bytes that are not TLS records: a damaged header, or what a resynchronisation skipped."""

    offset: int
    reason: str
    timestamp: float
    packet: int
    skipped: int = 0


RecordEvent = Record | RecordError


def plausible_header(content_type: int, version: int, length: int) -> bool:
    return content_type in CONTENT_TYPE_NAMES and version in _VERSIONS and 0 < length <= MAX_FRAGMENT


class RecordDecoder:
    """Decodes one direction. `synced=False` when the stream's start was not captured;
    `keep_application_data` when someone will decrypt the fragments."""

    __slots__ = ("base", "buf", "counting", "keep_application_data", "left", "mode", "resync_from")

    def __init__(self, *, synced: bool = True, keep_application_data: bool = False) -> None:
        self.keep_application_data = keep_application_data
        self.mode = _SYNCED if synced else _RESYNC
        self.buf = bytearray()
        self.base = 0  # stream offset of buf[0]
        self.resync_from = 0
        self.counting: Record | None = None  # the fragment being counted through
        self.left = 0  # its bytes still to come

    def feed(self, data: bytes, timestamp: float, packet: int) -> list[RecordEvent]:
        out: list[RecordEvent] = []
        if not data:
            return out
        if self.mode == _COUNTING:
            data = self._count(data, timestamp, packet, out)
            if not data:
                return out
        self.buf += data
        self._parse(timestamp, packet, out)
        return out

    def gap(self, missing: int, timestamp: float, packet: int) -> list[RecordEvent]:
        """`missing` bytes of this direction were not captured (0 when the count is unknown). A
        capture cut by its snap length keeps each segment's first bytes: a record whose header was
        kept and whose end falls at or after the hole's end keeps the decoder in sync (its fragment
        is lost), as does a resynchronisation candidate that ends exactly where the hole ends."""
        out: list[RecordEvent] = []
        if self.mode == _COUNTING and missing:
            record = self.counting
            assert record is not None  # mode _COUNTING
            if missing < self.left:  # the hole falls inside a fragment whose end we know: still in sync
                self.left -= missing
                self.base += missing
                return out
            # The hole takes the rest of the fragment: the record is whole (its bytes unseen).
            record.timestamp, record.packet = timestamp, packet
            out.append(record)
            missing -= self.left
            self.base += self.left
            self.counting = None
            self.mode = _SYNCED
            if not missing:
                return out
        if missing and self.mode in (_SYNCED, _RESYNC) and self._record_across(missing, timestamp, packet, out):
            return out
        if self.mode == _COUNTING:
            missing = max(0, missing - self.left)
            self.base += self.left
            self.counting = None
        self.base += len(self.buf) + missing
        self.buf.clear()
        self.mode = _RESYNC
        self.resync_from = self.base
        return out

    def _record_across(self, missing: int, timestamp: float, packet: int, out: list[RecordEvent]) -> bool:
        """The buffered bytes start a record (synced) or a believable one (resync, ending exactly at
        the hole's end) that the hole cuts: go on in sync after it. False when neither holds."""
        buf = self.buf
        hole_end = len(buf) + missing
        pos = 0
        while len(buf) - pos >= RECORD_HEADER_SIZE:
            content_type, version, length = RECORD_HEADER.unpack_from(buf, pos)
            end = pos + RECORD_HEADER_SIZE + length
            if plausible_header(content_type, version, length) and (
                    end == hole_end or (self.mode == _SYNCED and pos == 0 and end > hole_end)):
                if self.mode == _RESYNC and self.base + pos > self.resync_from:
                    out.append(RecordError(self.resync_from, f"resynchronised after skipping "
                                           f"{self.base + pos - self.resync_from} bytes", timestamp, packet,
                                           self.base + pos - self.resync_from))
                record = Record(self.base + pos, content_type, version, length, timestamp, packet, None)
                self.buf = bytearray()
                self.base += hole_end
                if end == hole_end:
                    out.append(record)
                    self.mode = _SYNCED
                else:  # the record goes on past the hole: count through the rest of it
                    self.counting = record
                    self.left = end - hole_end
                    self.mode = _COUNTING
                return True
            if self.mode == _SYNCED:
                return False  # in sync, the record at the start is the only candidate
            pos += 1
        return False

    def _parse(self, timestamp: float, packet: int, out: list[RecordEvent]) -> None:
        buf = self.buf
        pos = 0
        while True:
            if self.mode == _RESYNC:
                pos = self._resync(pos, timestamp, packet, out)
                if self.mode == _RESYNC:
                    break
            avail = len(buf) - pos
            if avail < RECORD_HEADER_SIZE:
                break
            content_type, version, length = RECORD_HEADER.unpack_from(buf, pos)
            if not plausible_header(content_type, version, length):
                out.append(RecordError(self.base + pos, f"not a TLS record header ({bytes(buf[pos:pos + 5]).hex()})",
                                       timestamp, packet))
                self.mode = _RESYNC
                self.resync_from = self.base + pos + 1
                pos += 1
                continue
            end = pos + RECORD_HEADER_SIZE + length
            if end > len(buf):
                if content_type == APPLICATION_DATA and not self.keep_application_data:
                    self.counting = Record(self.base + pos, content_type, version, length, timestamp, packet, None)
                    self.left = end - len(buf)
                    self.mode = _COUNTING
                    pos = len(buf)
                break
            keep = content_type != APPLICATION_DATA or self.keep_application_data
            out.append(Record(self.base + pos, content_type, version, length, timestamp, packet,
                              bytes(buf[pos + RECORD_HEADER_SIZE : end]) if keep else None))
            pos = end
        if pos:
            del buf[:pos]
            self.base += pos

    def _count(self, data: bytes, timestamp: float, packet: int, out: list[RecordEvent]) -> bytes:
        record = self.counting
        assert record is not None  # mode _COUNTING
        take = min(len(data), self.left)
        self.left -= take
        self.base += take
        if self.left:
            return b""
        record.timestamp, record.packet = timestamp, packet
        out.append(record)
        self.counting = None
        self.mode = _SYNCED
        return data[take:]

    def _resync(self, pos: int, timestamp: float, packet: int, out: list[RecordEvent]) -> int:
        """Scan for a believable record header; on success switch to _SYNCED at it."""
        buf = self.buf
        n = len(buf)
        while n - pos >= RECORD_HEADER_SIZE:
            content_type, version, length = RECORD_HEADER.unpack_from(buf, pos)
            if plausible_header(content_type, version, length):
                end = pos + RECORD_HEADER_SIZE + length
                if end == n:
                    confirmed = True  # the record ends with the captured bytes
                elif end + RECORD_HEADER_SIZE <= n:
                    confirmed = plausible_header(*RECORD_HEADER.unpack_from(buf, end))
                else:
                    return pos  # wait for the next header to confirm it
                if confirmed:
                    skipped = self.base + pos - self.resync_from
                    if skipped:
                        out.append(RecordError(self.resync_from, f"resynchronised after skipping {skipped} bytes",
                                               timestamp, packet, skipped))
                    self.mode = _SYNCED
                    return pos
            pos += 1
        return pos
