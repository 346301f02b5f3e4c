"""`frames --format jsonl`: one JSON object per frame, the bytes `json.dumps(frame_fields(...),
ensure_ascii=False)` writes, built with f-strings instead (json.dumps of a dict is ~3 µs; a busy
capture has millions of frames). For a FrameBatch, what frames share is formatted once: the time
fields per packet, the connection per side, the type and method per kind of frame.
tests/test_render_frames.py holds the output equal to json.dumps'."""
from __future__ import annotations

import json
from json.encoder import encode_basestring  # the C encoder where available: quotes and escapes, non-ASCII kept

import numpy as np

from analyzer.api import FrameBatch, FrameRecord
from analyzer.records import FRAME_TYPE_NAMES

# `t` keeps microseconds: classic pcap's timestamp resolution, and what the text listing shows.
TIME_DIGITS = 6


def frame_fields(frame: FrameRecord, path: str | None = None) -> dict[str, object]:
    """The fields of one listed frame (`file` first when several files are listed)."""
    record: dict[str, object] = {"file": path} if path is not None else {}
    record.update({
        "t": round(frame.t, TIME_DIGITS), "epoch": frame.epoch, "connection": frame.connection,
        "direction": frame.direction, "channel": frame.channel, "type": frame.type, "method": frame.method,
        "size": frame.size, "packet": frame.packet, "args": frame.args,
    })
    return record


def _string_or_null(value: str | None) -> str:
    return "null" if value is None else encode_basestring(value)


class JsonLines:
    """Formats FrameRecords and FrameBatches of one file as JSON Lines."""

    def __init__(self, path: str | None = None) -> None:
        self.prefix = "{" if path is None else '{"file": ' + encode_basestring(path) + ", "

    def line(self, frame: FrameRecord) -> str:
        args = "null" if frame.args is None else json.dumps(frame.args, ensure_ascii=False)
        return (f'{self.prefix}"t": {round(frame.t, TIME_DIGITS)!r}, "epoch": {frame.epoch!r}, '
                f'"connection": {encode_basestring(frame.connection)}, '
                f'"direction": {encode_basestring(frame.direction)}, '
                f'"channel": {frame.channel}, "type": {encode_basestring(frame.type)}, '
                f'"method": {_string_or_null(frame.method)}, "size": {frame.size}, "packet": {frame.packet}, '
                f'"args": {args}}}\n')

    def batch(self, batch: FrameBatch) -> str:
        c = batch.columns
        sides = [f'"connection": {encode_basestring(cid)}, "direction": {encode_basestring(direction)}, "channel": '
                 for cid, direction in zip(batch.connection_ids, batch.directions, strict=True)]
        names, name_index = batch.method_names()
        # One string per kind of frame: its type and method.
        kind_keys, kind_index = np.unique(c.type * (len(names) + 1) + name_index, return_inverse=True)
        kinds: list[str] = []
        for key in kind_keys.tolist():
            frame_type, name = divmod(key, len(names) + 1)
            kinds.append(f', "type": {encode_basestring(FRAME_TYPE_NAMES[frame_type])}, '
                         f'"method": {_string_or_null(names[name])}, "size": ')
        lines: list[str] = []
        add = lines.append
        prefix = self.prefix
        last_packet = -1
        head = ""
        for packet, epoch, t, side, channel, kind, size in zip(
                c.packet.tolist(), c.timestamp.tolist(), (c.timestamp - batch.t0).tolist(), c.side.tolist(),
                c.channel.tolist(), kind_index.reshape(-1).tolist(), c.size.tolist(), strict=True):
            if packet != last_packet:  # the frames of one packet share its time
                last_packet = packet
                head = f'{prefix}"t": {round(t, TIME_DIGITS)!r}, "epoch": {epoch!r}, '
            add(f'{head}{sides[side]}{channel}{kinds[kind]}{size}, "packet": {packet}, "args": null}}\n')
        return "".join(lines)
