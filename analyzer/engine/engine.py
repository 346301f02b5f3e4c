"""The engine: packets in; per-connection timelines, and events for whoever listens, out.

One push-style object serves every entry point (analyze, frames, the notebook, plot, and a live
watch): it is fed read blocks (`feed_block`) or single packets (`feed`), moved on in capture time
with `advance(now)` so that time-based decisions (retiring closed connections) fire without a
packet, and closed with `finish()`. Like Zeek's event engine its clock is network time, the
timestamps of the packets, so a file and a live capture give the same results at the same moments.

Inside, each packet takes the first of three ways that fits, all of them calls on the stages that
own the rules (net/, flows.py, amqp/, timeline.py):
  - runs (runs.py): stretches of ordinary packets of a block applied at once from columns;
  - the quick path (quick.py): one common packet applied straight to its owners' state, when no
    observer wants its events;
  - the plain path: PacketDecoder.decode → FlowTable → Flow.feed → events → TimelineBuilder and
    the observer.
tests/test_engine.py holds the three ways to the same timelines, diagnoses and events.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from analyzer.engine.quick import QuickSide, quick_packet, quick_side
from analyzer.engine.runs import MIN_RUN, PacketRun, Plan
from analyzer.flows import RETIRE_AFTER, FlowSide, FlowTable, flow_key
from analyzer.net.packets import IP_OFFSETS, PacketDecoder, ipv4_tcp_fields
from analyzer.records import ACK, FIN, RST, SYN, CaptureSummary, Event, RawPacket, RecordFields
from analyzer.sources.pcap import RecordBlock
from analyzer.timeline import ConnectionTimeline, TimelineBuilder
from analyzer.tls.keylog import KeyLog

DEFAULT_PORTS = (5672, 5671)  # IANA amqp and amqps
_NOT_ACK_ONLY = SYN | FIN | RST


class Observer(Protocol):
    """What listens to the engine: every event, in capture order, single or as a run."""

    def event(self, event: Event) -> None: ...

    def run(self, run: PacketRun) -> None: ...


class EventObserver:
    """An observer that wants single events only: a run's events are handed over one by one."""

    def event(self, event: Event) -> None:
        raise NotImplementedError

    def run(self, run: PacketRun) -> None:
        for event in run.events():
            self.event(event)


class Engine:
    """Fed packets, keeps one ConnectionTimeline per AMQP connection (and tells `observer` every
    event). With `on_retire`, a connection closed (FIN both ways, or RST) more than RETIRE_AFTER
    seconds of capture time before an `advance` is handed to it and forgotten, so memory follows
    the connections open at once. `batch=False` turns runs off (every packet one by one): the
    reference the tests hold the runs to."""

    def __init__(self, summary: CaptureSummary, *, ports: tuple[int, ...] = DEFAULT_PORTS, payload_bytes: int = 0,
                 show_secrets: bool = False, observer: Observer | None = None,
                 on_retire: Callable[[ConnectionTimeline], None] | None = None, batch: bool = True,
                 tls_keys: KeyLog | None = None) -> None:
        self.summary = summary
        self.builder = TimelineBuilder(show_secrets=show_secrets)
        self.tls_keys = tls_keys if tls_keys is not None else KeyLog.parse(b"")
        self.flows: FlowTable[QuickSide] = FlowTable(frozenset(ports), payload_bytes, self.tls_keys)
        self.packets = PacketDecoder(summary)
        self.observer = observer
        self.on_retire = on_retire
        self.batch = batch
        self.payload_bytes = payload_bytes
        self.last_index = 0  # of the last packet fed (1-based, as Wireshark counts)
        self.last_time = 0.0

    # ---- input ------------------------------------------------------------------------------------

    def feed_block(self, block: RecordBlock) -> None:
        """A read block of records, in capture order."""
        n = len(block.data_start)
        if not n:
            return
        self._started(float(block.timestamp[0]))
        # A block shorter than MIN_RUN holds no run: its plan's fixed numpy cost would buy nothing (a
        # live watch feeds slices of a few packets).
        plan = (Plan(block, self._side_for_key, keep_frames=self.observer is not None)
                if self.batch and n >= MIN_RUN else None)
        records = None
        i = 0
        while i < n:
            hard = plan.next_hard(i) if plan is not None else i
            if plan is not None and hard - i >= MIN_RUN:
                end = plan.run_end(i, hard)
                if end - i >= MIN_RUN:
                    if self.observer is not None:
                        self.observer.run(PacketRun(plan, i, end, self.payload_bytes))
                    plan.apply(i, end)
                    i = end
                    continue
                hard = end
            # Packets i..hard (the hard one included) one by one, in capture order.
            if records is None:
                records = _BlockRecords(block)
            stop = min(hard + 1, n)
            for k in range(i, stop):
                self._packet(records.record(k))
            i = stop
        self.last_index = block.first_index + n
        self.last_time = float(block.timestamp[-1])

    def feed(self, packet: RawPacket) -> None:
        """One packet (a live source)."""
        self._started(packet.timestamp)
        self._packet((packet.index, packet.timestamp, packet.linktype, packet.data, packet.orig_len))
        self.last_index = packet.index
        self.last_time = packet.timestamp

    def add_tls_secrets(self, keys: KeyLog) -> None:
        """More TLS secrets (a pcapng Decryption Secrets Block): for the sessions whose first
        protected record is still to come."""
        self.tls_keys.merge(keys)

    def advance(self, now: float) -> None:
        """Capture time is now `now`: retire the connections closed RETIRE_AFTER before it."""
        if self.on_retire is None:
            return
        for flow in self.flows.retire(now):
            timeline = self.builder.forget(flow.info)
            if timeline is not None:
                self.on_retire(timeline)

    def finish(self) -> list[ConnectionTimeline]:
        """End of input: holes still open become gaps; the timelines not retired, in their order."""
        summary = self.summary
        if self.last_index:
            summary.packets = self.last_index
            summary.end_epoch = self.last_time
        late = self.flows.late_packets
        if late:
            one = late == 1
            summary.warnings.append(
                f"{late} packet{'' if one else 's'} arrived more than {RETIRE_AFTER:g} s after "
                f"{'its' if one else 'their'} connection closed and {'was' if one else 'were'} not analyzed "
                "(the connection was already reported)")
        if self.last_index:
            for flow in self.flows.live.values():
                self._emit(flow.finish(self.last_time, self.last_index))
                self.flows.count_tls(flow)
            for port, count in sorted(self.flows.tls_unproven.items()):
                one = count == 1
                summary.warnings.append(
                    f"{count} TLS connection{'' if one else 's'} to port {port} not shown: neither decrypted nor "
                    f"recognisable as AMQP from {'its' if one else 'their'} record sizes (give --port {port} to "
                    "analyze as AMQPS anyway)")
            summary.tls_not_decrypted = self.flows.tls_not_decrypted
            _summarise(summary)
        return self.builder.result()

    # ---- one packet -------------------------------------------------------------------------------

    def _started(self, timestamp: float) -> None:
        if self.summary.start_epoch is None:
            self.summary.start_epoch = timestamp

    def _packet(self, record: RecordFields) -> None:
        index, timestamp, linktype, data, _orig_len = record
        if self.observer is None:
            ip = IP_OFFSETS.get(linktype)
            if ip is not None:
                fields = ipv4_tcp_fields(data, ip)
                if fields is not None and fields[3] & ACK and not fields[3] & _NOT_ACK_ONLY:  # flags
                    entry = self.flows.get(fields[0])  # key
                    if entry is not None:
                        quick = entry.cache or quick_side(entry, self.builder)
                        if quick is not None and quick_packet(quick, data, fields, timestamp, index,
                                                              self.builder.feed):
                            return
        seg = self.packets.decode(RawPacket(*record))
        if seg is None:
            return
        key = flow_key(seg.src, seg.sport, seg.dst, seg.dport)
        reverse = flow_key(seg.dst, seg.dport, seg.src, seg.sport)
        entry = self.flows.for_segment(seg, key, reverse)
        if entry is None:
            return
        self._emit(entry.flow.feed(seg, entry.side))
        if self.on_retire is not None and seg.flags & (FIN | RST):
            self.flows.note_close(entry, key, reverse, seg.timestamp)

    def _emit(self, events: list[Event]) -> None:
        feed = self.builder.feed
        observer = self.observer
        for event in events:
            feed(event)
            if observer is not None:
                observer.event(event)

    def _side_for_key(self, key: bytes) -> QuickSide | None:
        entry: FlowSide[QuickSide] | None = self.flows.get(key)
        return None if entry is None else quick_side(entry, self.builder)


class _BlockRecords:
    """A block's records as the per-packet tuples (index, timestamp, linktype, data, orig_len)."""

    __slots__ = ("buf", "caplen", "first", "linktype", "orig_len", "start", "timestamp")

    def __init__(self, block: RecordBlock) -> None:
        self.buf = block.buf
        self.first = block.first_index + 1
        self.start: list[int] = block.data_start.tolist()
        self.caplen: list[int] = block.caplen.tolist()
        self.timestamp: list[float] = block.timestamp.tolist()
        self.orig_len: list[int] = block.orig_len.tolist()
        linktype = block.linktype
        self.linktype: int | list[int] = linktype if isinstance(linktype, int) else linktype.tolist()

    def record(self, k: int) -> RecordFields:
        start = self.start[k]
        linktype = self.linktype if isinstance(self.linktype, int) else self.linktype[k]
        return (self.first + k, self.timestamp[k], linktype, self.buf[start : start + self.caplen[k]],
                self.orig_len[k])


def _summarise(summary: CaptureSummary) -> None:
    if summary.ip_fragments:
        summary.warnings.append(f"{summary.ip_fragments} IP fragments counted but not reassembled")
    if summary.malformed:
        summary.warnings.append(f"{summary.malformed} packets with malformed or cut headers skipped")
    for linktype, count in sorted(summary.unsupported_linktypes.items()):
        summary.warnings.append(f"{count} packets of unsupported link type {linktype} skipped")
