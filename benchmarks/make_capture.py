"""Produce the benchmark captures in benchmarks/data/ (outside git).

    .venv/bin/python benchmarks/make_capture.py real              # big.pcap: real broker, >= 300k messages
    .venv/bin/python benchmarks/make_capture.py scale --times 10  # big-x10.pcap: big.pcap ten times over
    .venv/bin/python benchmarks/make_capture.py short --count 50000  # short.pcap: 50,000 short connections

`real` starts a throwaway RabbitMQ node (analyzer.lab.broker.LocalBroker), records loopback with
tcpdump (analyzer.lab.capture.LiveCapture, full snap length) while a publisher process and a
consumer process (pika, heartbeat on) move MESSAGES small messages through one queue. The
publisher pauses a few times for longer than the heartbeat interval so both peers' heartbeat
frames are in the capture too. The broker's AMQP port and tcpdump's drop count go to big.json.

`scale` repeats big.pcap N times with each copy shifted in time (after the previous one) and its
client ports moved, so every copy is a new set of connections: the flat-memory check needs the
same traffic, ten times longer, not ten times the same connections.

`short` writes N short connections (SYN, protocol header, connection.start, start-ok, FIN
exchange) by patching addresses, ports and times into one template conversation built with
tests/synth.py: many thousands of connections must not degrade time or memory.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
sys.path.insert(0, os.path.dirname(HERE))  # tests/synth.py for `short`

MESSAGES = 300_000
BODY = b"x" * 64  # small messages: per-frame cost dominates, as in a busy production capture
HEARTBEAT = 2  # seconds; both peers send a heartbeat frame after 1 s without other traffic
PAUSES = 4  # idle stretches of 3 heartbeat intervals in the publisher's run
PREFETCH = 200
DEFAULT_AMQP_PORT = 5672  # IANA amqp: big.pcap's port when its .json is missing


# ---- real: broker + publisher + consumer under tcpdump -------------------------------------------


def _publisher(url: str, queue: str, count: int, ready) -> None:
    import pika

    params = pika.URLParameters(url)
    params.heartbeat = HEARTBEAT
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ready.wait()
    pause_every = count // (PAUSES + 1)
    props = pika.BasicProperties(content_type="text/plain", delivery_mode=1)
    for i in range(count):
        ch.basic_publish("", queue, BODY, props)
        if i and i % pause_every == 0:
            conn.sleep(3 * HEARTBEAT)  # idle: heartbeats both ways (sleep keeps pika's I/O loop running)
        elif i % 1000 == 0:
            conn.process_data_events(0)  # read what the broker sent (its heartbeats, flow control)
    conn.sleep(3 * HEARTBEAT)
    conn.close()


def _consumer(url: str, queue: str, count: int, ready) -> None:
    import pika

    params = pika.URLParameters(url)
    params.heartbeat = HEARTBEAT
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=PREFETCH)
    received = 0

    def on_message(channel, method, _props, _body):
        nonlocal received
        received += 1
        channel.basic_ack(method.delivery_tag)  # one basic.ack per message: a frame per delivery
        if received >= count:
            channel.stop_consuming()

    ch.basic_consume(queue, on_message)
    ready.set()
    ch.start_consuming()
    conn.sleep(HEARTBEAT)
    conn.close()


def _bulk_capture_class():
    from analyzer.lab.capture import LiveCapture

    class BulkCapture(LiveCapture):
        # LiveCapture runs tcpdump in --immediate-mode, which makes libpcap use one ring slot per
        # packet: measured here, 20,000 messages at full speed lost 34,696 of 122,577 packets.
        # Without it (TPACKET_V3 blocks) and with a 256 MiB ring, tcpdump keeps up on 2 cores.
        def _command(self) -> list[str]:
            cmd = super()._command()
            cmd.remove("--immediate-mode")
            cmd[cmd.index("-B") + 1] = str(256 * 1024)
            return cmd

    return BulkCapture


def make_real(out: str, messages: int) -> None:
    import pika

    from analyzer.lab.broker import LocalBroker

    LiveCapture = _bulk_capture_class()

    os.makedirs(os.path.dirname(out), exist_ok=True)
    started = time.time()
    with LocalBroker() as broker:
        setup = pika.BlockingConnection(pika.URLParameters(broker.url))
        queue = "amqphb-bench"
        setup.channel().queue_declare(queue)
        setup.close()
        with LiveCapture(out, iface="lo", ports=[broker.port], backend="tcpdump", settle=2.0) as cap:
            ready = multiprocessing.Event()
            consumer = multiprocessing.Process(target=_consumer, args=(broker.url, queue, messages, ready))
            publisher = multiprocessing.Process(target=_publisher, args=(broker.url, queue, messages, ready))
            consumer.start()
            publisher.start()
            publisher.join()
            consumer.join(600)
            if consumer.is_alive():
                consumer.terminate()
                raise SystemExit("consumer did not receive every message in 10 minutes")
        stats = cap.stats
        port = broker.port
        version = broker.info.version
    meta = {"file": os.path.basename(out), "messages": messages, "body_bytes": len(BODY), "heartbeat": HEARTBEAT,
            "amqp_port": port, "rabbitmq": version, "packets": stats.packets, "dropped": stats.dropped,
            "bytes": os.path.getsize(out), "seconds": round(time.time() - started, 1)}
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(meta, f, indent=1)
    print(json.dumps(meta))


# ---- scale: the same traffic N times, each copy new connections later in time ---------------------

_PCAP_RECORD = struct.Struct("<IIII")


def _tcp_port_offsets(frame: bytes, linktype: int) -> int | None:
    """Offset of the TCP header in an Ethernet/IPv4 or IPv6 frame (loopback captures), else None."""
    if linktype != 1 or len(frame) < 14:
        return None
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype == 0x0800:
        return 14 + (frame[14] & 0x0F) * 4
    if ethertype == 0x86DD:
        return 14 + 40
    return None


def make_scaled(src: str, out: str, times: int, server_port: int) -> None:
    with open(src, "rb") as f:
        header = f.read(24)
        if header[:4] != b"\xd4\xc3\xb2\xa1":
            raise SystemExit(f"{src}: expected a little-endian microsecond pcap (what tcpdump writes)")
        linktype = struct.unpack_from("<I", header, 20)[0] & 0x0FFFFFFF
        body = f.read()
    first = last = None
    pos = 0
    while pos + 16 <= len(body):
        sec, usec, incl, _orig = _PCAP_RECORD.unpack_from(body, pos)
        t = sec + usec / 1e6
        first = t if first is None else first
        last = t
        pos += 16 + incl
    span = int(last - first) + 60  # one idle minute between copies
    with open(out, "wb") as w:
        w.write(header)
        for copy in range(times):
            if copy == 0:
                w.write(body)
                continue
            shifted = bytearray(body)
            pos = 0
            while pos + 16 <= len(shifted):
                sec, usec, incl, orig = _PCAP_RECORD.unpack_from(shifted, pos)
                _PCAP_RECORD.pack_into(shifted, pos, sec + copy * span, usec, incl, orig)
                tcp = _tcp_port_offsets(shifted[pos + 16 : pos + 16 + 60], linktype)
                if tcp is not None:
                    at = pos + 16 + tcp
                    for port_at in (at, at + 2):  # move the client's port, keep the broker's
                        (port,) = struct.unpack_from("!H", shifted, port_at)
                        if port != server_port:
                            struct.pack_into("!H", shifted, port_at, 1024 + (port - 1024 + copy * 7) % 64000)
                pos += 16 + incl
            w.write(shifted)
    print(json.dumps({"file": os.path.basename(out), "copies": times, "bytes": os.path.getsize(out)}))


# ---- short: many short connections ---------------------------------------------------------------


def make_short(out: str, count: int) -> None:
    from tests import synth

    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "wb") as w:
        synth.short_connections_pcap(w, count)
    print(json.dumps({"file": os.path.basename(out), "connections": count, "bytes": os.path.getsize(out)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    real = sub.add_parser("real")
    real.add_argument("--messages", type=int, default=MESSAGES)
    real.add_argument("--out", default=os.path.join(DATA, "big.pcap"))
    scale = sub.add_parser("scale")
    scale.add_argument("--times", type=int, default=10)
    scale.add_argument("--src", default=os.path.join(DATA, "big.pcap"))
    scale.add_argument("--out", default=None)
    short = sub.add_parser("short")
    short.add_argument("--count", type=int, default=50_000)
    short.add_argument("--out", default=os.path.join(DATA, "short.pcap"))
    args = parser.parse_args()
    if args.what == "real":
        make_real(args.out, args.messages)
    elif args.what == "scale":
        meta_path = os.path.splitext(args.src)[0] + ".json"
        port = DEFAULT_AMQP_PORT
        if os.path.exists(meta_path):
            with open(meta_path) as f:
                port = json.load(f)["amqp_port"]
        out = args.out or os.path.join(DATA, f"big-x{args.times}.pcap")
        make_scaled(args.src, out, args.times, port)
    else:
        make_short(args.out, args.count)


if __name__ == "__main__":
    main()
