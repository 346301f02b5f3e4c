"""What every Python scenario client program shares (edge): the JSON-lines event log, socket ids,
exceptions, the queue's arguments and the program's main.

A client program (client.py for pika, client_pyamqp.py, client_aiopika.py) runs as
`python -m analyzer.lab.scenarios.<module> NAME PARAMS_JSON`, in its own process so that a client
blocked in a callback can be killed and its log survives it. Every event is one JSON object per
line, flushed at once, with an epoch timestamp `t` (client_amqplib.js writes the same lines). No
client library is imported here: each program imports its own.

TLS runs: PARAMS_JSON's `tls` ({ca, version, keylog, server_hostname}) says how every connection of
the program speaks TLS; run_program keeps it in TLS, `tls_context` turns it into the SSLContext the
program hands its library, and `tls_facts` reads what was negotiated for the `connected` event.
"""
from __future__ import annotations

import json
import os
import socket
import ssl
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from analyzer.lab import certs

LOCK = threading.Lock()
LOG: TextIO | None = None  # the open event log (run_program opens it)
# The run's TLS settings (PARAMS_JSON's `tls`: ca, version, keylog, server_hostname); None: plaintext.
TLS: dict[str, Any] | None = None

# x-expires: the broker deletes a queue 60 s after its last use, so runs leave nothing behind.
QUEUE_ARGUMENTS = {"x-expires": 60000}


def emit(event: str, **fields: Any) -> None:
    record = {"t": time.time(), "source": "client", "event": event, **fields}
    line = json.dumps(record, default=str)
    assert LOG is not None, "run_program() opens the event log first"
    with LOCK:
        LOG.write(line + "\n")
        LOG.flush()


def endpoint(addr: tuple[Any, ...]) -> str:
    ip, port = addr[0], addr[1]
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def socket_id(sock: socket.socket) -> tuple[str, str, str]:
    """(id `LOCAL:PORT->REMOTE:PORT`, local, remote) of a connected socket."""
    local, remote = endpoint(sock.getsockname()), endpoint(sock.getpeername())
    return f"{local}->{remote}", local, remote


def tls_context() -> ssl.SSLContext | None:
    """The client SSLContext of a TLS run (test CA, pinned version, key log), None for plaintext."""
    if TLS is None:
        return None
    return certs.client_context(TLS["ca"], TLS.get("version"), TLS.get("keylog"))


def tls_facts(sock: Any) -> dict[str, object] | None:
    """Version and cipher of a TLS socket or SSLObject (for the `connected` event), None for plain TCP."""
    if isinstance(sock, ssl.SSLSocket | ssl.SSLObject):
        return certs.session_facts(sock)
    return None


def declare(channel: Any, queue: str) -> None:
    """queue.declare with the same arguments from pika and py-amqp (same keywords; py-amqp's
    auto_delete defaults to True, pika's to False: spelled out, so both declare the same queue)."""
    channel.queue_declare(queue=queue, durable=False, exclusive=False, auto_delete=False,
                          arguments=QUEUE_ARGUMENTS)


def log_exception(exc: BaseException) -> None:
    cause = exc.__cause__ or exc.__context__
    emit("exception", type=f"{type(exc).__module__}.{type(exc).__qualname__}", name=type(exc).__name__,
         text=str(exc), cause=repr(cause) if cause else None,
         where=traceback.extract_tb(exc.__traceback__)[-1].name if exc.__traceback__ else None)


def run_program(argv: list[str], scenarios: Mapping[str, Callable[[dict[str, Any]], None]], library: str,
                version: str, **versions: str) -> int:
    """The main of a client program: open the log, say who runs, run scenario argv[0], log how it ended.

    library/version: the client library under test (`start` carries them); versions: other
    libraries the program runs (e.g. pika for a publisher connection).
    """
    global LOG, TLS
    name, params = argv[0], json.loads(argv[1])
    TLS = params.get("tls")
    LOG = open(params["events"], "a", encoding="utf-8")  # noqa: SIM115 (open for the process's life; emit writes)
    emit("start", scenario=name, pid=os.getpid(), library=library, version=version,
         python=sys.version.split()[0], **versions)
    try:
        scenarios[name](params)
    except Exception as exc:  # noqa: BLE001 (the point of most scenarios: record which exception the client raised)
        log_exception(exc)
        emit("exit", status=1)
        return 1
    emit("exit", status=0)
    return 0
