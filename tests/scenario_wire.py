"""A tiny wire summary of scenario captures for the tests: TCP flags and AMQP heartbeat frames per connection.

Deliberately independent of the project's decoder (written concurrently): scapy reads the pcap and
a byte scan finds heartbeat frames (`08 0000 00000000 CE`, AMQP 0-9-1 spec 4.2.7) in each
direction's concatenated payload. Good enough for loopback captures without loss or reordering.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pamqp import commands
from pamqp import frame as pamqp_frame
from scapy.layers.inet import IP, TCP
from scapy.utils import rdpcap

HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"
FIN, SYN, RST = 0x01, 0x02, 0x04


@dataclass
class Side:
    payload: bytearray = field(default_factory=bytearray)
    fin_at: float | None = None
    rst_at: float | None = None
    last_data_at: float | None = None
    data_times: list = field(default_factory=list)
    heartbeat_times: list = field(default_factory=list)


@dataclass
class Conn:
    id: str  # CLIENT:PORT->SERVER:PORT, the client being the SYN sender
    client: Side = field(default_factory=Side)
    server: Side = field(default_factory=Side)

    def heartbeats(self, side: str) -> int:
        return getattr(self, side).payload.count(HEARTBEAT)


def summarize(path: str) -> dict[str, Conn]:
    """Connections keyed by id, for connections whose SYN is in the capture."""
    conns: dict[tuple, Conn] = {}
    for pkt in rdpcap(path):
        if IP not in pkt or TCP not in pkt:
            continue
        ip, tcp = pkt[IP], pkt[TCP]
        a, b = (ip.src, tcp.sport), (ip.dst, tcp.dport)
        flags = int(tcp.flags)
        if flags & SYN and not flags & 0x10:  # a SYN without ACK names the client
            conns[(a, b)] = Conn(f"{a[0]}:{a[1]}->{b[0]}:{b[1]}")
        if (a, b) in conns:
            conn, side = conns[(a, b)], "client"
        elif (b, a) in conns:
            conn, side = conns[(b, a)], "server"
        else:
            continue
        s: Side = getattr(conn, side)
        t = float(pkt.time)
        data = bytes(tcp.payload)
        if data:
            s.payload += data
            s.last_data_at = t
            s.data_times.append(t)
            if data.endswith(HEARTBEAT):
                s.heartbeat_times.append(t)
        if flags & FIN and s.fin_at is None:
            s.fin_at = t
        if flags & RST and s.rst_at is None:
            s.rst_at = t
    return {c.id: c for c in conns.values()}


def frames(payload: bytes) -> list[tuple[int, Any]]:
    """(channel, frame) of every frame in one direction's payload, decoded by pamqp (the protocol
    header, when present, is the first frame); stops at a frame the capture cut short."""
    data, out = bytes(payload), []
    while data:
        try:
            used, channel, frame = pamqp_frame.unmarshal(data)
        except Exception:  # noqa: BLE001 (pamqp raises several types for a frame cut short)
            break
        out.append((channel, frame))
        data = data[used:]
    return out


def methods(payload: bytes) -> list[str]:
    """The names of the method frames in one direction's payload, e.g. "Connection.Close" (other
    frames' names have no dot: Heartbeat, ContentHeader, ContentBody, ProtocolHeader)."""
    return [f.name for _channel, f in frames(payload) if "." in f.name]


def connection_close(payload: bytes) -> commands.Connection.Close | None:
    """The Connection.Close in one direction's payload (reply_code, reply_text), if any."""
    return next((f for _channel, f in frames(payload) if isinstance(f, commands.Connection.Close)), None)
