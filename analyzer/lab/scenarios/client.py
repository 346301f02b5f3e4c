"""The scripted pika programs (edge): one process per scenario run, logging what it did as JSON lines.

Run as `python -m analyzer.lab.scenarios.client NAME PARAMS_JSON` (program.py has the event log and
main every client program shares). PARAMS_JSON carries the broker URL (`url`, maybe a proxy), the
direct broker URL for the publisher (`publish_url`), the queue, the event log path and the timings.
Each connection logs its own id `CLIENT:PORT->SERVER:PORT` (read from the socket), the broker's
Connection.Tune proposal and the heartbeat sent back in Tune-Ok. In a TLS run (amqps:// URLs) every
connection uses program.tls_context() through pika.SSLOptions and logs the negotiated version and cipher.
"""
from __future__ import annotations

import functools
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pika

from analyzer.lab.scenarios import program
from analyzer.lab.scenarios.program import declare, emit, log_exception, run_program, socket_id, tls_context, tls_facts

LIBRARY = "pika"


def connection_socket(conn: pika.BlockingConnection) -> Any:
    """The socket of a BlockingConnection (an ssl.SSLSocket over TLS), or None.

    pika keeps it at connection._impl._transport._sock (pika 1.x adapters/utils/io_services_utils.py);
    the attribute path is private, so any failure yields None rather than an exception.
    """
    try:
        return conn._impl._transport._sock
    except Exception:  # noqa: BLE001 (private pika internals: a version change must not abort the scenario)
        return None


def connection_id(conn: pika.BlockingConnection) -> tuple[str, str, str]:
    """(id, local, remote) of a BlockingConnection, read from its socket; "unknown" when unreadable."""
    try:
        return socket_id(connection_socket(conn))
    except Exception:  # noqa: BLE001 (no socket, or a closed one: the id is then unknown, the run goes on)
        return "unknown", "", ""


def connect(url: str, role: str, heartbeat, blocked_timeout: float | None = None) -> pika.BlockingConnection:
    """Open a BlockingConnection and log `connected` with the Tune values on the wire.

    blocked_timeout: pika's blocked_connection_timeout (None: pika waits for Unblocked for ever).
    """
    tune: dict = {}

    def choose(_conn, server_value):  # pika calls this with Connection.Tune's heartbeat
        tune["server_heartbeat"] = server_value
        return server_value if heartbeat is None else heartbeat

    params = pika.URLParameters(url)
    params.heartbeat = choose
    params.blocked_connection_timeout = blocked_timeout
    params.connection_attempts = 1
    context = tls_context()
    if context is not None:
        assert program.TLS is not None
        params.ssl_options = pika.SSLOptions(context, server_hostname=program.TLS["server_hostname"])
    conn = pika.BlockingConnection(params)
    cid, local, remote = connection_id(conn)
    impl = conn._impl
    tls = tls_facts(connection_socket(conn))
    emit("connected", role=role, connection=cid, local=local, remote=remote, library=LIBRARY,
         library_version=pika.__version__, server_heartbeat=tune.get("server_heartbeat"),
         heartbeat=impl.params.heartbeat, frame_max=impl.params.frame_max, channel_max=impl.params.channel_max,
         blocked_connection_timeout=blocked_timeout, **({"tls": tls} if tls else {}))
    return conn


def close(conn: pika.BlockingConnection, role: str) -> None:
    if conn.is_open:
        conn.close()
        emit("closed", role=role, how="connection.close")


def publish(p: dict, count: int) -> None:
    """A short separate publisher connection: connect, publish `count` messages, close (graceful)."""
    conn = connect(p["publish_url"], "publisher", None)
    ch = conn.channel()
    declare(ch, p["queue"])
    for i in range(count):
        ch.basic_publish(exchange="", routing_key=p["queue"], body=f"message {i + 1} of {count}".encode())
    emit("published", role="publisher", messages=count)
    close(conn, "publisher")


def hold(conn: pika.BlockingConnection, role: str) -> None:
    """Keep the connection serviced until the runner kills us (it stops the capture first)."""
    emit("holding", role=role)
    while True:
        conn.process_data_events(time_limit=1)


# ---- the scenarios -----------------------------------------------------------------------------


def consumer(p: dict, mode: str) -> None:
    """Consume `messages` messages with `work` seconds of work each; `mode` says how the work runs."""
    conn = connect(p["url"], "consumer", p["heartbeat"])
    ch = conn.channel()
    declare(ch, p["queue"])
    ch.basic_qos(prefetch_count=1)
    state = {"done": 0, "stop": False}
    wanted = p["messages"]

    def finished_one(channel, tag):
        channel.basic_ack(delivery_tag=tag)
        emit("ack", delivery_tag=tag)
        state["done"] += 1
        if state["done"] >= wanted:
            state["stop"] = True
            if mode != "process-data-events":
                channel.stop_consuming()

    def work_in_thread(channel, tag):
        emit("work_start", delivery_tag=tag, thread="worker")
        time.sleep(p["work"])
        emit("work_end", delivery_tag=tag, thread="worker")
        conn.add_callback_threadsafe(functools.partial(finished_one, channel, tag))

    def on_message(channel, method, _props, body):
        tag = method.delivery_tag
        emit("message", delivery_tag=tag, bytes=len(body))
        emit("callback_start", delivery_tag=tag)
        if mode == "threaded":
            threading.Thread(target=work_in_thread, args=(channel, tag), daemon=True).start()
            emit("callback_end", delivery_tag=tag)
            return
        time.sleep(p["work"])  # the blog's time.sleep(10): no I/O, no heartbeats while it runs
        emit("callback_end", delivery_tag=tag)
        finished_one(channel, tag)

    ch.basic_consume(queue=p["queue"], on_message_callback=on_message)
    emit("consuming", role="consumer", queue=p["queue"])
    if p.get("idle_first"):
        conn.sleep(p["idle_first"])  # services I/O: pika's heartbeats go out every T/2
        emit("idled", seconds=p["idle_first"])
    if wanted:
        publish(p, wanted)
    if mode == "idle":
        conn.sleep(p["work"])  # services I/O: heartbeats flow both ways
        emit("finished")
        hold(conn, "consumer")
    elif mode == "process-data-events":
        while not state["stop"]:
            conn.process_data_events(time_limit=1)
    else:
        ch.start_consuming()
    emit("finished")
    if p.get("hold"):
        hold(conn, "consumer")
    close(conn, "consumer")


def publisher_idle(p: dict) -> None:
    """Publish, then never service I/O again: no heartbeats leave, the runner kills us later."""
    conn = connect(p["url"], "publisher", p["heartbeat"])
    ch = conn.channel()
    declare(ch, p["queue"])
    for i in range(p["messages"]):
        ch.basic_publish(exchange="", routing_key=p["queue"], body=f"message {i + 1}".encode())
    emit("published", role="publisher", messages=p["messages"])
    emit("sleeping", seconds=None)
    while True:
        time.sleep(3600)


def consumer_timeout(p: dict) -> None:
    """Threaded worker (heartbeats stay alive) whose ack comes after the broker's consumer_timeout."""
    conn = connect(p["url"], "consumer", p["heartbeat"])
    ch = conn.channel()
    declare(ch, p["queue"])
    ch.basic_qos(prefetch_count=1)

    def ack_later(channel, tag):
        emit("work_start", delivery_tag=tag, thread="worker")
        time.sleep(p["work"])
        emit("work_end", delivery_tag=tag, thread="worker")

        def ack():
            if channel.is_open:
                channel.basic_ack(delivery_tag=tag)
                emit("ack", delivery_tag=tag)
                channel.stop_consuming()  # acked in time: the broker's timeout did not fire
            else:
                emit("ack_skipped", delivery_tag=tag, reason="channel closed")
        conn.add_callback_threadsafe(ack)

    def on_message(channel, method, _props, body):
        emit("message", delivery_tag=method.delivery_tag, bytes=len(body))
        emit("callback_start", delivery_tag=method.delivery_tag)
        threading.Thread(target=ack_later, args=(channel, method.delivery_tag), daemon=True).start()
        emit("callback_end", delivery_tag=method.delivery_tag)

    ch.basic_consume(queue=p["queue"], on_message_callback=on_message)
    emit("consuming", role="consumer", queue=p["queue"])
    publish(p, p["messages"])
    try:
        ch.start_consuming()
    except pika.exceptions.ChannelClosedByBroker as exc:
        log_exception(exc)
        conn.sleep(1.0)  # the connection survives a channel close: keep servicing it briefly
    emit("finished")
    close(conn, "consumer")


def wait_for(conn: pika.BlockingConnection, done, what: str, timeout: float = 30.0) -> None:
    """Service `conn`'s I/O (heartbeats, callbacks) in short slices until done() or the timeout."""
    deadline = time.time() + timeout
    while not done():
        if time.time() > deadline:
            raise TimeoutError(f"no {what} within {timeout:g} s")
        conn.sleep(0.05)


def every_method(p: dict) -> None:
    """Every method the analyzer's timeline reads, on one consumer connection (heartbeat T).

    Handshake, channel 1, queue, consumer; idle with heartbeats both ways; message 1 from the
    publisher connection delivered and acked; channel 2: passive declare of a missing queue, so
    the broker sends Channel.Close 404 (pika answers Close-Ok); the runner raises the broker's
    memory alarm, message 2 is published on this connection, the broker sends Connection.Blocked,
    then Connection.Unblocked once the runner clears the alarm; message 2 is delivered and acked;
    the publisher connection deletes the queue, so the broker sends Basic.Cancel to the consumer;
    both connections close normally.
    """
    conn = connect(p["url"], "consumer", p["heartbeat"])
    state = {"acked": 0, "blocked": False, "unblocked": False, "cancelled": False}

    def on_blocked(_conn, frame):
        state["blocked"] = True
        emit("blocked", role="consumer", reason=frame.method.reason)

    def on_unblocked(_conn, _frame):
        state["unblocked"] = True
        emit("unblocked", role="consumer")

    conn.add_on_connection_blocked_callback(on_blocked)
    conn.add_on_connection_unblocked_callback(on_unblocked)
    ch = conn.channel()
    declare(ch, p["queue"])
    ch.basic_qos(prefetch_count=1)

    def on_message(channel, method, _props, body):
        emit("message", delivery_tag=method.delivery_tag, bytes=len(body))
        channel.basic_ack(delivery_tag=method.delivery_tag)
        emit("ack", delivery_tag=method.delivery_tag)
        state["acked"] += 1

    def on_cancel(frame):
        state["cancelled"] = True
        emit("consumer_cancelled", by="broker", consumer_tag=frame.method.consumer_tag)

    ch.add_on_cancel_callback(on_cancel)
    ch.basic_consume(queue=p["queue"], on_message_callback=on_message)
    emit("consuming", role="consumer", queue=p["queue"])
    conn.sleep(p["idle_first"])  # services I/O: heartbeats both ways every T/2
    emit("idled", seconds=p["idle_first"])

    # Message 1: publisher connection -> queue -> this consumer; acked.
    pub = connect(p["publish_url"], "publisher", None)
    pch = pub.channel()
    pch.basic_publish(exchange="", routing_key=p["queue"], body=b"message 1 of 2")
    emit("published", role="publisher", messages=1)
    wait_for(conn, lambda: state["acked"] >= 1, "delivery and ack of message 1")

    # Channel.Close 404 NOT_FOUND from the broker on a second channel.
    ch2 = conn.channel()
    try:
        ch2.queue_declare(queue=p["queue"] + "-missing", passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        log_exception(exc)
    else:
        raise RuntimeError("passive declare of a missing queue did not close the channel")

    # Connection.Blocked / Unblocked: the runner raises the memory alarm, this connection publishes.
    emit("alarm_wanted")
    wait_for(conn, lambda: os.path.exists(p["runner_signal"]), "memory alarm from the runner")
    ch.basic_publish(exchange="", routing_key=p["queue"], body=b"message 2 of 2")
    emit("published", role="consumer", messages=1)
    wait_for(conn, lambda: state["blocked"], "Connection.Blocked", timeout=10)
    wait_for(conn, lambda: state["unblocked"], "Connection.Unblocked")
    wait_for(conn, lambda: state["acked"] >= 2, "delivery and ack of message 2")

    # Basic.Cancel from the broker: another connection deletes the queue being consumed.
    pch.queue_delete(queue=p["queue"])
    emit("queue_deleted", role="publisher", queue=p["queue"])
    wait_for(conn, lambda: state["cancelled"], "Basic.Cancel from the broker", timeout=10)
    close(pub, "publisher")
    emit("finished")
    close(conn, "consumer")


def blocked_connection_timeout(p: dict) -> None:
    """A publisher with blocked_connection_timeout=`work` s is blocked by the memory alarm and gives up.

    The runner raises the broker's memory alarm (as in every-method) and keeps it up until this
    program has logged its exception. The publish draws Connection.Blocked; the broker stops reading
    this socket. pika starts a `work` s timer on Blocked (connection.py _on_connection_blocked), and
    when it fires _on_blocked_connection_timeout tears the stream down without Connection.Close
    (_terminate_stream: shutdown and close of the socket) and the BlockingConnection raises
    ConnectionBlockedTimeout from the call servicing its I/O.
    """
    timeout = p["work"]
    conn = connect(p["url"], "publisher", p["heartbeat"], blocked_timeout=timeout)
    state: dict = {}

    def on_blocked(_conn, frame):
        state["blocked"] = time.time()
        emit("blocked", role="publisher", reason=frame.method.reason, blocked_connection_timeout=timeout)

    def on_unblocked(_conn, _frame):
        emit("unblocked", role="publisher")

    conn.add_on_connection_blocked_callback(on_blocked)
    conn.add_on_connection_unblocked_callback(on_unblocked)
    ch = conn.channel()
    declare(ch, p["queue"])
    emit("alarm_wanted")
    wait_for(conn, lambda: os.path.exists(p["runner_signal"]), "memory alarm from the runner")
    ch.basic_publish(exchange="", routing_key=p["queue"], body=b"message 1 of 1")
    emit("published", role="publisher", messages=1)
    wait_for(conn, lambda: "blocked" in state, "Connection.Blocked", timeout=10)
    # Servicing I/O (heartbeats both ways) until pika's timer fires and raises out of conn.sleep.
    wait_for(conn, lambda: False, "ConnectionBlockedTimeout", timeout=timeout + 10)


def network_fault(p: dict) -> None:
    """A consumer (heartbeat T, 0 disables) that services I/O until its connection breaks (the fault
    scenarios: the runner cuts the path or a middlebox kills the flow meanwhile).

    publish_after: seconds after consuming at which it publishes one message on its own connection
    (the next packet through a middlebox that forgot the flow); close_on_signal: close normally once the
    runner creates the file runner_signal instead (a path that only loses packets, once it has lost
    some); serve_for: the longest it waits for the connection to break or the signal (then
    TimeoutError: the fault never bit).
    """
    conn = connect(p["url"], "consumer", p["heartbeat"])
    ch = conn.channel()
    declare(ch, p["queue"])

    def on_message(channel, method, _props, body):
        emit("message", delivery_tag=method.delivery_tag, bytes=len(body))
        channel.basic_ack(delivery_tag=method.delivery_tag)
        emit("ack", delivery_tag=method.delivery_tag)

    ch.basic_consume(queue=p["queue"], on_message_callback=on_message)
    emit("consuming", role="consumer", queue=p["queue"])
    if p.get("publish_after") is not None:
        conn.sleep(p["publish_after"])  # services I/O: heartbeats (if any) go on
        emit("publishing", role="consumer", messages=1)
        ch.basic_publish(exchange="", routing_key=p["queue"], body=b"message 1 of 1")
        emit("published", role="consumer", messages=1)
    if p.get("close_on_signal"):
        wait_for(conn, lambda: os.path.exists(p["runner_signal"]), "the runner's signal to close", p["serve_for"])
        emit("finished")
        close(conn, "consumer")
        return
    if p.get("trickle_every"):
        trickle(conn, ch, p)
    wait_for(conn, lambda: False, "end of the connection", timeout=p["serve_for"])


def trickle(conn: pika.BlockingConnection, ch, p: dict) -> None:
    """From trickle_from s on, for trickle_for s, publish a 1-byte unroutable message every
    trickle_every s (no reply from the broker: pika's heartbeat checker still hears only the broker's
    heartbeats)."""
    conn.sleep(p["trickle_from"])
    emit("trickle_started", every=p["trickle_every"])
    until = time.time() + p["trickle_for"]
    while time.time() < until:
        ch.basic_publish(exchange="", routing_key="amqphb-nowhere", body=b"t")
        conn.sleep(p["trickle_every"])
    emit("trickle_stopped")


SCENARIOS: dict[str, Callable[[dict[str, Any]], None]] = {
    "idle": functools.partial(consumer, mode="idle"),
    "blocked-callback": functools.partial(consumer, mode="blocking"),
    "long-heartbeat": functools.partial(consumer, mode="blocking"),
    "heartbeat-disabled": functools.partial(consumer, mode="blocking"),
    "threaded-worker": functools.partial(consumer, mode="threaded"),
    "process-data-events": functools.partial(consumer, mode="process-data-events"),
    "publisher-idle": publisher_idle,
    "broker-paused": functools.partial(consumer, mode="blocking"),
    "consumer-timeout": consumer_timeout,
    "proxy": functools.partial(consumer, mode="blocking"),
    "every-method": every_method,
    "blocked-connection-timeout": blocked_connection_timeout,
    "partition": network_fault,
    "idle-timeout-middlebox": network_fault,
    "idle-timeout-middlebox-silent": network_fault,
    "lossy-path": network_fault,
}


def main(argv: list[str]) -> int:
    return run_program(argv, SCENARIOS, LIBRARY, pika.__version__, pika=pika.__version__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
