"""The client profile table: one row per AMQP 0-9-1 client library, everything the analyzer
reasons with about a client, each fact with the upstream file and function it was read from.

The analyzer names a connection's client from connection.start-ok (`identify.py`), then reads
its row for the client-side give-up rule (models/client_timers.py), the normal close code, the
blocked-connection timeout, what runs the heartbeats and the fix for a long handler. A row never
borrows another's API: tests scan every explanation for every other row's `api_names`.

Sources: the library repositories at the tags in each `sources` entry ("repo@tag path
function, lines"), read for /work/shared/client-models.md and re-checked in the source for
this table. Wrappers that do not name themselves on the wire (kombu and Celery over py-amqp,
aio-pika over aiormq, Spring AMQP over the Java client) share their library's row.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from analyzer.diagnosis.models.client_timers import CallInRule, DeadlineRule, DetectionRule, LookRule, MaybeSeconds
from analyzer.diagnosis.models.common import ModelName
from analyzer.diagnosis.models.pika import PIKA_RULE

WireAction = Literal["fin", "rst", "nothing", "connection.close"]
# What runs a library's heartbeat sender while the application's message handler runs:
# "own-thread": a thread, goroutine or timer of its own, so a long handler does not stop it;
# "same-loop": the loop that also runs the handler, so a blocking handler stops it;
# "application": only the application's calls into the library send heartbeats.
SenderRuns = Literal["own-thread", "same-loop", "application"]

REPLY_SUCCESS = 200  # AMQP 0-9-1 reply-success, what a normal connection.close carries


@dataclass(frozen=True, slots=True)
class ClientProfile:
    key: ModelName  # also the name of its give-up model in reports and JSON
    name: str  # how the report names the library
    wrappers: tuple[str, ...]  # libraries on top of it that do not name themselves on the wire
    # Identification from start-ok client_properties: `product` values, and a `platform` prefix
    # where two libraries share a product (the Java and .NET clients both say "RabbitMQ").
    products: tuple[str, ...]
    platform_prefix: str | None
    # The capabilities table of a start-ok that names no product, when only this library sends it
    # so (amqp091-go drops product, version and platform when the application passes
    # Config.Properties, but always sends its four capabilities); None: no such case.
    bare_capabilities: frozenset[str] | None
    negotiation: str  # what tune-ok carries, given the broker's proposal S
    sender: str  # when it sends heartbeats
    sender_runs: SenderRuns
    # The idle heartbeat interval at T when it is a signature: below T/2 (where every other
    # fixed-cadence row sits, and below what an application-driven sender can produce); None
    # at that T, or always, otherwise. identify.py claims a library from it only when exactly
    # one row matches.
    signature_period: MaybeSeconds | None
    detection: DetectionRule | None  # how it gives up on a silent broker (None: never)
    detection_text: str
    gives_up_with: WireAction  # what it puts on the wire when it gives up
    app_sees: str  # the exception or event the application gets then
    normal_close_code: int  # reply code of the library's own close()
    blocked_timeout: str | None  # the setting that gives up on a blocked connection, if any
    blocked_timeout_error: str | None
    blocked_timeout_wire: WireAction | None
    loop: str  # what must run for its heartbeats to go out, in the report's words
    fix: str  # the long-handler fix, in this library's own API
    api_names: tuple[str, ...]  # API names in its own words (fix, app_sees), never in another row's
    sources: Mapping[str, str] = field(default_factory=dict)  # fact -> upstream file and function


def _aiormq_interval(timeout: float) -> float | None:
    """max(1, T//2): below T/2 for odd T."""
    interval = max(1.0, float(int(timeout) // 2))
    return interval if interval < timeout / 2 else None


def _dotnet6_interval(timeout: float) -> float | None:
    return timeout / 4  # 6.x sends every T/4 unconditionally; 7.x every T/2 (shared with pika, Go)


def _bunny_interval(timeout: float) -> float | None:
    interval = max(timeout / 2 - 1, 0.4)
    return interval if interval < timeout / 2 else None


PIKA = ClientProfile(
    key="pika", name="pika", wrappers=(),
    products=("Pika Python Client Library",), platform_prefix=None, bare_capabilities=None,
    negotiation="heartbeat=None (default) accepts S; an int overrides S verbatim (no min); 0 disables",
    sender="a timer every T/2, unconditionally, from the checker start (tune-ok)",
    sender_runs="same-loop", signature_period=None,
    detection=PIKA_RULE,
    detection_text="looks at the bytes received every T+5 s from its checker start and gives up after one silent "
                   "look",
    gives_up_with="fin",
    app_sees="AMQPHeartbeatTimeout, then StreamLostError/ConnectionClosed from the blocking call",
    normal_close_code=200,
    blocked_timeout="blocked_connection_timeout", blocked_timeout_error="ConnectionBlockedTimeout",
    blocked_timeout_wire="fin",
    loop="pika's I/O loop",
    fix=("Fix: run long work in a thread and ack from it with "
         "connection.add_callback_threadsafe(functools.partial(ch.basic_ack, delivery_tag=...)); "
         "or let pika service I/O during the work (connection.process_data_events / connection.sleep); "
         "or negotiate a heartbeat longer than the longest task."),
    api_names=("add_callback_threadsafe", "process_data_events", "connection.sleep", "ch.basic_ack"),
    sources={
        "products": "pika/pika@1.4.4 pika/connection.py Parameters/Connection._client_properties (PRODUCT l.33, "
                    "l.1598-1609)",
        "negotiation": "pika/pika@1.4.4 pika/connection.py Connection._tune_heartbeat_timeout (l.1969-1996)",
        "sender": "pika/pika@1.4.4 pika/heartbeat.py HeartbeatChecker.__init__ (_send_interval l.53), "
                  "_send_heartbeat (l.104-110)",
        "detection": "pika/pika@1.4.4 pika/heartbeat.py HeartbeatChecker (_check_interval = timeout + 5 l.65; "
                     "_check_heartbeat l.112-133)",
        "gives_up_with": "pika/pika@1.4.4 pika/heartbeat.py HeartbeatChecker._close_connection (l.146-156) -> "
                         "pika/adapters/base_connection.py _terminate_stream/abort",
        "normal_close_code": "pika/pika@1.4.4 pika/adapters/blocking_connection.py BlockingConnection.close "
                             "(reply_code=200)",
        "blocked_timeout": "pika/pika@1.4.4 pika/connection.py Connection._on_blocked_connection_timeout "
                           "(ConnectionBlockedTimeout via _terminate_stream)",
        "fix": "pika/pika@1.4.4 pika/adapters/blocking_connection.py BlockingConnection.add_callback_threadsafe, "
               "process_data_events, sleep; examples/basic_consumer_threaded.py",
    },
)

PY_AMQP = ClientProfile(
    key="py-amqp", name="py-amqp", wrappers=("kombu", "Celery"),
    products=("py-amqp",), platform_prefix=None, bare_capabilities=None,
    negotiation="heartbeat=0 (default) sends 0 whatever S; N > 0 sends min(N, S), or N when S = 0",
    sender="only inside heartbeat_tick(), which the application calls: it sends when no frame went out for "
           "T/rate (Celery calls it every T/3)",
    sender_runs="application", signature_period=None,
    detection=CallInRule(earliest=lambda t: 2 * t, usual=lambda t: 3 * t),
    detection_text="raises inside heartbeat_tick() once no frame was processed for more than 2T (within 2T + "
                   "T/rate when ticked as asked); it runs only when the application calls it (Celery every T/3, "
                   "kombu's ConsumerMixin after a 1 s idle drain)",
    gives_up_with="fin",
    app_sees="ConnectionForced('Too many heartbeats missed'); Celery logs 'Connection to broker lost' and "
             "reconnects",
    normal_close_code=0,
    blocked_timeout=None, blocked_timeout_error=None, blocked_timeout_wire=None,
    loop="the thread that calls drain_events and heartbeat_tick",
    fix=("Fix: keep the thread that owns the connection looping connection.drain_events(timeout=1) and "
         "connection.heartbeat_tick() (kombu: conn.drain_events(timeout=1) and conn.heartbeat_check()) and run "
         "the work in another thread; in Celery keep long tasks on the prefork or threads pool, not --pool solo, "
         "or set broker_heartbeat = 0."),
    api_names=("drain_events", "heartbeat_tick", "heartbeat_check", "broker_heartbeat", "--pool solo"),
    sources={
        "products": "celery/py-amqp@v5.3.1 amqp/connection.py LIBRARY_PROPERTIES (l.50-53)",
        "negotiation": "celery/py-amqp@v5.3.1 amqp/connection.py Connection._on_tune (l.425-446)",
        "sender": "celery/py-amqp@v5.3.1 amqp/connection.py Connection.heartbeat_tick (l.715-776); "
                  "celery/celery@v5.6.2 celery/worker/loops.py _enable_amqheartbeats (l.28-46)",
        "detection": "celery/py-amqp@v5.3.1 amqp/connection.py Connection.heartbeat_tick "
                     "(ConnectionForced('Too many heartbeats missed'))",
        "gives_up_with": "celery/kombu@v5.6.2 kombu/connection.py Connection.collect -> celery/py-amqp@v5.3.1 "
                         "amqp/transport.py _AbstractTransport.close/_shutdown_transport (shutdown SHUT_RDWR)",
        "normal_close_code": "celery/py-amqp@v5.3.1 amqp/connection.py Connection.close (reply_code=0)",
        "fix": "celery/kombu@v5.6.2 kombu/connection.py Connection.heartbeat_check, drain_events; "
               "celery/celery@v5.6.2 celery/app/defaults.py broker_heartbeat, celery/concurrency/solo.py",
    },
)

AIORMQ = ClientProfile(
    key="aiormq", name="aiormq", wrappers=("aio-pika",),
    products=("aiormq",), platform_prefix=None, bare_capabilities=None,
    negotiation="sends the URL's ?heartbeat= verbatim (default 60), whatever S; 0 disables",
    sender="an asyncio task: sleeps max(1, T//2) s, then queues a heartbeat, unconditionally",
    sender_runs="same-loop",
    signature_period=_aiormq_interval,
    detection=DeadlineRule(after=lambda t: 3 * (t + 1), start="open-ok", poll=lambda t: max(1.0, float(int(t) // 2))),
    detection_text="looks every max(1, T//2) s and gives up once no frame arrived for more than 3(T+1) s",
    gives_up_with="nothing",
    app_sees="a warning 'Server connection ... was stuck. No frames were received in N seconds.'; the "
             "connection's closing future ends with CancelledError; its FIN goes out only when the connection "
             "object is garbage-collected (aio-pika's RobustConnection drops it and reconnects at once)",
    normal_close_code=200,
    blocked_timeout=None, blocked_timeout_error=None, blocked_timeout_wire=None,
    loop="the asyncio event loop",
    fix=("Fix: never block the event loop in the message callback: run blocking work with "
         "await asyncio.to_thread(work, ...) or await loop.run_in_executor(None, work, ...) and ack after it "
         "returns (aio-pika: async with message.process():); or raise the heartbeat with ?heartbeat= in the URL."),
    api_names=("asyncio.to_thread", "run_in_executor", "message.process"),
    sources={
        "products": "mosquito/aiormq@6.9.3 aiormq/connection.py PRODUCT (l.63), Connection._client_properties "
                    "(l.484)",
        "negotiation": "mosquito/aiormq@6.9.3 aiormq/connection.py Connection.__init__ parse_heartbeat (l.414-416), "
                       "Connection.connect tune_ok (l.588)",
        "sender": "mosquito/aiormq@6.9.3 aiormq/connection.py Connection.__heartbeat (l.770-791)",
        "detection": "mosquito/aiormq@6.9.3 aiormq/connection.py is_connection_was_stuck (l.766-768), "
                     "__heartbeat_grace_timeout (l.434-436)",
        "gives_up_with": "mosquito/aiormq@6.9.3 aiormq/connection.py Connection.__reader CancelledError handler "
                         "(l.757-762), __writer skips Connection.Close and __close_writer when stuck (l.818)",
        "normal_close_code": "mosquito/aiormq@6.9.3 aiormq/connection.py Connection._on_close (Connection.Close "
                             "200 'normally closed', then FIN without waiting for close-ok)",
        "fix": "Python stdlib asyncio.to_thread, loop.run_in_executor; mosquito/aio-pika@9.6.0 "
               "aio_pika/message.py IncomingMessage.process",
    },
)

AMQPLIB = ClientProfile(
    key="amqplib", name="amqplib (Node.js)", wrappers=(),
    products=("amqplib",), platform_prefix=None, bare_capabilities=None,
    negotiation="2.x: unset accepts S, 0 disables, N sends min(N, S); up to 1.2: the default and 0 both send S",
    sender="setInterval(T/2) from open-ok: sends when nothing was written since the last look, its own "
           "heartbeats included, so an idle connection sends every T",
    sender_runs="same-loop", signature_period=None,
    detection=LookRule(period=lambda t: t, silent_looks=2, start="open-ok", prior_bytes_seen=True),
    detection_text="looks every T s from open-ok for bytes read and gives up after two silent looks",
    gives_up_with="fin",
    app_sees="an 'error' event with Error('Heartbeat timeout'), then 'close'",
    normal_close_code=200,
    blocked_timeout=None, blocked_timeout_error=None, blocked_timeout_wire=None,
    loop="the Node.js event loop",
    fix=("Fix: keep the consume callback from blocking the Node.js event loop: move CPU-bound work to "
         "worker_threads or a child process and call channel.ack(msg) when it completes; bound the work in flight "
         "with channel.prefetch(n); or raise heartbeat in the connect options or URL."),
    api_names=("worker_threads", "channel.ack", "channel.prefetch"),
    sources={
        "products": "amqp-node/amqplib@v2.0.1 lib/connect.js CLIENT_PROPERTIES (l.24-37)",
        "negotiation": "amqp-node/amqplib@v2.0.1 lib/connection.js Connection.open tune negotiation (l.162-168)",
        "sender": "amqp-node/amqplib@v2.0.1 lib/heartbeat.js Heartbeat.start sendTimer (l.60-71)",
        "detection": "amqp-node/amqplib@v2.0.1 lib/heartbeat.js Heartbeat.start recvTimer/missedTwo (l.60-71); "
                     "lib/connection.js onOpenOk starts the heartbeater (l.197)",
        "gives_up_with": "amqp-node/amqplib@v2.0.1 lib/connection.js Connection.startHeartbeater timeout handler "
                         "(l.367-375) -> toClosed -> stream.end() (l.354)",
        "normal_close_code": "amqp-node/amqplib@v2.0.1 lib/connection.js Connection.close (200 'Cheers, thanks')",
        "fix": "amqp-node/amqplib@v2.0.1 lib/channel_model.js Channel.ack, Channel.prefetch; Node.js worker_threads",
    },
)

JAVA = ClientProfile(
    key="java", name="the RabbitMQ Java client", wrappers=("Spring AMQP",),
    products=("RabbitMQ",), platform_prefix="Java", bare_capabilities=None,
    negotiation="default 60; min(N, S) when both are above 0, else the larger (so 0 yields S)",
    sender="a scheduler thread of its own, every T/2: sends when no other frame was written in the last T/2",
    sender_runs="own-thread", signature_period=None,
    detection=DeadlineRule(after=lambda t: 9 * t / 4, start="tune"),
    detection_text="reads with a socket timeout of T/4 and gives up at the 9th timeout in a row, 2.25T after "
                   "the last frame",
    gives_up_with="fin",
    app_sees="ShutdownSignalException caused by MissedHeartbeatException('Heartbeat missing with heartbeat = T "
             "seconds'); automatic recovery reconnects",
    normal_close_code=200,
    blocked_timeout=None, blocked_timeout_error=None, blocked_timeout_wire=None,
    loop="its heartbeat thread (a long handleDelivery does not stop it)",
    fix=("The Java client sends heartbeats from a thread of its own, so a long handleDelivery does not stop "
         "them: look for a process-wide stall (a long GC pause, CPU starvation, a suspended VM) or a write "
         "blocked on a full socket. Tune T with ConnectionFactory.setRequestedHeartbeat (Spring: "
         "CachingConnectionFactory.setRequestedHeartBeat or spring.rabbitmq.requested-heartbeat)."),
    api_names=("handleDelivery", "setRequestedHeartbeat", "setRequestedHeartBeat", "spring.rabbitmq"),
    sources={
        "products": "rabbitmq/rabbitmq-java-client@v5.35.0 src/main/java/com/rabbitmq/client/impl/AMQConnection.java "
                    "defaultClientProperties (l.87-91)",
        "negotiation": "rabbitmq/rabbitmq-java-client@v5.35.0 AMQConnection.java start/negotiatedMaxValue "
                       "(l.454-465, 692-696); ConnectionFactory.DEFAULT_HEARTBEAT (l.88)",
        "sender": "rabbitmq/rabbitmq-java-client@v5.35.0 impl/DefaultHeartbeatSender.java setHeartbeat, "
                  "HeartbeatRunnable (l.82-86, 136-141)",
        "detection": "rabbitmq/rabbitmq-java-client@v5.35.0 AMQConnection.java setHeartbeat (setTimeout T/4, l.592), "
                     "handleSocketTimeout (> 2 * 4 missed, l.896)",
        "gives_up_with": "rabbitmq/rabbitmq-java-client@v5.35.0 impl/SocketFrameHandler.java close (SO_LINGER 1 s, "
                         "l.256-277)",
        "normal_close_code": "rabbitmq/rabbitmq-java-client@v5.35.0 AMQConnection.java close() (AMQP.REPLY_SUCCESS)",
        "fix": "rabbitmq/rabbitmq-java-client@v5.35.0 ConnectionFactory.setRequestedHeartbeat; "
               "spring-projects/spring-amqp@v4.1.1 AbstractConnectionFactory.setRequestedHeartBeat (l.332)",
    },
)

DOTNET = ClientProfile(
    key="dotnet", name="the RabbitMQ .NET client", wrappers=(),
    products=("RabbitMQ",), platform_prefix=".NET", bare_capabilities=None,
    negotiation="default 60 s; min(N, S) when both are above 0, else the larger",
    sender="a timer 200 ms after tune-ok, then every T/2 unconditionally (6.x: every T/4)",
    sender_runs="own-thread", signature_period=_dotnet6_interval,
    detection=LookRule(period=lambda t: t, silent_looks=3, start="tune-ok", prior_bytes_seen=False, offset=0.3),
    detection_text="looks every T s for a received frame (first look 300 ms after tune-ok) and gives up after "
                   "three silent looks (7.x; 6.x gives up at its 2T socket read timeout)",
    gives_up_with="fin",
    app_sees="ConnectionShutdown with Initiator Library, 'End of stream' (EndOfStreamException 'Heartbeat "
             "missing with heartbeat == ...'); automatic recovery reconnects",
    normal_close_code=200,
    blocked_timeout=None, blocked_timeout_error=None, blocked_timeout_wire=None,
    loop="its heartbeat timer on the .NET ThreadPool",
    fix=("The .NET client sends heartbeats from ThreadPool timers, so a long handler does not stop them unless "
         "it starves the ThreadPool (blocking .Result or .Wait() in many handlers): use AsyncEventingBasicConsumer "
         "with ReceivedAsync and await, size ConsumerDispatchConcurrency, and tune T with RequestedHeartbeat."),
    api_names=("AsyncEventingBasicConsumer", "ReceivedAsync", "ConsumerDispatchConcurrency", "RequestedHeartbeat"),
    sources={
        "products": "rabbitmq/rabbitmq-dotnet-client@v7.2.1 projects/RabbitMQ.Client/ConnectionFactory.cs "
                    "DefaultClientProperties (l.298-302)",
        "negotiation": "rabbitmq/rabbitmq-dotnet-client@v7.2.1 Impl/Connection.Commands.cs StartAndTuneAsync "
                       "NegotiatedMaxValue (l.182-185, 213-217)",
        "sender": "rabbitmq/rabbitmq-dotnet-client@v7.2.1 Impl/Connection.Heartbeat.cs MaybeStartHeartbeatTimers, "
                  "HeartbeatWriteTimerCallback (l.57-67, 161-163)",
        "detection": "rabbitmq/rabbitmq-dotnet-client@v7.2.1 Impl/Connection.Heartbeat.cs HeartbeatReadTimerCallback "
                     "(_missedHeartbeats > 2, l.110-133)",
        "gives_up_with": "rabbitmq/rabbitmq-dotnet-client@v7.2.1 Impl/SocketFrameHandler.cs CloseAsync (l.195)",
        "normal_close_code": "rabbitmq/rabbitmq-dotnet-client@v7.2.1 IConnectionExtensions.CloseAsync "
                             "(Constants.ReplySuccess)",
        "fix": "rabbitmq/rabbitmq-dotnet-client@v7.2.1 Events/AsyncEventingBasicConsumer.cs ReceivedAsync; "
               "ConnectionFactory.ConsumerDispatchConcurrency, RequestedHeartbeat",
    },
)

GO = ClientProfile(
    # Not "https://github.com/streadway/amqp": amqp091-go up to 1.3.0 sends it too, but streadway
    # heartbeats every T and waits 3T, amqp091-go every T/2 and 1.5T; that product names no row.
    key="go", name="amqp091-go", wrappers=(),
    products=("AMQP 0.9.1 Client", "Amqp 0.9.1 Client"), platform_prefix=None,
    bare_capabilities=frozenset({"connection.blocked", "consumer_cancel_notify", "basic.nack", "publisher_confirms"}),
    negotiation="default 10 s (also for Config{Heartbeat: 0}); min(N, S) when both are above 0, else the larger, "
                "so ?heartbeat=0 in the URI yields S",
    sender="a goroutine ticking every T/2: sends when nothing was sent for T/2 - 1 s",
    sender_runs="own-thread", signature_period=None,
    detection=DeadlineRule(after=lambda t: 1.5 * t, start="tune"),
    detection_text="sets a read deadline of 1.5T (three T/2 heartbeat intervals) after every frame read and gives "
                   "up when it passes",
    gives_up_with="fin",
    app_sees="NotifyClose receives Exception (501) with the read's 'i/o timeout' as the reason",
    normal_close_code=200,
    blocked_timeout=None, blocked_timeout_error=None, blocked_timeout_wire=None,
    loop="its heartbeater goroutine",
    fix=("amqp091-go sends heartbeats from a goroutine of its own, so a slow consumer does not stop them: look "
         "for a Publish blocked on a full socket (it holds the send lock the heartbeater needs) or a stalled "
         "process; handle each Delivery in worker goroutines and tune T with amqp.Config{Heartbeat: ...}."),
    api_names=("amqp.Config", "Delivery", "NotifyClose"),
    sources={
        "products": "rabbitmq/amqp091-go@v1.14.0 connection.go defaultProduct, NewConnectionProperties (l.29-33, "
                    "109-115); 'Amqp 0.9.1 Client' with platform golang from v1.3.1 (commit d25e3e5) to v1.4.0",
        "bare_capabilities": "rabbitmq/amqp091-go@v1.14.0 connection.go Connection.openTune: the default "
                             "properties only when len(config.Properties) == 0 (l.1241-1244), capabilities always "
                             "(l.1246-1251)",
        "negotiation": "rabbitmq/amqp091-go@v1.14.0 connection.go DialConfig (l.294-299), Connection.openTune pick "
                       "(l.1300-1302, 1437-1442)",
        "sender": "rabbitmq/amqp091-go@v1.14.0 connection.go Connection.heartbeater (l.992-1041)",
        "detection": "rabbitmq/amqp091-go@v1.14.0 connection.go Connection.heartbeater SetReadDeadline "
                     "(maxServerHeartbeatsInFlight * interval)",
        "gives_up_with": "rabbitmq/amqp091-go@v1.14.0 connection.go Connection.shutdown (c.conn.Close(), l.843)",
        "normal_close_code": "rabbitmq/amqp091-go@v1.14.0 connection.go Connection.Close (200 'kthxbai', "
                             "l.601-616)",
        "fix": "rabbitmq/amqp091-go@v1.14.0 connection.go Config.Heartbeat; consumers.go Delivery buffers",
    },
)

BUNNY = ClientProfile(
    key="bunny", name="Bunny (Ruby)", wrappers=(),
    products=("Bunny",), platform_prefix=None, bare_capabilities=None,
    negotiation="default :server accepts S; 0 or nil disables; N sends min(N, S), or the larger when one is 0",
    sender="a thread of its own from open-ok: every max(T/2 - 1, 0.4) s, sends when no other frame went out",
    sender_runs="own-thread", signature_period=_bunny_interval,
    detection=DeadlineRule(after=lambda t: 2.2 * t, start="open-ok"),
    detection_text="reads with a timeout of 2.2T and gives up when a read times out",
    gives_up_with="fin",
    app_sees="Bunny::NetworkFailure (IO timeout when reading 7 bytes); automatic recovery reconnects by default",
    normal_close_code=200,
    blocked_timeout=None, blocked_timeout_error=None, blocked_timeout_wire=None,
    loop="its heartbeat sender thread",
    fix=("Bunny sends heartbeats from a thread of its own, so a long consumer block does not stop them unless "
         "something holds the Ruby GVL; tune T with Bunny.new(heartbeat: N) and run deliveries on a consumer "
         "work pool (create_channel(nil, pool_size))."),
    api_names=("Bunny.new", "create_channel"),
    sources={
        "products": "ruby-amqp/bunny@3.2.0 lib/bunny/session.rb DEFAULT_CLIENT_PROPERTIES (l.51-68)",
        "negotiation": "ruby-amqp/bunny@3.2.0 lib/bunny/session.rb Session#open_connection negotiate_value "
                       "(l.1645-1650, 1731-1744)",
        "sender": "ruby-amqp/bunny@3.2.0 lib/bunny/heartbeat_sender.rb HeartbeatSender#run, #beat (l.30, 50-68)",
        "detection": "ruby-amqp/bunny@3.2.0 lib/bunny/session.rb read_timeout = heartbeat * 2.2 (l.1662); "
                     "lib/bunny/cruby/socket.rb read_fully (l.88-91)",
        "gives_up_with": "ruby-amqp/bunny@3.2.0 lib/bunny/transport.rb Transport#read_fully_into, #close "
                         "(l.223, 285-297)",
        "normal_close_code": "ruby-amqp/bunny@3.2.0 lib/bunny/session.rb Session#close_connection (200, 'Goodbye')",
        "fix": "ruby-amqp/bunny@3.2.0 lib/bunny/session.rb Session#create_channel(n, consumer_pool_size) (l.393)",
    },
)

PHP_AMQPLIB = ClientProfile(
    key="php-amqplib", name="php-amqplib", wrappers=(),
    products=("AMQPLib",), platform_prefix=None, bare_capabilities=None,
    negotiation="heartbeat 0 (default) sends 0; N > 0 sends min(N, S), or N when S = 0",
    sender="only when the application is inside the library (select, read, wait, consume): sends when nothing was "
           "written for T/2",
    sender_runs="application", signature_period=None,
    detection=CallInRule(earliest=lambda t: 2 * t, usual=lambda t: 2 * t + 10),
    detection_text="throws inside wait() once no frame arrived for more than 2T; consume() polls at most every "
                   "10 s",
    gives_up_with="nothing",
    app_sees="AMQPHeartbeatMissedException('Missed server heartbeat')",
    normal_close_code=0,
    blocked_timeout=None, blocked_timeout_error=None, blocked_timeout_wire=None,
    loop="the PHP process's calls into php-amqplib",
    fix=("Fix: PHP runs the callback on the only thread, so nothing sends heartbeats meanwhile: register a signal "
         "sender with (new PCNTLHeartbeatSender($connection))->register(), or split the work into shorter units, or "
         "keep heartbeat 0."),
    api_names=("PCNTLHeartbeatSender",),
    sources={
        "products": "php-amqplib/php-amqplib@v3.7.3 PhpAmqpLib/Connection/AbstractConnection.php $library_properties "
                    "(l.30-35); PhpAmqpLib/Package.php NAME",
        "negotiation": "php-amqplib/php-amqplib@v3.7.3 AbstractConnection.php connection_tune (l.942-954)",
        "sender": "php-amqplib/php-amqplib@v3.7.3 PhpAmqpLib/Wire/IO/AbstractIO.php check_heartbeat (l.88-90, 153)",
        "detection": "php-amqplib/php-amqplib@v3.7.3 AbstractConnection.php wait_channel (l.656-664); "
                     "PhpAmqpLib/Channel/AMQPChannel.php consume (l.1599-1627)",
        "gives_up_with": "php-amqplib/php-amqplib@v3.7.3 AbstractConnection.php wait_channel setIsConnected(false), "
                         "close() returns early (l.745)",
        "normal_close_code": "php-amqplib/php-amqplib@v3.7.3 AbstractConnection.php close($reply_code = 0, "
                             "$reply_text = '')",
        "fix": "php-amqplib/php-amqplib@v3.7.3 PhpAmqpLib/Connection/Heartbeat/PCNTLHeartbeatSender.php register",
    },
)

GENERIC = ClientProfile(
    key="generic", name="the client", wrappers=(),
    products=(), platform_prefix=None, bare_capabilities=None,
    negotiation="unknown: the tune-ok value is what counts",
    sender="unknown",
    sender_runs="application", signature_period=None,
    # Every profiled library waits at least one full T of broker silence before it gives up.
    detection=CallInRule(earliest=lambda t: t, usual=lambda t: 4 * t),
    detection_text="an unknown library's own rule: every profiled library waits between 1.5T and about 4T",
    gives_up_with="fin",
    app_sees="its library's heartbeat timeout error",
    normal_close_code=200,
    blocked_timeout=None, blocked_timeout_error=None, blocked_timeout_wire=None,
    loop="its client library's I/O",
    fix=("Fix: let the client library service the connection while the work runs (do the work in another "
         "thread, process or task and acknowledge the message when it completes), or negotiate a heartbeat longer "
         "than the longest task."),
    api_names=(),
    sources={
        "detection": "the smallest and largest give-up delays of the rows above (amqp091-go 1.5T, .NET 4T)",
        "normal_close_code": "AMQP 0-9-1 reply-success (200), amqp0-9-1.xml constants",
    },
)

PROFILES: dict[str, ClientProfile] = {p.key: p for p in (
    PIKA, PY_AMQP, AIORMQ, AMQPLIB, JAVA, DOTNET, GO, BUNNY, PHP_AMQPLIB, GENERIC)}


def profile(key: str) -> ClientProfile:
    """The row for `key`, the generic row for anything else."""
    return PROFILES.get(key, GENERIC)
