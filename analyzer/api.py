"""The Python API for scripts and notebooks: read frames, analyze files.

    >>> from analyzer import read_frames, analyze_file
    >>> for frame in read_frames("captures/blocked-callback.pcap"):
    ...     print(frame.t, frame.connection, frame.direction, frame.type, frame.method)
    >>> analysis = analyze_file("captures/blocked-callback.pcap")
    >>> [(c.id, c.verdict) for c in analysis.connections]
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO, cast

import numpy as np

from analyzer.amqp.arguments import (
    CONTROL_CLASSES,
    ArgumentDecodeError,
    decode_content_header,
    decode_method_arguments,
)
from analyzer.amqp.spec import METHOD_NAMES
from analyzer.diagnosis.diagnose import Diagnosis, diagnose
from analyzer.engine import (
    DEFAULT_PORTS,
    EventObserver,
    FrameColumns,
    Observer,
    ProgressCallback,
    analyze_timelines,
    iter_events,
    iter_frames,
)
from analyzer.errors import AmqpHbError, CaptureFileError, UsageError
from analyzer.pairing import PairCollector, PairReport, pair
from analyzer.records import FRAME_BODY, FRAME_HEADER, FRAME_METHOD, FRAME_TYPE_NAMES, CaptureSummary, Event, Frame
from analyzer.sources.series import Series, SeriesReader
from analyzer.timeline import ConnectionTimeline
from analyzer.tls.keylog import KeyLog
from analyzer.tls.session import DECRYPTED, NOT_ATTEMPTED


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


SHOWN_IDS = 20  # connection ids a "no connection matching" message lists before "... N in all"


def find_connection(key: int | str, ids: Sequence[str]) -> int:
    """The position in `ids` (connection ids in the order `analyze` lists them) of the connection
    `key` names: the one rule of every `--connection` option and of the notebook's
    `Analysis.connection`.

    - an int is a position (0 = first, negative from the end);
    - a string is the full id ("CLIENT_IP:PORT->SERVER_IP:PORT"), else a part of it that only one
      connection's id holds ("127.0.0.1:55934", "[::1]"). A string of digits is a port: the one
      connection with that client or server port; a number that is no connection's port is a
      position (so "0" is the first connection, never the 0 in "10.0.0.1").

    An id seen twice (a reused port pair) names its first connection. Raises UsageError listing
    the ids when nothing matches, or the matching ids when several do.
    """
    if isinstance(key, int) and not isinstance(key, bool):
        if not -len(ids) <= key < len(ids):
            raise UsageError(f"connection index {key} out of range: this capture has {len(ids)}")
        return key % len(ids)
    key = str(key)
    first: dict[str, int] = {}
    for i, cid in enumerate(ids):
        first.setdefault(cid, i)
    if key in first:
        return first[key]
    if key.isascii() and key.isdigit():
        matches = [cid for cid in first if key in _ports(cid)]
        if not matches and int(key) < len(ids):
            return int(key)
    else:
        matches = [cid for cid in first if key in cid]
    if len(matches) == 1:
        return first[matches[0]]
    if not matches:
        raise UsageError(f"no connection matching {key!r}; the capture has: {_listed(list(first)) or 'none'}")
    raise UsageError(f"{key!r} matches {len(matches)} connections: {_listed(matches)}")


def _listed(ids: list[str]) -> str:
    more = f", ... ({len(ids)} in all)" if len(ids) > SHOWN_IDS else ""
    return ", ".join(ids[:SHOWN_IDS]) + more


def _ports(connection_id: str) -> tuple[str, ...]:
    """The client and server port of "CLIENT_IP:PORT->SERVER_IP:PORT" (IPv6 in brackets), as text."""
    return tuple(side.rpartition(":")[2] for side in connection_id.split("->"))


Capture = str | os.PathLike | Sequence[str | os.PathLike]  # one file, or a series read as one


def capture_paths(capture: Capture) -> list[str]:
    """The file paths of a capture: one, or a series' in time order as given."""
    if isinstance(capture, Series):
        return list(capture.paths)
    if isinstance(capture, str | os.PathLike):
        return [os.fspath(capture)]
    return [os.fspath(p) for p in capture]


def capture_name(capture: Capture) -> str:
    """How messages and reports name a capture: its file, or a series' first file."""
    return capture_paths(capture)[0]


@contextmanager
def open_file(capture: Capture) -> Iterator[BinaryIO | SeriesReader]:
    """Open a capture for reading, turning OS errors into one-line CaptureFileErrors: the file, or for
    a series (several paths, in time order, as sources.series.group_series orders them) one reader
    over all its files (sources.series.SeriesReader)."""
    paths = capture_paths(capture)
    with contextlib.ExitStack() as stack:
        fileobjs = [stack.enter_context(_open(path, "a capture file", CaptureFileError)) for path in paths]
        yield fileobjs[0] if len(paths) == 1 else SeriesReader(paths, fileobjs)


def _open(path: str | os.PathLike, what: str, error: type[AmqpHbError]):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not {what}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror})") from None


def read_keylog(path: str | os.PathLike) -> KeyLog:
    """An NSS key log file (SSLKEYLOGFILE, SSLContext.keylog_filename) for `tls_keys=`."""
    with _open(path, "a key log file", UsageError) as f:
        keys = KeyLog.parse(f.read())
    if not len(keys):
        raise UsageError(f"{path}: no TLS secrets in this file (an NSS key log has lines like "
                         "'CLIENT_RANDOM <hex> <hex>' or 'CLIENT_TRAFFIC_SECRET_0 <hex> <hex>')")
    return keys


def keylog_warnings(diagnoses: Iterable[Diagnosis]) -> list[str]:
    """One warning per TLS connection a key log was given for but could not decrypt (its timing
    is still analyzed, from record sizes)."""
    out = []
    for d in diagnoses:
        if d.tls is not None and d.tls.decryption not in (DECRYPTED, NOT_ATTEMPTED):
            out.append(f"{d.timeline.info.id}: not decrypted ({d.tls.decryption}); its timing is inferred "
                       "from record sizes")
    return out


def pair_files(paths: Sequence[str | os.PathLike], *, ports: Iterable[int] = DEFAULT_PORTS,
               tls_keys: KeyLog | None = None) -> list[PairReport]:
    """Connections seen in two of `paths` (a capture on the client's host and one on the broker's),
    joined (analyzer/pairing.py): clock offset, one-way delay, segments lost on the way."""
    collectors = []
    for path in paths:
        collector = PairCollector()
        summary = CaptureSummary()
        with open_file(path) as fileobj:
            for event in iter_events(fileobj, summary, ports=ports, tls_keys=tls_keys):
                collector(event)
        collector.t0 = summary.start_epoch or 0.0
        collector.end = summary.end_epoch or 0.0
        collectors.append((str(path), collector))
    reports: list[PairReport] = []
    for i, (path_a, a) in enumerate(collectors):
        for path_b, b in collectors[i + 1 :]:
            reports.extend(pair(path_a, a, path_b, b))
    return reports


def read_frames(
    path: Capture,
    *,
    ports: Iterable[int] = DEFAULT_PORTS,
    connection: str | None = None,
    payload_bytes: int = 0,
    show_secrets: bool = False,
    summary: CaptureSummary | None = None,
    progress: ProgressCallback | None = None,
    all_arguments: bool = True,
    tls_keys: KeyLog | None = None,
) -> Iterator[FrameRecord]:
    """Every AMQP frame in the file, in capture order, with decoded arguments.

    `all_arguments=False` decodes only what the heartbeat analysis reads — the arguments of
    connection- and channel-class methods — and leaves `args` None for the rest (basic.*,
    content headers); the engine's runs then stay columns (FrameBatch) instead of a Frame per
    frame, several times faster on a busy capture. The frames and every other field are the same
    either way.
    """
    for item in read_frame_batches(path, ports=ports, connection=connection, payload_bytes=payload_bytes,
                                   show_secrets=show_secrets, summary=summary, progress=progress,
                                   all_arguments=all_arguments, tls_keys=tls_keys):
        if isinstance(item, FrameBatch):
            yield from item.records()
        else:
            yield item


def read_frame_batches(
    path: Capture,
    *,
    ports: Iterable[int] = DEFAULT_PORTS,
    connection: str | None = None,
    payload_bytes: int = 0,
    show_secrets: bool = False,
    summary: CaptureSummary | None = None,
    progress: ProgressCallback | None = None,
    all_arguments: bool = True,
    tls_keys: KeyLog | None = None,
) -> Iterator[FrameRecord | FrameBatch]:
    """read_frames, with the frames of each of the engine's runs as one FrameBatch (columns):
    what `frames --format jsonl` writes from without a FrameRecord per frame."""
    summary = summary if summary is not None else CaptureSummary()
    with open_file(path) as fileobj:
        yield from frame_records(fileobj, summary, ports=ports, connection=connection, payload_bytes=payload_bytes,
                                 show_secrets=show_secrets, progress=progress, all_arguments=all_arguments,
                                 tls_keys=tls_keys)


def frame_records(fileobj, summary: CaptureSummary, *, ports: Iterable[int] = DEFAULT_PORTS,
                  connection: str | None = None, payload_bytes: int = 0, show_secrets: bool = False,
                  progress: ProgressCallback | None = None,
                  all_arguments: bool = True, tls_keys: KeyLog | None = None) -> Iterator[FrameRecord | FrameBatch]:
    """read_frame_batches on an open capture file."""
    if all_arguments or payload_bytes:
        for event in iter_events(fileobj, summary, ports=ports, payload_bytes=payload_bytes, progress=progress,
                                 tls_keys=tls_keys):
            if type(event) is not Frame:
                continue
            if connection is not None and event.connection.id != connection:
                continue
            yield frame_record(event, summary.start_epoch or 0.0, show_secrets=show_secrets,
                               payload_bytes=payload_bytes, all_arguments=all_arguments)
        return
    for item in iter_frames(fileobj, summary, ports=ports, progress=progress, tls_keys=tls_keys):
        t0 = summary.start_epoch or 0.0  # known from the first packet on
        if isinstance(item, Frame):
            if connection is None or item.connection.id == connection:
                yield frame_record(item, t0, show_secrets=show_secrets, all_arguments=False)
            continue
        batch = FrameBatch(t0, item)
        if connection is not None:
            batch = batch.only(connection)
        if len(batch.columns.packet):
            yield batch


@dataclass(slots=True)
class FrameBatch:
    """Consecutive frames as columns: one of the engine's runs, where no frame has arguments (no
    connection or channel method is ever in a run). `records()` gives them as FrameRecords."""

    t0: float
    columns: FrameColumns

    @property
    def connection_ids(self) -> list[str]:
        """By side number (columns.side)."""
        return [side.info.id for side in self.columns.sides]

    @property
    def directions(self) -> list[str]:
        return [side.direction for side in self.columns.sides]

    def method_names(self) -> tuple[list, np.ndarray]:
        """(names, index per frame): the method name of each frame as names[index], None if not a method."""
        columns = self.columns
        key = np.where(columns.type == FRAME_METHOD, columns.ids, -1)
        keys, index = np.unique(key, return_inverse=True)
        names = [None if k < 0 else method_name(k >> 16, k & 0xFFFF) for k in keys.tolist()]
        return names, index.reshape(-1)

    def only(self, connection: str) -> FrameBatch:
        keep_sides = [i for i, cid in enumerate(self.connection_ids) if cid == connection]
        keep = np.isin(self.columns.side, keep_sides)
        c = self.columns
        return FrameBatch(self.t0, FrameColumns(c.sides, c.side[keep], c.timestamp[keep], c.packet[keep],
                                                c.offset[keep], c.type[keep], c.channel[keep], c.size[keep],
                                                c.ids[keep], c.position[keep]))

    def records(self) -> Iterator[FrameRecord]:
        c = self.columns
        ids = self.connection_ids
        directions = self.directions
        names, name_index = self.method_names()
        t0 = self.t0
        for side, t, packet, offset, frame_type, channel, size, name in zip(
                c.side.tolist(), c.timestamp.tolist(), c.packet.tolist(), c.offset.tolist(), c.type.tolist(),
                c.channel.tolist(), c.size.tolist(), name_index.tolist(), strict=True):
            yield FrameRecord(t - t0, t, ids[side], directions[side], channel, FRAME_TYPE_NAMES[frame_type],
                              names[name], size, packet, offset, None)


def frame_record(frame: Frame, t0: float, *, show_secrets: bool = False, payload_bytes: int = 0,
                 all_arguments: bool = True) -> FrameRecord:
    method = None
    if frame.class_id is not None and frame.method_id is not None:  # a method frame
        method = method_name(frame.class_id, frame.method_id)
    args = frame_arguments(frame.type, frame.class_id, frame.method_id, frame.payload, show_secrets=show_secrets,
                           all_arguments=all_arguments)
    if frame.type == FRAME_BODY and payload_bytes:
        args = {"payload": _printable(frame.payload)}
    return FrameRecord(frame.timestamp - t0, frame.timestamp, frame.connection.id, frame.direction, frame.channel,
                       frame.type_name, method, frame.size, frame.packet, frame.offset, args)


def method_name(class_id: int, method_id: int) -> str:
    """A method's dotted spec name ("connection.tune-ok"), or "CLASS.METHOD" for ids the spec lacks."""
    return METHOD_NAMES.get((class_id, method_id), f"{class_id}.{method_id}")


def decodes_arguments(frame_type: int, class_id: int | None, all_arguments: bool) -> bool:
    """Whether a frame's `args` are decoded: every method's and content header's with all_arguments,
    else the connection and channel methods' only (what the heartbeat analysis reads)."""
    if frame_type == FRAME_METHOD and class_id is not None:
        return all_arguments or class_id in CONTROL_CLASSES
    return frame_type == FRAME_HEADER and all_arguments


def frame_arguments(frame_type: int, class_id: int | None, method_id: int | None, payload: bytes, *,
                    show_secrets: bool = False, all_arguments: bool = True) -> dict | None:
    """A frame's `args`: its decoded method arguments or content-header properties ({"error": ...}
    when they do not decode), None when `decodes_arguments` says they are not decoded."""
    if not decodes_arguments(frame_type, class_id, all_arguments):
        return None
    try:
        if class_id is not None and method_id is not None:
            return decode_method_arguments(class_id, method_id, payload, show_secrets=show_secrets)
        return decode_content_header(payload)
    except ArgumentDecodeError as exc:
        return {"error": str(exc)}


def _printable(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.hex()


def analyze_file(
    path: Capture,
    *,
    ports: Iterable[int] = DEFAULT_PORTS,
    connection: str | None = None,
    observer: Callable[[Event], None] | Observer | None = None,
    show_secrets: bool = False,
    progress: ProgressCallback | None = None,
    on_connection: Callable[[Diagnosis], None] | None = None,
    tls_keys: KeyLog | None = None,
) -> FileAnalysis:
    """Per-connection heartbeat timelines, verdicts and explanations for one capture file.

    `observer`, when given, sees every pipeline event too: a function is called with each event;
    an engine Observer (with `event` and `run`) gets the engine's runs as columns (the notebook API
    builds its DataFrames from them in the same pass). Start-ok passwords are redacted in the result
    unless `show_secrets` is true. `progress`, when given, is called now and then with
    (packets read, file bytes read).

    `on_connection` (without `observer`) streams: each connection's Diagnosis is handed to it
    as soon as it is final — closed flows.RETIRE_AFTER seconds of capture time earlier, or at
    the end of the file — and not kept, so memory follows the connections open at once rather
    than all of them (`connections` stays empty). Calls come in closing order;
    `timeline_order(d.timeline)` sorts them into the list's order. Packets that arrive for a
    connection after it was handed over are counted in a warning, not analyzed.
    """
    summary = CaptureSummary()
    if on_connection is not None and observer is None:
        return _analyze_streaming(path, summary, ports=ports, connection=connection, show_secrets=show_secrets,
                                  progress=progress, on_connection=on_connection, tls_keys=tls_keys)
    with open_file(path) as fileobj:
        timelines = analyze_timelines(fileobj, summary, ports=ports, show_secrets=show_secrets, progress=progress,
                                      observer=_engine_observer(observer),
                                      tls_keys=tls_keys)
    t0 = summary.start_epoch or 0.0
    if connection is not None:
        timelines = [t for t in timelines if t.info.id == connection]
        if not timelines:
            raise UsageError(f"{path}: no AMQP connection {connection!r} in this capture")
    diagnoses = [diagnose(t, t0, summary.end_epoch, summary.outages) for t in timelines]
    summary.warnings.extend(keylog_warnings(diagnoses))
    return FileAnalysis(capture_name(path), summary, diagnoses)


def _engine_observer(observer: Callable[[Event], None] | Observer | None) -> Observer | None:
    if observer is None or hasattr(observer, "run"):  # an engine Observer: it takes runs as they are
        return cast("Observer | None", observer)
    return _CallbackObserver(observer)


class _CallbackObserver(EventObserver):
    """analyze_file's `observer`: a function called with every event."""

    def __init__(self, callback: Callable[[Event], None]) -> None:
        self.callback = callback

    def event(self, event: Event) -> None:
        self.callback(event)


def _analyze_streaming(path, summary: CaptureSummary, *, ports, connection, show_secrets, progress,
                       on_connection: Callable[[Diagnosis], None], tls_keys: KeyLog | None) -> FileAnalysis:
    found = 0

    def hand_over(timeline: ConnectionTimeline) -> None:
        nonlocal found
        if connection is None or timeline.info.id == connection:
            found += 1
            d = diagnose(timeline, summary.start_epoch or 0.0, summary.end_epoch, summary.outages)
            summary.warnings.extend(keylog_warnings([d]))
            on_connection(d)

    with open_file(path) as fileobj:
        rest = analyze_timelines(fileobj, summary, ports=ports, show_secrets=show_secrets, progress=progress,
                                 on_retire=hand_over, tls_keys=tls_keys)
    for timeline in rest:
        hand_over(timeline)
    if connection is not None and not found:
        raise UsageError(f"{path}: no AMQP connection {connection!r} in this capture")
    return FileAnalysis(capture_name(path), summary, [])
