"""The scenario catalog: what each scripted run does, its default timings and its ground truth.

Pure data, no I/O. The runner (runner.py) orchestrates a run from these entries; each client
library's program holds its code (client.py for pika, client_pyamqp.py, client_aiopika.py,
client_amqplib.js). Defaults reproduce the blog in ../shared/seed/ (heartbeat T=3, a 10 s
callback); timing facts are from /work/shared/heartbeat-model.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# The verdict strings `amqp-hb analyze` uses.
MISSED_CLIENT = "missed-client-heartbeats"  # broker tore it down: the client was silent
MISSED_SERVER = "missed-server-heartbeats"  # client tore it down: the broker was silent
GRACEFUL = "graceful"
CLOSED_WITH_ERROR = "closed-with-error"
RESET = "reset"
OPEN = "open"
UNKNOWN = "unknown"
VERDICTS = (MISSED_CLIENT, MISSED_SERVER, GRACEFUL, CLOSED_WITH_ERROR, RESET, OPEN, UNKNOWN)

# Connection roles a run logs; "upstream" is the proxy's own connection to the broker.
CONSUMER, PUBLISHER, UPSTREAM = "consumer", "publisher", "upstream"

# The client libraries a scenario can run (the `library` of each connection in the metadata).
PIKA, PY_AMQP, AIO_PIKA, AMQPLIB = "pika", "py-amqp", "aio-pika", "amqplib"
CLIENTS = (PIKA, PY_AMQP, AIO_PIKA, AMQPLIB)

# Why a connection is expected to end as it does, when its verdict alone does not say it.
BLOCKED_CONNECTION_TIMEOUT = "blocked-connection-timeout"  # pika gave up waiting for Connection.Unblocked
NETWORK_PARTITION = "network-partition"  # the path was cut silently both ways; neither side's teardown crossed
MIDDLEBOX_IDLE_TIMEOUT = "middlebox-idle-timeout"  # a box in between killed or forgot a flow idle for N s

# The network fault scenarios (faults.py: network namespaces, two captures) and what the fault is.
PARTITION = "partition"  # blackhole routes in the middle namespace, both ways, never restored
IDLE_RESET = "idle-reset"  # a TCP forwarder in the middle resets both legs after N s without a byte
IDLE_FORGET = "idle-forget"  # a conntrack router forgets the flow after N s; the next packet draws its RST
LOSS = "loss"  # random loss both ways in the middle (nftables numgen: netem is not in this kernel)
# The two captures of a fault run: tcpdump in the client's namespace and in the broker's.
CLIENT_SIDE, BROKER_SIDE = "client", "broker"
SIDES = (CLIENT_SIDE, BROKER_SIDE)


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str  # one line for `scenario list`
    heartbeat: int  # T requested by the client (0 disables)
    work: float  # seconds of work per message (meaning per scenario: see work_means)
    messages: int
    verdicts: dict  # role -> expected verdict
    exception: str | None  # class name the client is expected to raise, if any
    work_means: str = "seconds of work per message"
    # `rabbit` application settings the broker needs (rabbitmq.conf/advanced.config or runtime).
    broker_settings: dict = field(default_factory=dict)
    needs_local_broker: bool = False  # pauses or reconfigures the broker
    proxy: bool = False
    hold: bool = False  # the capture stops while the connection is still open
    # The consumer idles (heartbeats both ways) before the message is published, as in the blog:
    # the client's last byte before the callback is then a heartbeat, as in the blog's capture.
    idle_first: bool = False
    # The runner raises the broker's memory alarm when the client asks (event `alarm_wanted`) and
    # clears it `work` seconds after the client saw Connection.Blocked ...
    memory_alarm: bool = False
    # ... or, when set, once the client has logged this event (the client's own timer must fire first).
    alarm_cleared_after: str | None = None
    # The library the scenario's client program runs (its consumer or only connection; the metadata
    # names each connection's library: the Python programs publish through pika).
    client: str = PIKA
    expected_causes: dict = field(default_factory=dict)  # role -> why it ends so (BLOCKED_CONNECTION_TIMEOUT)
    # The exception over TLS, where it differs: the broker's close_notify precedes its RST, so a client
    # writing next can meet the TLS layer's error instead of the socket's (py-amqp: SSLEOFError).
    tls_exception: str | None = None
    # Network fault scenarios: the fault (PARTITION, ...), and per capture side the role -> verdict
    # expected for the connections that capture holds (`verdicts` is the client side's).
    fault: str | None = None
    side_verdicts: dict = field(default_factory=dict)
    loss_percent: int = 0  # LOSS: packets dropped at random in each direction, percent

    def expected_exception(self, tls: bool) -> str | None:
        return self.tls_exception if tls and self.tls_exception else self.exception

    def describe(self) -> str:
        params = f"heartbeat={self.heartbeat} work={self.work:g} ({self.work_means}) messages={self.messages}"
        extra = "".join(f" {k}={v}" for k, v in self.broker_settings.items())
        return f"{self.summary}\n    {params}{extra}"


def _both(consumer: str) -> dict:
    return {CONSUMER: consumer, PUBLISHER: GRACEFUL}


# The other client libraries (the Python programs publish through a short pika connection, amqplib
# through a second amqplib connection): `client`-blocked-handler is the blog's blocked handler,
# `client`-healthy the same kind of work done without blocking the I/O loop. A row: client, what
# its blocked handler does, the exception it then raises (plaintext, and over TLS where it differs),
# what its healthy run does, where that run's work goes.
OTHER_CLIENTS = [
    (PY_AMQP, "consumer in kombu's drain_events/heartbeat_tick loop: a 10 s time.sleep in the handler with T=3 "
     "stops the ticks", ("ConnectionResetError", "SSLEOFError"),
     "consumer: the handler hands 8 s of work to a thread, the loop keeps ticking (heartbeats flow); "
     "connection.close() sends reply code 0", "in a thread"),
    (AIO_PIKA, "consumer (?heartbeat=3): an async callback blocking in time.sleep(10) stops the event loop and "
     "aiormq's heartbeat task", ("AMQPConnectionError", None),
     "consumer: the callback awaits asyncio.to_thread(time.sleep, 8); aiormq's heartbeats flow; normal close",
     "awaited in a thread"),
    (AMQPLIB, "(Node.js) consumer with heartbeat: 3: the consume callback blocks synchronously (Atomics.wait) "
     "for 10 s: no timers, no heartbeats", ("ECONNRESET", None),
     "(Node.js) consumer: the callback awaits a timer for 8 s; amqplib's heartbeats flow; normal close",
     "awaited (setTimeout)"),
]


def _blocked_handler(client: str, summary: str, exceptions: tuple[str, str | None]) -> Scenario:
    """`client`-blocked-handler: the blog's run (T=3, idle first, a 10 s handler) in another library."""
    return Scenario(f"{client}-blocked-handler", f"{client} {summary}: broker RST", heartbeat=3, work=10,
                    messages=1, verdicts=_both(MISSED_CLIENT), exception=exceptions[0], idle_first=True, client=client,
                    tls_exception=exceptions[1])


def _healthy(client: str, summary: str, work_means: str) -> Scenario:
    """`client`-healthy: 8 s of work (more than 2.5T) off the I/O loop; heartbeats flow, normal close."""
    return Scenario(f"{client}-healthy", f"{client} {summary}", heartbeat=3, work=8, messages=1,
                    verdicts=_both(GRACEFUL), exception=None, work_means=f"seconds of work per message, {work_means}",
                    client=client)


def _fault(fault: str, summary: str, *, heartbeat: int, work: float, work_means: str, sides: tuple[dict, dict],
           exception: str | None, cause: str | None, name: str | None = None, loss: int = 0) -> Scenario:
    """A network fault scenario: one pika consumer through the middle namespace; sides: the (client
    capture's, broker capture's) expected verdicts by role."""
    client, broker = sides
    causes = {role: cause for role in {*client, *broker}} if cause else {}
    return Scenario(name or fault, summary, heartbeat=heartbeat, work=work, messages=0, verdicts=client,
                    exception=exception, work_means=work_means, needs_local_broker=True, fault=fault,
                    side_verdicts={CLIENT_SIDE: client, BROKER_SIDE: broker}, expected_causes=causes,
                    loss_percent=loss)


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("idle", "a consumer waits with heartbeat T; heartbeats flow both ways (the blog's first capture)",
             heartbeat=3, work=10, messages=0, verdicts={CONSUMER: OPEN}, exception=None,
             work_means="seconds of idling recorded", hold=True),
    Scenario("blocked-callback", "a 10 s time.sleep in the callback with T=3: broker RST, pika StreamLostError",
             heartbeat=3, work=10, messages=1, verdicts=_both(MISSED_CLIENT), exception="StreamLostError",
             idle_first=True),
    Scenario("long-heartbeat", "remedy 1: the same 10 s callback survives with heartbeat=60",
             heartbeat=60, work=10, messages=1, verdicts=_both(GRACEFUL), exception=None),
    Scenario("heartbeat-disabled", "remedy 2: heartbeat=0 disables both sides' timers; the callback survives",
             heartbeat=0, work=10, messages=1, verdicts=_both(GRACEFUL), exception=None),
    Scenario("threaded-worker", "remedy 3: work in a thread, ack via add_callback_threadsafe; heartbeats continue",
             heartbeat=3, work=10, messages=1, verdicts=_both(GRACEFUL), exception=None, idle_first=True),
    Scenario("process-data-events", "a process_data_events() loop still dies when the callback itself blocks",
             heartbeat=3, work=10, messages=1, verdicts=_both(MISSED_CLIENT), exception="StreamLostError",
             idle_first=True),
    Scenario("publisher-idle", "a publish-only BlockingConnection never services I/O: broker RST, then killed",
             heartbeat=3, work=10, messages=1, verdicts={PUBLISHER: MISSED_CLIENT}, exception=None,
             work_means="seconds before the client is killed (at least 3T+1.5)"),
    Scenario("broker-paused", "the broker is frozen (SIGSTOP) past pika's window: AMQPHeartbeatTimeout, client FIN",
             heartbeat=3, work=0, messages=0, verdicts={CONSUMER: MISSED_SERVER}, exception="AMQPHeartbeatTimeout",
             work_means="longest pause in seconds (0: 2(T+5)+2, pika's worst case plus margin)",
             needs_local_broker=True),
    Scenario("consumer-timeout", "a threaded worker acks after consumer_timeout: Channel.Close 406, connection lives",
             heartbeat=3, work=10, messages=1, verdicts=_both(GRACEFUL), exception="ChannelClosedByBroker",
             work_means="seconds of work per message; the broker's consumer_timeout is half of it",
             # channel_tick_interval: the timeout is checked on this tick (60 s by default), so 1 s
             # makes it fire within timeout..timeout+1 s. consumer_timeout is derived from work.
             broker_settings={"consumer_timeout": 5000, "channel_tick_interval": 1000},
             needs_local_broker=True),
    Scenario("proxy", "blocked-callback through a TCP forwarder: the broker's RST reaches the client as a FIN",
             heartbeat=3, work=10, messages=1,
             verdicts={CONSUMER: MISSED_CLIENT, UPSTREAM: MISSED_CLIENT, PUBLISHER: GRACEFUL},
             exception="StreamLostError", proxy=True),
    # One small capture with every method the analyzer's timeline reads, from a real broker.
    Scenario("every-method", "a T=2 consumer sees every method the analyzer reads: 404 Channel.Close, "
             "Connection.Blocked/Unblocked (memory alarm), broker Basic.Cancel, normal close",
             heartbeat=2, work=1, messages=2, verdicts=_both(GRACEFUL), exception="ChannelClosedByBroker",
             work_means="seconds the memory alarm stays up after Connection.Blocked",
             needs_local_broker=True, idle_first=True, memory_alarm=True),
    Scenario("blocked-connection-timeout", "a pika publisher (blocked_connection_timeout=3) is blocked by the "
             "memory alarm: pika closes the socket 3 s after Connection.Blocked, without Connection.Close",
             heartbeat=3, work=3, messages=1, verdicts={PUBLISHER: RESET}, exception="ConnectionBlockedTimeout",
             work_means="pika's blocked_connection_timeout: seconds from Connection.Blocked to its teardown",
             needs_local_broker=True, memory_alarm=True, alarm_cleared_after="exception",
             expected_causes={PUBLISHER: BLOCKED_CONNECTION_TIMEOUT}),
    *(scenario for row in OTHER_CLIENTS for scenario in (_blocked_handler(*row[:3]), _healthy(row[0], *row[3:]))),
]}

# Network faults (root: network namespaces; two captures, client side and broker side, one host clock;
# faults.py runs them). Kept apart from SCENARIOS, the loopback scenarios that run against one broker.
FAULT_SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    _fault(PARTITION, "a T=2 consumer idles, then the path is cut silently both ways for good: the broker's RST "
           "and pika's FIN never cross; AMQPHeartbeatTimeout", heartbeat=2, work=3,
           work_means="seconds the consumer idles (heartbeats both ways) before the cut",
           sides=({CONSUMER: MISSED_SERVER}, {CONSUMER: MISSED_CLIENT}), exception="AMQPHeartbeatTimeout",
           cause=NETWORK_PARTITION),
    _fault(IDLE_RESET, "heartbeats off; a forwarder in between resets both legs after N s without a byte: "
           "RST on each leg at once; StreamLostError", heartbeat=0, work=4, name="idle-timeout-middlebox",
           work_means="the middlebox's idle timeout N, seconds",
           sides=({CONSUMER: RESET}, {UPSTREAM: RESET}), exception="StreamLostError", cause=MIDDLEBOX_IDLE_TIMEOUT),
    _fault(IDLE_FORGET, "heartbeats off; a conntrack router forgets the flow after N s idle; the client's next "
           "publish draws the router's RST (TTL 64, not the broker's 63); the broker never knows",
           heartbeat=0, work=4, name="idle-timeout-middlebox-silent",
           work_means="the router's conntrack timeout N, seconds (the client publishes 1.5 s after it)",
           sides=({CONSUMER: RESET}, {CONSUMER: OPEN}), exception="StreamLostError", cause=MIDDLEBOX_IDLE_TIMEOUT),
    _fault(LOSS, "a T=2 consumer idles over a path losing 20% of packets each way, then closes normally: "
           "retransmissions, heartbeats keep it alive", heartbeat=2, work=8, name="lossy-path",
           work_means="seconds of loss while the consumer idles (more until a packet was lost each way)",
           sides=({CONSUMER: GRACEFUL}, {CONSUMER: GRACEFUL}), exception=None, cause=None, loss=20),
]}
# Every scenario `scenario list` shows and `scenario run` takes.
ALL: dict[str, Scenario] = {**SCENARIOS, **FAULT_SCENARIOS}


def idle_seconds(scenario: Scenario, heartbeat: int) -> float:
    """How long the consumer idles before the publish: three of pika's T/2 heartbeats and a bit."""
    return 1.5 * heartbeat + 0.4 if scenario.idle_first and heartbeat > 0 else 0.0


def broker_settings(scenario: Scenario, params: dict) -> dict:
    """The broker settings for a run; consumer_timeout (ms) follows --work so the ack is always late."""
    settings = dict(scenario.broker_settings)
    if "consumer_timeout" in settings:
        settings["consumer_timeout"] = max(1000, int(params["work"] * 1000 / 2))
    return settings


def get(name: str) -> Scenario:
    from analyzer.errors import UsageError

    try:
        return ALL[name]
    except KeyError:
        raise UsageError(f"unknown scenario {name!r}; `amqp-hb scenario list` shows them") from None
