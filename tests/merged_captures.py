"""A broker host's capture of several clients at once, composed from the shipped recordings.

Each shipped capture (one loopback recording: a scenario's consumer and publisher on 127.0.0.1) is
moved to a client host of its own (127.0.0.1 on the client side becomes 10.0.0.N, the broker
10.0.0.1) and shifted in time, then all are merged by timestamp into one pcap. Nothing is
committed: the file is built in the test's tmp_path from the few-KiB recordings (checksums are left
stale, as tests/synth.py's short_connections_pcap does: nothing here verifies them).
"""
from __future__ import annotations

import heapq
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

from analyzer.sources.pcap import open_capture
from tests import synth

CAPTURES = Path(__file__).resolve().parent.parent / "captures"
BROKER_IP = bytes((10, 0, 0, 1))
LOOPBACK = bytes((127, 0, 0, 1))
# Ethernet (14) + IPv4: the addresses at 26 and 30, the TCP ports at 34 and 36 (the recordings
# carry no IP options).
SRC, DST, SPORT, DPORT = 26, 30, 34, 36

# (capture, seconds after the merged capture's start): blocked consumers, a paused broker, healthy
# consumers and publishers, an error close, a consumer left open; several clients at once.
BUSY_BROKER = (
    ("threaded-worker", 0.0), ("blocked-callback", 0.5), ("heartbeat-disabled", 1.0), ("long-heartbeat", 1.5),
    ("py-amqp-blocked-handler", 2.0), ("consumer-timeout", 2.5), ("broker-paused", 3.0), ("idle", 3.5),
    ("blocked-connection-timeout", 4.0), ("every-method", 4.5), ("aio-pika-blocked-handler", 5.0),
)


START = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC


def _records(name: str, client_ip: bytes, shift: float, server_ports: set[int]) -> Iterator[tuple[float, int, bytes]]:
    """`name`'s packets with its client side moved to `client_ip` and its times shifted so that
    its first packet is `shift` seconds after START."""
    with open(CAPTURES / f"{name}.pcap", "rb") as f:
        reader = open_capture(f)
        rows = [(t, linktype, bytes(data)) for _, t, linktype, data, _ in reader.records()]
    first = rows[0][0]
    for t, linktype, data in rows:
        pkt = bytearray(data)
        sport, dport = struct.unpack_from("!HH", pkt, SPORT)
        to_server = dport in server_ports or sport not in server_ports
        if pkt[SRC:SRC + 4] == LOOPBACK:
            pkt[SRC:SRC + 4] = client_ip if to_server else BROKER_IP
        if pkt[DST:DST + 4] == LOOPBACK:
            pkt[DST:DST + 4] = BROKER_IP if to_server else client_ip
        yield (round(START + shift + (t - first), 6), linktype, bytes(pkt))


def merged_capture(path: Path, parts: Sequence[tuple[str, float]] = BUSY_BROKER,
                   server_ports: Sequence[int] = (5672,)) -> Path:
    """Write the merged capture of `parts` to `path` (one pcap, Ethernet) and return it."""
    streams = [_records(name, bytes((10, 0, 0, host)), shift, set(server_ports))
               for host, (name, shift) in enumerate(parts, start=2)]
    with open(path, "wb") as out:
        synth.write_pcap(out, heapq.merge(*streams, key=lambda r: r[0]))
    return path


def graceful_connections(count: int, *, every: float = 0.05) -> Iterator[tuple[float, int, bytes]]:
    """`count` healthy short connections (tests/synth.py's amqp_conversation: handshake, T=4, a
    heartbeat each way, close 200, FIN), client 10.1.x.y:40000+, one every `every` s from START.
    One conversation is built; the copies are it with addresses, port and time patched in."""
    conv = synth.amqp_conversation(client=("10.1.0.1", 40000), server=("10.0.0.1", 5672), start=0.0,
                                   heartbeat=4, heartbeats=1)
    template = [(seg.timestamp, seg.direction, synth.ethernet(conv.ip_packet(seg))) for seg in conv.segments]
    for i in range(count):
        client_ip = bytes((10, 1, i >> 8, i & 0xFF))
        port = struct.pack("!H", 40000 + i)
        for offset, direction, frame in template:
            pkt = bytearray(frame)
            if direction == synth.C2S:
                pkt[SRC:SRC + 4], pkt[SPORT:SPORT + 2] = client_ip, port
            else:
                pkt[DST:DST + 4], pkt[DPORT:DPORT + 2] = client_ip, port
            yield (round(START + i * every + offset, 6), synth.LINKTYPE_ETHERNET, bytes(pkt))


def thousand_connections(path: Path, *, copies: int = 5) -> Path:
    """A broker host's busy hour: `copies` of BUSY_BROKER (19 connections each, 8 of them needing
    attention), each set of clients on hosts of its own and 20 s later than the one before,
    among healthy short connections up to 1,000 connections in all."""
    streams = [_records(name, bytes((10, 0, copy, host)), 20.0 * copy + shift, {5672})
               for copy in range(copies) for host, (name, shift) in enumerate(BUSY_BROKER, start=2)]
    busy = 19 * copies
    streams.append(graceful_connections(1000 - busy, every=100.0 / (1000 - busy)))
    with open(path, "wb") as out:
        synth.write_pcap(out, heapq.merge(*streams, key=lambda r: r[0]))
    return path
