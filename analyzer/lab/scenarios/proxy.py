"""A small TCP forwarder for the proxy scenario (edge: sockets): client -> proxy port -> broker.

Strategy: one accept thread, two pump threads per connection, plain blocking sockets. Like most
TCP proxies (HAProxy in tcp mode, socat) it does not propagate a reset: when the broker's side
resets or ends, the proxy shuts down its client-side socket normally, so the client sees a FIN
where the broker sent an RST. Every accept, upstream connect and close is reported through
`on_event(event, **fields)` with both legs' connection ids.
"""
from __future__ import annotations

import contextlib
import socket
import threading

from analyzer.lab.broker import free_port

BUFFER = 65536


def _endpoint(addr) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


class TcpProxy:
    """`with TcpProxy("127.0.0.1", 5672, on_event=log) as proxy:` then connect to proxy.port."""

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1",
                 port: int | None = None, on_event=None):
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        # 5673 when free: one above AMQP's port, as an operator might pick for a local forwarder.
        self.port = port or free_port(upstream_port + 1, host)
        self.on_event = on_event or (lambda event, **fields: None)
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()

    def __enter__(self) -> TcpProxy:
        self._listener = socket.create_server((self.host, self.port))
        t = threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True)
        t.start()
        self._threads.append(t)
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
            for src, dst, name in ((client, upstream, "client"), (upstream, client, "upstream")):
                t = threading.Thread(target=self._pump, args=(src, dst, name, legs), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, name: str, legs: dict) -> None:
        """Copy src -> dst until src ends; then end dst's sending side with a FIN."""
        how = "eof"
        try:
            while True:
                data = src.recv(BUFFER)
                if not data:
                    break
                dst.sendall(data)
        except ConnectionResetError:
            how = "reset"
        except OSError as exc:
            how = f"error: {exc}"
        if self._closing.is_set():
            return
        self.on_event("proxy_side_closed", side=name, how=how, connection=legs[name])
        # A FIN to the other side, never an RST. After an error src is dead: SHUT_RDWR also wakes the
        # pump blocked reading dst, so both threads end.
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR if how == "eof" else socket.SHUT_RDWR)
