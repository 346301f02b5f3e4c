"""Rotated captures as one: which files continue each other, and a reader that reads them as one.

Long captures are rotated (`tcpdump -G 3600 -w cap-%H.pcap`, `tcpdump -C 100 -W 20`, `dumpcap -b
filesize:...`): a connection then spans files. Files continue each other when their names differ only
in digits (`rotation_name`), they share their link type(s) and snap length, and each starts at or
after the previous one's last packet, within SERIES_MAX_GAP of it, as rotation leaves them (tcpdump
and dumpcap open the next file and go on capturing: nothing is lost between them). They are then read
as one capture: packets numbered on across files, connections intact. A longer pause between two
files of a series (a file missing, or files joined with `--series` though the capture stopped between
them) is a capture outage: the capture saw nothing then, which the diagnosis must never read as silence.

`series_facts` reads what grouping needs from each file (one pass over its record headers, the
reader's fast path); `group_series` is pure; `SeriesReader` reads a group.
"""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from analyzer.errors import CaptureFileError
from analyzer.sources.pcap import CaptureReader, PcapReader, RecordBlock, open_capture

# Rotation opens the next file as it closes the last: its first packet follows the previous file's
# last one by the link's idle time only. A quiet link may be idle for longer than this; such files
# are joined with --series (their pause then counts as an outage only beyond OUTAGE_AFTER).
SERIES_MAX_GAP = 10.0
# A pause between two files of a series longer than this is reported as a capture outage: shorter
# ones are a link's ordinary idle time (heartbeats every T/2 keep an AMQP link busier than this).
OUTAGE_AFTER = SERIES_MAX_GAP


class Series(str):
    """Files read as one capture (a rotated series), named, as a str, by its first file: what the
    command line hands on where it would hand a path. `paths` in time order."""

    paths: tuple[str, ...]

    def __new__(cls, paths: Sequence[str]) -> Series:
        series = super().__new__(cls, paths[0])
        series.paths = tuple(paths)
        return series

    def __reduce__(self) -> tuple[type[Series], tuple[tuple[str, ...]]]:  # to worker processes whole
        return (Series, (self.paths,))


@dataclass(frozen=True, slots=True)
class CaptureFacts:
    """What says whether two capture files continue each other."""

    path: str
    format: str
    linktypes: frozenset[int]
    snaplen: int | None  # pcap's header field; None for pcapng (per interface, not compared)
    first: float | None  # the first and last packet times (epoch), None without packets
    last: float | None
    packets: int


def series_facts(path: str) -> CaptureFacts:
    """Read one file's facts; a file that is not a capture raises CaptureFileError naming it."""
    try:
        fileobj = open(path, "rb")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise CaptureFileError(f"{path}: cannot read ({exc.strerror})") from None
    with fileobj:
        try:
            reader = open_capture(fileobj)
        except CaptureFileError as exc:
            raise CaptureFileError(f"{path}: {exc}") from None
        linktypes: set[int] = set()
        first = last = None
        packets = 0
        for block in reader.blocks():
            times = block.timestamp
            if isinstance(block.linktype, int):
                linktypes.add(block.linktype)
            else:
                linktypes.update(int(x) for x in np.unique(block.linktype))
            first = float(times[0]) if first is None else first
            last = float(times[-1])
            packets += len(times)
    snaplen = reader.snaplen if isinstance(reader, PcapReader) else None
    return CaptureFacts(path, reader.format, frozenset(linktypes), snaplen, first, last, packets)


@dataclass(slots=True)
class Grouping:
    """The files given together, as units to analyze (each one file, or a series in time order),
    and why files that could have been one series were not."""

    units: list[list[CaptureFacts]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def group_series(files: Sequence[CaptureFacts], *, force: bool = False) -> Grouping:
    """Join files that continue each other (see the module's docstring); with `force` (--series),
    also files further apart than SERIES_MAX_GAP. Never joined: different link types or snap
    lengths, times that overlap (two hosts, or the same capture twice), files without packets.
    Units come in the order of their first file on the command line."""
    grouping = Grouping()
    timed = sorted((f for f in files if f.first is not None), key=lambda f: (f.first, f.path))
    series: list[list[CaptureFacts]] = []
    for facts in timed:
        previous = series[-1][-1] if series else None
        if previous is not None and not force and rotation_name(previous.path) != rotation_name(facts.path):
            series.append([facts])  # captures of something else (another scenario, another host): no note
            continue
        why_not = None if previous is None else _why_not_continued(previous, facts, force)
        if previous is not None and why_not is None:
            series[-1].append(facts)
            continue
        if previous is not None:
            grouping.notes.append(f"{facts.path} is analyzed on its own, not as the continuation of "
                                  f"{previous.path}: {why_not}")
        series.append([facts])
    series += [[f] for f in files if f.first is None]
    position = {f.path: i for i, f in enumerate(files)}
    grouping.units = sorted(series, key=lambda unit: min(position[f.path] for f in unit))
    return grouping


def rotation_name(path: str) -> str:
    """A file's name with its digits taken out: what the files of one rotation share (tcpdump -G's
    strftime names, -C's and -W's numbers, dumpcap -b's `_NNNNN_YYYYMMDDhhmmss`). Files whose names
    differ in more than digits are captures of different things, however close in time (two scenario
    recordings one after the other), and are joined only with --series."""
    return re.sub(r"\d+", "", os.path.basename(path))


def _why_not_continued(previous: CaptureFacts, facts: CaptureFacts, force: bool) -> str | None:
    """Why `facts` does not continue `previous` (None: it does)."""
    assert previous.last is not None and facts.first is not None
    if previous.linktypes != facts.linktypes:
        return (f"its link type ({_names(facts.linktypes)}) differs from the previous file's "
                f"({_names(previous.linktypes)})")
    if previous.snaplen != facts.snaplen:
        return f"its snap length ({facts.snaplen}) differs from the previous file's ({previous.snaplen})"
    if facts.first < previous.last:
        return (f"their times overlap ({facts.first - previous.last:+.3f} s): captures of two hosts or "
                "interfaces, or the same capture twice")
    if not force and facts.first - previous.last > SERIES_MAX_GAP:
        return f"{facts.first - previous.last:.1f} s passed between them (give --series to join them anyway)"
    return None


def _names(linktypes: frozenset[int]) -> str:
    return ", ".join(map(str, sorted(linktypes))) or "none"


class SeriesReader(CaptureReader):
    """Several capture files read as one: blocks numbered on across files, warnings naming their file,
    and each pause between files longer than OUTAGE_AFTER in `outages` (epoch start, end) as soon as
    the next file's first block is read."""

    def __init__(self, paths: Sequence[str], fileobjs: Sequence[BinaryIO]) -> None:
        super().__init__()
        self.files = list(paths)
        self.fileobjs = list(fileobjs)
        self.readers: list[CaptureReader] = []
        for path, fileobj in zip(self.files, self.fileobjs, strict=True):
            try:
                self.readers.append(open_capture(fileobj))
            except CaptureFileError as exc:
                raise CaptureFileError(f"{path}: {exc}") from None
        self.format = self.readers[0].format if self.readers else ""
        self.current = 0

    def blocks(self) -> Iterator[RecordBlock]:
        numbered = 0
        last: float | None = None
        for i, (path, reader) in enumerate(zip(self.files, self.readers, strict=True)):
            self.current = i
            first_of_file = True
            in_file = 0  # records of this file numbered so far
            for block in reader.blocks():
                self.tls_secrets.extend(reader.tls_secrets)
                reader.tls_secrets.clear()
                in_file = block.first_index + len(block.timestamp)
                if first_of_file and last is not None and float(block.timestamp[0]) - last > OUTAGE_AFTER:
                    where = f"between {os.path.basename(self.files[i - 1])} and {os.path.basename(path)}"
                    self.outages.append((last, float(block.timestamp[0]), where))
                    self.warnings.append(f"nothing captured for {float(block.timestamp[0]) - last:.3f} s {where} "
                                         "(a file of the series missing, or the capture stopped): a capture gap")
                first_of_file = False
                yield block._replace(first_index=numbered + block.first_index)
                last = float(block.timestamp[-1])
            numbered += in_file
            self.warnings.extend(f"{path}: {warning}" for warning in reader.warnings)

    def tell(self) -> int:
        """Bytes read so far over the whole series (the progress line's position)."""
        done = 0
        for fileobj in self.fileobjs[: self.current + 1]:
            with contextlib.suppress(OSError):  # a pipe cannot tell
                done += fileobj.tell()
        return done

