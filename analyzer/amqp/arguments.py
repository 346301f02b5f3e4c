"""Method arguments and content-header properties as JSON-friendly dicts: the one guarded pamqp call.

Strategy: our own framing decoder isolates and checks a frame; only then, and only when a caller
wants the arguments (connection/channel methods, `frames` output), this module decodes them with
pamqp's per-type codec (`pamqp.decode`) and its generated argument lists (`pamqp.commands`).
pamqp 4.x is correct on real RabbitMQ/pika traffic but not on hostile bytes, so every call runs in
`_guarded`, which turns any failure into `ArgumentDecodeError` (the one broad `except` in the code).

We walk the argument list ourselves instead of calling `Frame.unmarshal`, for one reason: pamqp
discards how many bytes it consumed, so it silently accepts a string that runs past the end of the
frame (returning it cut short) and trailing bytes after the last argument. RabbitMQ's decoder
(`rabbit_framing_amqp_0_9_1:decode_method_fields/2`, exact binary patterns) rejects both, and so do
we. tests/test_arguments.py checks that our walk agrees with `Frame.unmarshal` on every method.

JSON mapping of values: str/int/bool/None unchanged; bytes → str when valid UTF-8, else a lowercase
hex string (no prefix, so a hex string and a text string look alike); datetime → ISO 8601 string;
Decimal → str; NaN/±infinity floats → "nan"/"inf"/"-inf" strings (strict JSON has no such numbers);
tables → dicts; arrays → lists.

Redaction (unless `show_secrets=True`), applied before anything leaves this module:
- connection.start-ok `response`:
  PLAIN ("authzid\\0user\\0password")   → {"user": "guest", "password": "<redacted>"}
      (plus "authzid" when it is non-empty);
  AMQPLAIN (field table LOGIN/PASSWORD) → {"user": "guest", "password": "<redacted>"};
  anything else, or a PLAIN/AMQPLAIN response we cannot parse → "<redacted>";
  an empty response stays "" (nothing to hide, and it tells EXTERNAL auth apart).
  With show_secrets the same shapes carry the real password / the raw response.
- connection.secure-ok `response` and connection.update-secret `new_secret` → "<redacted>".
"""
from __future__ import annotations

import datetime
import decimal
import math
import struct
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
from pamqp import base as _base
from pamqp import commands as _commands
from pamqp import decode as _decode

from .spec import METHOD_NAMES

REDACTED = "<redacted>"
# Connection and channel: the method classes whose arguments the analysis reads (tune, close,
# channel.close, ...) and `frames` always shows; the fast paths hand their frames to the plain stages.
CONTROL_CLASSES = frozenset((10, 20))

_IDS = struct.Struct(">HH")
_LONG = struct.Struct(">I")
_HEADER = struct.Struct(">HHQ")  # class id, weight, body size (AMQP 0-9-1 spec 4.2.6.1)
_FLAG_WORD = struct.Struct(">H")
_BASIC_CLASS = 60  # the only 0-9-1 class with content



def _argument_types(command: type[_base.Frame]) -> tuple[tuple[str, str], ...]:
    return tuple((name, command.amqp_type(name)) for name in command.__slots__)


# (class_id, method_id) -> ((argument, pamqp type name), ...), in wire order. pamqp annotates
# INDEX_MAPPING as dict[int, type]; every value is a pamqp.base.Frame subclass.
_ARGUMENTS: dict[tuple[int, int], tuple[tuple[str, str], ...]] = {
    (index >> 16, index & 0xFFFF): _argument_types(cast("type[_base.Frame]", command))
    for index, command in _commands.INDEX_MAPPING.items()
}
# (property, flag bit, pamqp type name), in wire order.
_PROPERTIES: tuple[tuple[str, int, str], ...] = tuple(
    (name, _commands.Basic.Properties.flags[name], _commands.Basic.Properties.amqp_type(name))
    for name in _commands.Basic.Properties.__slots__
)

_START_OK = (10, 11)
_SECURE_OK = (10, 21)
_UPDATE_SECRET = (10, 70)


class ArgumentDecodeError(ValueError):
    """The bytes of an isolated frame are not valid arguments/properties: the peer's (or the
    capture's) fault. Callers turn it into a decode-error event. `reason` names the method, the
    field and sizes; it never quotes field contents (at most one offending byte from pamqp)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_method_arguments(
    class_id: int, method_id: int, payload: bytes, *, show_secrets: bool = False
) -> dict[str, Any]:
    """Arguments of one method frame, by pamqp's argument names, JSON-friendly and redacted.

    `payload` is the whole method frame payload, starting with the 4 class/method id bytes.
    Raises ArgumentDecodeError, and nothing else, whatever the bytes.
    """
    key = (class_id, method_id)
    name = METHOD_NAMES.get(key, f"method {class_id}.{method_id}")
    return _guarded(name, _method_arguments, key, bytes(payload), show_secrets)


# Argument types the column walk reads (pamqp's codecs: octet, short and long unsigned, longlong
# signed, big-endian), by width in bytes; shortstr and bit are walked too. Any other type (table,
# longstr, timestamp) leaves the method to decode_method_arguments.
_COLUMN_WIDTHS = {"octet": 1, "short": 2, "long": 4, "longlong": 8}
_COLUMN_SIGNED = {"longlong"}
_SHORTSTR_MAX = 255  # a shortstr's length is one octet


def decode_method_arguments_columns(class_id: int, method_id: int, joined: bytes,
                                    lengths: Sequence[int] | np.ndarray) -> tuple[dict[str, list[Any]], list[bool]]:
    """decode_method_arguments of many payloads of one method, back to back in `joined` (`lengths`
    long each), walked by column: each field of every payload at once (a busy capture's
    basic.publish, deliver and ack). Returns ({argument: a value per payload}, whether each payload
    was decoded). Not decoded, its values junk: a payload whose walk fails (cut, trailing bytes,
    wrong ids), and every payload of a method with a table, longstr or timestamp argument or with a
    secret; decode_method_arguments decodes it, or says why not. tests/test_tables.py holds the two
    equal."""
    key = (class_id, method_id)
    fields = _ARGUMENTS.get(key)
    n = len(lengths)
    if (fields is None or key in (_START_OK, _SECURE_OK, _UPDATE_SECRET) or not n
            or any(kind not in _COLUMN_WIDTHS and kind not in ("shortstr", "bit") for _, kind in fields)):
        return {}, [False] * n
    # Spare bytes after the last payload: a cut one's gathers read zeros, not past the buffer.
    data = np.frombuffer(joined + bytes(_SHORTSTR_MAX + 8), dtype=np.uint8)
    lengths = np.asarray(lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    last = len(data) - 1

    def number(at: np.ndarray, width: int) -> np.ndarray:
        """The big-endian unsigned `width`-byte number at each of `at` (junk where past the end)."""
        window = np.lib.stride_tricks.sliding_window_view(data, width)[np.minimum(at, len(data) - width)]
        return np.ascontiguousarray(window).view(f">u{width}").ravel().astype(np.uint64)

    ok = (lengths >= 4) & (number(starts, 4) == np.uint64(class_id << 16 | method_id))
    pos = starts + 4
    columns: dict[str, Any] = {}
    strings: list[tuple[str, np.ndarray, np.ndarray]] = []  # (argument, start, end) of each shortstr
    bit = -1  # as in _decode_arguments: position of the next bit in the octet at pos
    for name, kind in fields:
        if kind == "bit":
            if bit == 8:
                pos, bit = pos + 1, 0
            elif bit < 0:
                bit = 0
            ok &= pos < ends
            columns[name] = ((data[np.minimum(pos, last)] >> bit) & 1).astype(bool).tolist()
            bit += 1
            continue
        if bit >= 0:
            pos, bit = pos + 1, -1
        if kind == "shortstr":
            ok &= pos < ends
            start = pos + 1
            pos = start + data[np.minimum(pos, last)].astype(np.int64)
            strings.append((name, start, pos))
        else:
            width = _COLUMN_WIDTHS[kind]
            value = number(pos, width)
            columns[name] = (value.view(np.int64) if kind in _COLUMN_SIGNED else value).tolist()
            pos = pos + width
        ok &= pos <= ends
    if bit >= 0:
        pos = pos + 1
    ok &= pos == ends
    for name, start, end in strings:
        columns[name] = _shortstr_column(data, np.where(ok, start, 0), np.where(ok, end, 0))
    return {name: columns[name] for name, _ in fields}, ok.tolist()


def _shortstr_column(data: np.ndarray, start: np.ndarray, end: np.ndarray) -> list[Any]:
    """The shortstrs data[start:end] as _read and _jsonable make them, each distinct one made once:
    the rows are padded to the longest and compared whole, length included."""
    length = end - start
    width = int(length.max()) if len(length) else 0
    padded = np.lib.stride_tricks.sliding_window_view(data, max(width, 1))[start]  # a copy: rows x width
    padded[np.arange(padded.shape[1]) >= length[:, None]] = 0
    rows = np.ascontiguousarray(np.concatenate([length.astype(np.uint8)[:, None], padded], axis=1))
    kind = np.dtype((np.void, rows.shape[1]))
    if (rows == rows[:1]).all():  # the common case: one exchange, one routing key, one consumer tag
        distinct, inverse = rows[:1].view(kind).ravel(), np.zeros(len(rows), dtype=np.int64)
    else:
        distinct, inverse = np.unique(rows.view(kind).ravel(), return_inverse=True)
    blob = distinct.tobytes()
    step = rows.shape[1]
    texts = np.empty(len(distinct), dtype=object)
    texts[:] = [_jsonable(blob[at + 1 : at + 1 + blob[at]]) for at in range(0, len(blob), step)]
    return cast("list[Any]", texts[inverse.reshape(-1)].tolist())


def decode_content_header(payload: bytes) -> dict[str, Any]:
    """A content header frame payload as {"class_id", "weight", "body_size", "property_flags",
    "properties"}. `property_flags` is the first 16-bit flag word as sent (0x8000 content_type ...
    0x0004 cluster_id); `properties` holds only the properties present, by pamqp's names
    (content_type, headers, delivery_mode, ..., message_type for the spec's `type`).
    Raises ArgumentDecodeError, and nothing else, whatever the bytes.
    """
    return _guarded("content header", _content_header, bytes(payload))


def _guarded(context: str, decode: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    try:
        return decode(*args)
    except ArgumentDecodeError as exc:
        raise ArgumentDecodeError(f"{context}: {exc.reason}") from None
    except RecursionError:
        raise ArgumentDecodeError(f"{context}: field tables nested too deeply to decode") from None
    # The one broad except in the code base, on purpose. pamqp's decoders document ValueError, but
    # RecursionError escapes on nested tables, AttributeError on memoryview input, datetime's own
    # errors on timestamps past year 9999, and which struct.error/TypeError get wrapped varies by
    # call site and version. A capture is hostile input: whatever the bytes, a bad frame must
    # become a decode-error event, never a crash (tests/test_arguments.py fuzzes this).
    except Exception as exc:  # noqa: BLE001 (see above)
        raise ArgumentDecodeError(f"{context}: {type(exc).__name__}: {exc}") from None


def _method_arguments(key: tuple[int, int], data: bytes, show_secrets: bool) -> dict[str, Any]:
    fields = _ARGUMENTS.get(key)
    if fields is None:
        raise ArgumentDecodeError("not an AMQP 0-9-1 method")
    if len(data) < 4:
        raise ArgumentDecodeError(f"payload is {len(data)} bytes, shorter than the 4 id bytes")
    if _IDS.unpack_from(data) != key:
        class_id, method_id = _IDS.unpack_from(data)
        raise ArgumentDecodeError(f"payload starts with ids {class_id}.{method_id}")
    values = _decode_arguments(fields, data, 4)
    if key == _START_OK:
        values["response"] = _sasl_response(values["mechanism"], values["response"], show_secrets)
    elif key == _SECURE_OK and not show_secrets:
        values["response"] = REDACTED
    elif key == _UPDATE_SECRET and not show_secrets:
        values["new_secret"] = REDACTED
    return {name: _jsonable(value) for name, value in values.items()}


def _decode_arguments(fields: tuple[tuple[str, str], ...], data: bytes, pos: int) -> dict[str, Any]:
    """pamqp's Frame.unmarshal, keeping count of the bytes consumed. Consecutive bits share an
    octet, low bit first (spec 4.2.5.2)."""
    values: dict[str, Any] = {}
    bit = -1  # position of the next bit in data[pos], or -1 outside a run of bits
    for name, kind in fields:
        if kind == "bit":
            if bit == 8:
                pos, bit = pos + 1, 0
            elif bit < 0:
                bit = 0
            if pos >= len(data):
                raise ArgumentDecodeError(f"frame ends before {name}")
            values[name] = _decode.bit(data[pos : pos + 1], bit)[1]
            bit += 1
            continue
        if bit >= 0:
            pos, bit = pos + 1, -1
        pos, values[name] = _read(data, pos, kind, name)
    if bit >= 0:
        pos += 1
    if pos > len(data):
        raise ArgumentDecodeError("frame ends inside the last bits")
    if pos < len(data):
        raise ArgumentDecodeError(f"{len(data) - pos} bytes left after the last argument")
    return values


def _read(data: bytes, pos: int, kind: str, name: str) -> tuple[int, Any]:
    """One non-bit value at data[pos:], by pamqp's codec: (position after it, value)."""
    if kind == "shortstr":
        # pamqp insists on UTF-8 here (UnicodeDecodeError otherwise); RabbitMQ treats shortstrs
        # as binaries, so we keep the bytes and let _jsonable fall back to hex.
        if pos >= len(data):
            raise ArgumentDecodeError(f"frame ends before {name}")
        end = pos + 1 + data[pos]
        value: Any = data[pos + 1 : end]
    else:
        consumed, value = _decode.by_type(data[pos:], kind)
        end = pos + consumed
    if end > len(data):
        raise ArgumentDecodeError(f"{name} ({kind}) runs {end - len(data)} bytes past the frame end")
    return end, value


def _content_header(data: bytes) -> dict[str, Any]:
    if len(data) < _HEADER.size + _FLAG_WORD.size:
        raise ArgumentDecodeError(f"payload is {len(data)} bytes, shorter than the 14-byte minimum")
    class_id, weight, body_size = _HEADER.unpack_from(data)
    if class_id != _BASIC_CLASS:
        raise ArgumentDecodeError(f"class {class_id} carries no content (only basic, 60, does)")
    pos = _HEADER.size
    (flags,) = _FLAG_WORD.unpack_from(data, pos)
    word = flags
    pos += 2
    while word & 1:  # continuation bit: another flag word follows; basic has no properties there
        if pos + 2 > len(data):
            raise ArgumentDecodeError("frame ends inside the property flags")
        (word,) = _FLAG_WORD.unpack_from(data, pos)
        pos += 2
    properties: dict[str, Any] = {}
    for name, flag, kind in _PROPERTIES:
        if flags & flag:
            pos, value = _read(data, pos, kind, name)
            properties[name] = _jsonable(value)
    if pos < len(data):
        raise ArgumentDecodeError(f"{len(data) - pos} bytes left after the last property")
    return {
        "class_id": class_id,
        "weight": weight,
        "body_size": body_size,
        "property_flags": flags,
        "properties": properties,
    }


def _sasl_response(mechanism: bytes, response: Any, shown: bool) -> Any:
    """The start-ok response with the password redacted (or shown), in the shapes the module
    docstring lists. Never raises: a response we cannot parse is redacted whole."""
    raw = response.encode("utf-8") if isinstance(response, str) else bytes(response)
    if not raw:
        return ""
    user: object
    password: object
    if mechanism == b"PLAIN":
        parts = raw.split(b"\0")
        if len(parts) != 3:
            return _jsonable(raw) if shown else REDACTED
        authzid, user, password = parts
        result = {"authzid": _jsonable(authzid)} if authzid else {}
    elif mechanism == b"AMQPLAIN":
        # RabbitMQ's AMQPLAIN response is a field table's body without its length prefix
        # (rabbit_auth_mechanism_amqplain: rabbit_binary_parser:parse_table(Response)).
        try:
            table = _guarded("AMQPLAIN response", _amqplain_table, raw)
        except ArgumentDecodeError:
            return _jsonable(raw) if shown else REDACTED
        user, password, result = table.get("LOGIN"), table.get("PASSWORD"), {}
    else:
        return _jsonable(raw) if shown else REDACTED
    result["user"] = _jsonable(user)
    result["password"] = _jsonable(password) if shown else REDACTED
    return result


def _amqplain_table(raw: bytes) -> dict[str, Any]:
    _, table = _decode.field_table(_LONG.pack(len(raw)) + raw)
    return table


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (bytes, bytearray)):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.hex()
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    raise TypeError(f"no JSON form for {type(value).__name__}")
