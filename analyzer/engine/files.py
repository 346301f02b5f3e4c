"""Capture files through the engine: the loops that read blocks, feed them, and advance the clock.

Each entry point is the same loop (`run_capture`) with a different listener: timelines for
`analyze`, frames for `frames`, every event for scripts and the notebook.
"""
from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

from analyzer.engine.engine import DEFAULT_PORTS, Engine, EventObserver, Observer
from analyzer.engine.runs import FrameColumns, PacketRun
from analyzer.records import CaptureSummary, Event, Frame
from analyzer.sources.pcap import CaptureReader, open_capture
from analyzer.timeline import ConnectionTimeline
from analyzer.tls.keylog import KeyLog

ProgressCallback = Callable[[int, int], None]  # (packets read, file bytes read)
# Packets between progress calls: about 20 calls a second at the engine's speed on a busy capture.
PROGRESS_EVERY = 1 << 15


def run_capture(source: BinaryIO | CaptureReader, engine: Engine, *, progress: ProgressCallback | None = None
                ) -> Iterator[None]:
    """Feed every block of the file (or of a series' reader) to `engine`, advancing its clock after
    each; yields after each block (so a listener can hand on what the block produced) and once more
    after `finish`."""
    reader = source if isinstance(source, CaptureReader) else open_capture(source)
    summary = engine.summary
    summary.format = reader.format
    summary.outages = reader.outages  # the same list: a series adds each pause as it reads on
    summary.files = reader.files
    next_progress = PROGRESS_EVERY
    try:
        for block in reader.blocks():
            if reader.tls_secrets:  # Decryption Secrets Blocks come before the packets they decrypt
                engine.add_tls_secrets(KeyLog.parse(b"\n".join(reader.tls_secrets)))
                reader.tls_secrets.clear()
            engine.feed_block(block)
            if progress is not None and engine.last_index >= next_progress:
                next_progress = engine.last_index + PROGRESS_EVERY
                progress(engine.last_index, _bytes_read(source))
            yield
            engine.advance(engine.last_time)
    finally:
        summary.warnings.extend(reader.warnings)
        if engine.last_index:
            summary.packets = engine.last_index
            summary.end_epoch = engine.last_time
    engine.finish()
    yield


def _bytes_read(source: BinaryIO | CaptureReader) -> int:
    """How far into the file (or series) the reader is; 0 for a pipe (`analyze /dev/stdin`), which
    cannot tell."""
    try:
        return source.tell()
    except OSError:
        return 0


@contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """The cyclic garbage collector rescans every tracked object whenever enough new ones pile up;
    timelines, flows and their decoders live until the end, so on 50,000 short connections those
    rescans were 45% of the run (5.6 s -> 3.0 s without them). Nothing in the engine makes
    reference cycles per packet, so plain reference counting frees everything in the meantime."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc_was_enabled:
            gc.enable()


def analyze_timelines(fileobj: BinaryIO | CaptureReader, summary: CaptureSummary, *,
                      ports: Iterable[int] = DEFAULT_PORTS,
                      show_secrets: bool = False, progress: ProgressCallback | None = None,
                      on_retire: Callable[[ConnectionTimeline], None] | None = None,
                      observer: Observer | None = None, batch: bool = True,
                      tls_keys: KeyLog | None = None) -> list[ConnectionTimeline]:
    """Every AMQP connection's timeline, in order of first packet. With `on_retire`, connections
    closed RETIRE_AFTER seconds of capture time earlier are handed to it and forgotten; the list
    returned holds the rest. A packet that still arrives for a retired connection is not analyzed
    (a summary warning)."""
    engine = Engine(summary, ports=tuple(ports), show_secrets=show_secrets, observer=observer,
                    on_retire=on_retire, batch=batch, tls_keys=tls_keys)
    with no_cyclic_gc():
        for _ in run_capture(fileobj, engine, progress=progress):
            pass
    return engine.builder.result()


class _FrameCollector:
    """Frames as the engine emits them: single Frames, and a run's frames as FrameColumns."""

    def __init__(self) -> None:
        self.items: list[Frame | FrameColumns] = []

    def event(self, event: Event) -> None:
        if type(event) is Frame:
            self.items.append(event)

    def run(self, run: PacketRun) -> None:
        self.items.append(run.frames)


def iter_frames(fileobj: BinaryIO | CaptureReader, summary: CaptureSummary, *, ports: Iterable[int] = DEFAULT_PORTS,
                progress: ProgressCallback | None = None,
                tls_keys: KeyLog | None = None) -> Iterator[Frame | FrameColumns]:
    """Every AMQP frame, in capture order: a Frame for each frame of a packet taken one by one, a
    FrameColumns for each run. Connections closed RETIRE_AFTER seconds earlier are forgotten."""
    collector = _FrameCollector()
    engine = Engine(summary, ports=tuple(ports), observer=collector, on_retire=_forget, tls_keys=tls_keys)
    with no_cyclic_gc():
        for _ in run_capture(fileobj, engine, progress=progress):
            yield from collector.items
            collector.items = []


def _forget(timeline: ConnectionTimeline) -> None:
    """A retired connection's timeline, when only frames are listed: nothing to keep."""


class _EventCollector(EventObserver):
    def __init__(self) -> None:
        self.items: list[Event] = []

    def event(self, event: Event) -> None:
        self.items.append(event)


def iter_events(fileobj: BinaryIO | CaptureReader, summary: CaptureSummary, *, ports: Iterable[int] = DEFAULT_PORTS,
                payload_bytes: int = 0, progress: ProgressCallback | None = None,
                batch: bool = True, tls_keys: KeyLog | None = None) -> Iterator[Event]:
    """Every event (SegmentEvent, Frame, ProtocolHeader, DecodeError, Gap, TlsRecord, TlsError) in capture order (a flow
    on an unknown port releases its events together once it is shown to be AMQP). Bodies keep
    their first `payload_bytes` bytes."""
    collector = _EventCollector()
    engine = Engine(summary, ports=tuple(ports), payload_bytes=payload_bytes, observer=collector, batch=batch,
                    tls_keys=tls_keys)
    for _ in run_capture(fileobj, engine, progress=progress):
        yield from collector.items
        collector.items = []
