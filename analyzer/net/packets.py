"""RawPacket → TCP Segment: link layer, IPv4/IPv6 and TCP headers, nothing above.

Strategy: precompiled `struct.Struct.unpack_from` on the captured bytes, no per-layer objects
(dpkt's layer objects cost about 10 µs a packet here). Anything that is not a whole TCP header
over IPv4/IPv6 returns None and is counted in the CaptureSummary, never raised: a diagnostic
tool must read what it can of a damaged capture.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from analyzer.records import CaptureSummary, RawPacket, Segment

# Link types (https://www.tcpdump.org/linktypes.html).
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_12 = 12  # DLT_RAW's value on most systems (BSD/OS's bpf.h)
LINKTYPE_RAW_14 = 14  # DLT_RAW's value on OpenBSD
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

# Where an untagged IPv4/IPv6 header starts for the two link types the fast paths read inline
# (Ethernet: 14-byte header; Linux cooked v1: 16 bytes); its ethertype is the 2 bytes before.
IP_OFFSETS = {LINKTYPE_ETHERNET: 14, LINKTYPE_LINUX_SLL: 16}

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
VLAN_ETHERTYPES = (0x8100, 0x88A8, 0x9100)  # 802.1Q, 802.1ad (QinQ), the pre-standard QinQ tag

# Address families written by NULL/LOOP headers: AF_INET is 2 everywhere; AF_INET6 is 10 on
# Linux, 23 on Windows, 24 on NetBSD/OpenBSD, 28 on FreeBSD, 30 on macOS (libpcap's BSD_AFNUM_*).
AF_INET = 2
AF_INET6_VALUES = frozenset((10, 23, 24, 28, 30))

IPPROTO_TCP = 6
IPV4_TTL_OFFSET = 8  # the TTL byte in an IPv4 header (RFC 791 3.1)
IPV6_EXTENSION_HEADERS = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options
IPPROTO_FRAGMENT = 44
IPPROTO_AH = 51

_U16 = struct.Struct("!H")
_U32_LE = struct.Struct("<I")
_U32_BE = struct.Struct("!I")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBH")


class PacketDecoder:
    """Turns RawPackets into Segments; counts what it cannot use in `summary`."""

    def __init__(self, summary: CaptureSummary) -> None:
        self.summary = summary

    def decode(self, raw: RawPacket) -> Segment | None:
        ip_offset = self._ip_offset(raw.linktype, raw.data)
        if ip_offset is None:
            return None
        return self._ip(raw, ip_offset)

    def _ip_offset(self, linktype: int, data: bytes) -> int | None:
        """Where the IP header starts, or None (counted) if this is not IP."""
        try:
            if linktype == LINKTYPE_ETHERNET:
                offset = 12
                (ethertype,) = _U16.unpack_from(data, offset)
                while ethertype in VLAN_ETHERTYPES:
                    offset += 4
                    (ethertype,) = _U16.unpack_from(data, offset)
                return self._ethertype(ethertype, offset + 2)
            if linktype == LINKTYPE_LINUX_SLL:
                return self._ethertype(_U16.unpack_from(data, 14)[0], 16)
            if linktype == LINKTYPE_LINUX_SLL2:
                return self._ethertype(_U16.unpack_from(data, 0)[0], 20)
            if linktype in (LINKTYPE_RAW, LINKTYPE_RAW_12, LINKTYPE_RAW_14, LINKTYPE_IPV4, LINKTYPE_IPV6):
                return 0
            if linktype == LINKTYPE_NULL:
                # Written in the capturing host's byte order: accept either.
                (family,) = _U32_LE.unpack_from(data, 0)
                if family > 0xFFFF:
                    (family,) = _U32_BE.unpack_from(data, 0)
                return self._family(family)
            if linktype == LINKTYPE_LOOP:
                return self._family(_U32_BE.unpack_from(data, 0)[0])
        except struct.error:
            self.summary.malformed += 1
            return None
        counts = self.summary.unsupported_linktypes
        counts[linktype] = counts.get(linktype, 0) + 1
        return None

    def _ethertype(self, ethertype: int, offset: int) -> int | None:
        if ethertype in (ETHERTYPE_IPV4, ETHERTYPE_IPV6):
            return offset
        self.summary.non_tcp += 1
        return None

    def _family(self, family: int) -> int | None:
        if family == AF_INET or family in AF_INET6_VALUES:
            return 4
        self.summary.non_tcp += 1
        return None

    def _ip(self, raw: RawPacket, offset: int) -> Segment | None:
        data = raw.data
        if len(data) <= offset:
            self.summary.malformed += 1
            return None
        version = data[offset] >> 4
        try:
            if version == 4:
                ver_ihl, _tos, total_len, _ident, frag, ttl, proto, _csum, src, dst = _IPV4.unpack_from(data, offset)
                ihl = (ver_ihl & 0x0F) * 4
                if ihl < 20:
                    self.summary.malformed += 1
                    return None
                if frag & 0x3FFF:  # more-fragments flag or a non-zero fragment offset
                    self.summary.ip_fragments += 1
                    return None
                if proto != IPPROTO_TCP:
                    self.summary.non_tcp += 1
                    return None
                # A zero total length is what TCP segmentation offload leaves; trust the capture then.
                ip_end = offset + total_len if total_len else raw.orig_len
                return self._tcp(raw, offset + ihl, ip_end, src, dst, ttl)
            if version == 6:
                _vtf, payload_len, next_header, hops, src, dst = _IPV6.unpack_from(data, offset)
                header_start = offset + 40
                while next_header in IPV6_EXTENSION_HEADERS or next_header == IPPROTO_AH:
                    nxt, ext_len = data[header_start], data[header_start + 1]
                    header_start += (ext_len + 2) * 4 if next_header == IPPROTO_AH else (ext_len + 1) * 8
                    next_header = nxt
                if next_header == IPPROTO_FRAGMENT:
                    self.summary.ip_fragments += 1
                    return None
                if next_header != IPPROTO_TCP:
                    self.summary.non_tcp += 1
                    return None
                ip_end = offset + 40 + payload_len if payload_len else raw.orig_len  # 0: a jumbogram
                return self._tcp(raw, header_start, ip_end, src, dst, hops)
        except (struct.error, IndexError):
            self.summary.malformed += 1
            return None
        self.summary.malformed += 1
        return None

    def _tcp(self, raw: RawPacket, offset: int, ip_end: int, src: bytes, dst: bytes, ttl: int) -> Segment | None:
        data = raw.data
        sport, dport, seq, ack, data_off, flags, window = _TCP.unpack_from(data, offset)
        header_len = (data_off >> 4) * 4
        payload_start = offset + header_len
        if header_len < 20 or payload_start > ip_end:
            self.summary.malformed += 1
            return None
        if payload_start > len(data) and (offset + 20 > len(data) or len(data) >= raw.orig_len):
            # Cut inside the fixed header, or options the whole (unsnapped) packet does not hold.
            self.summary.malformed += 1
            return None
        # A snap length that cut the TCP options (`tcpdump -s 54` with timestamps on) still leaves
        # ports, seq, ack and flags: the segment counts, its payload is missing (a snapped gap).
        payload = data[payload_start : min(ip_end, len(data))]
        return Segment(raw.index, raw.timestamp, src, sport, dst, dport, seq, ack, flags, window, payload,
                       ip_end - payload_start, ttl)


# ---- the common packet, for the engine's quick paths ----------------------------------------------
# IPv4 with a 20-byte header, unfragmented, carrying TCP with a whole header and a payload the
# snap length did not cut, over a link in IP_OFFSETS. Anything else (IPv6, VLAN tags, IP options,
# TSO's zero total length, snapped payloads) takes PacketDecoder.decode, which handles it all.
# ipv4_tcp_columns is the same rule over a block of records; tests/test_packets.py holds them equal.

IPV4_HEADER_BYTES = 20
TCP_HEADER_MIN_BYTES = 20
MIN_TCP_DATA_OFFSET = 0x50  # data offset 5 (words) in the high nibble
IPV4_VER_IHL_PLAIN = 0x45  # version 4, header length 5 words: no options
IPV4_FRAGMENT_BITS = 0x3FFF  # more-fragments flag and fragment offset
# From the ethertype (2 bytes before the IP header) to the TCP flags: ethertype, version/IHL, total
# length, flags/fragment offset, protocol, (checksum skipped) addresses and ports (the flow key, 12
# bytes), seq, ack, data offset, flags, window. A zero window is not the common packet: it says the
# sender's receive buffer is full, which the plain path reports (SegmentEvent.window).
_QUICK = struct.Struct("!HBxH2xHxB2x12sIIBBH")
QUICK_HEADER_BYTES = 38
_QUICK_COLUMNS = np.dtype({
    "names": ["ethertype", "ver_ihl", "total_len", "frag", "proto", "key", "seq", "ack", "data_off", "flags",
              "window"],
    "formats": [">u2", "u1", ">u2", ">u2", "u1", "V12", ">u4", ">u4", "u1", "u1", ">u2"],
    "offsets": [0, 2, 4, 8, 11, 14, 26, 30, 34, 35, 36],
    "itemsize": QUICK_HEADER_BYTES,
})


# (key, seq, ack, flags, start, end): the key is the source and destination addresses, then the
# ports (flows.flow_key's form); the payload is data[start:end]. A plain tuple: the quick path
# builds one per packet, and a NamedTuple costs about 0.2 µs more.
QuickTcp = tuple[bytes, int, int, int, int, int]


def ipv4_tcp_fields(data: bytes, ip: int) -> QuickTcp | None:
    """The common packet's TCP fields, or None when the packet is anything else."""
    if len(data) < ip + IPV4_HEADER_BYTES + TCP_HEADER_MIN_BYTES:
        return None
    ethertype, ver_ihl, total_len, frag, proto, key, seq, ack, data_off, flags, window = _QUICK.unpack_from(data,
                                                                                                            ip - 2)
    start = ip + IPV4_HEADER_BYTES + (data_off >> 4) * 4
    end = ip + total_len
    if (ethertype != ETHERTYPE_IPV4 or ver_ihl != IPV4_VER_IHL_PLAIN or proto != IPPROTO_TCP
            or frag & IPV4_FRAGMENT_BITS or data_off < MIN_TCP_DATA_OFFSET or not total_len
            or start > end or end > len(data) or not window):
        return None
    return key, seq, ack, flags, start, end


class QuickTcpColumns(NamedTuple):
    ok: npt.NDArray[np.bool_]  # the record is the common packet (the rest of the columns hold junk where not)
    key: npt.NDArray[np.void]  # 12-byte flow keys
    seq: npt.NDArray[np.int64]
    ack: npt.NDArray[np.int64]
    flags: npt.NDArray[np.uint8]
    start: npt.NDArray[np.int64]  # payload start and end, as offsets into the block's buffer
    end: npt.NDArray[np.int64]
    window: npt.NDArray[np.int64]  # the advertised window field (unscaled; never 0 where ok)


def ipv4_tcp_columns(buf: bytes, data_start: npt.NDArray[np.int64], caplen: npt.NDArray[np.int64],
                     ip: int | npt.NDArray[np.int64], handled: bool | npt.NDArray[np.bool_]) -> QuickTcpColumns:
    """ipv4_tcp_fields for every record of a block: record k is buf[data_start[k]:][:caplen[k]],
    its IP header at `ip` (per record, or one for all) where `handled` (its link type is in
    IP_OFFSETS). The buffer must hold at least QUICK_HEADER_BYTES."""
    b = np.frombuffer(buf, dtype=np.uint8)
    # A record too short for these headers reads the end of the buffer instead: its caplen check fails.
    at = np.minimum(data_start + ip - 2, len(b) - QUICK_HEADER_BYTES)
    h = np.lib.stride_tricks.sliding_window_view(b, QUICK_HEADER_BYTES)[at].view(_QUICK_COLUMNS)[:, 0]
    start = ip + IPV4_HEADER_BYTES + (h["data_off"] >> 4).astype(np.int64) * 4
    end = ip + h["total_len"].astype(np.int64)
    ok = (handled & (caplen >= ip + IPV4_HEADER_BYTES + TCP_HEADER_MIN_BYTES) & (h["ethertype"] == ETHERTYPE_IPV4)
          & (h["ver_ihl"] == IPV4_VER_IHL_PLAIN) & (h["proto"] == IPPROTO_TCP)
          & ((h["frag"] & IPV4_FRAGMENT_BITS) == 0) & (h["data_off"] >= MIN_TCP_DATA_OFFSET)
          & (h["total_len"] > 0) & (start <= end) & (end <= caplen) & (h["window"] != 0))
    return QuickTcpColumns(ok, h["key"], h["seq"].astype(np.int64), h["ack"].astype(np.int64), h["flags"],
                           data_start + start, data_start + end, h["window"].astype(np.int64))
