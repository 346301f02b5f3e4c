"""The scripted aio-pika programs (edge): an asyncio consumer on aio-pika, aiormq underneath.

Run as `python -m analyzer.lab.scenarios.client_aiopika NAME PARAMS_JSON` (program.py: event log, main).

The heartbeat timeout comes from the URL (`?heartbeat=T`, aiormq's default is 60). aiormq sends a
heartbeat frame every max(1, T // 2) s from a task on the event loop (aiormq/connection.py
`__heartbeat`), whatever else was sent. A consume callback is a coroutine on the same loop: one that
blocks synchronously (time.sleep) stops the loop, so no heartbeat leaves and nothing reads the
socket; one that awaits its work (`await asyncio.to_thread(...)`) leaves the loop running.

The publisher is a short pika connection (client.publish, in a thread so the loop keeps running);
the metadata names each connection's library. In a TLS run (amqps:// URLs) aio_pika.connect gets
program.tls_context() as its ssl_context (aiormq verifies the broker's certificate for the URL's
host, 127.0.0.1 or ::1, both in the test certificate).
"""
from __future__ import annotations

import asyncio
import importlib.metadata
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import aio_pika
import aiormq
import pika
from aio_pika.abc import AbstractIncomingMessage
from pamqp import commands
from pamqp.common import FieldTable

from analyzer.lab.scenarios.client import publish
from analyzer.lab.scenarios.program import QUEUE_ARGUMENTS, emit, run_program, socket_id, tls_context, tls_facts

LIBRARY = "aio-pika"
AIORMQ = importlib.metadata.version("aiormq")
SETTLE = 0.1  # s after the last ack; the reader saw the broker's reset about 1 ms after the ack here


class Handshake:
    """What aiormq keeps from a handshake is not enough for the event log: the socket and the broker's
    Connection.Tune proposal are seen here, in aiormq.Connection._rpc (a private staticmethod every
    handshake step goes through), wrapped once per process. A version without it logs "unknown"."""

    seen: dict[str, Any] = {}  # noqa: RUF012 (one process, one handshake at a time: the latest one)
    _rpc: Any = None

    @classmethod
    def install(cls) -> None:
        rpc = getattr(aiormq.Connection, "_rpc", None)
        if rpc is None or cls._rpc is not None:
            return
        cls._rpc = rpc

        async def recording_rpc(request: Any, writer: asyncio.StreamWriter, *args: Any, **kwargs: Any) -> Any:
            cls.seen["socket"] = writer.get_extra_info("socket")
            cls.seen["ssl_object"] = writer.get_extra_info("ssl_object")  # None over plain TCP
            frame = await rpc(request, writer, *args, **kwargs)
            if isinstance(frame, commands.Connection.Tune):
                cls.seen["server_heartbeat"] = frame.heartbeat  # before aiormq overwrites it with its own
            return frame

        setattr(aiormq.Connection, "_rpc", staticmethod(recording_rpc))  # noqa: B010 (mypy: no method assignment)


async def connect(url: str, role: str, heartbeat: int) -> aio_pika.abc.AbstractConnection:
    """aio_pika.connect with `?heartbeat=T` in the URL; log `connected` with the Tune values."""
    Handshake.install()
    Handshake.seen.clear()
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.urlencode([*urllib.parse.parse_qsl(parts.query), ("heartbeat", str(heartbeat))])
    conn = await aio_pika.connect(urllib.parse.urlunsplit(parts._replace(query=query)), ssl_context=tls_context())
    try:
        cid, local, remote = socket_id(Handshake.seen["socket"])
    except (KeyError, OSError):
        cid, local, remote = "unknown", "", ""
    transport = conn.transport.connection if conn.transport else None
    tls = tls_facts(Handshake.seen.get("ssl_object"))
    emit("connected", role=role, connection=cid, local=local, remote=remote, library=LIBRARY,
         library_version=aio_pika.__version__, aiormq=AIORMQ, server_heartbeat=Handshake.seen.get("server_heartbeat"),
         heartbeat=getattr(transport, "heartbeat_timeout", heartbeat), **({"tls": tls} if tls else {}))
    return conn


async def consumer(p: dict[str, Any], healthy: bool) -> None:
    """Consume `messages` messages with `work` seconds of work each, then close the connection.

    blocked (healthy=False): the callback runs time.sleep(work) on the event loop. healthy: it
    awaits asyncio.to_thread(time.sleep, work). The run ends when every message is acked (then
    connection.close()), or raises what ended it first: the callback's exception or the one
    aio-pika closed the connection with.
    """
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def end(exc: BaseException | None) -> None:
        if ended.done():
            return
        if exc is None:
            ended.set_result(None)
        else:
            ended.set_exception(exc)

    conn = await connect(p["url"], "consumer", p["heartbeat"])
    conn.close_callbacks.add(lambda _conn, exc=None: end(exc or ConnectionError("connection closed")))
    ch = await conn.channel()
    await ch.set_qos(prefetch_count=1)
    arguments: FieldTable = dict(QUEUE_ARGUMENTS)
    queue = await ch.declare_queue(p["queue"], auto_delete=False, arguments=arguments)
    acked = 0

    async def on_message(message: AbstractIncomingMessage) -> None:
        nonlocal acked
        tag = message.delivery_tag
        emit("message", delivery_tag=tag, bytes=len(message.body))
        emit("callback_start", delivery_tag=tag)
        try:
            if healthy:
                await asyncio.to_thread(time.sleep, p["work"])  # the loop runs on: heartbeats, reads
            else:
                time.sleep(p["work"])  # blocks the event loop: no heartbeat task, no reader
            emit("callback_end", delivery_tag=tag)
            await message.ack()
        except Exception as exc:  # noqa: BLE001 (aio-pika would only log it: the run records and ends with it)
            end(exc)
            return
        emit("ack", delivery_tag=tag)
        acked += 1
        if acked >= p["messages"]:
            # A reset the ack's write met surfaces through aiormq's reader on a later turn of the loop
            # (over TLS only after the write went out): give it that turn before calling the run done.
            await asyncio.sleep(SETTLE)
            end(None)

    await queue.consume(on_message)
    emit("consuming", role="consumer", queue=p["queue"])
    if p.get("idle_first"):
        await asyncio.sleep(p["idle_first"])
        emit("idled", seconds=p["idle_first"])
    if p["messages"]:
        await asyncio.to_thread(publish, p, p["messages"])
    else:
        end(None)
    await ended
    emit("finished")
    await conn.close()  # aiormq: Connection.Close 200 "normally closed"
    emit("closed", role="consumer", how="connection.close")


SCENARIOS: dict[str, Callable[[dict[str, Any]], None]] = {
    "aio-pika-blocked-handler": lambda p: asyncio.run(consumer(p, healthy=False)),
    "aio-pika-healthy": lambda p: asyncio.run(consumer(p, healthy=True)),
}


def main(argv: list[str]) -> int:
    return run_program(argv, SCENARIOS, LIBRARY, aio_pika.__version__, aiormq=AIORMQ, pika=pika.__version__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
