"""The AMQP 0-9-1 frame format and the whole-frame walk: the rules every reader of frames shares.

Framing (spec 4.2.3): type (1) channel (2) size (4) payload (size) frame-end 0xCE. A frame is
*whole* when its header, payload and frame-end byte are all at hand, its type is known, its size is
at most MAX_BUFFERED_FRAME, its frame-end byte is 0xCE and, for a method frame, its payload holds
the class and method ids. `whole_frames` walks such frames back to back and stops at the first
that is not (the decoder, framing.py, takes over there with its full rules: bodies counted
through, errors, resynchronisation); `whole_frames_columns` is the same walk over many payloads at
once for the engine's runs, held equal to it by tests/test_column_twins.py. The heartbeat rule and
what a Frame keeps of a payload live here too.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from analyzer.records import FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_HEARTBEAT_OLD, FRAME_METHOD

FRAME_END = 0xCE
FRAME_TYPES = frozenset((FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT, FRAME_HEARTBEAT_OLD))
# RabbitMQ refuses messages above 512 MiB (max_message_size's hard limit, rabbit.app), and with
# frame_max=0 a body frame can be a whole message: anything larger is not a frame size.
MAX_FRAME_SIZE = 512 << 20
# Method and content-header frames are held whole to decode their ids. RabbitMQ's default
# frame_max is 128 KiB (deps/rabbit/Makefile); 1 MiB leaves room for a raised frame_max while a
# corrupt 4 GiB size costs nothing: it is rejected when the frame header arrives.
MAX_BUFFERED_FRAME = 1 << 20
FRAME_HEADER_FORMAT = struct.Struct("!BHI")  # type, channel, size
METHOD_IDS = struct.Struct("!HH")  # class id, method id: a method frame's first payload bytes
FRAME_HEADER_SIZE = 7  # type (1), channel (2), size (4)
PROTOCOL_HEADER_SIZE = 8  # "AMQP" and four version bytes (spec 4.2.2)

HEARTBEAT_TYPES = frozenset((FRAME_HEARTBEAT, FRAME_HEARTBEAT_OLD))


def heartbeat_is_nonstandard(frame_type: int, channel: int, size: int) -> bool:
    """A heartbeat of type 4 (the 0-9 spec's misprint), or one with a channel or a payload: spec
    4.2.7 says channel 0 and no payload. Counted, still liveness (the broker reads any byte)."""
    return frame_type == FRAME_HEARTBEAT_OLD or size != 0 or channel != 0


def kept_payload_size(frame_type: int, size: int, payload_bytes: int) -> int:
    """How much of a frame's payload a Frame keeps: methods and content headers whole (their
    arguments are decoded), bodies and heartbeats only their first `payload_bytes` bytes."""
    return size if frame_type in (FRAME_METHOD, FRAME_HEADER) else min(size, payload_bytes)


# ---- the frame walk: whole, well-formed frames back to back ---------------------------------------
# Used by the decoder for its common case and by the engine's quick path and runs. The walk stops at
# the first frame that is not whole (or is a method of one of `stop_classes`).


# (offset of the frame's first byte in the buffer walked, type, channel, size, ids): ids is
# class_id << 16 | method_id for a method frame, else 0. A plain tuple: a NamedTuple costs about
# 0.2 µs more to build, and the runs walk hundreds of thousands of frames this way.
WholeFrame = tuple[int, int, int, int, int]


class FramesWalked(NamedTuple):
    """What walk_whole_frames found: where it stopped, and of the whole frames before that, how many,
    the last one's type and ids, and heartbeat_is_nonstandard of each heartbeat in order."""

    stop: int
    frame_count: int
    last_type: int
    last_ids: int
    heartbeats: list[bool]


def walk_whole_frames(buf: bytes | bytearray | memoryview, pos: int, end: int,
                      stop_classes: frozenset[int] = frozenset(), frames: list[WholeFrame] | None = None
                      ) -> FramesWalked:
    """Walk the whole frames back to back from `pos` (not past `end`); each is appended to `frames`
    when a list is given. Callers that only count (the runs' stragglers, the quick path) build no
    tuple per frame."""
    count = last_type = last_ids = 0
    heartbeats: list[bool] = []
    unpack_header = FRAME_HEADER_FORMAT.unpack_from
    # Locals: this loop runs for every frame of the packets the runs' numpy rounds leave over.
    header_size, max_size, frame_end_byte, method = FRAME_HEADER_SIZE, MAX_BUFFERED_FRAME, FRAME_END, FRAME_METHOD
    while end - pos > header_size:
        frame_type, channel, size = unpack_header(buf, pos)
        frame_end = pos + header_size + size
        if frame_end >= end or size > max_size or buf[frame_end] != frame_end_byte:
            break
        ids = 0
        if frame_type == method:
            if size < 4:
                break
            class_id, method_id = METHOD_IDS.unpack_from(buf, pos + header_size)
            if class_id in stop_classes:
                break
            ids = class_id << 16 | method_id
        elif frame_type in HEARTBEAT_TYPES:
            heartbeats.append(heartbeat_is_nonstandard(frame_type, channel, size))
        elif frame_type != FRAME_HEADER and frame_type != FRAME_BODY:
            break
        if frames is not None:
            frames.append((pos, frame_type, channel, size, ids))
        count += 1
        last_type, last_ids = frame_type, ids
        pos = frame_end + 1
    return FramesWalked(pos, count, last_type, last_ids, heartbeats)


def whole_frames(buf: bytes | bytearray | memoryview, pos: int, end: int,
                 stop_classes: frozenset[int] = frozenset()) -> tuple[list[WholeFrame], int]:
    """The whole frames back to back from `pos` (not past `end`), and where the walk stopped."""
    frames: list[WholeFrame] = []
    return frames, walk_whole_frames(buf, pos, end, stop_classes, frames).stop


def heartbeat_is_nonstandard_columns(frame_type: npt.NDArray[np.int64], channel: npt.NDArray[np.int64],
                                     size: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """heartbeat_is_nonstandard for columns."""
    nonstandard: npt.NDArray[np.bool_] = (frame_type == FRAME_HEARTBEAT_OLD) | (size != 0) | (channel != 0)
    return nonstandard


class FrameTable(NamedTuple):
    """Frames as columns, sorted by payload and offset."""

    payload: npt.NDArray[np.int64]  # which payload (index into the walk's starts)
    offset: npt.NDArray[np.int64]  # of the frame's first byte in the buffer
    type: npt.NDArray[np.int64]
    channel: npt.NDArray[np.int64]
    size: npt.NDArray[np.int64]
    ids: npt.NDArray[np.int64]  # class_id << 16 | method_id for method frames, else 0


class FramesWalk(NamedTuple):
    """whole_frames over many payloads at once (whole_frames_columns): per payload, and for its
    heartbeats; every frame too when asked for."""

    whole: npt.NDArray[np.bool_]  # the walk ended exactly at the payload's end
    frame_count: npt.NDArray[np.int64]  # frames walked
    last_type: npt.NDArray[np.int64]  # type of the last frame walked
    last_ids: npt.NDArray[np.int64]  # its ids, when a method
    heartbeat_payload: npt.NDArray[np.int64]  # the (whole) payload of each heartbeat frame, ascending
    heartbeat_nonstandard: npt.NDArray[np.bool_]  # heartbeat_is_nonstandard of each
    frames: FrameTable | None  # every frame of the whole payloads (keep_frames)


# When fewer payloads than this still have frames to walk, the rest of their frames are walked by
# whole_frames in Python: a numpy round costs the same for 3 payloads as for 3,000.
PYTHON_TAIL = 64


def whole_frames_columns(buf: bytes, starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64],
                         stop_classes: frozenset[int] = frozenset(), keep_frames: bool = False) -> FramesWalk:
    """whole_frames for each payload buf[starts[k]:ends[k]], all payloads advancing one frame per
    numpy round; payloads still walking when fewer than PYTHON_TAIL remain finish in whole_frames.
    tests/test_framing.py holds it equal to whole_frames payload by payload."""
    b = np.frombuffer(buf, dtype=np.uint8)
    n = len(starts)
    whole = np.ones(n, dtype=bool)
    count = np.zeros(n, dtype=np.int64)
    last_type = np.zeros(n, dtype=np.int64)
    last_ids = np.zeros(n, dtype=np.int64)
    beats: list[npt.NDArray[np.int64]] = []
    odd: list[npt.NDArray[np.bool_]] = []
    kept: list[tuple[npt.NDArray[np.int64], ...]] = []
    pos = starts.astype(np.int64, copy=True)
    end = ends.astype(np.int64, copy=False)
    active = np.flatnonzero(pos < end)
    last = len(b)
    while len(active) >= PYTHON_TAIL:
        c = pos[active]
        e = end[active]
        # Reads are clipped to the buffer: a frame header is only used where 8 bytes remain, and a
        # method frame's ids only where the frame ends after them.
        at = np.minimum(c, last - FRAME_HEADER_SIZE)
        frame_type = b[at].astype(np.int64)
        channel = b[at + 1].astype(np.int64) << 8 | b[at + 2]
        size = (b[at + 3].astype(np.int64) << 24 | b[at + 4].astype(np.int64) << 16
                | b[at + 5].astype(np.int64) << 8 | b[at + 6])
        frame_end = c + FRAME_HEADER_SIZE + size
        good = (e - c > FRAME_HEADER_SIZE) & (frame_end < e) & (size <= MAX_BUFFERED_FRAME)
        good &= b[np.where(good, frame_end, c)] == FRAME_END
        at = np.minimum(c, last - FRAME_HEADER_SIZE - 4)
        ids = (b[at + 7].astype(np.int64) << 24 | b[at + 8].astype(np.int64) << 16
               | b[at + 9].astype(np.int64) << 8 | b[at + 10])
        method = frame_type == FRAME_METHOD
        heartbeat = (frame_type == FRAME_HEARTBEAT) | (frame_type == FRAME_HEARTBEAT_OLD)
        method_ok = method & (size >= 4)
        if stop_classes:
            class_id = ids >> 16
            for stop in stop_classes:
                method_ok &= class_id != stop
        good &= method_ok | heartbeat | (frame_type == FRAME_HEADER) | (frame_type == FRAME_BODY)
        whole[active[~good]] = False
        moved = active[good]
        count[moved] += 1
        moved_type = frame_type[good]
        moved_ids = ids[good]
        moved_ids[moved_type != FRAME_METHOD] = 0
        last_type[moved] = moved_type
        last_ids[moved] = moved_ids
        beat = good & heartbeat
        if beat.any():
            beats.append(active[beat])
            odd.append(heartbeat_is_nonstandard_columns(frame_type[beat], channel[beat], size[beat]))
        if keep_frames:
            kept.append((moved, c[good], moved_type, channel[good], size[good], moved_ids))
        pos[moved] = frame_end[good] + 1
        active = moved[pos[moved] < end[moved]]
    if len(active):
        rows: list[WholeFrame] | None = [] if keep_frames else None
        row_payloads: list[int] = []
        tail_beats: list[int] = []
        tail_odd: list[bool] = []
        for k in active.tolist():
            walked = walk_whole_frames(buf, int(pos[k]), int(end[k]), stop_classes, rows)
            if walked.stop != end[k]:
                whole[k] = False
                if rows is not None:
                    del rows[len(row_payloads):]
                continue
            if walked.frame_count:
                count[k] += walked.frame_count
                last_type[k] = walked.last_type
                last_ids[k] = walked.last_ids
            if walked.heartbeats:
                tail_beats += [k] * len(walked.heartbeats)
                tail_odd += walked.heartbeats
            if rows is not None:
                row_payloads += [k] * (len(rows) - len(row_payloads))
        if tail_beats:
            beats.append(np.array(tail_beats, dtype=np.int64))
            odd.append(np.array(tail_odd, dtype=bool))
        if rows:
            kept.append((np.array(row_payloads, dtype=np.int64),
                         *(np.array(column, dtype=np.int64) for column in zip(*rows, strict=True))))
    if beats:
        beat_payload = np.concatenate(beats)
        beat_odd = np.concatenate(odd)
        keep = whole[beat_payload]
        beat_payload, beat_odd = beat_payload[keep], beat_odd[keep]
        order = np.argsort(beat_payload, kind="stable")
        heartbeat_payload, heartbeat_nonstandard = beat_payload[order], beat_odd[order]
    else:
        heartbeat_payload, heartbeat_nonstandard = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    return FramesWalk(whole, count, last_type, last_ids, heartbeat_payload, heartbeat_nonstandard,
                      _frame_table(kept, whole) if keep_frames else None)


def _frame_table(kept: list[tuple[npt.NDArray[np.int64], ...]], whole: npt.NDArray[np.bool_]) -> FrameTable:
    if not kept:
        empty = np.zeros(0, dtype=np.int64)
        return FrameTable(empty, empty, empty, empty, empty, empty)
    payload, offset, frame_type, channel, size, ids = (np.concatenate(column) for column in zip(*kept, strict=True))
    keep = whole[payload]
    payload, offset = payload[keep], offset[keep]
    order = np.argsort(payload << 32 | offset, kind="stable")
    return FrameTable(payload[order], offset[order], frame_type[keep][order], channel[keep][order],
                      size[keep][order], ids[keep][order])
