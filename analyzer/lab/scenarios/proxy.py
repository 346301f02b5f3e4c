"""A small TCP forwarder for the proxy scenario (edge: sockets): client -> proxy port -> broker.

Strategy: one accept thread, two pump threads per connection, plain blocking sockets. Like most
TCP proxies (HAProxy in tcp mode, socat) it does not propagate a reset: when the broker's side
resets or ends, the proxy shuts down its client-side socket normally, so the client sees a FIN
where the broker sent an RST. Every accept, upstream connect and close is reported through
`on_event(event, **fields)` with both legs' connection ids.

With `idle_timeout` N it is also an idle-timeout middlebox (a load balancer's or firewall's idle
timer): a watchdog resets both legs (SO_LINGER 0: an RST on each, in the same millisecond) once no
byte went either way for N seconds, and reports `middlebox_idle_reset` with the last byte's time.
Run as `python -m analyzer.lab.scenarios.proxy LISTEN_HOST:PORT UPSTREAM_HOST:PORT EVENTS [N]` (the
fault scenarios start it inside the middle network namespace), it appends its events to EVENTS as
JSON lines (source `middlebox`) and runs until SIGTERM.
"""
from __future__ import annotations

import contextlib
import json
import signal
import socket
import struct
import sys
import threading
import time

from analyzer.lab.broker import free_port

BUFFER = 65536
WATCHDOG_TICK = 0.01  # how often the idle timer looks: the reset comes within 10 ms of N s of silence
LINGER_ZERO = struct.pack("ii", 1, 0)  # struct linger {l_onoff=1, l_linger=0}: close() sends an RST


def _endpoint(addr) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


class TcpProxy:
    """`with TcpProxy("127.0.0.1", 5672, on_event=log) as proxy:` then connect to proxy.port."""

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1",
                 port: int | None = None, on_event=None, idle_timeout: float | None = None):
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        # 5673 when free: one above AMQP's port, as an operator might pick for a local forwarder.
        self.port = port or free_port(upstream_port + 1, host)
        self.on_event = on_event or (lambda event, **fields: None)
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()
        self.idle_timeout = idle_timeout
        # Per forwarded connection: [client socket, upstream socket, last byte's time, legs, reset yet?]
        self._pairs: list[list] = []
        self._lock = threading.Lock()

    def __enter__(self) -> TcpProxy:
        self._listener = socket.create_server((self.host, self.port))
        t = threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True)
        t.start()
        self._threads.append(t)
        if self.idle_timeout is not None:
            w = threading.Thread(target=self._watchdog, name="proxy-idle-timer", daemon=True)
            w.start()
            self._threads.append(w)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closing.set()
        for s in [self._listener, *self._sockets]:
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()
        for t in self._threads:
            t.join(2)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closing.is_set():
            try:
                client, addr = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError as exc:
                self.on_event("proxy_upstream_failed", error=repr(exc))
                client.close()
                continue
            self._sockets += [client, upstream]
            client_leg = f"{_endpoint(addr)}->{_endpoint(client.getsockname())}"
            upstream_leg = f"{_endpoint(upstream.getsockname())}->{_endpoint(upstream.getpeername())}"
            self.on_event("proxy_accept", connection=client_leg, upstream=upstream_leg)
            legs = {"client": client_leg, "upstream": upstream_leg}
            pair = [client, upstream, time.time(), legs, False]
            with self._lock:
                self._pairs.append(pair)
            for src, dst, name in ((client, upstream, "client"), (upstream, client, "upstream")):
                t = threading.Thread(target=self._pump, args=(src, dst, name, legs, pair), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, name: str, legs: dict, pair: list) -> None:
        """Copy src -> dst until src ends; then end dst's sending side with a FIN."""
        how = "eof"
        try:
            while True:
                data = src.recv(BUFFER)
                if not data:
                    break
                with self._lock:
                    pair[2] = time.time()
                dst.sendall(data)
        except ConnectionResetError:
            how = "reset"
        except OSError as exc:
            how = f"error: {exc}"
        if self._closing.is_set() or pair[4]:
            return  # stopped, or the idle timer reset both legs (reported there)
        self.on_event("proxy_side_closed", side=name, how=how, connection=legs[name])
        # A FIN to the other side, never an RST. After an error src is dead: SHUT_RDWR also wakes the
        # pump blocked reading dst, so both threads end.
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR if how == "eof" else socket.SHUT_RDWR)

    def _watchdog(self) -> None:
        """Reset both legs of every connection idle for idle_timeout seconds (no byte either way)."""
        assert self.idle_timeout is not None
        while not self._closing.wait(WATCHDOG_TICK):
            now = time.time()
            with self._lock:
                expired = [p for p in self._pairs if not p[4] and now - p[2] >= self.idle_timeout]
                for pair in expired:
                    pair[4] = True
                    self._pairs.remove(pair)
            for client, upstream, last, legs, _ in expired:
                for sock in (client, upstream):
                    # The pump blocked in recv() holds the socket: close() alone would release it (and send
                    # the RST) only once that recv returns. SHUT_RD sends nothing and wakes it with EOF.
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
                        sock.shutdown(socket.SHUT_RD)
                    with contextlib.suppress(OSError):
                        sock.close()
                self.on_event("middlebox_idle_reset", reset_at=now, last_byte_at=last,
                              idle_for=round(now - last, 6), idle_timeout=self.idle_timeout, how="rst both legs",
                              connection=legs["client"], upstream=legs["upstream"])


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def main(argv: list[str]) -> int:
    """LISTEN UPSTREAM EVENTS [IDLE_TIMEOUT]: forward until SIGTERM, events appended to EVENTS as JSON lines."""
    (listen_host, listen_port), upstream = _address(argv[0]), _address(argv[1])
    idle = float(argv[3]) if len(argv) > 3 else None
    lock = threading.Lock()
    with open(argv[2], "a", encoding="utf-8") as log:

        def emit(event: str, **fields) -> None:
            with lock:
                log.write(json.dumps({"t": time.time(), "source": "middlebox", "event": event, **fields}) + "\n")
                log.flush()

        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with TcpProxy(*upstream, host=listen_host, port=listen_port, on_event=emit, idle_timeout=idle):
            emit("middlebox_listening", listen=argv[0], upstream=argv[1], idle_timeout=idle)
            while not stop.wait(0.2):
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
