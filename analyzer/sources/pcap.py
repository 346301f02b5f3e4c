"""Capture files → RawPacket records, streaming: pcap (both byte orders, µs/ns) and pcapng.

Strategy: read the file in fixed-size chunks and unpack record headers with precompiled
`struct.Struct.unpack_from` on the chunk, carrying the unfinished tail into the next chunk
(measured about 4x faster than scapy's RawPcapReader, which reads each record with two small
`read` calls). Memory is one chunk plus one record, whatever the file size.

Damage inside a readable file never raises: the reader stops at the damage and says where in
`warnings`. Only a file that is not a capture at all raises CaptureFileError.
"""
from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from itertools import count, repeat, starmap
from typing import BinaryIO, Final, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from analyzer.errors import CaptureFileError
from analyzer.records import RawPacket, RecordFields

CHUNK_SIZE = 1 << 20
# Wireshark refuses records above 256 KiB for most link types (WTAP_MAX_PACKET_SIZE_STANDARD);
# we only stop on sizes no capture tool writes, so a slightly odd but real file still reads.
MAX_RECORD_SIZE = 64 << 20

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", False),
    b"\xa1\xb2\xc3\xd4": (">", False),
    b"\x4d\x3c\xb2\xa1": ("<", True),
    b"\xa1\xb2\x3c\x4d": (">", True),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D

# pcapng block types (draft-ietf-opsawg-pcapng).
BT_IDB = 0x00000001
BT_OBSOLETE_PACKET = 0x00000002
BT_SPB = 0x00000003
BT_EPB = 0x00000006
BT_DSB = 0x0000000A  # Decryption Secrets Block
SECRETS_TLS_KEYLOG = 0x544C534B  # "TLSK": NSS key log text (what `editcap --inject-secrets tls,FILE` writes)
OPT_IF_TSRESOL = 9
OPT_IF_TSOFFSET = 14


def open_capture(fileobj: BinaryIO) -> CaptureReader:
    """Read the file header and return a reader; raises CaptureFileError if it is not a capture."""
    head = fileobj.read(4)
    if not head:
        raise CaptureFileError("empty file: not a pcap or pcapng capture")
    if head in PCAP_MAGICS:
        return PcapReader(fileobj, head)
    if head == PCAPNG_SHB:
        return PcapngReader(fileobj, head)
    if len(head) < 4:
        raise CaptureFileError(f"file too short ({len(head)} bytes) to be a capture")
    raise CaptureFileError(f"not a pcap or pcapng file (starts with {head.hex()})")


class _Chunks:
    """A read buffer over a file: `take(n)` returns n bytes or None at end of file."""

    __slots__ = ("buf", "fileobj", "offset", "pos")

    def __init__(self, fileobj: BinaryIO, initial: bytes, offset: int) -> None:
        self.fileobj = fileobj
        self.buf = initial
        self.pos = 0
        self.offset = offset  # file offset of buf[0]

    def fill(self, n: int) -> bool:
        """Make at least n bytes available from pos; False when the file ends first (what was
        there is still kept, so the caller can say where the file was cut)."""
        have = len(self.buf) - self.pos
        if have >= n:
            return True
        # Read CHUNK_SIZE at a time, never `n` at once: n comes from a length field in the file,
        # and read(n) allocates n bytes up front (a 3 KB file declaring a 64 MiB record cost 64 MiB).
        pieces = [self.buf[self.pos:]]
        while have < n:
            chunk = self.fileobj.read(CHUNK_SIZE)
            if not chunk:
                break
            pieces.append(chunk)
            have += len(chunk)
        self.offset += self.pos
        self.buf = b"".join(pieces)
        self.pos = 0
        return have >= n

    @property
    def file_pos(self) -> int:
        return self.offset + self.pos

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def cut_at(self) -> str:
        """The start of every truncation warning: where the file ends."""
        return f"capture file cut at byte {self.file_pos + self.remaining()}: "


class RecordBlock(NamedTuple):
    """Consecutive records of one file buffer, as columns: what the batch fast path reads."""

    buf: bytes
    first_index: int  # records are numbered first_index + 1, first_index + 2, ...
    data_start: np.ndarray  # int64: where each record's packet bytes start in buf
    caplen: np.ndarray  # int64: bytes captured (data_start + caplen <= len(buf))
    orig_len: np.ndarray  # int64: length on the wire
    timestamp: np.ndarray  # float64 epoch seconds, computed as the per-record path does
    linktype: int | np.ndarray  # one link type for the block, or one per record (pcapng)

    def slice(self, start: int, stop: int) -> RecordBlock:
        """Records start..stop-1 as a block of their own (the same buffer, no copy): a reader of the
        clock between packets (a live watch) feeds a block up to an instant and the rest after it."""
        linktype = self.linktype if isinstance(self.linktype, int) else self.linktype[start:stop]
        return RecordBlock(self.buf, self.first_index + start, self.data_start[start:stop], self.caplen[start:stop],
                           self.orig_len[start:stop], self.timestamp[start:stop], linktype)

    def records(self) -> Iterator[RecordFields]:
        """(index, timestamp, linktype, data, orig_len) per record: a RawPacket's fields."""
        buf = self.buf
        linktypes = self.linktype.tolist() if isinstance(self.linktype, np.ndarray) else repeat(self.linktype)
        for index, start, caplen, timestamp, orig_len, linktype in zip(
                count(self.first_index + 1), self.data_start.tolist(), self.caplen.tolist(),
                self.timestamp.tolist(), self.orig_len.tolist(), linktypes):
            yield (index, timestamp, linktype, buf[start : start + caplen], orig_len)


def _gather(buf: bytes, positions: np.ndarray, width: int) -> npt.NDArray[np.uint8]:
    """`width` bytes at each position of buf as an (n, width) uint8 array (positions + width <= len(buf))."""
    windows = np.lib.stride_tricks.sliding_window_view(np.frombuffer(buf, np.uint8), width)
    rows: npt.NDArray[np.uint8] = windows[positions]  # (numpy types fancy indexing as Any)
    return rows


class CaptureReader:
    format: str = ""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        # pcapng Decryption Secrets Blocks' key logs, as read; the reader of them empties the list.
        self.tls_secrets: list[bytes] = []
        # Pauses the capture did not see (epoch start, end, where): between the files of a series
        # (series.SeriesReader); a single file has none.
        self.outages: list[tuple[float, float, str]] = []
        self.files: list[str] = []  # a series' files (a single file's reader leaves it empty)

    def __iter__(self) -> Iterator[RawPacket]:
        return starmap(RawPacket, self.records())

    def records(self) -> Iterator[RecordFields]:
        """RawPacket fields as plain tuples (building a tuple costs a fifth of a RawPacket)."""
        for block in self.blocks():
            yield from block.records()

    def blocks(self) -> Iterator[RecordBlock]:  # pragma: no cover - overridden
        raise NotImplementedError

    def tell(self) -> int:
        """Bytes read so far, for a progress line (a series sums its files; 0 where unknown)."""
        return 0


class PcapReader(CaptureReader):
    format = "pcap"

    def __init__(self, fileobj: BinaryIO, magic: bytes) -> None:
        super().__init__()
        self.endian, self.nanosecond = PCAP_MAGICS[magic]
        rest = fileobj.read(20)
        if len(rest) < 20:
            raise CaptureFileError(f"pcap file header cut short (file is only {4 + len(rest)} bytes)")
        _major, _minor, _zone, _sigfigs, snaplen, network = struct.unpack(self.endian + "HHiIII", rest)
        self.snaplen = snaplen
        # The top bits of the link-type word carry FCS information (pcap spec, LinkType field).
        self.linktype = network & 0x0FFFFFFF
        self._chunks = _Chunks(fileobj, b"", 24)

    def blocks(self) -> Iterator[RecordBlock]:
        """The file's records a buffer at a time: the one walk over record headers (records() reads it too).

        Only the record lengths are read in Python (one small unpack per record: the walk is a
        chain); timestamps and lengths are then unpacked for the whole buffer at once.
        """
        unpack_length = struct.Struct(self.endian + "I").unpack_from
        header = np.dtype([("sec", self.endian + "u4"), ("frac", self.endian + "u4"),
                           ("incl", self.endian + "u4"), ("orig", self.endian + "u4")])
        divisor = 1e9 if self.nanosecond else 1e6
        chunks = self._chunks
        snaplen = self.snaplen or MAX_RECORD_SIZE
        warned_snaplen = False
        index = 0
        while True:
            if not chunks.fill(16):
                if chunks.remaining():
                    self.warnings.append(
                        chunks.cut_at() + f"record header of packet {index + 1} incomplete"
                    )
                return
            buf, pos = chunks.buf, chunks.pos
            # Inner loop over whole records already in the buffer: the hot path.
            starts: list[int] = []
            add_start = starts.append
            end_buf = len(buf)
            while pos + 16 <= end_buf:
                incl = unpack_length(buf, pos + 8)[0]
                end = pos + 16 + incl
                if end > end_buf:
                    break
                if incl > snaplen:
                    if incl > MAX_RECORD_SIZE:
                        break
                    if not warned_snaplen:
                        warned_snaplen = True
                        self.warnings.append(
                            f"packet {index + len(starts) + 1} is {incl} bytes, longer than the snap length {snaplen}"
                        )
                add_start(pos)
                pos = end
            chunks.pos = pos
            if starts:
                positions = np.array(starts, dtype=np.int64)
                fields = _gather(buf, positions, 16).view(header)[:, 0]
                timestamp = fields["sec"] + fields["frac"] / divisor
                yield RecordBlock(buf, index, positions + 16, fields["incl"].astype(np.int64),
                                  fields["orig"].astype(np.int64), timestamp, self.linktype)
                index += len(starts)
            if chunks.remaining() < 16:
                continue
            (incl,) = unpack_length(buf, pos + 8)
            if incl > MAX_RECORD_SIZE:
                self.warnings.append(
                    f"packet {index + 1} at byte {chunks.file_pos} declares {incl} bytes: "
                    "impossible record length, stopped reading there"
                )
                return
            if not chunks.fill(16 + incl):
                self.warnings.append(
                    chunks.cut_at() + f"packet {index + 1} "
                    f"declares {incl} bytes but only {chunks.remaining() - 16} remain"
                )
                return


class _Interface:
    __slots__ = ("linktype", "snaplen", "ts_divisor", "ts_offset")

    def __init__(self, linktype: int, snaplen: int, ts_divisor: float, ts_offset: int) -> None:
        self.linktype = linktype
        self.snaplen = snaplen
        self.ts_divisor = ts_divisor
        self.ts_offset = ts_offset


class PcapngReader(CaptureReader):
    format = "pcapng"

    def __init__(self, fileobj: BinaryIO, magic: bytes) -> None:
        super().__init__()
        rest = fileobj.read(8)
        if len(rest) < 8:
            raise CaptureFileError("pcapng section header cut short")
        if struct.unpack("<I", rest[4:8])[0] == PCAPNG_BYTE_ORDER_MAGIC:
            self.endian = "<"
        elif struct.unpack(">I", rest[4:8])[0] == PCAPNG_BYTE_ORDER_MAGIC:
            self.endian = ">"
        else:
            raise CaptureFileError("pcapng section header has no valid byte-order magic")
        self._chunks = _Chunks(fileobj, magic + rest, 0)

    def blocks(self) -> Iterator[RecordBlock]:
        """Packet records a buffer at a time. Runs of well-formed enhanced packet blocks (what
        dumpcap and tcpdump write) are walked with one unpack each and their columns computed at
        once; every other block, and any block that needs a warning, goes through `_one_block`."""
        chunks = self._chunks
        state = _PcapngState(self.endian)
        while True:
            if not chunks.fill(12):
                if chunks.remaining():
                    self.warnings.append(
                        chunks.cut_at() + "block header incomplete"
                    )
                return
            buf, pos = chunks.buf, chunks.pos
            epb_starts: list[int] = []
            add_start = epb_starts.append
            interfaces = state.interfaces
            if interfaces:
                epb = struct.Struct(state.endian + "IIIIIII").unpack_from
                trailer = struct.Struct(state.endian + "I").unpack_from
                known = len(interfaces)
                end_buf = len(buf)
                while pos + 28 <= end_buf:
                    block_type, block_len, iface_id, _hi, _lo, caplen, _orig = epb(buf, pos)
                    if (block_type != BT_EPB or block_len % 4 or block_len > MAX_RECORD_SIZE
                            or pos + block_len > end_buf or caplen + 32 > block_len or iface_id >= known
                            or trailer(buf, pos + block_len - 4)[0] != block_len):
                        break
                    add_start(pos)
                    pos += block_len
            if epb_starts:
                chunks.pos = pos
                yield self._epb_block(buf, epb_starts, state)
                continue
            packet = self._one_block(state)
            if packet is _STOP:
                return
            if packet is not None:
                yield packet

    def _epb_block(self, buf: bytes, starts: list[int], state: _PcapngState) -> RecordBlock:
        positions = np.array(starts, dtype=np.int64)
        e = state.endian
        fields = _gather(buf, positions, 28).view(np.dtype([
            ("type", e + "u4"), ("len", e + "u4"), ("iface", e + "u4"), ("ts_hi", e + "u4"),
            ("ts_lo", e + "u4"), ("caplen", e + "u4"), ("orig", e + "u4")]))[:, 0]
        iface_ids = fields["iface"]
        ts_raw = (fields["ts_hi"].astype(np.uint64) << np.uint64(32)) | fields["ts_lo"].astype(np.uint64)
        timestamp = np.empty(len(starts), dtype=np.float64)
        linktypes = np.empty(len(starts), dtype=np.int64)
        for iface_id in np.unique(iface_ids).tolist():
            iface = state.interfaces[iface_id]
            mask = iface_ids == iface_id
            linktypes[mask] = iface.linktype
            timestamp[mask] = _pcapng_times(ts_raw[mask], iface)
        block = RecordBlock(buf, state.index, positions + 28, fields["caplen"].astype(np.int64),
                            fields["orig"].astype(np.int64), timestamp,
                            int(linktypes[0]) if len(state.interfaces) == 1 else linktypes)
        state.index += len(starts)
        state.last_ts = float(timestamp[-1])
        return block

    def _one_block(self, state: _PcapngState) -> RecordBlock | Literal[_Stop.STOP] | None:
        """The block at the read position, any type, with every check and warning: a one-record
        RecordBlock, None (not a packet, or skipped) or _STOP."""
        chunks = self._chunks
        buf, pos = chunks.buf, chunks.pos
        block_start = chunks.file_pos
        if buf[pos : pos + 4] == PCAPNG_SHB:
            # A new section may switch byte order and always resets the interface list.
            bom = buf[pos + 8 : pos + 12]
            if struct.unpack("<I", bom)[0] == PCAPNG_BYTE_ORDER_MAGIC:
                state.endian = "<"
            elif struct.unpack(">I", bom)[0] == PCAPNG_BYTE_ORDER_MAGIC:
                state.endian = ">"
            else:
                self.warnings.append(f"bad section header at byte {block_start}: stopped reading there")
                return _STOP
            state.interfaces = []
        endian = state.endian
        interfaces = state.interfaces
        block_type, block_len = struct.unpack_from(endian + "II", buf, pos)
        if block_len < 12 or block_len % 4 or block_len > MAX_RECORD_SIZE:
            self.warnings.append(
                f"bad pcapng block length {block_len} at byte {block_start}: stopped reading there"
            )
            return _STOP
        if not chunks.fill(block_len):
            self.warnings.append(
                chunks.cut_at() + f"block at byte "
                f"{block_start} declares {block_len} bytes"
            )
            return _STOP
        buf, pos = chunks.buf, chunks.pos
        (trailer_len,) = struct.unpack_from(endian + "I", buf, pos + block_len - 4)
        if trailer_len != block_len:
            self.warnings.append(
                f"pcapng block at byte {block_start}: trailing length {trailer_len} != {block_len}; "
                "stopped reading there"
            )
            return _STOP
        chunks.pos = pos + block_len
        body = buf[pos + 8 : pos + block_len - 4]
        packet = None
        try:
            if block_type == BT_EPB:
                iface_id, ts_hi, ts_lo, caplen, origlen = struct.unpack_from(endian + "IIIII", body, 0)
                packet = (iface_id, (ts_hi << 32) | ts_lo, body[20 : 20 + caplen], origlen, caplen)
            elif block_type == BT_SPB:
                (origlen,) = struct.unpack_from(endian + "I", body, 0)
                snap = interfaces[0].snaplen if interfaces and interfaces[0].snaplen else origlen
                caplen = min(origlen, snap, len(body) - 4)
                packet = (0, None, body[4 : 4 + caplen], origlen, caplen)
            elif block_type == BT_OBSOLETE_PACKET:
                iface_id, _drops, ts_hi, ts_lo, caplen, origlen = struct.unpack_from(endian + "HHIIII", body, 0)
                packet = (iface_id, (ts_hi << 32) | ts_lo, body[20 : 20 + caplen], origlen, caplen)
            elif block_type == BT_IDB:
                interfaces.append(self._interface(body, endian))
            elif block_type == BT_DSB:
                secrets_type, secrets_len = struct.unpack_from(endian + "II", body, 0)
                if secrets_type == SECRETS_TLS_KEYLOG:
                    self.tls_secrets.append(bytes(body[8 : 8 + secrets_len]))
        except struct.error:
            self.warnings.append(f"pcapng block at byte {block_start} is too short for its type; skipped")
            return None
        if packet is None:
            return None
        iface_id, ts_raw, data, origlen, caplen = packet
        if len(data) < caplen:
            self.warnings.append(
                f"pcapng packet block at byte {block_start} is shorter than its captured length; skipped")
            return None
        if iface_id >= len(interfaces):
            self.warnings.append(f"packet block at byte {block_start} names unknown interface {iface_id}; skipped")
            return None
        iface = interfaces[iface_id]
        if ts_raw is not None:
            state.last_ts = _pcapng_time(ts_raw, iface)
        state.index += 1
        return RecordBlock(data, state.index - 1, _ZERO, np.array([len(data)], dtype=np.int64),
                           np.array([origlen], dtype=np.int64), np.array([state.last_ts]), iface.linktype)

    def _interface(self, body: bytes, endian: str) -> _Interface:
        linktype, _reserved, snaplen = struct.unpack_from(endian + "HHI", body, 0)
        divisor = 1_000_000
        ts_offset = 0
        pos = 8
        while pos + 4 <= len(body):
            code, length = struct.unpack_from(endian + "HH", body, pos)
            value = body[pos + 4 : pos + 4 + length]
            if code == 0:
                break
            if code == OPT_IF_TSRESOL and length >= 1:
                resol = value[0]
                # High bit set: a negative power of two; otherwise a negative power of ten.
                divisor = 2 ** (resol & 0x7F) if resol & 0x80 else 10 ** resol
            elif code == OPT_IF_TSOFFSET and length >= 8:
                (ts_offset,) = struct.unpack(endian + "q", value[:8])
            pos += 4 + ((length + 3) & ~3)
        return _Interface(linktype, snaplen, divisor, ts_offset)


class _PcapngState:
    """What the pcapng walk carries from block to block."""

    __slots__ = ("endian", "index", "interfaces", "last_ts")

    def __init__(self, endian: str) -> None:
        self.endian = endian
        self.interfaces: list[_Interface] = []
        self.index = 0  # records read so far
        self.last_ts = 0.0  # a simple packet block has no timestamp: it gets the previous one


class _Stop(enum.Enum):
    """`_one_block`'s answer when the file cannot be read any further (a sentinel mypy can narrow)."""

    STOP = enum.auto()


_STOP: Final = _Stop.STOP
_ZERO = np.zeros(1, dtype=np.int64)
# Above this a float64 no longer holds every remainder exactly: such resolutions take the per-record formula.
_EXACT_DIVISOR = 1 << 53


def _pcapng_time(ts_raw: int, iface: _Interface) -> float:
    divisor = iface.ts_divisor
    return iface.ts_offset + ts_raw // divisor + (ts_raw % divisor) / divisor


def _pcapng_times(ts_raw: np.ndarray, iface: _Interface) -> np.ndarray:
    """_pcapng_time for many uint64 timestamps of one interface, rounded exactly as it rounds."""
    divisor = iface.ts_divisor
    if (not isinstance(divisor, int) or divisor > _EXACT_DIVISOR or abs(iface.ts_offset) > _EXACT_DIVISOR
            or (len(ts_raw) and int(ts_raw.max()) >= 1 << 62)):
        return np.array([_pcapng_time(raw, iface) for raw in ts_raw.tolist()], dtype=np.float64)
    whole = (ts_raw // np.uint64(divisor)).astype(np.int64) + iface.ts_offset
    return whole.astype(np.float64) + (ts_raw % np.uint64(divisor)).astype(np.float64) / divisor
