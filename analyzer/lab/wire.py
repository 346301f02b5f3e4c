"""Facts about a fault run's captures, read back from the pcap files (edge: files): per TCP connection
and direction, when the last payload left, which segments were retransmissions, the FINs and RSTs,
and the IPv4 TTLs seen (a RST whose TTL differs from its direction's other packets came from a box in
between). The fault runner records them in each side's metadata (`wire`); the lab's tests read them.

Only what the lab writes is read: classic pcap from tcpdump on a veth (Ethernet), IPv4, TCP. The
analyzer proper reads far more; this stays small on purpose and makes no verdict.
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from analyzer.records import FIN, RST, SYN
from analyzer.sources.pcap import open_capture

LINKTYPE_ETHERNET = 1
ETHERTYPE_IPV4 = 0x0800
ETHERNET_HEADER = 14
IPPROTO_TCP = 6
SEQ_MOD = 1 << 32


@dataclass(frozen=True)
class WirePacket:
    time: float
    src: str
    sport: int
    dst: str
    dport: int
    flags: int
    seq: int
    ack: int
    length: int  # TCP payload bytes
    ttl: int


def read_packets(path: str) -> list[WirePacket]:
    """The IPv4 TCP packets of an Ethernet pcap, in file order (anything else is skipped)."""
    packets = []
    with open(path, "rb") as f:
        for raw in open_capture(f):
            data = raw.data
            if raw.linktype != LINKTYPE_ETHERNET or len(data) < ETHERNET_HEADER + 40:
                continue
            if struct.unpack_from("!H", data, 12)[0] != ETHERTYPE_IPV4:
                continue
            ip = ETHERNET_HEADER
            ihl = (data[ip] & 0x0F) * 4
            total, ttl, proto = struct.unpack_from("!H", data, ip + 2)[0], data[ip + 8], data[ip + 9]
            if proto != IPPROTO_TCP:
                continue
            tcp = ip + ihl
            sport, dport, seq, ack, offset, flags = struct.unpack_from("!HHIIBB", data, tcp)
            length = total - ihl - (offset >> 4) * 4
            packets.append(WirePacket(raw.timestamp, socket.inet_ntoa(data[ip + 12:ip + 16]), sport,
                                      socket.inet_ntoa(data[ip + 16:ip + 20]), dport, flags, seq, ack, length, ttl))
    return packets


def connection_id(p: WirePacket, server_port: int) -> tuple[str, str]:
    """(`CLIENT:PORT->SERVER:PORT`, direction c2s|s2c) of a packet, the server being on server_port."""
    if p.dport == server_port:
        return f"{p.src}:{p.sport}->{p.dst}:{p.dport}", "c2s"
    return f"{p.dst}:{p.dport}->{p.src}:{p.sport}", "s2c"


def facts(path: str, server_port: int) -> dict[str, dict]:
    """connection id -> {c2s, s2c}: per direction packets, ttls, first/last packet and last payload
    times, retransmissions [{t, seq (relative), len, since_original}], fins [t], rsts [{t, ttl}]."""
    conns: dict[str, dict] = {}
    highest: dict[tuple[str, str], int] = {}
    sent_at: dict[tuple[str, str, int], float] = {}
    isn: dict[tuple[str, str], int] = {}
    for p in read_packets(path):
        cid, way = connection_id(p, server_port)
        d = conns.setdefault(cid, {"c2s": _direction(), "s2c": _direction()})[way]
        key = (cid, way)
        if p.flags & SYN or key not in isn:
            isn[key] = (p.seq + (1 if p.flags & SYN else 0)) % SEQ_MOD
        rel = (p.seq - isn[key]) % SEQ_MOD
        d["packets"] += 1
        d["first"] = d["first"] if d["first"] is not None else p.time
        d["last"] = p.time
        if p.ttl not in d["ttls"] and not p.flags & RST:  # a RST's TTL is kept with it: it may come from between
            d["ttls"].append(p.ttl)
        if p.length:
            end = rel + p.length
            if end <= highest.get(key, 0):
                d["retransmissions"].append({"t": p.time, "seq": rel, "len": p.length,
                                             "since_original": round(p.time - sent_at.get((cid, way, rel), p.time), 6)})
            else:
                highest[key] = end
                sent_at[(cid, way, rel)] = p.time
                d["last_payload"] = p.time
        if p.flags & FIN:
            d["fins"].append(p.time)
        if p.flags & RST:
            d["rsts"].append({"t": p.time, "ttl": p.ttl})
    return conns


def _direction() -> dict:
    return {"packets": 0, "ttls": [], "first": None, "last": None, "last_payload": None, "retransmissions": [],
            "fins": [], "rsts": []}
