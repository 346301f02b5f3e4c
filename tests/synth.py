"""Builders for synthetic test captures: IP/TCP packets, link-layer wrappers, pcap/pcapng files,
and a scripted AMQP 0-9-1 conversation.

Strategy: scapy builds the IP and TCP layers (it gets checksums and lengths right); the link
headers and the capture files are written by hand with `struct`, because scapy's writers cannot
produce every case the readers must handle (big-endian pcapng, simple and obsolete packet blocks,
several sections, unknown blocks, broken block lengths). Everything returns `bytes` so tests can
cut, corrupt and concatenate freely.

Timestamps are converted exactly: pass an `int`, a `Decimal` or a `Fraction` (or a `str` such as
"1700000000.123456789") when sub-microsecond digits matter; a `float` is taken as the shortest
decimal that prints it (`str(x)`), which is what the test author typed.
"""
from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import BinaryIO

from pamqp import commands
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header
from pamqp import heartbeat as pamqp_heartbeat
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from analyzer.net.packets import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    LINKTYPE_RAW_12,
    LINKTYPE_RAW_14,
)
from analyzer.records import ACK, C2S, FIN, PSH, S2C, SYN

# Address-family values in NULL/LOOP headers (the writer's own AF_* constants).
AF_INET = 2
AF_INET6_BSD = 24  # NetBSD, OpenBSD
AF_INET6_FREEBSD = 28
AF_INET6_DARWIN = 30  # macOS lo0
AF_INET6_WINDOWS = 23  # Npcap loopback
AF_INET6_VALUES = (AF_INET6_BSD, AF_INET6_FREEBSD, AF_INET6_DARWIN, AF_INET6_WINDOWS)

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_IPV6 = 0x86DD
TPID_8021Q = 0x8100
TPID_8021AD = 0x88A8

CLIENT_MAC = bytes.fromhex("020000000001")
SERVER_MAC = bytes.fromhex("020000000002")

AMQP_PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"


# ---- IP / TCP ------------------------------------------------------------------------------------


def tcp_packet(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    seq: int = 0,
    ack: int = 0,
    flags: int | str = PSH | ACK,  # bits from analyzer.records, or scapy letters ("SA")
    payload: bytes = b"",
    *,
    window: int = 65535,
    ip_options: bytes = b"",
    ipv6_ext: Sequence = (),
    ip_flags: int | str = 0,
    frag: int = 0,
    ip_id: int = 1,
) -> bytes:
    """An IPv4 or IPv6 packet (chosen by the address syntax) carrying one TCP segment.

    `ip_options` are raw IPv4 option bytes (padded to a multiple of 4 here, so IHL > 5);
    `ipv6_ext` is a sequence of scapy IPv6 extension-header layers placed between IPv6 and TCP;
    `ip_flags`/`frag` set the IPv4 MF/DF flags and fragment offset (in 8-byte units).
    """
    if ":" in src:
        ip = IPv6(src=src, dst=dst, hlim=64)
        for ext in ipv6_ext:
            ip = ip / ext
    else:
        ip = IP(src=src, dst=dst, ttl=64, id=ip_id, flags=ip_flags, frag=frag)
        if ip_options:
            ip.options = ip_options + b"\x00" * (-len(ip_options) % 4)
    pkt = ip / TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, window=window)
    if payload:
        pkt = pkt / Raw(payload)
    return bytes(pkt)


def ip_version(ip: bytes) -> int:
    return ip[0] >> 4


# ---- link-layer wrappers -------------------------------------------------------------------------


def ethernet(
    ip: bytes,
    *,
    vlans: Sequence[int] = (),
    src_mac: bytes = CLIENT_MAC,
    dst_mac: bytes = SERVER_MAC,
    ethertype: int | None = None,
    pad_to: int = 0,
) -> bytes:
    """Ethernet II frame around `ip`. `vlans` lists VLAN ids outermost first: one id gives an
    802.1Q tag; two give QinQ (outer 802.1ad TPID 0x88a8, inner 802.1Q 0x8100). `pad_to` appends
    zero padding up to that frame length (60 is Ethernet's minimum without FCS)."""
    if ethertype is None:
        ethertype = ETHERTYPE_IPV6 if ip_version(ip) == 6 else ETHERTYPE_IPV4
    tags = b""
    for i, vid in enumerate(vlans):
        tpid = TPID_8021AD if (len(vlans) > 1 and i < len(vlans) - 1) else TPID_8021Q
        tags += struct.pack("!HH", tpid, vid & 0x0FFF)
    frame = dst_mac + src_mac + tags + struct.pack("!H", ethertype) + ip
    return frame + b"\x00" * max(0, pad_to - len(frame))


def sll(ip: bytes, *, pkttype: int = 0, hatype: int = 1, addr: bytes = CLIENT_MAC, protocol: int | None = None) -> bytes:
    """Linux cooked capture v1 (16-byte header: packet type, ARPHRD type, address length,
    8 address bytes, protocol), https://www.tcpdump.org/linktypes/LINKTYPE_LINUX_SLL.html"""
    if protocol is None:
        protocol = ETHERTYPE_IPV6 if ip_version(ip) == 6 else ETHERTYPE_IPV4
    return struct.pack("!HHH8sH", pkttype, hatype, len(addr), addr.ljust(8, b"\x00"), protocol) + ip


def sll2(
    ip: bytes, *, ifindex: int = 2, pkttype: int = 0, hatype: int = 1, addr: bytes = CLIENT_MAC, protocol: int | None = None
) -> bytes:
    """Linux cooked capture v2 (20-byte header: protocol, reserved, interface index, ARPHRD type,
    packet type, address length, 8 address bytes), what `tcpdump -i any` writes since 4.99."""
    if protocol is None:
        protocol = ETHERTYPE_IPV6 if ip_version(ip) == 6 else ETHERTYPE_IPV4
    return struct.pack("!HHIHBB8s", protocol, 0, ifindex, hatype, pkttype, len(addr), addr.ljust(8, b"\x00")) + ip


def null(ip: bytes, *, byteorder: str = "<", af: int | None = None) -> bytes:
    """BSD/Windows loopback (LINKTYPE_NULL): a 4-byte address family in the writer's byte order.
    IPv6 defaults to macOS's AF_INET6 (30)."""
    if af is None:
        af = AF_INET6_DARWIN if ip_version(ip) == 6 else AF_INET
    return struct.pack(byteorder + "I", af) + ip


def loop(ip: bytes, *, af: int | None = None) -> bytes:
    """OpenBSD loopback (LINKTYPE_LOOP): like NULL but always network byte order."""
    if af is None:
        af = AF_INET6_BSD if ip_version(ip) == 6 else AF_INET
    return struct.pack("!I", af) + ip


def raw(ip: bytes) -> bytes:
    return ip


# linktype -> wrapper, for tests parametrized over link types (IPv4 228 / IPv6 229 accept only
# their own IP version; the caller picks).
WRAPPERS = {
    LINKTYPE_ETHERNET: ethernet,
    LINKTYPE_LINUX_SLL: sll,
    LINKTYPE_LINUX_SLL2: sll2,
    LINKTYPE_NULL: null,
    LINKTYPE_LOOP: loop,
    LINKTYPE_RAW: raw,
    LINKTYPE_RAW_12: raw,
    LINKTYPE_RAW_14: raw,
    LINKTYPE_IPV4: raw,
    LINKTYPE_IPV6: raw,
}


def wrap(linktype: int, ip: bytes, **kwargs) -> bytes:
    """Wrap an IP packet in the link header of `linktype` (keyword arguments go to the wrapper)."""
    return WRAPPERS[linktype](ip, **kwargs)


# ---- timestamps ----------------------------------------------------------------------------------


def exact(ts: int | float | str | Decimal | Fraction) -> Fraction:
    """A timestamp as an exact fraction of seconds (a float is read as the decimal it prints as)."""
    if isinstance(ts, Fraction):
        return ts
    if isinstance(ts, float):
        return Fraction(Decimal(repr(ts)))
    return Fraction(Decimal(ts)) if isinstance(ts, str) else Fraction(ts)


def _split(ts, units_per_second: int) -> tuple[int, int]:
    """(seconds, fraction in units) for pcap record headers; the fraction must be exact."""
    t = exact(ts)
    sec = t.numerator // t.denominator
    frac = (t - sec) * units_per_second
    if frac.denominator != 1:
        raise ValueError(f"timestamp {ts} is not a whole number of 1/{units_per_second} s")
    return sec, int(frac)


def _units(ts, resolution: Fraction) -> int:
    """Timestamp in pcapng units of `resolution` seconds; must be exact."""
    u = exact(ts) / resolution
    if u.denominator != 1:
        raise ValueError(f"timestamp {ts} is not a whole number of {resolution} s")
    return int(u)


def tsresol_seconds(tsresol: int | None) -> Fraction:
    """The unit of an if_tsresol option byte: 10^-n, or 2^-n when the high bit is set (pcapng
    spec section 4.2); absent means microseconds."""
    if tsresol is None:
        return Fraction(1, 10**6)
    if tsresol & 0x80:
        return Fraction(1, 2 ** (tsresol & 0x7F))
    return Fraction(1, 10**tsresol)


# ---- pcap ----------------------------------------------------------------------------------------

PCAP_MAGIC_USEC = 0xA1B2C3D4
PCAP_MAGIC_NSEC = 0xA1B23C4D


def pcap_header(linktype: int, *, byteorder: str = "<", nanosecond: bool = False, snaplen: int = 262144) -> bytes:
    magic = PCAP_MAGIC_NSEC if nanosecond else PCAP_MAGIC_USEC
    return struct.pack(byteorder + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)


def pcap_record(ts, data: bytes, *, byteorder: str = "<", nanosecond: bool = False, orig_len: int | None = None) -> bytes:
    sec, frac = _split(ts, 10**9 if nanosecond else 10**6)
    orig = len(data) if orig_len is None else orig_len
    return struct.pack(byteorder + "IIII", sec, frac, len(data), orig) + data


def write_pcap(
    out: BinaryIO,
    packets: Iterable[tuple],
    *,
    linktype: int | None = None,
    byteorder: str = "<",
    nanosecond: bool = False,
    snaplen: int = 262144,
) -> None:
    """Stream a pcap file to `out`. `packets` yields (timestamp, linktype, data[, orig_len]); one
    link type per file (a pcap header holds one). `linktype` is needed only when there are no
    packets."""
    header_written = False
    for rec in packets:
        ts, lt, data = rec[:3]
        orig_len = rec[3] if len(rec) > 3 else None
        if not header_written:
            linktype = lt if linktype is None else linktype
            out.write(pcap_header(linktype, byteorder=byteorder, nanosecond=nanosecond, snaplen=snaplen))
            header_written = True
        if lt != linktype:
            raise ValueError(f"pcap holds one link type: {lt} after {linktype}")
        out.write(pcap_record(ts, data, byteorder=byteorder, nanosecond=nanosecond, orig_len=orig_len))
    if not header_written:
        out.write(pcap_header(LINKTYPE_ETHERNET if linktype is None else linktype, byteorder=byteorder,
                              nanosecond=nanosecond, snaplen=snaplen))


def pcap_bytes(packets: Iterable[tuple], **kwargs) -> bytes:
    """A whole pcap file as bytes; see `write_pcap` for the arguments."""
    buf = io.BytesIO()
    write_pcap(buf, packets, **kwargs)
    return buf.getvalue()


# ---- pcapng --------------------------------------------------------------------------------------

SHB_TYPE = 0x0A0D0D0A
IDB_TYPE = 0x00000001
PB_TYPE = 0x00000002  # obsolete Packet Block
SPB_TYPE = 0x00000003
EPB_TYPE = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D


def _pad4(b: bytes) -> bytes:
    return b + b"\x00" * (-len(b) % 4)


def pcapng_block(block_type: int, body: bytes, *, byteorder: str = "<", total_length: int | None = None) -> bytes:
    """One generic block: type, total length, body padded to 32 bits, total length again.
    `total_length` overrides the length written in both places (to build broken blocks)."""
    body = _pad4(body)
    n = 12 + len(body) if total_length is None else total_length
    return struct.pack(byteorder + "II", block_type, n) + body + struct.pack(byteorder + "I", n)


def _options(opts: Sequence[tuple[int, bytes]], byteorder: str) -> bytes:
    if not opts:
        return b""
    out = b"".join(struct.pack(byteorder + "HH", code, len(v)) + _pad4(v) for code, v in opts)
    return out + struct.pack(byteorder + "HH", 0, 0)  # opt_endofopt


def shb(*, byteorder: str = "<") -> bytes:
    body = struct.pack(byteorder + "IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)  # section length unknown
    return pcapng_block(SHB_TYPE, body, byteorder=byteorder)


def idb(linktype: int, tsresol: int | None = None, *, snaplen: int = 0, byteorder: str = "<") -> bytes:
    opts = [] if tsresol is None else [(9, bytes([tsresol]))]  # 9 = if_tsresol
    body = struct.pack(byteorder + "HHI", linktype, 0, snaplen) + _options(opts, byteorder)
    return pcapng_block(IDB_TYPE, body, byteorder=byteorder)


def epb(iface: int, units: int, data: bytes, *, orig_len: int | None = None, byteorder: str = "<") -> bytes:
    orig = len(data) if orig_len is None else orig_len
    body = struct.pack(byteorder + "IIIII", iface, units >> 32, units & 0xFFFFFFFF, len(data), orig) + _pad4(data)
    return pcapng_block(EPB_TYPE, body, byteorder=byteorder)


def dsb(secrets: bytes, *, secrets_type: int = 0x544C534B, byteorder: str = "<") -> bytes:
    """A Decryption Secrets Block (type 0x0000000A); the default type "TLSK" holds an NSS key log."""
    body = struct.pack(byteorder + "II", secrets_type, len(secrets)) + _pad4(secrets)
    return pcapng_block(0x0000000A, body, byteorder=byteorder)


def spb(data: bytes, *, orig_len: int | None = None, byteorder: str = "<") -> bytes:
    """Simple Packet Block: no interface id (always 0), no timestamp, captured length implied by
    the block length (min(orig_len, snaplen))."""
    orig = len(data) if orig_len is None else orig_len
    return pcapng_block(SPB_TYPE, struct.pack(byteorder + "I", orig) + _pad4(data), byteorder=byteorder)


def packet_block(iface: int, units: int, data: bytes, *, orig_len: int | None = None, byteorder: str = "<") -> bytes:
    """The obsolete Packet Block (type 2): 16-bit interface id and drops count, then as EPB."""
    orig = len(data) if orig_len is None else orig_len
    body = struct.pack(byteorder + "HHIIII", iface, 0, units >> 32, units & 0xFFFFFFFF, len(data), orig) + _pad4(data)
    return pcapng_block(PB_TYPE, body, byteorder=byteorder)


@dataclass(frozen=True)
class RawBlock:
    """Put in a section's "packets" list to emit a block verbatim (unknown types, broken blocks).
    `data` is the full block bytes as built by `pcapng_block`, or any bytes at all."""

    data: bytes


def write_pcapng(out: BinaryIO, sections: Sequence[dict], *, byteorder: str = "<", block_kinds: str = "epb") -> None:
    """Stream a pcapng file.

    sections: [{"interfaces": [(linktype, tsresol_byte_or_None), ...],
                "packets": [(iface_id, timestamp, data[, kind[, orig_len]]) or RawBlock, ...],
                "byteorder": "<" or ">" (optional, overrides the argument)}]
    kind is "epb" (default: `block_kinds`), "spb" (iface_id and timestamp ignored: SPBs have
    neither) or "pb" (the obsolete Packet Block).
    """
    for section in sections:
        bo = section.get("byteorder", byteorder)
        out.write(shb(byteorder=bo))
        ifaces = list(section.get("interfaces", ()))
        for lt, tsresol in ifaces:
            out.write(idb(lt, tsresol, byteorder=bo))
        for rec in section.get("packets", ()):
            if isinstance(rec, RawBlock):
                out.write(rec.data)
                continue
            iface, ts, data = rec[:3]
            kind = rec[3] if len(rec) > 3 and rec[3] else block_kinds
            orig_len = rec[4] if len(rec) > 4 else None
            if kind == "spb":
                out.write(spb(data, orig_len=orig_len, byteorder=bo))
                continue
            units = _units(ts, tsresol_seconds(ifaces[iface][1]))
            build = {"epb": epb, "pb": packet_block}[kind]
            out.write(build(iface, units, data, orig_len=orig_len, byteorder=bo))


def pcapng_bytes(sections: Sequence[dict], **kwargs) -> bytes:
    """A whole pcapng file as bytes; see `write_pcapng`."""
    buf = io.BytesIO()
    write_pcapng(buf, sections, **kwargs)
    return buf.getvalue()


# ---- a short AMQP 0-9-1 conversation -------------------------------------------------------------


@dataclass(frozen=True)
class ConvSegment:
    """One TCP segment of a scripted conversation, before any link or IP header."""

    timestamp: float
    direction: str  # C2S or S2C
    flags: int
    seq: int
    ack: int
    payload: bytes


@dataclass
class Conversation:
    client: tuple[str, int]
    server: tuple[str, int]
    segments: list[ConvSegment]
    # every AMQP unit in order: (direction, kind, bytes); kind is "protocol-header" or the frame's
    # name ("connection.start", "heartbeat", ...)
    frames: list[tuple[str, str, bytes]] = field(default_factory=list)

    def endpoints(self, direction: str) -> tuple[tuple[str, int], tuple[str, int]]:
        return (self.client, self.server) if direction == C2S else (self.server, self.client)

    def ip_packet(self, seg: ConvSegment, *, payload: bytes | None = None) -> bytes:
        """The IP packet for `seg` (optionally with another payload, e.g. to corrupt it)."""
        (src, sport), (dst, dport) = self.endpoints(seg.direction)
        return tcp_packet(src, dst, sport, dport, seg.seq, seg.ack, seg.flags,
                          seg.payload if payload is None else payload)

    def packets(self, linktype: int = LINKTYPE_ETHERNET, segments: Iterable[ConvSegment] | None = None,
                **wrap_kwargs) -> list[tuple[float, int, bytes]]:
        """(timestamp, linktype, frame) tuples ready for `pcap_bytes`; pass `segments` to render a
        sliced, reordered, duplicated or thinned list."""
        segs = self.segments if segments is None else segments
        return [(s.timestamp, linktype, wrap(linktype, self.ip_packet(s), **wrap_kwargs)) for s in segs]

    def stream(self, direction: str) -> bytes:
        """The byte stream one side sent (what reassembly must reproduce)."""
        return b"".join(s.payload for s in self.segments if s.direction == direction)


def _method(cmd, channel: int = 0) -> bytes:
    return pamqp_frame.marshal(cmd, channel)


def amqp_conversation(
    client: tuple[str, int] = ("10.0.0.1", 52018),
    server: tuple[str, int] = ("10.0.0.2", 5672),
    *,
    start: float = 1700000000.0,
    heartbeat: int = 60,
    heartbeats: int = 3,
    client_isn: int = 1000,
    server_isn: int = 5000,
    step: float = 0.001,
) -> Conversation:
    """A short, well-formed AMQP 0-9-1 connection: TCP handshake, protocol header, connection.start
    / start-ok / tune / tune-ok / open / open-ok, `heartbeats` heartbeat frames from each side
    (each side sends at heartbeat/2, as RabbitMQ and pika do), connection.close / close-ok, and a
    FIN exchange. One AMQP unit per segment, each acknowledged by the peer's next data segment or
    a pure ACK, with correct sequence numbers (SYN and FIN count one)."""
    segs: list[ConvSegment] = []
    frames: list[tuple[str, str, bytes]] = []
    nxt = {C2S: client_isn, S2C: server_isn}  # next sequence number each side will send
    t = start

    def send(direction: str, flags: int, payload: bytes = b"", dt: float = step) -> None:
        nonlocal t
        t = round(t + dt, 6)
        other = S2C if direction == C2S else C2S
        ack = nxt[other] if flags & ACK else 0
        segs.append(ConvSegment(t, direction, flags, nxt[direction], ack, payload))
        nxt[direction] += len(payload) + (1 if flags & (SYN | FIN) else 0)

    def unit(direction: str, name: str, data: bytes, dt: float = step) -> None:
        frames.append((direction, name, data))
        send(direction, PSH | ACK, data, dt)

    # TCP handshake (the SYN carries no ACK, so ack = 0)
    t = round(start - step, 6)
    send(C2S, SYN)
    send(S2C, SYN | ACK)
    send(C2S, ACK)

    unit(C2S, "protocol-header", pamqp_header.ProtocolHeader().marshal())
    unit(S2C, "connection.start", _method(commands.Connection.Start(
        server_properties={"product": "RabbitMQ", "version": "3.12.0",
                           "capabilities": {"publisher_confirms": True, "basic.nack": True}},
        mechanisms="PLAIN AMQPLAIN", locales="en_US")))
    unit(C2S, "connection.start-ok", _method(commands.Connection.StartOk(
        client_properties={"product": "pika", "capabilities": {"basic.nack": True}},
        mechanism="PLAIN", response="\x00guest\x00guest", locale="en_US")))
    unit(S2C, "connection.tune", _method(commands.Connection.Tune(channel_max=2047, frame_max=131072, heartbeat=heartbeat)))
    unit(C2S, "connection.tune-ok", _method(commands.Connection.TuneOk(channel_max=2047, frame_max=131072, heartbeat=heartbeat)))
    unit(C2S, "connection.open", _method(commands.Connection.Open(virtual_host="/")))
    unit(S2C, "connection.open-ok", _method(commands.Connection.OpenOk()))
    send(C2S, ACK)

    hb = pamqp_heartbeat.Heartbeat().marshal()
    for _ in range(heartbeats):
        unit(C2S, "heartbeat", hb, dt=heartbeat / 2)
        unit(S2C, "heartbeat", hb)
    send(C2S, ACK)

    unit(C2S, "connection.close", _method(commands.Connection.Close(
        reply_code=200, reply_text="Normal shutdown", class_id=0, method_id=0)), dt=1.0)
    unit(S2C, "connection.close-ok", _method(commands.Connection.CloseOk()))
    send(C2S, FIN | ACK)
    send(S2C, FIN | ACK)
    send(C2S, ACK)
    return Conversation(client, server, segs, frames)


# ---- scripted conversations with free timing ------------------------------------------------------


def scripted_conversation(
    steps: Sequence[tuple[float, str, int, bytes]],
    client: tuple[str, int] = ("127.0.0.1", 40000),
    server: tuple[str, int] = ("127.0.0.1", 5672),
    *,
    start: float = 1700000000.0,
    client_isn: int = 1000,
    server_isn: int = 5000,
) -> Conversation:
    """A conversation from (seconds after start, direction, TCP flags, payload) steps; sequence and
    acknowledgement numbers are filled in (SYN and FIN count one), so a test states only the timing.
    A step with a fifth element RETRANSMIT sends that direction's last data segment again (same
    sequence number and payload; the step's own payload is ignored)."""
    nxt = {C2S: client_isn, S2C: server_isn}
    last_data: dict[str, tuple[int, bytes]] = {}
    segs = []
    for offset, direction, flags, payload, *how in steps:
        other = S2C if direction == C2S else C2S
        ack = nxt[other] if flags & ACK else 0
        if how and how[0] == RETRANSMIT:
            seq, payload = last_data[direction]
            segs.append(ConvSegment(round(start + offset, 6), direction, flags, seq, ack, payload))
            continue
        if payload:
            last_data[direction] = (nxt[direction], payload)
        segs.append(ConvSegment(round(start + offset, 6), direction, flags, nxt[direction], ack, payload))
        nxt[direction] += len(payload) + (1 if flags & (SYN | FIN) else 0)
    return Conversation(client, server, segs)


RETRANSMIT = "retransmit"


def method_frame(cmd, channel: int = 0) -> bytes:
    """A marshalled method frame (pamqp)."""
    return _method(cmd, channel)


PIKA_CLIENT_PROPERTIES = {"product": "Pika Python Client Library", "version": "1.4.4"}


def handshake_steps(heartbeat: int, *, proposed: int = 60, at: float = 0.0, step: float = 0.001,
                    client_properties: dict | None = None, mechanism: str = "PLAIN") -> list:
    """TCP handshake, protocol header and connection.start..open-ok as pika (or the library whose
    `client_properties` are given) and RabbitMQ send them; tune-ok is the 7th step, at
    `at + 7 * step`, open-ok the 9th."""
    t = lambda i: round(at + i * step, 6)  # noqa: E731
    return [
        (t(0), C2S, SYN, b""),
        (t(1), S2C, SYN | ACK, b""),
        (t(2), C2S, ACK, b""),
        (t(3), C2S, PSH | ACK, pamqp_header.ProtocolHeader().marshal()),
        (t(4), S2C, PSH | ACK, _method(commands.Connection.Start(
            server_properties={"product": "RabbitMQ", "version": "3.10.8"}, mechanisms="PLAIN", locales="en_US"))),
        (t(5), C2S, PSH | ACK, _method(commands.Connection.StartOk(
            client_properties=client_properties or PIKA_CLIENT_PROPERTIES,
            mechanism=mechanism, response="\x00guest\x00guest", locale="en_US"))),
        (t(6), S2C, PSH | ACK, _method(commands.Connection.Tune(channel_max=2047, frame_max=131072, heartbeat=proposed))),
        (t(7), C2S, PSH | ACK, _method(commands.Connection.TuneOk(channel_max=2047, frame_max=131072, heartbeat=heartbeat))),
        (t(8), C2S, PSH | ACK, _method(commands.Connection.Open(virtual_host="/"))),
        (t(9), S2C, PSH | ACK, _method(commands.Connection.OpenOk())),
    ]


# ---- many short connections (memory and scaling checks) -------------------------------------------


def short_connections_pcap(out: BinaryIO, count: int, *, start: float = 1_700_000_000.0) -> None:
    """Write `count` short connections to `out` as a pcap: SYN, SYN-ACK, ACK, protocol header,
    connection.start, FIN exchange; client 10.x.y.z (a new address and port each), server
    10.255.255.254:5672, 1 ms apart. scapy builds one template conversation; the copies are that
    template with addresses, port and time patched in (checksums are left stale: nothing here
    verifies them), so 50,000 connections take about a second to write."""
    steps = [
        (0.0000, C2S, SYN, b""),
        (0.0001, S2C, SYN | ACK, b""),
        (0.0002, C2S, ACK, b""),
        (0.0003, C2S, PSH | ACK, AMQP_PROTOCOL_HEADER),
        (0.0004, S2C, PSH | ACK, _method(commands.Connection.Start(
            server_properties={"product": "RabbitMQ"}, mechanisms="PLAIN", locales="en_US"))),
        (0.0005, C2S, FIN | ACK, b""),
        (0.0006, S2C, FIN | ACK, b""),
        (0.0007, C2S, ACK, b""),
    ]
    conv = scripted_conversation(steps, client=("10.0.0.1", 40000), server=("10.255.255.254", 5672), start=0.0)
    template = [(s.timestamp, s.direction, ethernet(conv.ip_packet(s))) for s in conv.segments]
    record = struct.Struct("<IIII")
    out.write(pcap_header(LINKTYPE_ETHERNET))
    for i in range(count):
        client_ip = bytes((10, 1 + (i >> 16) % 250, (i >> 8) & 0xFF, i & 0xFF))
        client_port = struct.pack("!H", 1024 + i % 60000)
        for offset, direction, frame in template:
            pkt = bytearray(frame)
            # Ethernet (14) + IPv4 (20): addresses at 26 and 30, TCP ports at 34 and 36.
            if direction == C2S:
                pkt[26:30], pkt[34:36] = client_ip, client_port
            else:
                pkt[30:34], pkt[36:38] = client_ip, client_port
            t = start + i * 0.001 + offset
            sec = int(t)
            out.write(record.pack(sec, round((t - sec) * 1e6), len(pkt), len(pkt)) + pkt)
