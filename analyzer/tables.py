"""The notebook's tables (frames, segments, gaps, decode errors, TLS records), built by column.

Strategy: `TableCollector` listens to the engine. A run (engine/runs.py: a stretch of ordinary
packets of one read block) arrives as numpy columns and is kept as such, never as one Python object
per packet or frame; the events of packets taken one by one (handshakes, closes, gaps, TLS records:
few in a busy capture) are kept as row tuples and turned into arrays when the next run arrives, so
the chunks stay in the order the engine emitted them. A DataFrame is built from the chunks only when
a table is first asked for (`Tables.frame`), then the chunks are dropped.

What the rows cost: text columns are pandas categoricals over vocabularies shared by all tables (a
connection id, a direction, a frame type, a method name or a flag string is stored once; each row
holds a small integer code). A frame's payload is kept once per distinct (type, method, payload
bytes) where a run repeats it (publishes, content headers), else as rows of a numpy matrix
(deliveries, acks: a delivery tag each); the key argument columns are decoded by column when the
frames table is built, and the `args` dicts only when that column is first read (an extension array
of codes: rows carrying the same bytes share one dict; read it, do not modify it). Which frames have
`args`, method and type names, and how arguments decode are api.py's, records.py's and
amqp/arguments.py's rules, called once per distinct value or by their column twins.
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from functools import cache
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from analyzer.amqp.arguments import decode_method_arguments_columns
from analyzer.amqp.frames import FRAME_HEADER_SIZE, kept_payload_size
from analyzer.api import decodes_arguments, frame_arguments, method_name
from analyzer.engine import PacketRun
from analyzer.engine.files import no_cyclic_gc
from analyzer.errors import UsageError
from analyzer.records import (
    ACK,
    C2S,
    FIN,
    FRAME_METHOD,
    PSH,
    RST,
    S2C,
    SYN,
    DecodeError,
    Frame,
    Gap,
    SegmentEvent,
    TlsRecord,
    frame_type_name,
)

# Method arguments promoted to their own frame columns (None where a method has no such argument);
# the full decoded arguments stay in the `args` column.
KEY_ARGUMENTS = ("heartbeat", "reply_code", "reply_text", "delivery_tag", "consumer_tag", "exchange",
                 "routing_key", "queue")
FRAME_COLUMNS = ("t", "epoch", "connection", "direction", "channel", "type", "method", "size", "packet",
                 "offset", *KEY_ARGUMENTS, "args")
SEGMENT_COLUMNS = ("t", "epoch", "connection", "direction", "packet", "flags", "seq", "ack", "payload_len",
                   "ack_only", "retransmission", "missing")
GAP_COLUMNS = ("t", "epoch", "connection", "direction", "packet", "offset", "missing", "reason")
DECODE_ERROR_COLUMNS = ("t", "epoch", "connection", "direction", "packet", "offset", "reason", "skipped")
# One row per TLS record of a TLS connection; `guess` is what a record without keys most likely holds
# ("heartbeat", "tune", ...: analyzer/tls/inference.py).
TLS_RECORD_COLUMNS = ("t", "epoch", "connection", "direction", "packet", "content_type", "length", "plaintext_len",
                      "what", "guess", "decrypted")
TABLES = {"frames": FRAME_COLUMNS, "segments": SEGMENT_COLUMNS, "gaps": GAP_COLUMNS,
          "decode_errors": DECODE_ERROR_COLUMNS, "tls_records": TLS_RECORD_COLUMNS}

# The dtype of every column (README "Explore in Jupyter"); tests/test_tables.py holds the tables to it.
_CATEGORY = "category"
_NULLABLE_INT = "Int64"  # pandas' nullable integer: a missing value does not turn the column into floats
DTYPES: dict[str, dict[str, str]] = {
    "frames": {"t": "float64", "epoch": "float64", "connection": _CATEGORY, "direction": _CATEGORY,
               "channel": _NULLABLE_INT, "type": _CATEGORY, "method": _CATEGORY, "size": "int64", "packet": "int64",
               "offset": "int64", "heartbeat": _NULLABLE_INT, "reply_code": _NULLABLE_INT, "reply_text": _CATEGORY,
               "delivery_tag": _NULLABLE_INT, "consumer_tag": _CATEGORY, "exchange": _CATEGORY,
               "routing_key": _CATEGORY, "queue": _CATEGORY, "args": "amqp-args"},
    "segments": {"t": "float64", "epoch": "float64", "connection": _CATEGORY, "direction": _CATEGORY,
                 "packet": "int64", "flags": _CATEGORY, "seq": "int64", "ack": "int64", "payload_len": "int64",
                 "ack_only": "bool", "retransmission": "bool", "missing": "int64"},
    "gaps": {"t": "float64", "epoch": "float64", "connection": _CATEGORY, "direction": _CATEGORY,
             "packet": "int64", "offset": "int64", "missing": "int64", "reason": _CATEGORY},
    "decode_errors": {"t": "float64", "epoch": "float64", "connection": _CATEGORY, "direction": _CATEGORY,
                      "packet": "int64", "offset": "int64", "reason": _CATEGORY, "skipped": "int64"},
    "tls_records": {"t": "float64", "epoch": "float64", "connection": _CATEGORY, "direction": _CATEGORY,
                    "packet": "int64", "content_type": "int64", "length": "int64", "plaintext_len": _NULLABLE_INT,
                    "what": _CATEGORY, "guess": _CATEGORY, "decrypted": "bool"},
}

# tcpdump's flag letters, in tcpdump's order ("S", "F", "R", "P", then "A" for the ACK bit).
_FLAG_LETTERS = ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, "A"))
_NOT_ACK_ONLY = SYN | FIN | RST
_I64 = npt.NDArray[np.int64]


def flags_text(flags: int) -> str:
    """TCP flags as letters, e.g. "PA", "R", "FA", "S"."""
    return "".join(letter for bit, letter in _FLAG_LETTERS if flags & bit) or "."


def is_ack_only(flags: int, payload_len: int) -> bool:
    """A bare ACK (or keepalive): no payload, no SYN/FIN/RST. Not liveness for the peer's timers,
    but proof that the sender's kernel is alive."""
    return not payload_len and bool(flags & ACK) and not flags & _NOT_ACK_ONLY


def is_ack_only_columns(flags: _I64, payload_len: _I64) -> npt.NDArray[np.bool_]:
    """is_ack_only of each row (tests/test_tables.py holds the two equal)."""
    return (payload_len == 0) & ((flags & ACK) != 0) & ((flags & _NOT_ACK_ONLY) == 0)


class Vocabulary:
    """Distinct strings and their codes, in order of first appearance; None is code -1."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self.values: list[str] = []
        self.index: dict[str, int] = {}
        for value in values:
            self.code(value)

    def code(self, value: str | None) -> int:
        if value is None:
            return -1
        code = self.index.get(value)
        if code is None:
            code = self.index[value] = len(self.values)
            self.values.append(value)
        return code


class _Group:
    """The payloads of one (type, method ids), back to back, with their lengths and codes (single
    payloads gather in lists, turned into an array when rows come or at the end)."""

    __slots__ = ("codes", "lengths", "pieces", "single_codes", "single_lengths")

    def __init__(self) -> None:
        self.codes: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.pieces: list[bytes] = []
        self.single_codes: list[int] = []
        self.single_lengths: list[int] = []

    def add(self, code: int, payload: bytes) -> None:
        self.single_codes.append(code)
        self.single_lengths.append(len(payload))
        self.pieces.append(payload)

    def add_rows(self, codes: np.ndarray, payloads: np.ndarray) -> None:
        self.flush()
        self.codes.append(codes)
        self.lengths.append(np.full(len(payloads), payloads.shape[1], dtype=np.int64))
        self.pieces.append(payloads.tobytes())

    def flush(self) -> None:
        if self.single_codes:
            self.codes.append(np.array(self.single_codes, dtype=np.int64))
            self.lengths.append(np.array(self.single_lengths, dtype=np.int64))
            self.single_codes, self.single_lengths = [], []


class _Arguments:
    """The payloads of the frames whose `args` are decoded, grouped by (type, method ids), each with
    a code: decoded a group at a time when the frames table is built. A payload seen before gets its
    earlier code when the caller asks for that (`shared`: what a run repeats, a publisher's publishes
    and content headers); rows of distinct payloads (deliveries, acks: one delivery tag each) are
    appended as they come, since looking them up would cost more than decoding a rare repeat twice."""

    def __init__(self) -> None:
        self.count = 0
        self.index: dict[tuple[int, int, bytes], int] = {}
        self.groups: dict[tuple[int, int], _Group] = {}

    def _new_codes(self, n: int) -> _I64:
        first = self.count
        self.count += n
        return np.arange(first, self.count, dtype=np.int64)

    def shared(self, frame_type: int, ids: int, payloads: list[bytes]) -> _I64:
        """The code of each payload: an earlier one's for bytes seen before."""
        return np.array([self.one(frame_type, ids, payload) for payload in payloads], dtype=np.int64)

    def one(self, frame_type: int, ids: int, payload: bytes) -> int:
        key = (frame_type, ids, payload)
        code = self.index.get(key)
        if code is None:
            code = self.index[key] = self.count
            self.count += 1
            group = self.groups.get(key[:2])
            if group is None:
                group = self.groups[key[:2]] = _Group()
            group.add(code, payload)
        return code

    def rows(self, frame_type: int, ids: int, payloads: np.ndarray) -> _I64:
        """A new code for each row of `payloads` (rows x width bytes)."""
        codes = self._new_codes(len(payloads))
        self.groups.setdefault((frame_type, ids), _Group()).add_rows(codes, payloads)
        return codes

    def decoded(self, dicts: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The `args` of each code, and the KEY_ARGUMENTS of each code (object arrays, None where
        absent). Methods of one kind are walked together by column (decode_method_arguments_columns);
        the rest, and what the walk leaves, one by one (frame_arguments). Without `dicts`, only the
        key arguments (the `args` of the frames the column walk decoded stay None)."""
        decoded = np.full(self.count, None, dtype=object)
        keys: dict[str, np.ndarray] = {}  # only the key arguments some frame has

        def key(name: str) -> np.ndarray:
            column = keys.get(name)
            if column is None:
                column = keys[name] = np.full(self.count, None, dtype=object)
            return column

        wanted = frozenset(KEY_ARGUMENTS)
        for (frame_type, ids), group in self.groups.items():
            group.flush()
            codes = np.concatenate(group.codes)
            lengths = np.concatenate(group.lengths)
            joined = b"".join(group.pieces)
            class_id, method_id = (ids >> 16, ids & 0xFFFF) if ids >= 0 else (None, None)
            walked = np.zeros(len(codes), dtype=bool)
            if class_id is not None and method_id is not None:
                columns, decoded_rows = decode_method_arguments_columns(class_id, method_id, joined, lengths)
                walked[:] = decoded_rows
                if walked.any():
                    every = walked.all()
                    done = codes if every else codes[walked]
                    names = list(columns)
                    if dicts:
                        rows = zip(*columns.values(), strict=True) if columns else [()] * len(codes)
                        # map, not a comprehension: the loop runs in C (twice as fast over 300,000 deliveries)
                        made = np.fromiter(map(dict, map(zip, repeat(names), rows)), dtype=object, count=len(codes))
                        decoded[done] = made if every else made[walked]
                    for name in wanted.intersection(names):
                        values = np.fromiter(columns[name], dtype=object, count=len(codes))
                        key(name)[done] = values if every else values[walked]
            ends = np.cumsum(lengths)
            for k in np.flatnonzero(~walked).tolist():
                code = int(codes[k])
                payload = joined[ends[k] - lengths[k] : ends[k]]
                found = decoded[code] = frame_arguments(frame_type, class_id, method_id, payload)
                if found is not None:
                    for name in wanted.intersection(found):
                        key(name)[code] = found[name]
        return decoded, keys


class _Chunks:
    """One table's raw columns: row tuples from single events, numpy chunks from runs, in order."""

    def __init__(self, dtypes: tuple[Any, ...]) -> None:
        self.dtypes = dtypes
        self.rows: list[tuple] = []
        self.chunks: list[tuple[np.ndarray, ...]] = []

    def add(self, chunk: tuple[np.ndarray, ...]) -> None:
        self._flush()
        if len(chunk[0]):
            self.chunks.append(tuple(column.astype(dtype, copy=False)
                                     for column, dtype in zip(chunk, self.dtypes, strict=True)))

    def __len__(self) -> int:
        return len(self.rows) + sum(len(chunk[0]) for chunk in self.chunks)

    def _flush(self) -> None:
        if self.rows:
            self.chunks.append(tuple(np.array(column, dtype=dtype)
                                     for column, dtype in zip(zip(*self.rows, strict=True), self.dtypes,
                                                              strict=True)))
            self.rows = []

    def columns(self) -> list[np.ndarray]:
        """Every raw column, whole; the chunks are let go."""
        self._flush()
        chunks, self.chunks = self.chunks, []
        return [np.concatenate([chunk[k] for chunk in chunks]) if chunks else np.zeros(0, dtype=dtype)
                for k, dtype in enumerate(self.dtypes)]


_F8, _I8, _I4, _I2 = np.float64, np.int64, np.int32, np.int16
# Raw columns per table: epoch, connection code, direction code, then the table's own. Columns the
# DataFrame keeps as they are are int64 already; codes and small fields are narrower (2.1 M frames).
_RAW = {
    "frames": (_F8, _I4, _I2, _I4, _I2, _I8, _I8, _I8, _I8, _I8),  # channel, type, ids, size, packet, offset,
    # args code
    "segments": (_F8, _I4, _I2, _I8, _I2, _I8, _I8, _I8, np.bool_, _I8),  # packet, flags, seq, ack, payload_len,
    # retransmission, missing
    "gaps": (_F8, _I4, _I2, _I8, _I8, _I8, _I4),  # packet, offset, missing, reason code
    "decode_errors": (_F8, _I4, _I2, _I8, _I8, _I4, _I8),  # packet, offset, reason code, skipped
    "tls_records": (_F8, _I4, _I2, _I8, _I8, _I8, object, _I4, _I4, np.bool_),  # packet, content_type, length,
    # plaintext_len, what code, guess code, decrypted
}


class TableCollector:
    """The engine observer of `load`: single events as rows, runs as columns, for the tables named.
    With `connection`, only that connection's rows are kept."""

    def __init__(self, tables: Collection[str], connection: str | None = None) -> None:
        unknown = set(tables) - set(TABLES)
        if unknown:
            raise UsageError(f"no table named {', '.join(sorted(unknown))}: the tables are {', '.join(TABLES)}")
        self.only = connection
        self.chunks = {name: _Chunks(_RAW[name]) for name in TABLES if name in tables}
        self.connections = Vocabulary()
        self.directions = Vocabulary((C2S, S2C))
        self.texts = {name: Vocabulary() for name in ("gap_reason", "error_reason", "what", "guess")}
        self.arguments = _Arguments()
        self._frames = self.chunks.get("frames")
        self._segments = self.chunks.get("segments")
        self._gaps = self.chunks.get("gaps")
        self._errors = self.chunks.get("decode_errors")
        self._tls = self.chunks.get("tls_records")

    # ---- single events ----------------------------------------------------------------------------

    def event(self, event) -> None:
        cid = event.connection.id
        if self.only is not None and cid != self.only:
            return
        kind = type(event)
        if kind is SegmentEvent:
            if self._segments is not None:
                self._segments.rows.append((event.timestamp, self.connections.code(cid),
                                            self.directions.code(event.direction), event.packet, event.flags,
                                            event.seq, event.ack, event.payload_len, event.retransmission,
                                            event.missing))
        elif kind is Frame:
            if self._frames is not None:
                method = event.class_id is not None and event.method_id is not None
                ids = event.class_id << 16 | event.method_id if method else -1
                args = self.arguments.one(event.type, ids, event.payload) \
                    if decodes_arguments(event.type, event.class_id, True) else -1
                self._frames.rows.append((event.timestamp, self.connections.code(cid),
                                          self.directions.code(event.direction), event.channel, event.type, ids,
                                          event.size, event.packet, event.offset, args))
        elif kind is Gap:
            if self._gaps is not None:
                self._gaps.rows.append((event.timestamp, self.connections.code(cid),
                                        self.directions.code(event.direction), event.packet, event.offset,
                                        event.missing, self.texts["gap_reason"].code(event.reason)))
        elif kind is DecodeError:
            if self._errors is not None:
                self._errors.rows.append((event.timestamp, self.connections.code(cid),
                                          self.directions.code(event.direction), event.packet, event.offset,
                                          self.texts["error_reason"].code(event.reason), event.skipped))
        elif kind is TlsRecord and self._tls is not None:
            self._tls.rows.append((event.timestamp, self.connections.code(cid), self.directions.code(event.direction),
                                   event.packet, event.content_type, event.length, event.plaintext_len,
                                   self.texts["what"].code(event.what), self.texts["guess"].code(event.guess),
                                   event.decrypted))

    # ---- runs -------------------------------------------------------------------------------------

    def run(self, run: PacketRun) -> None:
        sides = run.frames.sides
        mine = None if self.only is None else np.array([s.info.id == self.only for s in sides], dtype=bool)
        # Codes for the connections kept only: another connection's id is no category of the tables.
        side_connection = np.array([self.connections.code(s.info.id) if mine is None or mine[k] else -1
                                    for k, s in enumerate(sides)], dtype=np.int64)
        side_direction = np.array([self.directions.code(s.direction) for s in sides], dtype=np.int64)
        if self._segments is not None:
            seg = run.segments()
            keep = slice(None) if mine is None else mine[seg.side]
            n = len(seg.side[keep])
            self._segments.add((seg.timestamp[keep], side_connection[seg.side][keep],
                                side_direction[seg.side][keep], seg.packet[keep], seg.flags[keep], seg.seq[keep],
                                seg.ack[keep], seg.payload_len[keep], np.zeros(n, dtype=bool),
                                np.zeros(n, dtype=np.int64)))
        if self._frames is not None:
            f = run.frames
            keep = slice(None) if mine is None else mine[f.side]
            frame_type = f.type[keep]
            ids = np.where(frame_type == FRAME_METHOD, f.ids[keep], -1)
            self._frames.add((f.timestamp[keep], side_connection[f.side][keep], side_direction[f.side][keep],
                              f.channel[keep], frame_type, ids, f.size[keep], f.packet[keep], f.offset[keep],
                              self._argument_codes(run.plan.block.buf, frame_type, ids, f.position[keep],
                                                   f.size[keep])))

    def _argument_codes(self, buf: bytes, frame_type: _I64, ids: _I64, position: _I64, size: _I64) -> _I64:
        """The `args` code of each frame of a run (-1: not decoded), from its payload bytes in the block:
        frames of one method and size compared as fixed-width rows, each distinct payload coded once."""
        codes = np.full(len(frame_type), -1, dtype=np.int64)
        data = np.frombuffer(buf, dtype=np.uint8)
        kind = np.where(ids >= 0, ids >> 16, -1) * 256 + frame_type  # (class, type): what decides
        for value in np.unique(kind).tolist():
            class_id = value >> 8 if value >= 0 else None
            if not decodes_arguments(value & 0xFF, class_id, True):
                continue
            rows = np.flatnonzero(kind == value)
            # (method id, size): frames of one method and size compare as rows of one width.
            groups, group_of = np.unique((ids[rows] & 0xFFFF) << 32 | size[rows], return_inverse=True)
            group_of = group_of.reshape(-1)
            for g, group in enumerate(groups.tolist()):
                members = rows[group_of == g]
                method = int(ids[members[0]])
                width = kept_payload_size(value & 0xFF, group & 0xFFFFFFFF, 0)
                start = position[members] + FRAME_HEADER_SIZE
                if not width or width > _WIDEST_COMPARED:  # rare (an empty or a large payload): one slice each
                    codes[members] = self.arguments.shared(value & 0xFF, method,
                                                           [buf[a : a + width] for a in start.tolist()])
                    continue
                payloads = np.lib.stride_tricks.sliding_window_view(data, width)[start]  # a copy: rows x width
                repeats = (payloads == payloads[:1]).all(axis=1)
                if repeats.all():  # the common case for publishes and content headers: one payload
                    codes[members] = self.arguments.shared(value & 0xFF, method, [payloads[0].tobytes()])[0]
                elif repeats.mean() < 0.5:  # deliveries, acks: (nearly) every payload its own
                    codes[members] = self.arguments.rows(value & 0xFF, method, payloads)
                else:
                    distinct, index = np.unique(payloads.view(np.dtype((np.void, width))).ravel(),
                                                return_inverse=True)
                    blob = distinct.tobytes()
                    distinct_codes = self.arguments.shared(value & 0xFF, method,
                                                           [blob[k : k + width] for k in range(0, len(blob), width)])
                    codes[members] = distinct_codes[index.reshape(-1)]
        return codes


# Payloads up to this many bytes are compared as numpy rows (a basic.deliver is about 60): wider
# ones would make a rows x width matrix for few frames.
_WIDEST_COMPARED = 512


class Tables:
    """The collected tables: each built as a DataFrame on first access (`frame(name)`), then kept."""

    def __init__(self, collector: TableCollector, t0: float) -> None:
        self.collector = collector
        self.t0 = t0
        self.built: dict[str, Any] = {}

    def loaded(self, name: str) -> bool:
        return name in self.built or name in self.collector.chunks

    def rows(self, name: str) -> int:
        """A table's row count, without building it."""
        if name in self.built:
            return len(self.built[name])
        return len(self.collector.chunks[name])

    def frame(self, name: str):
        """The table as a pandas DataFrame (columns TABLES[name], dtypes DTYPES[name])."""
        table = self.built.get(name)
        if table is None:
            with no_cyclic_gc():  # a million args dicts would trigger full collections, each longer than the last
                table = self.built[name] = _BUILDERS[name](self, self.collector.chunks.pop(name).columns())
            if name == "frames":
                self.collector.arguments = _Arguments()  # the args column holds them until it is read
        return table

    # ---- building ---------------------------------------------------------------------------------

    def _common(self, epoch, connection, direction) -> dict[str, Any]:
        return {"t": epoch - self.t0, "epoch": epoch, "connection": _categorical(connection,
                                                                                 self.collector.connections.values),
                "direction": _categorical(direction, self.collector.directions.values)}

    def _frames(self, raw: list[np.ndarray]):
        import pandas as pd

        epoch, connection, direction, channel, frame_type, ids, size, packet, offset, args = raw
        columns = self._common(epoch, connection, direction)
        arguments = self.collector.arguments
        _, keys = arguments.decoded(dicts=False)
        columns |= {"channel": pd.array(channel, dtype=_NULLABLE_INT),
                    "type": _named(frame_type, frame_type_name),
                    "method": _named(ids, lambda k: method_name(k >> 16, k & 0xFFFF) if k >= 0 else None),
                    "size": size, "packet": packet, "offset": offset}
        for name in KEY_ARGUMENTS:
            values = keys.get(name)
            if values is None:  # no frame has it
                values = np.full(1, None, dtype=object)
                at = np.zeros(len(args), dtype=np.int64)
            else:
                values = np.append(values, np.full(1, None, dtype=object))  # code -1 (no args) is None too
                at = args
            if DTYPES["frames"][name] == _NULLABLE_INT:
                absent = values == None  # noqa: E711 (elementwise on an object array)
                numbers = np.where(absent, 0, values).astype(np.int64)
                columns[name] = pd.arrays.IntegerArray(numbers[at], absent[at])
            else:
                codes, categories = pd.factorize(values)
                columns[name] = _categorical(codes[at], list(categories))
        columns["args"] = _arguments_array()(args.astype(np.int64), _Decoded(arguments))
        return pd.DataFrame(columns, copy=False)

    def _segments(self, raw: list[np.ndarray]):
        import pandas as pd

        epoch, connection, direction, packet, flags, seq, ack, payload_len, retransmission, missing = raw
        columns = self._common(epoch, connection, direction)
        columns |= {"packet": packet, "flags": _named(flags, flags_text),
                    "seq": seq, "ack": ack, "payload_len": payload_len,
                    "ack_only": is_ack_only_columns(flags, payload_len), "retransmission": retransmission,
                    "missing": missing}
        return pd.DataFrame(columns, copy=False)

    def _gaps(self, raw: list[np.ndarray]):
        import pandas as pd

        epoch, connection, direction, packet, offset, missing, reason = raw
        columns = self._common(epoch, connection, direction)
        columns |= {"packet": packet, "offset": offset, "missing": missing,
                    "reason": _categorical(reason, self.collector.texts["gap_reason"].values)}
        return pd.DataFrame(columns, copy=False)

    def _decode_errors(self, raw: list[np.ndarray]):
        import pandas as pd

        epoch, connection, direction, packet, offset, reason, skipped = raw
        columns = self._common(epoch, connection, direction)
        columns |= {"packet": packet, "offset": offset,
                    "reason": _categorical(reason, self.collector.texts["error_reason"].values), "skipped": skipped}
        return pd.DataFrame(columns, copy=False)

    def _tls_records(self, raw: list[np.ndarray]):
        import pandas as pd

        epoch, connection, direction, packet, content_type, length, plaintext_len, what, guess, decrypted = raw
        columns = self._common(epoch, connection, direction)
        texts = self.collector.texts
        columns |= {"packet": packet, "content_type": content_type, "length": length,
                    "plaintext_len": pd.array(plaintext_len, dtype=_NULLABLE_INT),
                    "what": _categorical(what, texts["what"].values),
                    "guess": _categorical(guess, texts["guess"].values),
                    "decrypted": decrypted}
        return pd.DataFrame(columns, copy=False)


class _Decoded:
    """The `args` dicts of every code, decoded on first use (then the payloads can go); index -1 is None."""

    def __init__(self, arguments: _Arguments) -> None:
        self.arguments: _Arguments | None = arguments
        self.values: np.ndarray | None = None

    def __call__(self) -> np.ndarray:
        if self.values is None:
            assert self.arguments is not None
            with no_cyclic_gc():
                decoded, _ = self.arguments.decoded()
            self.values = np.append(decoded, np.full(1, None, dtype=object))
            self.arguments = None
        return self.values


@cache
def _arguments_array() -> Any:
    """The array type of the frames' `args` column (made on first use: pandas is imported only when
    a table is built). Each row is a code into the decoded dicts, which are made only when a row is
    looked at (2.1 M frames of a busy capture are 600,000 distinct deliveries and acks: 200 MB of
    dicts nobody may read); any access (a cell, `.tolist()`, `astype(object)`, display, JSON) sees
    the dicts, and rows with the same payload share one."""
    from pandas.api.extensions import ExtensionArray, ExtensionDtype, take  # type: ignore[import-untyped]
    from pandas.api.indexers import check_array_indexer  # type: ignore[import-untyped]

    class ArgumentsDtype(ExtensionDtype):
        name = "amqp-args"
        type = dict
        kind = "O"
        na_value = None

        @classmethod
        def construct_array_type(cls) -> Any:
            return FrameArguments

    class FrameArguments(ExtensionArray):
        def __init__(self, codes: np.ndarray, values: Callable[[], np.ndarray]) -> None:
            self._codes = codes
            self._values = values

        @classmethod
        def _from_sequence(cls, scalars, *, dtype=None, copy=False):
            items = list(scalars)
            if not all(x is None or isinstance(x, dict) for x in items):
                # e.g. what Series.map returned: pandas then keeps it in an ordinary column
                raise TypeError("an args column holds dicts or None")
            values = np.empty(len(items) + 1, dtype=object)
            values[:-1] = items
            codes = np.arange(len(items), dtype=np.int64)
            codes[[x is None for x in items]] = -1
            return cls(codes, lambda: values)

        @classmethod
        def _concat_same_type(cls, to_concat):
            first = to_concat[0]._values
            if all(a._values is first for a in to_concat):
                return cls(np.concatenate([a._codes for a in to_concat]), first)
            return cls._from_sequence([x for a in to_concat for x in np.asarray(a)])

        @property
        def dtype(self):
            return ArgumentsDtype()

        @property
        def nbytes(self) -> int:
            return int(self._codes.nbytes)

        def __len__(self) -> int:
            return len(self._codes)

        def __getitem__(self, item):
            if isinstance(item, (int, np.integer)):
                return self._values()[self._codes[item]]
            return type(self)(self._codes[check_array_indexer(self, item)], self._values)

        def __array__(self, dtype=None, copy=None):
            return self._values()[self._codes]

        def __eq__(self, other):
            return np.asarray(self) == (np.asarray(other, dtype=object) if isinstance(other, (list, np.ndarray,
                                                                                          ExtensionArray)) else other)

        def isna(self) -> np.ndarray:
            return self._codes < 0

        def take(self, indices, *, allow_fill=False, fill_value=None):
            return type(self)(take(self._codes, indices, allow_fill=allow_fill, fill_value=-1), self._values)

        def copy(self):
            return type(self)(self._codes.copy(), self._values)

    return FrameArguments


_BUILDERS = {"frames": Tables._frames, "segments": Tables._segments, "gaps": Tables._gaps,
             "decode_errors": Tables._decode_errors, "tls_records": Tables._tls_records}


def _categorical(codes: _I64, categories: list[str]):
    """A categorical from codes into distinct categories (-1: missing)."""
    import pandas as pd

    return pd.Categorical.from_codes(codes, categories=pd.Index(categories, dtype="object"))


def _named(raw: _I64, name: Callable[[int], str | None]) -> Any:
    """A categorical of name(value) for each raw value, `name` called once per distinct value (names
    may repeat: frame types 4 and 8 are both "heartbeat"; None is missing)."""
    import pandas as pd

    raw_codes, distinct = pd.factorize(raw)
    vocabulary = Vocabulary()
    codes = np.array([vocabulary.code(name(value)) for value in distinct.tolist()], dtype=np.int64)
    return _categorical(codes[raw_codes], vocabulary.values)
