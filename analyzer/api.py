"""The Python API for scripts and notebooks: read frames, analyze files.

    >>> from analyzer import read_frames, analyze_file
    >>> for frame in read_frames("captures/blocked-callback.pcap"):
    ...     print(frame.t, frame.connection, frame.direction, frame.type, frame.method)
    >>> analysis = analyze_file("captures/blocked-callback.pcap")
    >>> [(c.id, c.verdict) for c in analysis.connections]
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from analyzer.amqp.arguments import ArgumentDecodeError, decode_content_header, decode_method_arguments
from analyzer.amqp.spec import METHOD_NAMES
from analyzer.diagnose import Diagnosis, diagnose
from analyzer.errors import CaptureFileError, UsageError
from analyzer.fastpath import analyze_timelines
from analyzer.pipeline import DEFAULT_PORTS, ProgressCallback, iter_events
from analyzer.records import FRAME_BODY, FRAME_HEADER, FRAME_METHOD, CaptureSummary, Frame
from analyzer.timeline import TimelineBuilder


@dataclass(slots=True)
class FrameRecord:
    """One AMQP frame as users see it: times relative to the file's first packet, names resolved."""

    t: float
    epoch: float
    connection: str
    direction: str
    channel: int
    type: str
    method: str | None
    size: int
    packet: int
    offset: int
    args: dict | None


@dataclass(slots=True)
class FileAnalysis:
    path: str
    summary: CaptureSummary
    connections: list[Diagnosis] = field(default_factory=list)


def open_file(path: str | os.PathLike):
    """Open a capture for reading, turning OS errors into one-line CaptureFileErrors."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise CaptureFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CaptureFileError(f"{path}: is a directory, not a capture file") from None
    except OSError as exc:
        raise CaptureFileError(f"{path}: cannot read ({exc.strerror})") from None


def read_frames(
    path: str | os.PathLike,
    *,
    ports: Iterable[int] = DEFAULT_PORTS,
    connection: str | None = None,
    payload_bytes: int = 0,
    show_secrets: bool = False,
    summary: CaptureSummary | None = None,
    progress: ProgressCallback | None = None,
) -> Iterator[FrameRecord]:
    """Every AMQP frame in the file, in capture order, with decoded arguments."""
    summary = summary if summary is not None else CaptureSummary()
    with open_file(path) as fileobj:
        for event in iter_events(fileobj, summary, ports=ports, payload_bytes=payload_bytes, progress=progress):
            if type(event) is not Frame:
                continue
            if connection is not None and event.connection.id != connection:
                continue
            yield frame_record(event, summary.start_epoch, show_secrets=show_secrets, payload_bytes=payload_bytes)


def frame_record(frame: Frame, t0: float, *, show_secrets: bool = False, payload_bytes: int = 0) -> FrameRecord:
    method = None
    args = None
    try:
        if frame.type == FRAME_METHOD:
            method = METHOD_NAMES.get((frame.class_id, frame.method_id), f"{frame.class_id}.{frame.method_id}")
            args = decode_method_arguments(frame.class_id, frame.method_id, frame.payload, show_secrets=show_secrets)
        elif frame.type == FRAME_HEADER:
            args = decode_content_header(frame.payload)
    except ArgumentDecodeError as exc:
        args = {"error": str(exc)}
    if frame.type == FRAME_BODY and payload_bytes:
        args = {"payload": _printable(frame.payload)}
    return FrameRecord(frame.timestamp - t0, frame.timestamp, frame.connection.id, frame.direction, frame.channel,
                       frame.type_name, method, frame.size, frame.packet, frame.offset, args)


def _printable(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.hex()


def analyze_file(
    path: str | os.PathLike,
    *,
    ports: Iterable[int] = DEFAULT_PORTS,
    connection: str | None = None,
    observer: Callable[[object], None] | None = None,
    show_secrets: bool = False,
    progress: ProgressCallback | None = None,
) -> FileAnalysis:
    """Per-connection heartbeat timelines, verdicts and explanations for one capture file.

    `observer`, when given, sees every pipeline event too (the notebook API builds its
    DataFrames from them in the same pass). Start-ok passwords are redacted in the result
    unless `show_secrets` is true. `progress`, when given, is called now and then with
    (packets read, file bytes read).
    """
    summary = CaptureSummary()
    with open_file(path) as fileobj:
        if observer is None:
            # No one needs the events themselves: the fast path builds the same timelines without
            # them (analyzer/fastpath.py; tests/test_fastpath.py holds it equal to the loop below).
            timelines = analyze_timelines(fileobj, summary, ports=ports, show_secrets=show_secrets,
                                          progress=progress)
        else:
            builder = TimelineBuilder(show_secrets=show_secrets)
            for event in iter_events(fileobj, summary, ports=ports, progress=progress):
                observer(event)
                builder.feed(event)
            timelines = builder.result()
    t0 = summary.start_epoch or 0.0
    if connection is not None:
        timelines = [t for t in timelines if t.info.id == connection]
        if not timelines:
            raise UsageError(f"{path}: no AMQP connection {connection!r} in this capture")
    return FileAnalysis(str(path), summary, [diagnose(t, t0) for t in timelines])
