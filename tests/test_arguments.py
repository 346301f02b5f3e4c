"""analyzer.amqp.arguments: pamqp-built round trips, redaction, and the fuzz invariant.

Fuzz invariant: for any bytes, decode_method_arguments / decode_content_header return a dict that
strict JSON accepts, or raise ArgumentDecodeError; any other exception is a bug.
"""
from __future__ import annotations

import datetime
import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands as C
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header

from analyzer.amqp.arguments import (
    REDACTED,
    ArgumentDecodeError,
    decode_content_header,
    decode_method_arguments,
)
from analyzer.amqp.spec import METHOD_NAMES


def payload_of(method) -> bytes:
    """The method frame payload (4 id bytes + arguments), as pamqp marshals it."""
    return pamqp_frame.marshal(method, 1)[7:-1]


def header_payload(body_size: int, properties: C.Basic.Properties) -> bytes:
    return pamqp_frame.marshal(pamqp_header.ContentHeader(0, body_size, properties), 1)[7:-1]


def strict_json(value) -> str:
    return json.dumps(value, allow_nan=False)


def shortstr(text: bytes) -> bytes:
    return bytes([len(text)]) + text


def longstr(text: bytes) -> bytes:
    return struct.pack(">I", len(text)) + text


def table(*entries: bytes) -> bytes:
    """A field table from pre-encoded `shortstr key + type octet + value` entries."""
    body = b"".join(entries)
    return struct.pack(">I", len(body)) + body


def start_payload(server_properties: bytes) -> bytes:
    """connection.start built by hand around an already-encoded server_properties table."""
    return struct.pack(">HHBB", 10, 10, 0, 9) + server_properties + longstr(b"PLAIN") + longstr(b"en_US")


RABBITMQ_SERVER_PROPERTIES = {
    "capabilities": {
        "publisher_confirms": True,
        "exchange_exchange_bindings": True,
        "basic.nack": True,
        "consumer_cancel_notify": True,
        "connection.blocked": True,
        "consumer_priorities": True,
        "authentication_failure_close": True,
        "per_consumer_qos": True,
        "direct_reply_to": True,
    },
    "cluster_name": "rabbit@broker-1",
    "copyright": "Copyright (c) 2007-2024 Broadcom Inc and/or its subsidiaries",
    "information": "See https://www.rabbitmq.com/",
    "platform": "Erlang/OTP 26.2.5",
    "product": "RabbitMQ",
    "version": "3.13.7",
}


# ---- connection negotiation -------------------------------------------------------------------


def test_connection_start_rabbitmq_server_properties():
    method = C.Connection.Start(
        server_properties=RABBITMQ_SERVER_PROPERTIES, mechanisms="AMQPLAIN PLAIN", locales="en_US"
    )
    args = decode_method_arguments(10, 10, payload_of(method))
    assert args == {
        "version_major": 0,
        "version_minor": 9,
        "server_properties": RABBITMQ_SERVER_PROPERTIES,
        "mechanisms": "AMQPLAIN PLAIN",
        "locales": "en_US",
    }
    assert args["server_properties"]["capabilities"]["connection.blocked"] is True
    assert list(args) == ["version_major", "version_minor", "server_properties", "mechanisms", "locales"]
    strict_json(args)


def test_field_table_value_types_become_json_friendly():
    """Every field type RabbitMQ documents (amqp-0-9-1-errata), encoded by hand since pamqp's
    encoder never emits some of them (T, D, A of mixed types, x, d, V, NaN)."""
    props = table(
        shortstr(b"bool") + b"t\x01",
        shortstr(b"i8") + b"b\xff",
        shortstr(b"u8") + b"B\xff",
        shortstr(b"i16") + b"s\x80\x00",
        shortstr(b"u16") + b"u\xff\xff",
        shortstr(b"i32") + b"I" + struct.pack(">i", -5),
        shortstr(b"u32") + b"i" + struct.pack(">I", 4_000_000_000),
        shortstr(b"i64") + b"l" + struct.pack(">q", -(2**40)),
        shortstr(b"float") + b"f" + struct.pack(">f", 0.5),
        shortstr(b"nan") + b"f" + struct.pack(">f", float("nan")),
        shortstr(b"double") + b"d" + struct.pack(">d", 2.25),
        shortstr(b"inf") + b"d" + struct.pack(">d", float("-inf")),
        shortstr(b"decimal") + b"D\x02" + struct.pack(">i", 12345),
        shortstr(b"text") + b"S" + longstr("héllo".encode()),
        shortstr(b"binary") + b"S" + longstr(b"\xff\x00\xfe"),
        shortstr(b"bytes") + b"x" + longstr(b"\xff\x00"),
        shortstr(b"utf8bytes") + b"x" + longstr(b"ok"),
        shortstr(b"when") + b"T" + struct.pack(">Q", 1_700_000_000),
        shortstr(b"void") + b"V",
        shortstr(b"array") + b"A" + longstr(b"b\x01" + b"S" + longstr(b"two") + b"F" + table()),
        shortstr(b"nested") + b"F" + table(shortstr(b"deeper") + b"F" + table(shortstr(b"x") + b"t\x00")),
    )
    args = decode_method_arguments(10, 10, start_payload(props))
    assert args["server_properties"] == {
        "bool": True,
        "i8": -1,
        "u8": 255,
        "i16": -32768,
        "u16": 65535,
        "i32": -5,
        "u32": 4_000_000_000,
        "i64": -(2**40),
        "float": 0.5,
        "nan": "nan",
        "double": 2.25,
        "inf": "-inf",
        "decimal": "123.45",
        "text": "héllo",
        "binary": "ff00fe",
        "bytes": "ff00",
        "utf8bytes": "ok",
        "when": "2023-11-14T22:13:20+00:00",
        "void": None,
        "array": [1, "two", {}],
        "nested": {"deeper": {"x": False}},
    }
    strict_json(args)


def test_connection_tune_and_tune_ok():
    tune = decode_method_arguments(10, 30, payload_of(C.Connection.Tune(2047, 131072, 60)))
    assert tune == {"channel_max": 2047, "frame_max": 131072, "heartbeat": 60}
    tune_ok = decode_method_arguments(10, 31, payload_of(C.Connection.TuneOk(2047, 131072, 0)))
    assert tune_ok == {"channel_max": 2047, "frame_max": 131072, "heartbeat": 0}


def test_connection_open_and_close():
    opened = decode_method_arguments(10, 40, payload_of(C.Connection.Open(virtual_host="/prod")))
    assert opened == {"virtual_host": "/prod", "capabilities": "", "insist": False}
    text = "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
    close = C.Connection.Close(320, text, 0, 0)
    assert decode_method_arguments(10, 50, payload_of(close)) == {
        "reply_code": 320,
        "reply_text": text,
        "class_id": 0,
        "method_id": 0,
    }


def test_connection_blocked_reason():
    args = decode_method_arguments(10, 60, payload_of(C.Connection.Blocked("low on memory")))
    assert args == {"reason": "low on memory"}


# ---- redaction --------------------------------------------------------------------------------


def start_ok(mechanism: str, response: str) -> bytes:
    return payload_of(
        C.Connection.StartOk(
            client_properties={"product": "Pika Python Client Library", "capabilities": {"basic.nack": True}},
            mechanism=mechanism,
            response=response,
            locale="en_US",
        )
    )


def test_start_ok_plain_password_redacted_by_default():
    args = decode_method_arguments(10, 11, start_ok("PLAIN", "\0guest\0s3cr3t-pw"))
    assert args["response"] == {"user": "guest", "password": REDACTED}
    assert args["mechanism"] == "PLAIN"
    assert args["client_properties"]["capabilities"] == {"basic.nack": True}
    assert "s3cr3t-pw" not in strict_json(args)


def test_start_ok_plain_password_shown_on_request():
    args = decode_method_arguments(10, 11, start_ok("PLAIN", "\0guest\0s3cr3t-pw"), show_secrets=True)
    assert args["response"] == {"user": "guest", "password": "s3cr3t-pw"}


def test_start_ok_plain_keeps_a_non_empty_authzid():
    args = decode_method_arguments(10, 11, start_ok("PLAIN", "admin\0guest\0pw"))
    assert args["response"] == {"authzid": "admin", "user": "guest", "password": REDACTED}


def test_start_ok_amqplain_both_ways():
    # RabbitMQ's AMQPLAIN response: a field table's entries without the 4-byte length prefix.
    raw = (shortstr(b"LOGIN") + b"S" + longstr(b"guest") + shortstr(b"PASSWORD") + b"S" + longstr(b"hunter2"))
    payload = (
        struct.pack(">HH", 10, 11) + table() + shortstr(b"AMQPLAIN") + longstr(raw) + shortstr(b"en_US")
    )
    assert decode_method_arguments(10, 11, payload)["response"] == {"user": "guest", "password": REDACTED}
    shown = decode_method_arguments(10, 11, payload, show_secrets=True)
    assert shown["response"] == {"user": "guest", "password": "hunter2"}
    assert "hunter2" not in strict_json(decode_method_arguments(10, 11, payload))


@pytest.mark.parametrize(
    ("mechanism", "response", "expected"),
    [
        ("EXTERNAL", "", ""),  # empty: nothing to hide
        ("EXTERNAL", "CN=client", REDACTED),
        ("RABBIT-CR-DEMO", "guest", REDACTED),
        ("PLAIN", "guest:pw", REDACTED),  # not authzid\0user\0password: redact it whole
        ("AMQPLAIN", "\x05LOGINZ", REDACTED),  # unparseable table
    ],
)
def test_start_ok_other_responses_redacted_whole(mechanism, response, expected):
    assert decode_method_arguments(10, 11, start_ok(mechanism, response))["response"] == expected


def test_secure_ok_and_update_secret_redacted():
    secure_ok = payload_of(C.Connection.SecureOk(response="token-abc"))
    assert decode_method_arguments(10, 21, secure_ok) == {"response": REDACTED}
    assert decode_method_arguments(10, 21, secure_ok, show_secrets=True) == {"response": "token-abc"}
    update = payload_of(C.Connection.UpdateSecret(new_secret="eyJhbGciOi.jwt", reason="token refresh"))
    assert decode_method_arguments(10, 70, update) == {"new_secret": REDACTED, "reason": "token refresh"}
    shown = decode_method_arguments(10, 70, update, show_secrets=True)
    assert shown == {"new_secret": "eyJhbGciOi.jwt", "reason": "token refresh"}


# ---- channel, exchange, queue, basic, confirm ---------------------------------------------------

CONSUMER_TIMEOUT_TEXT = (
    "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout value used: "
    "1800000 ms. This timeout value can be configured, see consumers doc guide to learn more"
)


def test_channel_close_consumer_timeout():
    payload = payload_of(C.Channel.Close(406, CONSUMER_TIMEOUT_TEXT, 0, 0))
    assert decode_method_arguments(20, 40, payload) == {
        "reply_code": 406,
        "reply_text": CONSUMER_TIMEOUT_TEXT,
        "class_id": 0,
        "method_id": 0,
    }


def test_basic_deliver_with_redelivered_bit():
    deliver = C.Basic.Deliver(
        consumer_tag="amq.ctag-Xa1",
        delivery_tag=2**40 + 7,
        redelivered=True,
        exchange="orders",
        routing_key="eu.new",
    )
    assert decode_method_arguments(60, 60, payload_of(deliver)) == {
        "consumer_tag": "amq.ctag-Xa1",
        "delivery_tag": 2**40 + 7,
        "redelivered": True,
        "exchange": "orders",
        "routing_key": "eu.new",
    }


def test_queue_declare_bits_and_x_arguments():
    x_arguments = {
        "x-queue-type": "quorum",
        "x-max-length": 1000,
        "x-message-ttl": 60000,
        "x-dead-letter-exchange": "dlx",
    }
    declare = C.Queue.Declare(queue="jobs", durable=True, auto_delete=True, arguments=dict(x_arguments))
    assert decode_method_arguments(50, 10, payload_of(declare)) == {
        "ticket": 0,
        "queue": "jobs",
        "passive": False,
        "durable": True,
        "exclusive": False,
        "auto_delete": True,
        "nowait": False,
        "arguments": x_arguments,
    }


def test_exchange_declare():
    declare = C.Exchange.Declare(
        exchange="logs", exchange_type="topic", durable=True, arguments={"alternate-exchange": "ae"}
    )
    assert decode_method_arguments(40, 10, payload_of(declare)) == {
        "ticket": 0,
        "exchange": "logs",
        "exchange_type": "topic",
        "passive": False,
        "durable": True,
        "auto_delete": False,
        "internal": False,
        "nowait": False,
        "arguments": {"alternate-exchange": "ae"},
    }


def test_confirm_select_and_basic_nack():
    assert decode_method_arguments(85, 10, payload_of(C.Confirm.Select(nowait=True))) == {"nowait": True}
    nack_payload = payload_of(C.Basic.Nack(delivery_tag=9, multiple=True, requeue=False))
    nack = decode_method_arguments(60, 120, nack_payload)
    assert nack == {"delivery_tag": 9, "multiple": True, "requeue": False}


def test_methods_without_arguments():
    assert decode_method_arguments(10, 51, payload_of(C.Connection.CloseOk())) == {}
    assert decode_method_arguments(85, 11, payload_of(C.Confirm.SelectOk())) == {}


def test_non_utf8_shortstr_kept_as_hex():
    """pamqp would raise UnicodeDecodeError; RabbitMQ treats routing keys as binaries."""
    payload = struct.pack(">HHH", 60, 40, 0) + shortstr(b"ex") + shortstr(b"\xff\xfe") + b"\x00"
    assert decode_method_arguments(60, 40, payload) == {
        "ticket": 0,
        "exchange": "ex",
        "routing_key": "fffe",
        "mandatory": False,
        "immediate": False,
    }


def test_buffer_types_accepted():
    payload = payload_of(C.Connection.Tune(0, 131072, 60))
    expected = {"channel_max": 0, "frame_max": 131072, "heartbeat": 60}
    assert decode_method_arguments(10, 30, memoryview(payload)) == expected
    assert decode_method_arguments(10, 30, bytearray(payload)) == expected


# Values pamqp's validate() insists on (deprecated fields that must stay empty or zero).
FIXED_ARGUMENTS = {
    "ticket": 0,
    "capabilities": "",
    "insist": False,
    "known_hosts": "",
    "out_of_band": "0",
    "channel_id": "0",
    "cluster_id": "",
}


def sample_method(command):
    """An instance with a distinct, non-default value in every argument; bits alternate so a
    bit landing in the wrong position shows."""
    method = command.__new__(command)
    for position, name in enumerate(command.__slots__):
        kind = command.amqp_type(name)
        value = {
            "bit": position % 2 == 0,
            "octet": 200,
            "short": 40000 + position,
            "long": 3_000_000_000 + position,
            "longlong": 2**50 + position,
            "shortstr": f"s-{name}",
            "longstr": f"long {name} ✓",
            "table": {"key": name, "n": position, "nested": {"ok": True}},
        }[kind]
        setattr(method, name, FIXED_ARGUMENTS.get(name, value))
    return method


@pytest.mark.filterwarnings("ignore:This command is deprecated:DeprecationWarning")  # pamqp, on recover-async
@pytest.mark.parametrize(
    "command",
    sorted(C.INDEX_MAPPING.values(), key=lambda c: c.index),
    ids=lambda c: c.name,
)
def test_agrees_with_pamqp_unmarshal_on_every_method(command):
    """Our argument walk is pamqp's Frame.unmarshal plus byte counting: same values on valid input."""
    method = sample_method(command)
    wire = pamqp_frame.marshal(method, 1)
    _, _, theirs = pamqp_frame.unmarshal(wire)
    ours = decode_method_arguments(command.index >> 16, command.frame_id, wire[7:-1], show_secrets=True)
    assert ours == dict(theirs) == dict(method)
    assert (command.index >> 16, command.frame_id) in METHOD_NAMES


# ---- malformed method frames ------------------------------------------------------------------


def test_truncated_string_rejected_where_pamqp_accepts_it():
    payload = payload_of(C.Basic.Deliver("ctag", 1, False, "ex", "routing.key"))
    _, _, pamqp_result = pamqp_frame.unmarshal(pamqp_frame._marshal(1, 1, payload[:-3]))
    assert pamqp_result.routing_key == "routing."  # pamqp silently cuts it short
    reason = r"^basic.deliver: routing_key \(shortstr\) runs 3 bytes past"
    with pytest.raises(ArgumentDecodeError, match=reason):
        decode_method_arguments(60, 60, payload[:-3])


def test_trailing_bytes_rejected():
    payload = payload_of(C.Basic.Ack(delivery_tag=5)) + b"\x00"
    with pytest.raises(ArgumentDecodeError, match=r"^basic.ack: 1 bytes left after the last argument$"):
        decode_method_arguments(60, 80, payload)


def test_missing_bit_octet_rejected():
    payload = payload_of(C.Basic.Ack(delivery_tag=5))[:-1]
    with pytest.raises(ArgumentDecodeError, match=r"^basic.ack: frame ends before multiple$"):
        decode_method_arguments(60, 80, payload)


def test_ids_must_match():
    payload = payload_of(C.Basic.Ack(delivery_tag=5))
    with pytest.raises(ArgumentDecodeError, match=r"^basic.nack: payload starts with ids 60.80$"):
        decode_method_arguments(60, 120, payload)


def test_unknown_method():
    with pytest.raises(ArgumentDecodeError, match=r"^method 60.99: not an AMQP 0-9-1 method$"):
        decode_method_arguments(60, 99, b"\x00\x3c\x00\x63")


def test_short_payload():
    with pytest.raises(ArgumentDecodeError, match=r"^connection.tune: payload is 3 bytes"):
        decode_method_arguments(10, 30, b"\x00\x0a\x00")


def test_timestamp_beyond_year_9999_is_a_decode_error():
    props = table(shortstr(b"when") + b"T" + struct.pack(">Q", 2**64 - 1))
    with pytest.raises(ArgumentDecodeError, match=r"^connection.start: ValueError: year \d+ is out of range"):
        decode_method_arguments(10, 10, start_payload(props))


def test_error_is_a_value_error_with_reason():
    with pytest.raises(ValueError, match="payload is 0 bytes") as caught:
        decode_method_arguments(10, 30, b"")
    assert caught.value.reason == "connection.tune: payload is 0 bytes, shorter than the 4 id bytes"


def nested_tables(depth: int) -> bytes:
    inner = table()
    for _ in range(depth):
        inner = table(shortstr(b"a") + b"F" + inner)
    return inner


def nested_arrays(depth: int) -> bytes:
    inner = longstr(b"")
    for _ in range(depth):
        inner = longstr(b"A" + inner)
    return inner


def test_deeply_nested_tables_are_a_decode_error_not_recursion_error():
    reason = r"^connection.start: field tables nested too deeply to decode$"
    with pytest.raises(ArgumentDecodeError, match=reason):
        decode_method_arguments(10, 10, start_payload(nested_tables(5000)))


def test_deeply_nested_arrays_are_a_decode_error_not_recursion_error():
    props = table(shortstr(b"a") + b"A" + nested_arrays(5000))
    with pytest.raises(ArgumentDecodeError, match=r"nested too deeply"):
        decode_method_arguments(10, 10, start_payload(props))


def test_moderate_nesting_still_decodes():
    args = decode_method_arguments(10, 10, start_payload(nested_tables(50)))
    level, depth = args["server_properties"], 0
    while level:
        level, depth = level["a"], depth + 1
    assert depth == 50


# ---- content headers --------------------------------------------------------------------------


SENT = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)


def test_content_header_with_properties():
    properties = C.Basic.Properties(
        content_type="application/json",
        headers={"x-retry": 3, "trace": {"id": "abc"}, "sent": SENT},
        delivery_mode=2,
        priority=5,
        correlation_id="corr-1",
        reply_to="amq.rabbitmq.reply-to",
        timestamp=SENT,
        message_type="order.created",
        app_id="shop",
    )
    decoded = decode_content_header(header_payload(1234, properties))
    assert decoded == {
        "class_id": 60,
        "weight": 0,
        "body_size": 1234,
        "property_flags": 0x8000 | 0x2000 | 0x1000 | 0x0800 | 0x0400 | 0x0200 | 0x0040 | 0x0020 | 0x0008,
        "properties": {
            "content_type": "application/json",
            "headers": {"x-retry": 3, "trace": {"id": "abc"}, "sent": "2024-05-06T07:08:09+00:00"},
            "delivery_mode": 2,
            "priority": 5,
            "correlation_id": "corr-1",
            "reply_to": "amq.rabbitmq.reply-to",
            "timestamp": "2024-05-06T07:08:09+00:00",
            "message_type": "order.created",
            "app_id": "shop",
        },
    }
    strict_json(decoded)


def test_content_header_without_properties():
    decoded = decode_content_header(header_payload(0, C.Basic.Properties()))
    assert decoded == {"class_id": 60, "weight": 0, "body_size": 0, "property_flags": 0, "properties": {}}


def test_content_header_decimal_property_in_headers():
    props = table(shortstr(b"price") + b"D\x03" + struct.pack(">i", -1500))
    payload = struct.pack(">HHQH", 60, 0, 10, 0x2000) + props
    assert decode_content_header(payload)["properties"] == {"headers": {"price": "-1.500"}}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x00\x3c\x00\x00", r"^content header: payload is 4 bytes, shorter than the 14-byte minimum$"),
        (struct.pack(">HHQH", 50, 0, 1, 0), r"^content header: class 50 carries no content"),
        (struct.pack(">HHQH", 60, 0, 1, 0) + b"\x00", r"^content header: 1 bytes left after the last"),
        (struct.pack(">HHQH", 60, 0, 1, 0x8000) + b"\x09json", r"content_type \(shortstr\) runs 5 bytes"),
        (struct.pack(">HHQH", 60, 0, 1, 0x0002) + b"\x01", r"1 bytes left after the last property$"),
        (struct.pack(">HHQH", 60, 0, 1, 0x0001), r"frame ends inside the property flags$"),
        (struct.pack(">HHQH", 60, 0, 1, 0x2000) + nested_tables(5000), r"nested too deeply"),
    ],
    ids=["short", "class", "trailing", "truncated", "unknown-flag", "continuation", "nesting"],
)
def test_malformed_content_headers(payload, reason):
    with pytest.raises(ArgumentDecodeError, match=reason):
        decode_content_header(payload)


# ---- fuzz: bad bytes become ArgumentDecodeError; any other exception is a bug --------------------

METHOD_KEYS = sorted(METHOD_NAMES)
SAMPLE_PAYLOADS = [
    payload_of(C.Connection.Start(server_properties=RABBITMQ_SERVER_PROPERTIES)),
    start_ok("PLAIN", "\0guest\0guest"),
    start_payload(table(shortstr(b"a") + b"A" + longstr(b"T" + struct.pack(">Q", 5) + b"D\x01" + b"\x00\x00\x00\x01"))),
    payload_of(C.Queue.Declare(queue="q", arguments={"x-max-length": 10, "x-args": [1, "a", {"b": None}]})),
    payload_of(C.Basic.Deliver("ctag", 1, True, "ex", "rk")),
    payload_of(C.Channel.Close(406, CONSUMER_TIMEOUT_TEXT, 60, 80)),
]


def check_invariant(call) -> None:
    try:
        result = call()
    except ArgumentDecodeError:
        return
    strict_json(result)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(METHOD_KEYS), st.binary(max_size=300))
def test_fuzz_arbitrary_arguments_for_every_method(key, body):
    payload = struct.pack(">HH", *key) + body
    check_invariant(lambda: decode_method_arguments(*key, payload))
    check_invariant(lambda: decode_method_arguments(*key, payload, show_secrets=True))


@settings(max_examples=200)
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=64))
def test_fuzz_arbitrary_ids_and_bytes(class_id, method_id, payload):
    check_invariant(lambda: decode_method_arguments(class_id, method_id, payload))


@settings(max_examples=400)
@given(st.sampled_from(SAMPLE_PAYLOADS), st.data())
def test_fuzz_mutated_valid_payloads(payload, data):
    """Mutations of real payloads reach deep into tables, which random bytes rarely do."""
    at = data.draw(st.integers(0, len(payload)))
    kind = data.draw(st.sampled_from(["truncate", "flip", "insert"]))
    if kind == "truncate":
        mutated = payload[:at]
    elif kind == "flip":
        mutated = payload[:at] + bytes([data.draw(st.integers(0, 255))]) + payload[at + 1 :]
    else:
        mutated = payload[:at] + data.draw(st.binary(min_size=1, max_size=8)) + payload[at:]
    class_id, method_id = struct.unpack_from(">HH", payload)
    check_invariant(lambda: decode_method_arguments(class_id, method_id, mutated))


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_fuzz_content_header(body):
    check_invariant(lambda: decode_content_header(body))
    check_invariant(lambda: decode_content_header(struct.pack(">HHQ", 60, 0, 1) + body))


field_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200)
@given(st.dictionaries(st.text(max_size=10), field_values, max_size=6))
def test_round_trip_random_field_tables(properties):
    """Anything pamqp encodes as a field table comes back equal (strings, ints, bools, void,
    nested tables and arrays; floats excluded: pamqp's encoder narrows them to 32 bits)."""
    args = decode_method_arguments(10, 10, payload_of(C.Connection.Start(server_properties=properties)))
    assert args["server_properties"] == properties


@pytest.mark.parametrize("error", [struct.error("unpack requires a buffer"), AttributeError("x"), TypeError("y")])
def test_any_pamqp_failure_becomes_argument_decode_error(monkeypatch, error):
    """The guard does not depend on which exceptions today's pamqp happens to leak."""

    def boom(*_args):
        raise error

    monkeypatch.setattr("pamqp.decode.by_type", boom)
    with pytest.raises(ArgumentDecodeError, match=rf"^connection.tune: {type(error).__name__}: "):
        decode_method_arguments(10, 30, payload_of(C.Connection.Tune(0, 131072, 60)))


def test_runs_of_more_than_eight_bits_continue_in_the_next_octet():
    """No 0-9-1 method has more than five bits in a row, so check the octet rollover directly."""
    from analyzer.amqp.arguments import _decode_arguments

    fields = (*tuple((f"b{n}", "bit") for n in range(10)), ("after", "octet"))
    values = _decode_arguments(fields, b"\x81\x02\x07", 0)
    bits = [values[f"b{n}"] for n in range(10)]
    assert bits == [True, False, False, False, False, False, False, True, False, True]
    assert values["after"] == 7
