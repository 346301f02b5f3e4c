"""The scripted py-amqp programs (edge): a consumer driven the way py-amqp and kombu users drive it.

Run as `python -m analyzer.lab.scenarios.client_pyamqp NAME PARAMS_JSON` (program.py: event log, main).

py-amqp (the `amqp` package under kombu and celery) has no I/O thread and no timer: a heartbeat
leaves only when the program calls `Connection.heartbeat_tick()`, which kombu's and celery's loops
call between `drain_events(timeout=...)` calls. heartbeat_tick (amqp/connection.py) sends a
heartbeat when nothing was sent for T/rate seconds (rate 2) at the moment it runs, counts any
byte sent or received since the last tick as liveness (its own last heartbeat included), and
raises ConnectionForced when nothing was received for 2T. A message handler runs inside
drain_events: while it blocks, nothing ticks and nothing is sent.

The publisher is a short pika connection (client.publish); the metadata names each connection's
library. In a TLS run py-amqp gets its `ssl` option in the `context` form ({"context": {"cafile":
CA, "check_hostname": True}, "server_hostname": ...}): py-amqp then builds the context with
ssl.create_default_context, which writes the key log named by SSLKEYLOGFILE (set here from the
run's key log). That form takes no version bounds (the runner refuses --tls-version for py-amqp):
the version is negotiated (TLS 1.3 here).
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import amqp  # type: ignore[import-untyped]  # py-amqp ships no type information
import pika

from analyzer.lab.scenarios import program
from analyzer.lab.scenarios.client import publish
from analyzer.lab.scenarios.program import declare, emit, run_program, socket_id, tls_facts

LIBRARY = "py-amqp"
# Seconds drain_events waits for a frame before the loop ticks: T/4, so heartbeat_tick runs often
# enough for its T/2 rule (kombu's own loops tick at T/rate or faster).
TICKS_PER_TIMEOUT = 4


def connect(url: str, role: str, heartbeat: int) -> amqp.Connection:
    """Open an amqp.Connection from the broker URL and log `connected` with the Tune values."""
    parts = urllib.parse.urlsplit(url)
    conn = amqp.Connection(host=parts.netloc.rsplit("@", 1)[-1],  # HOST:PORT or [V6]:PORT, as py-amqp reads it
                           userid=urllib.parse.unquote(parts.username or "guest"),
                           password=urllib.parse.unquote(parts.password or "guest"),
                           virtual_host=urllib.parse.unquote(parts.path[1:]) or "/", heartbeat=heartbeat,
                           ssl=ssl_option())
    conn.connect()
    cid, local, remote = socket_id(conn.sock)
    tls = tls_facts(conn.sock)
    emit("connected", role=role, connection=cid, local=local, remote=remote, library=LIBRARY,
         library_version=amqp.__version__, server_heartbeat=conn.server_heartbeat, heartbeat=conn.heartbeat,
         frame_max=conn.frame_max, channel_max=conn.channel_max, **({"tls": tls} if tls else {}))
    return conn


def ssl_option() -> dict[str, Any] | bool:
    """py-amqp's `ssl` argument: False for plain TCP, else the context form with the test CA."""
    tls = program.TLS
    if tls is None:
        return False
    os.environ["SSLKEYLOGFILE"] = tls["keylog"]  # read by create_default_context inside py-amqp
    # amqp/transport.py SSLTransport._wrap_context: `context` goes to create_default_context (check_hostname
    # set on the result), the other keys to wrap_socket.
    return {"context": {"cafile": tls["ca"], "check_hostname": True}, "server_hostname": tls["server_hostname"]}


def serve(conn: amqp.Connection, done: Callable[[], bool], tick: float) -> None:
    """kombu's consumer loop: drain_events(timeout=tick), then heartbeat_tick(), until done()."""
    while not done():
        with contextlib.suppress(TimeoutError):  # socket.timeout: no frame within `tick`
            conn.drain_events(timeout=tick)
        conn.heartbeat_tick()


def consumer(p: dict[str, Any], healthy: bool) -> None:
    """Consume `messages` messages with `work` seconds of work each.

    blocked (healthy=False): the work is a time.sleep inside the handler, so inside drain_events:
    no tick, no heartbeat. healthy: the handler hands the work to a thread and returns; the loop
    keeps ticking (heartbeats flow) and acks once the thread is done; then connection.close().
    """
    heartbeat = p["heartbeat"]
    tick = heartbeat / TICKS_PER_TIMEOUT if heartbeat else 1.0
    conn = connect(p["url"], "consumer", heartbeat)
    ch = conn.channel()
    declare(ch, p["queue"])
    ch.basic_qos(prefetch_size=0, prefetch_count=1, a_global=False)
    state: dict[str, Any] = {"acked": 0, "workers": []}

    def ack(tag: int) -> None:
        ch.basic_ack(delivery_tag=tag)
        emit("ack", delivery_tag=tag)
        state["acked"] += 1

    def work_in_thread(tag: int) -> None:
        emit("work_start", delivery_tag=tag, thread="worker")
        time.sleep(p["work"])
        emit("work_end", delivery_tag=tag, thread="worker")

    def on_message(message: amqp.Message) -> None:
        tag = message.delivery_tag
        emit("message", delivery_tag=tag, bytes=len(message.body))
        emit("callback_start", delivery_tag=tag)
        if healthy:
            worker = threading.Thread(target=work_in_thread, args=(tag,), daemon=True)
            worker.start()
            state["workers"].append((worker, tag))
            emit("callback_end", delivery_tag=tag)
            return
        time.sleep(p["work"])  # no drain_events, no heartbeat_tick while it runs
        emit("callback_end", delivery_tag=tag)
        ack(tag)

    def finished_workers() -> bool:
        for worker, tag in [w for w in state["workers"] if not w[0].is_alive()]:
            state["workers"].remove((worker, tag))
            ack(tag)  # from the loop's thread: py-amqp channels are not thread-safe
        return state["acked"] >= p["messages"]

    ch.basic_consume(queue=p["queue"], callback=on_message)
    emit("consuming", role="consumer", queue=p["queue"])
    if p.get("idle_first"):
        idle_until = time.time() + p["idle_first"]
        serve(conn, lambda: time.time() >= idle_until, tick)
        emit("idled", seconds=p["idle_first"])
    if p["messages"]:
        publish(p, p["messages"])
    serve(conn, finished_workers, tick)
    emit("finished")
    conn.close()  # py-amqp's default reply code is 0 (Connection.close(reply_code=0)), not 200
    emit("closed", role="consumer", how="connection.close", reply_code=0)


SCENARIOS: dict[str, Callable[[dict[str, Any]], None]] = {
    "py-amqp-blocked-handler": lambda p: consumer(p, healthy=False),
    "py-amqp-healthy": lambda p: consumer(p, healthy=True),
}


def main(argv: list[str]) -> int:
    return run_program(argv, SCENARIOS, LIBRARY, amqp.__version__, pika=pika.__version__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
