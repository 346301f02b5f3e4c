"""Our AMQP frames against Wireshark's AMQP dissector, connection by connection.

The twin of h11's test against the standard library: every capture in captures/ (and a few
synthetic ones written to tmp_path) is decoded twice — by `analyzer.engine.iter_events` and by
tshark driven through pyshark — and the two frame sequences must be equal: for each connection,
each frame's packet number, sender, frame type, channel, size, class/method ids, and for
connection.tune / tune-ok the channel-max, frame-max and heartbeat arguments.

Wireshark exports each AMQP frame of a packet as its own `amqp` layer in PDML, so
`packet.get_multiple_layers("amqp")` yields them in order. Wireshark files a frame under the
packet that completed it (after TCP reassembly), as we do. Protocol headers are left out: tshark
4.0 shows the 0-9-1 header as "AMQP (unknown version)" and exports no fields for it.

tshark missing is a failure, not a skip: this test is the project's evidence of correctness.
"""
from __future__ import annotations

import dataclasses
import io
import ipaddress
import pathlib
import shutil
import struct

import pytest
from pamqp import body as pamqp_body
from pamqp import commands
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header
from pamqp import heartbeat as pamqp_heartbeat

from analyzer.engine import iter_events
from analyzer.records import ACK, C2S, FIN, PSH, S2C, SYN, CaptureSummary, Frame
from analyzer.tls.keylog import KeyLog
from tests import synth
from tests.synth import Conversation, ConvSegment, amqp_conversation, pcap_bytes, pcapng_bytes
from tests.test_pipeline import frame_offsets, resegment

pytestmark = pytest.mark.tshark

REPO = pathlib.Path(__file__).resolve().parent.parent
REAL_CAPTURES = sorted(p for p in (REPO / "captures").glob("*.pcap*") if p.is_file())
TUNE_METHODS = {(10, 30), (10, 31)}


# ---- the two decoders -----------------------------------------------------------------------------


def tune_args(class_id: int, method_id: int, payload: bytes) -> tuple[int, int, int]:
    """(channel_max, frame_max, heartbeat) of a connection.tune / tune-ok payload."""
    try:
        from analyzer.amqp.arguments import decode_method_arguments
    except ImportError:  # the argument module is another engineer's; the layout is fixed by the spec
        return struct.unpack_from("!HIH", payload, 4)
    args = decode_method_arguments(class_id, method_id, payload)
    return args["channel_max"], args["frame_max"], args["heartbeat"]


def endpoint(ip: str, port: int) -> str:
    ip = str(ipaddress.ip_address(ip))
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def ours(path: pathlib.Path, keylog: pathlib.Path | None = None) -> tuple[dict, set[int]]:
    """{(endpoint pair, n-th connection on it): [frame keys]}, and the server ports seen."""
    summary = CaptureSummary()
    keys = KeyLog.parse(keylog.read_bytes()) if keylog is not None else None
    conns: dict[int, tuple] = {}  # id(ConnectionInfo) -> key
    per_pair: dict[frozenset, int] = {}
    result: dict[tuple, list] = {}
    ports: set[int] = set()
    with path.open("rb") as f:
        for event in iter_events(f, summary, tls_keys=keys):
            if type(event) is not Frame:
                continue
            info = event.connection
            if id(info) not in conns:
                pair = frozenset((str(info.client), str(info.server)))
                conns[id(info)] = (pair, per_pair.setdefault(pair, 0))
                per_pair[pair] += 1
                result[conns[id(info)]] = []
            ports.add(info.server.port)
            sender = str(info.client) if event.direction == C2S else str(info.server)
            args = tune_args(event.class_id, event.method_id, event.payload) if (event.class_id, event.method_id) in TUNE_METHODS else None
            result[conns[id(info)]].append(
                (event.packet, sender, event.type, event.channel, event.size, event.class_id, event.method_id, args))
    return result, ports


def _int(layer, name: str) -> int | None:
    value = layer.get_field_value(name)
    return None if value is None else int(str(value), 0)


def wiresharks(path: pathlib.Path, ports: set[int], keylog: pathlib.Path | None = None) -> dict:
    """The same structure from tshark's AMQP dissector (through pyshark); TLS decrypted by tshark
    with `keylog` (its tls.keylog_file preference) when given."""
    import pyshark  # imported here so a missing pyshark fails this test only, loudly

    # 5671 is Wireshark's AMQP-over-TLS port already (packet-amqp.c registers it with the TLS dissector);
    # TLS on another port is decoded as TLS, and TLS's payload there as AMQP.
    decode_as = {f"tcp.port=={p}": ("tls" if keylog is not None else "amqp") for p in sorted(ports - {5672, 5671})}
    if keylog is not None:
        decode_as.update({f"tls.port=={p}": "amqp" for p in sorted(ports - {5672, 5671})})
    prefs = {"tls.keylog_file": str(keylog)} if keylog is not None else None
    cap = pyshark.FileCapture(str(path), display_filter="amqp", decode_as=decode_as or None, keep_packets=False,
                              override_prefs=prefs)
    streams: dict[int, tuple] = {}
    per_pair: dict[frozenset, int] = {}
    result: dict[tuple, list] = {}
    try:
        for pkt in cap:
            net = pkt.ip if hasattr(pkt, "ip") else pkt.ipv6
            src = endpoint(net.src, int(pkt.tcp.srcport))
            dst = endpoint(net.dst, int(pkt.tcp.dstport))
            stream = int(pkt.tcp.stream)
            if stream not in streams:
                pair = frozenset((src, dst))
                streams[stream] = (pair, per_pair.setdefault(pair, 0))
                per_pair[pair] += 1
                result[streams[stream]] = []
            for layer in pkt.get_multiple_layers("amqp"):
                frame_type = _int(layer, "type")
                if frame_type is None:
                    continue  # a protocol header (no frame fields)
                class_id, method_id = _int(layer, "method_class"), _int(layer, "method_method")
                args = None
                if (class_id, method_id) in TUNE_METHODS:
                    args = tuple(_int(layer, f"method_arguments_{n}") for n in ("channel_max", "frame_max", "heartbeat"))
                result[streams[stream]].append((int(pkt.number), src, frame_type, _int(layer, "channel"),
                                                _int(layer, "length"), class_id, method_id, args))
    finally:
        cap.close()
    return {k: v for k, v in result.items() if v}


def assert_agreement(path: pathlib.Path, *, require_frames: bool = True, keylog: pathlib.Path | None = None) -> int:
    mine, ports = ours(path, keylog)
    theirs = wiresharks(path, ports, keylog)
    assert sorted(map(_describe, theirs)) == sorted(map(_describe, mine)), "different connections"
    for key in theirs:
        ws, us = theirs[key], mine[key]
        for n, (a, b) in enumerate(zip(ws, us, strict=False)):
            assert b == a, f"{path.name} {_describe(key)}: frame {n}: ours {b} != Wireshark's {a}"
        assert len(us) == len(ws), f"{path.name} {_describe(key)}: {len(us)} frames, Wireshark {len(ws)}"
    total = sum(map(len, theirs.values()))
    if require_frames:
        assert total, f"{path.name}: no AMQP frames at all, nothing was compared"
    return total


def _describe(key: tuple) -> str:
    pair, n = key
    return " <-> ".join(sorted(pair)) + f" #{n}"


# ---- tshark must be there --------------------------------------------------------------------------


def test_tshark_is_installed() -> None:
    assert shutil.which("tshark"), "tshark is not installed: `apt-get install tshark` (make test does it)"


# ---- real captures ---------------------------------------------------------------------------------


def test_there_are_real_captures_to_compare() -> None:
    assert REAL_CAPTURES, f"no *.pcap* files in {REPO / 'captures'}: nothing real to compare with Wireshark"


@pytest.mark.parametrize("path", REAL_CAPTURES, ids=[p.name for p in REAL_CAPTURES])
def test_real_capture_agrees_with_wireshark(path: pathlib.Path) -> None:
    assert_agreement(path, require_frames=False)


# TLS captures decrypted with their key logs, by us and by Wireshark (issue 13).
KEYED_CAPTURES = sorted(p for p in REAL_CAPTURES if p.with_suffix(".keys").exists())


def test_there_are_keyed_tls_captures() -> None:
    assert len(KEYED_CAPTURES) >= 2, "captures/ should hold a TLS 1.2 and a TLS 1.3 capture with their key logs"


@pytest.mark.parametrize("path", KEYED_CAPTURES, ids=[p.name for p in KEYED_CAPTURES])
def test_decrypted_tls_capture_agrees_with_wireshark(path: pathlib.Path) -> None:
    assert assert_agreement(path, keylog=path.with_suffix(".keys")) >= 20


@pytest.mark.broker
@pytest.mark.parametrize("key", ["tls12-blocked-callback", "tls13-blocked-callback"])
def test_tls_run_recorded_now_agrees_with_wireshark(tls_runs, key) -> None:
    """A TLS blocked-callback run recorded in this session (not a shipped file), decrypted both ways."""
    run = tls_runs(key)
    assert assert_agreement(pathlib.Path(run.pcap), keylog=pathlib.Path(run.keylog)) >= 20


# ---- synthetic captures ----------------------------------------------------------------------------


def scripted(units: list[tuple[str, bytes]], *, client=("10.0.0.1", 52018), server=("10.0.0.2", 5672),
             start: float = 1700000000.0, step: float = 0.001) -> Conversation:
    """A TCP connection carrying `units` ((direction, bytes) each in one segment, acknowledged
    by the peer's next segment), with handshake and FIN exchange: correct sequence numbers."""
    segs: list[ConvSegment] = []
    nxt = {C2S: 1000, S2C: 5000}
    t = start

    def send(direction: str, flags: int, payload: bytes = b"") -> None:
        nonlocal t
        t = round(t + step, 6)
        other = S2C if direction == C2S else C2S
        segs.append(ConvSegment(t, direction, flags, nxt[direction], nxt[other] if flags & ACK else 0, payload))
        nxt[direction] += len(payload) + (1 if flags & (SYN | FIN) else 0)

    send(C2S, SYN)
    send(S2C, SYN | ACK)
    send(C2S, ACK)
    for direction, data in units:
        send(direction, PSH | ACK, data)
    send(C2S, FIN | ACK)
    send(S2C, FIN | ACK)
    send(C2S, ACK)
    return Conversation(client, server, segs, [(d, "unit", b) for d, b in units])


def _m(cmd, channel: int = 0) -> bytes:
    return pamqp_frame.marshal(cmd, channel)


def busy_units() -> list[tuple[str, bytes]]:
    hb = pamqp_heartbeat.Heartbeat().marshal()
    big = bytes(range(256)) * 40  # 10 KiB: split over several segments below

    def publish(data: bytes, channel: int = 1) -> bytes:
        return (_m(commands.Basic.Publish(exchange="", routing_key="q"), channel)
                + pamqp_frame.marshal(pamqp_header.ContentHeader(0, len(data), commands.Basic.Properties(
                    content_type="application/octet-stream", delivery_mode=2, headers={"n": 1})), channel)
                + pamqp_frame.marshal(pamqp_body.ContentBody(data), channel))

    def deliver(data: bytes, tag: int) -> bytes:
        return (_m(commands.Basic.Deliver(consumer_tag="ctag", delivery_tag=tag, exchange="", routing_key="q"), 1)
                + pamqp_frame.marshal(pamqp_header.ContentHeader(0, len(data), commands.Basic.Properties()), 1)
                + pamqp_frame.marshal(pamqp_body.ContentBody(data), 1))

    return [
        (C2S, pamqp_header.ProtocolHeader().marshal()),
        (S2C, _m(commands.Connection.Start(server_properties={"product": "RabbitMQ", "capabilities": {
            "publisher_confirms": True, "consumer_cancel_notify": True}}, mechanisms="PLAIN AMQPLAIN", locales="en_US"))),
        (C2S, _m(commands.Connection.StartOk(client_properties={"product": "pika"}, mechanism="PLAIN",
                                             response="\x00guest\x00guest", locale="en_US"))),
        (S2C, _m(commands.Connection.Tune(channel_max=2047, frame_max=131072, heartbeat=60))),
        (C2S, _m(commands.Connection.TuneOk(channel_max=1024, frame_max=4096, heartbeat=15))
         + _m(commands.Connection.Open(virtual_host="/"))),
        (S2C, _m(commands.Connection.OpenOk())),
        (C2S, _m(commands.Channel.Open(), 1)),
        (S2C, _m(commands.Channel.OpenOk(), 1)),
        (C2S, _m(commands.Confirm.Select(), 1) + _m(commands.Queue.Declare(queue="q", durable=True), 1)),
        (S2C, _m(commands.Confirm.SelectOk(), 1) + _m(commands.Queue.DeclareOk(queue="q", message_count=0, consumer_count=0), 1)),
        (C2S, publish(b"hello") + publish(b"world") + hb),  # several frames in one segment
        (S2C, _m(commands.Basic.Ack(delivery_tag=2, multiple=True), 1) + hb),
        (C2S, _m(commands.Basic.Consume(queue="q", consumer_tag="ctag"), 1)),
        (S2C, _m(commands.Basic.ConsumeOk(consumer_tag="ctag"), 1) + deliver(big, 1)),  # split below
        (C2S, _m(commands.Basic.Ack(delivery_tag=1), 1) + hb),
        (S2C, hb),
        (C2S, _m(commands.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0), 1)),
        (S2C, _m(commands.Channel.CloseOk(), 1)),
        (C2S, _m(commands.Connection.Close(reply_code=200, reply_text="Normal shutdown", class_id=0, method_id=0))),
        (S2C, _m(commands.Connection.CloseOk())),
    ]


def busy_conversation(**kwargs) -> tuple[Conversation, list[ConvSegment]]:
    """The busy script with the server's stream also cut every 1400 bytes and the client's start-ok
    cut in three, so frames both share segments and span them."""
    conv = scripted(busy_units(), **kwargs)
    segs = resegment(conv, S2C, range(0, len(conv.stream(S2C)), 1400))
    start_ok = frame_offsets(conv, C2S)[1]
    segs = resegment(dataclasses.replace(conv, segments=segs), C2S, [start_ok + 5, start_ok + 50])
    return conv, segs


SYNTHETIC = {
    "standard-5672.pcap": lambda: pcap_bytes(amqp_conversation().packets()),
    "standard-5999.pcap": lambda: pcap_bytes(amqp_conversation(server=("10.0.0.2", 5999)).packets()),
    "busy-5672.pcap": lambda: (lambda c, s: pcap_bytes(c.packets(segments=s)))(*busy_conversation()),
    "busy-5999-ipv6-sll2.pcap": lambda: (lambda c, s: pcap_bytes(c.packets(synth.LINKTYPE_LINUX_SLL2, segments=s)))(
        *busy_conversation(client=("fd00::1", 40123), server=("fd00::2", 5999))),
    "two-connections.pcapng": lambda: _two_connections(),
}


def _two_connections() -> bytes:
    a = amqp_conversation()
    b, b_segs = busy_conversation(client=("10.0.0.7", 40000), start=1700000000.0004)
    packets = sorted([(0, s.timestamp, synth.ethernet(a.ip_packet(s))) for s in a.segments]
                     + [(1, s.timestamp, synth.sll(b.ip_packet(s))) for s in b_segs], key=lambda p: p[1])
    return pcapng_bytes([{"interfaces": [(synth.LINKTYPE_ETHERNET, None), (synth.LINKTYPE_LINUX_SLL, 9)],
                          "packets": packets}])


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_synthetic_capture_agrees_with_wireshark(name: str, tmp_path: pathlib.Path) -> None:
    path = tmp_path / name
    path.write_bytes(SYNTHETIC[name]())
    total = assert_agreement(path)
    assert total >= 13


def test_busy_conversation_really_has_shared_and_spanning_segments(tmp_path: pathlib.Path) -> None:
    """Guard for the fixtures above: the agreement tests must cover both segmentation cases."""
    conv, segs = busy_conversation()
    path = tmp_path / "busy.pcap"
    path.write_bytes(pcap_bytes(conv.packets(segments=segs)))
    [frames] = ours(path)[0].values()
    packets = [f[0] for f in frames]
    assert len(packets) - len(set(packets)) >= 5  # several frames completed in one packet
    summary = CaptureSummary()
    events = list(iter_events(io.BytesIO(path.read_bytes()), summary))
    sizes = {e.size for e in events if type(e) is Frame}
    assert max(sizes) > 1400  # at least one frame spans segments
