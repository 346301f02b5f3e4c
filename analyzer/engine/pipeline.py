"""The one place the stages meet: file → packets → segments → flows → AMQP events, streaming.

`iter_events` yields SegmentEvent, Frame, ProtocolHeader, DecodeError and Gap records in
capture order (events of a flow on an unknown port are released together once it is shown to
be AMQP). What the lower layers counted or warned about lands in the CaptureSummary passed in.
"""
from __future__ import annotations

from typing import BinaryIO, Callable, Iterable, Iterator

from analyzer.flows import Flow
from analyzer.net.packets import PacketDecoder
from analyzer.sources.pcap import open_capture
from analyzer.records import ACK, RST, SYN, CaptureSummary

DEFAULT_PORTS = (5672,)
ProgressCallback = Callable[[int, int], None]  # (packets read, file bytes read)
# Packets between progress calls: about 20 calls a second at the fast path's speed, a few at the plain one's.
PROGRESS_EVERY = 1 << 15


def iter_events(
    fileobj: BinaryIO,
    summary: CaptureSummary,
    *,
    ports: Iterable[int] = DEFAULT_PORTS,
    payload_bytes: int = 0,
    progress: ProgressCallback | None = None,
) -> Iterator:
    """`progress`, when given, is called every PROGRESS_EVERY packets with (packets read, file bytes read)."""
    reader = open_capture(fileobj)
    summary.format = reader.format
    packets = PacketDecoder(summary)
    amqp_ports = frozenset(ports)
    flows: dict[tuple, tuple[Flow, int]] = {}
    all_flows: list[Flow] = []
    raw = None
    next_progress = PROGRESS_EVERY
    try:
        for raw in reader:
            if summary.start_epoch is None:
                summary.start_epoch = raw.timestamp
            if progress is not None and raw.index >= next_progress:
                next_progress += PROGRESS_EVERY
                progress(raw.index, fileobj.tell())
            seg = packets.decode(raw)
            if seg is None:
                continue
            key = (seg.src, seg.sport, seg.dst, seg.dport)
            entry = flows.get(key)
            if (entry is not None and seg.flags & (SYN | ACK) == SYN and entry[0].closed
                    and entry[0].streams[entry[1]].syn_seq != seg.seq):
                entry = None  # the 4-tuple is reused by a new connection (a new ISN, RFC 9293 3.4.1)
            if entry is None:
                flow = _new_flow(seg, amqp_ports, payload_bytes)
                if flow is None:
                    continue
                all_flows.append(flow)
                flows[key] = (flow, 0)
                flows[(seg.dst, seg.dport, seg.src, seg.sport)] = (flow, 1)
                entry = (flow, 0)
            flow, side = entry
            events = flow.feed(seg, side)
            if events:
                yield from events
    finally:
        summary.warnings.extend(reader.warnings)
        if raw is not None:
            summary.packets = raw.index
            summary.end_epoch = raw.timestamp
    if raw is None:
        return
    for flow in all_flows:
        yield from flow.finish(raw.timestamp, raw.index)
    _summarise(summary)


def _new_flow(seg, amqp_ports: frozenset, payload_bytes: int) -> Flow | None:
    if seg.dport in amqp_ports:
        server_side = 1
    elif seg.sport in amqp_ports:
        server_side = 0
    elif seg.payload_len or seg.flags & SYN:
        server_side = None  # probe it
    else:
        return None  # a bare ACK of a flow we never saw carry data: nothing to learn yet
    if seg.flags & RST and not seg.payload_len:
        return None
    return Flow(seg, server_port_side=server_side, payload_bytes=payload_bytes)


def _summarise(summary: CaptureSummary) -> None:
    if summary.ip_fragments:
        summary.warnings.append(f"{summary.ip_fragments} IP fragments counted but not reassembled")
    if summary.malformed:
        summary.warnings.append(f"{summary.malformed} packets with malformed or cut headers skipped")
    for linktype, count in sorted(summary.unsupported_linktypes.items()):
        summary.warnings.append(f"{count} packets of unsupported link type {linktype} skipped")
