"""The notebook's tables (frames, segments, gaps, decode errors, TLS records), built by column.

Strategy: `TableCollector` listens to the engine. A run (engine/runs.py: a stretch of ordinary
packets of one read block) arrives as numpy columns and is kept as such, never as one Python object
per packet or frame; the events of packets taken one by one (handshakes, closes, gaps, TLS records:
few in a busy capture) are kept as row tuples and turned into arrays when the next run arrives, so
the chunks stay in the order the engine emitted them. A DataFrame is built from the chunks only when
a table is first asked for (`Tables.frame`), then the chunks are dropped.

What the rows cost: text columns are pandas categoricals over vocabularies shared by all tables (a
connection id, a direction, a frame type, a method name or a flag string is stored once; each row
holds a small integer code). A frame's `args` are decoded once per distinct (type, method, payload
bytes) — a busy capture repeats its publish and content-header payloads — and the rows carrying the
same bytes share that one dict (read it, do not modify it). Which frames have `args`, method and type
names, and how arguments decode are api.py's and records.py's rules, called once per distinct value.
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from analyzer.amqp.arguments import decode_method_arguments_columns
from analyzer.amqp.frames import FRAME_HEADER_SIZE, kept_payload_size
from analyzer.api import decodes_arguments, frame_arguments, method_name
from analyzer.engine import PacketRun
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
               "routing_key": _CATEGORY, "queue": _CATEGORY, "args": "object"},
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


class _Arguments:
    """The distinct (type, method ids, payload) of the frames whose `args` are decoded, coded in
    order of first appearance: decoded once each when the frames table is built."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, int, bytes]] = []
        self.index: dict[tuple[int, int, bytes], int] = {}

    def code(self, frame_type: int, ids: int, payload: bytes) -> int:
        key = (frame_type, ids, payload)
        code = self.index.get(key)
        if code is None:
            code = self.index[key] = len(self.keys)
            self.keys.append(key)
        return code

    def decoded(self) -> list[dict | None]:
        """The `args` of each code: methods of one kind walked together by column
        (decode_method_arguments_columns), the rest and whatever that leaves one by one."""
        decoded: list[dict | None] = [None] * len(self.keys)
        by_method: dict[int, list[int]] = {}
        for code, (frame_type, ids, _) in enumerate(self.keys):
            if frame_type == FRAME_METHOD and ids >= 0:
                by_method.setdefault(ids, []).append(code)
        for ids, codes in by_method.items():
            walked = decode_method_arguments_columns(ids >> 16, ids & 0xFFFF, [self.keys[c][2] for c in codes])
            for code, args in zip(codes, walked, strict=True):
                decoded[code] = args
        for code, (frame_type, ids, payload) in enumerate(self.keys):
            if decoded[code] is None:
                decoded[code] = frame_arguments(frame_type, ids >> 16 if ids >= 0 else None,
                                                ids & 0xFFFF if ids >= 0 else None, payload)
        return decoded


class _Chunks:
    """One table's raw columns: row tuples from single events, numpy chunks from runs, in order."""

    def __init__(self, dtypes: tuple[Any, ...]) -> None:
        self.dtypes = dtypes
        self.rows: list[tuple] = []
        self.chunks: list[tuple[np.ndarray, ...]] = []

    def add(self, chunk: tuple[np.ndarray, ...]) -> None:
        self._flush()
        if len(chunk[0]):
            self.chunks.append(chunk)

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
        return [np.concatenate([chunk[k] for chunk in chunks]).astype(dtype, copy=False) if chunks
                else np.zeros(0, dtype=dtype) for k, dtype in enumerate(self.dtypes)]


_F8, _I8 = np.float64, np.int64
# Raw columns per table: epoch, connection code, direction code, then the table's own.
_RAW = {
    "frames": (_F8, _I8, _I8, _I8, _I8, _I8, _I8, _I8, _I8, _I8),  # channel, type, ids, size, packet, offset, args
    "segments": (_F8, _I8, _I8, _I8, _I8, _I8, _I8, _I8, np.bool_, _I8),  # packet, flags, seq, ack, payload_len,
    # retransmission, missing
    "gaps": (_F8, _I8, _I8, _I8, _I8, _I8, _I8),  # packet, offset, missing, reason code
    "decode_errors": (_F8, _I8, _I8, _I8, _I8, _I8, _I8),  # packet, offset, reason code, skipped
    "tls_records": (_F8, _I8, _I8, _I8, _I8, _I8, object, _I8, _I8, np.bool_),  # packet, content_type, length,
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
                args = self.arguments.code(event.type, ids, event.payload) \
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
        side_connection = np.array([self.connections.code(s.info.id) for s in sides], dtype=np.int64)
        side_direction = np.array([self.directions.code(s.direction) for s in sides], dtype=np.int64)
        mine = None if self.only is None else np.array([s.info.id == self.only for s in sides], dtype=bool)
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
        """The `args` code of each frame of a run (-1: not decoded), from its payload bytes in the block."""
        codes = np.full(len(frame_type), -1, dtype=np.int64)
        kind = np.where(ids >= 0, ids >> 16, -1) * 256 + frame_type  # (class, type): what decides
        for value in np.unique(kind).tolist():
            class_id = value >> 8 if value >= 0 else None
            if not decodes_arguments(value & 0xFF, class_id, True):
                continue
            rows = np.flatnonzero(kind == value)
            code = self.arguments.code
            start = position[rows] + FRAME_HEADER_SIZE
            codes[rows] = [code(t, k, buf[s : s + kept_payload_size(t, n, 0)])
                           for t, k, s, n in zip(frame_type[rows].tolist(), ids[rows].tolist(), start.tolist(),
                                                 size[rows].tolist(), strict=True)]
        return codes


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
            table = self.built[name] = _BUILDERS[name](self, self.collector.chunks.pop(name).columns())
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
        decoded = self.collector.arguments.decoded()
        columns |= {"channel": pd.array(channel, dtype=_NULLABLE_INT),
                    "type": _named(frame_type, frame_type_name),
                    "method": _named(ids, lambda k: method_name(k >> 16, k & 0xFFFF) if k >= 0 else None),
                    "size": size, "packet": packet, "offset": offset}
        keys: dict[str, list] = {name: [None] * len(decoded) for name in KEY_ARGUMENTS}
        wanted = frozenset(KEY_ARGUMENTS)
        for code, found in enumerate(decoded):
            if found is not None:
                for name in wanted.intersection(found):
                    keys[name][code] = found[name]
        for name, values in keys.items():
            if DTYPES["frames"][name] == _NULLABLE_INT:
                columns[name] = pd.array(values, dtype=_NULLABLE_INT).take(args, allow_fill=True)
            else:
                category = pd.Categorical(values)
                codes = np.append(category.codes.astype(np.int64), -1)  # code -1 (no args) is missing too
                columns[name] = _categorical(codes[args], list(category.categories))
        shared = np.empty(len(decoded) + 1, dtype=object)
        shared[:-1] = decoded  # the last slot (code -1) stays None
        columns["args"] = shared[args]
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
