"""Network fault scenarios (edge): a RabbitMQ node in one network namespace, a pika consumer in
another, a fault in the namespace between them, and tcpdump on both endpoints' veths: two captures
of one connection, on one host clock, with the ground truth of the fault.

Strategy: as in runner.py, everything a run starts is entered on one ExitStack (the topology first,
so it goes last: it kills whatever is still inside its namespaces and deletes them even after a
failure half-way). The runner drives the fault from its own clock and logs each action with its
epoch time (`path_cut`, `loss_started`, ...); the client program logs its exception; the middlebox
forwarder logs its resets; after the run the broker's log lines about the connection are merged in
with their own timestamps (`broker_log`: when the node gave up). Each side gets its own
`<base>-client.pcap` / `<base>-broker.pcap` and `.json`: the same ground truth, with `side`,
`capture` and `expected_verdicts` for that capture (so every tool reading PCAP.json beside PCAP
works on either), `captures` describing both (with wire facts read back from each file: wire.py).

The faults (netns.py says how each is made with what this kernel has):
- partition: the consumer idles `work` s (heartbeats both ways), then the path is cut both ways,
  silently and for good. pika gives up (T+5)..2(T+5) s after its last byte from the broker
  (AMQPHeartbeatTimeout); the broker 2T..3T after its last byte from the client. The run ends
  SETTLE after both gave up.
- idle-timeout-middlebox: the consumer (heartbeat 0) connects through a TCP forwarder in the middle
  namespace that resets both legs after N = `work` s without a byte.
- idle-timeout-middlebox-silent: the middle namespace routes with conntrack (established timeout N);
  the consumer (heartbeat 0) publishes N + PUBLISH_AFTER_EXPIRY s after consuming: the router has
  forgotten the flow and answers with a RST of its own; the broker never hears of it.
- lossy-path: random loss both ways while the consumer idles `work` s (longer until a packet was lost
  each way), then lifted, and the consumer told to close.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

from analyzer.errors import EnvironmentProblem, UsageError
from analyzer.lab import netns, wire
from analyzer.lab.broker import LocalBroker, die_with_parent
from analyzer.lab.capture import LiveCapture, choose_backend
from analyzer.lab.scenarios import catalog
from analyzer.lab.scenarios.runner import (
    CLIENT_SLACK,
    PIKA_GRACE,
    POLL,
    EventLog,
    RunResult,
    _kill,
    _remove_dir,
    _start_client,
    _wait_event,
    build_metadata,
    python_env,
    utc_stamp,
)

AMQP_PORT = 5672  # the node listens on it in its own namespace, the forwarder in the middle one
SETTLE = 1.0  # after both sides gave up: late retransmissions and resets reach the captures
TRICKLE_EVERY = 0.008  # the partition's client publishes this often around the cut ...
TRICKLE_LEAD = 0.15  # ... from this long before it, for twice as long
PUBLISH_AFTER_EXPIRY = 1.5  # idle-timeout-middlebox-silent: the publish comes this long after the flow expired
# lossy-path: after `work` s of loss the runner waits up to LOSS_WAIT s more until a packet was lost each
# way (random loss may spare a few packets), lifts the loss, then tells the client to close (a file).
LOSS_WAIT = 10.0
LOSS_SETTLE = 0.5
CLOSE_SIGNAL = "close-now"
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d\.\d+[+-]\d\d:\d\d) \[(\w+)\] <[^>]*> (.*)$")
# The node's log lines about client connections (rabbit_reader), merged into the events as broker_log.
BROKER_LOG_WORDS = ("AMQP connection", "heartbeat", "closed TCP connection", "connection_closed_abruptly")


def run_fault(scenario: catalog.Scenario, params: dict, *, out_dir: str, broker=None, broker_url: str | None = None,
              backend: str = "auto", basename: str | None = None, progress=None, interface: str | None = None,
              ipv6: bool = False, tls: bool = False) -> RunResult:
    """Run a network fault scenario; returns the client side's RunResult with both sides in `sides`."""
    name = scenario.name
    if broker is not None or broker_url:
        raise UsageError(f"scenario {name} starts its own node inside a network namespace: run it without --broker")
    if tls or ipv6 or interface:
        raise UsageError(f"scenario {name} runs over IPv4 plaintext and captures both namespaces' veths: "
                         "no --tls, --ipv6 or --interface")
    netns.ensure_root()
    backend = choose_backend(backend)
    if backend == "scapy":
        raise EnvironmentProblem(f"scenario {name} captures inside network namespaces: install tcpdump "
                                 "(`apt-get install tcpdump`)")
    if scenario.fault in (catalog.IDLE_FORGET, catalog.LOSS) and shutil.which("nft") is None:
        raise EnvironmentProblem(netns.NFT_HINT)
    say = progress or (lambda _msg: None)
    started = time.time()
    base = os.path.join(out_dir, basename or f"{name}-{utc_stamp(started)}")
    os.makedirs(out_dir or ".", exist_ok=True)
    work_dir = tempfile.mkdtemp(prefix="amqphb-fault-")
    log = EventLog(os.path.join(work_dir, "events.jsonl"))
    metas: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        stack.callback(_remove_dir, work_dir)
        say("building the network namespaces (client, mid, broker)")
        topo = stack.enter_context(netns.Topology())
        log.add("runner", "topology_up", namespaces=[topo.client.namespace, topo.mid, topo.broker.namespace])
        kernel = netns.kernel_features()
        say("starting a throwaway RabbitMQ node in the broker namespace")
        node = stack.enter_context(LocalBroker(host=topo.broker.address, netns=topo.broker.namespace,
                                               amqp_port=AMQP_PORT))
        client_url, middle = _middle(scenario, params, topo, node, log, stack, work_dir)
        ends = {catalog.CLIENT_SIDE: topo.client, catalog.BROKER_SIDE: topo.broker}
        caps = {side: stack.enter_context(LiveCapture(f"{base}-{side}.pcap", iface=end.interface, ports=[AMQP_PORT],
                                                      backend=backend, netns=end.namespace))
                for side, end in ends.items()}
        log.add("runner", "capture_started", backend=caps[catalog.CLIENT_SIDE].backend,
                filter=caps[catalog.CLIENT_SIDE].filter, sides=list(caps))
        client_params = {**params, "url": client_url, "publish_url": client_url,
                         "queue": f"amqphb-{name}-{uuid.uuid4().hex[:8]}", "events": log.path, "idle_first": 0,
                         "runner_signal": os.path.join(work_dir, CLOSE_SIGNAL), **_client_timings(scenario, params)}
        say(f"running {name} (heartbeat={params['heartbeat']} work={params['work']:g})")
        client = _start_client(scenario, client_params, work_dir, netns=topo.client.namespace)
        stack.callback(_kill, client)
        assert scenario.fault is not None
        exit_status, fault = FAULTS[scenario.fault](scenario, params, topo, node, client, log)
        time.sleep(max(cap.settle for cap in caps.values()))  # one settle for both captures
        for cap in caps.values():
            cap.stop(settle=False)
        log.add("runner", "capture_stopped", **{side: cap.stats.packets for side, cap in caps.items()})
        sockets = {side: topo.sockets(end.namespace, AMQP_PORT) for side, end in ends.items()}
        if client.poll() is None:
            _kill(client)
            log.add("runner", "client_killed", signal="SIGTERM")
        exit_status = client.returncode if exit_status is None else exit_status
        for t, level, text in broker_log(node):
            log.add_at(t, "broker", "broker_log", level=level, text=text)
        captures = {side: {**cap.stats.as_dict(), **ends[side].as_dict(),
                           "wire": wire.facts(cap.path, AMQP_PORT)} for side, cap in caps.items()}
        fault.update(_outcome(scenario, log))
        fault.update(_from_the_wire(scenario, params, captures))
        for side, cap in caps.items():
            metas[side] = _side_metadata(scenario, side, params, node, cap, log, client_params, exit_status, started,
                                         work_dir, captures, fault, sockets, {**topo.as_dict(), "kernel": kernel,
                                                                              "middle": middle})
    sides = {}
    for side, meta in metas.items():
        path = f"{base}-{side}.json"
        with open(path, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
            f.write("\n")
        sides[side] = RunResult(name, f"{base}-{side}.pcap", path, meta)
    client_side = sides[catalog.CLIENT_SIDE]
    return dataclasses.replace(client_side, sides=sides)


def _client_timings(scenario: catalog.Scenario, params: dict) -> dict:
    """What the client program (client.network_fault) is told: when to publish or close, how long to wait."""
    T, work = params["heartbeat"], params["work"]
    if scenario.fault == catalog.PARTITION:
        # A trickle of tiny publishes every TRICKLE_EVERY from TRICKLE_LEAD before the cut: the two captures
        # then place the cut to within a few ms (heartbeats alone come every T/2), in a few KiB.
        return {"serve_for": work + 2 * (T + PIKA_GRACE) + CLIENT_SLACK, "trickle_every": TRICKLE_EVERY,
                "trickle_from": max(0.0, work - TRICKLE_LEAD), "trickle_for": 2 * TRICKLE_LEAD}
    if scenario.fault == catalog.IDLE_RESET:
        return {"serve_for": work + CLIENT_SLACK}
    if scenario.fault == catalog.IDLE_FORGET:
        return {"publish_after": work + PUBLISH_AFTER_EXPIRY, "serve_for": CLIENT_SLACK}
    return {"close_on_signal": True, "serve_for": work + LOSS_WAIT + CLIENT_SLACK}


# ---- the middle namespace ---------------------------------------------------------------------------


def _middle(scenario: catalog.Scenario, params: dict, topo: netns.Topology, node: LocalBroker, log: EventLog,
            stack: contextlib.ExitStack, work_dir: str) -> tuple[str, dict]:
    """Set up the middle namespace before the client starts; (the URL the client uses, what the middle is)."""
    if scenario.fault == catalog.IDLE_RESET:
        listen, upstream = f"{netns.MID_CLIENT_ADDRESS}:{AMQP_PORT}", f"{node.host}:{node.port}"
        command = [*netns.exec_prefix(topo.mid), sys.executable, "-m", "analyzer.lab.scenarios.proxy", listen,
                   upstream, log.path, str(params["work"])]
        with open(os.path.join(work_dir, "middlebox.out"), "wb") as out:
            proc = subprocess.Popen(command, env=python_env(), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)
        stack.callback(_kill, proc)
        _wait_event(log, proc, "middlebox_listening", CLIENT_SLACK)
        url = f"amqp://guest:guest@{netns.MID_CLIENT_ADDRESS}:{AMQP_PORT}/%2F"
        return url, {"role": "TCP forwarder (analyzer.lab.scenarios.proxy) with an idle timer",
                     "listen": listen, "upstream": upstream, "idle_timeout": params["work"],
                     "on_idle": "SO_LINGER 0 close of both legs: a RST on each"}
    middle: dict[str, object] = {"role": "router (ip_forward=1)",
                                 "default_ttl": int(netns.run(["sysctl", "-n", "net.ipv4.ip_default_ttl"],
                                                              topo.mid).strip())}
    if scenario.fault == catalog.IDLE_FORGET:
        settings = {"net.netfilter.nf_conntrack_tcp_timeout_established": int(params["work"]),
                    "net.netfilter.nf_conntrack_tcp_loose": 0}
        ruleset = netns.forward_table(['ct state invalid counter reject with tcp reset comment "forgotten-flow-reset"'])
        topo.nft(ruleset)  # first: the ct expression turns conntrack on in the namespace
        topo.sysctl(topo.mid, settings)
        middle.update(role="router with conntrack (a stateful firewall or NAT's flow table)",
                      conntrack=settings, nftables=ruleset.strip(),
                      on_idle="the flow is forgotten after N s; the next packet of either side is `ct state "
                              "invalid` and answered with a RST from the router's own stack")
    return node.url, middle


# ---- the faults: each drives the run and returns (client exit status or None, ground truth) --------------


def _partition(scenario: catalog.Scenario, params: dict, topo: netns.Topology, node: LocalBroker, client,
               log: EventLog) -> tuple[int | None, dict]:
    T = params["heartbeat"]
    consuming = _wait_event(log, client, "consuming", CLIENT_SLACK)
    _sleep_until(consuming["t"] + params["work"], client)
    requested, done = topo.cut()
    log.add_at(done, "runner", "path_cut", requested=requested, how="blackhole routes in the middle namespace")
    deadline = done + 2 * (T + PIKA_GRACE) + CLIENT_SLACK
    while time.time() < deadline and not (_gave_up(log, client) and _broker_gave_up(node)):
        time.sleep(POLL)
    exception = log.find("exception")
    if exception is not None:
        # The client's capture must show a packet after the client gave up, or no analysis can tell its
        # give-up from a capture that stopped first: wait for its kernel's next retransmission.
        time.sleep(max(0.0, _next_retransmission(done + T / 2, exception["t"]) + SETTLE - time.time()))
    time.sleep(SETTLE)
    return None, {"kind": catalog.PARTITION,
                  "how": "blackhole routes to both endpoints' addresses in the middle namespace (one `ip -batch`): "
                         "every forwarded packet discarded silently, both ways, no ICMP",
                  "cut_requested": requested, "cut_at": done, "restored_at": None}


def _idle_reset(scenario: catalog.Scenario, params: dict, topo: netns.Topology, node: LocalBroker, client,
                log: EventLog) -> tuple[int | None, dict]:
    _wait_for(lambda: _gave_up(log, client), params["work"] + CLIENT_SLACK)
    time.sleep(SETTLE)
    reset = next((e for e in log.merged() if e["event"] == "middlebox_idle_reset"), {})
    return None, {"kind": "idle-timeout-middlebox",
                  "how": "a TCP forwarder in the middle namespace resets both legs once no byte went either way for "
                         "N s",
                  "idle_timeout": params["work"], "killed_at": reset.get("reset_at"),
                  "last_byte_at": reset.get("last_byte_at"), "idle_for": reset.get("idle_for")}


def _idle_forget(scenario: catalog.Scenario, params: dict, topo: netns.Topology, node: LocalBroker, client,
                 log: EventLog) -> tuple[int | None, dict]:
    _wait_for(lambda: _gave_up(log, client), params["work"] + PUBLISH_AFTER_EXPIRY + CLIENT_SLACK)
    time.sleep(SETTLE)
    return None, {"kind": "idle-timeout-middlebox-silent",
                  "how": "the middle namespace's conntrack forgets the flow N s after its last packet; the client's "
                         "next packet is rejected with a TCP RST from the router (its own TTL)",
                  "idle_timeout": params["work"], "rejected": topo.nft_counters().get("forgotten-flow-reset")}


def _loss(scenario: catalog.Scenario, params: dict, topo: netns.Topology, node: LocalBroker, client,
          log: EventLog) -> tuple[int | None, dict]:
    percent = scenario.loss_percent
    consuming = _wait_event(log, client, "consuming", CLIENT_SLACK)
    topo.nft(netns.forward_table([f'iifname "{iface}" numgen random mod 100 < {percent} counter drop comment "{name}"'
                                  for iface, name in ((netns.MID_CLIENT_IFACE, "lost-client-to-broker"),
                                                      (netns.MID_BROKER_IFACE, "lost-broker-to-client"))]))
    log.add("runner", "loss_started", percent=percent)
    _sleep_until(consuming["t"] + params["work"], client)
    _wait_for(lambda: client.poll() is not None or min(topo.nft_counters().values(), default=0) > 0, LOSS_WAIT)
    dropped = topo.nft_counters()
    netns.run(["nft", "delete", "table", "inet", netns.NFT_TABLE], topo.mid)
    log.add("runner", "loss_stopped", dropped=dropped)
    time.sleep(LOSS_SETTLE)  # what was lost last is retransmitted before the close
    open(os.path.join(os.path.dirname(log.path), CLOSE_SIGNAL), "w").close()  # the client's work dir
    try:
        status: int | None = client.wait(CLIENT_SLACK)
    except subprocess.TimeoutExpired:
        status = None
    time.sleep(SETTLE)
    started, stopped = (next(e["t"] for e in log.merged() if e["event"] == ev)
                        for ev in ("loss_started", "loss_stopped"))
    return status, {"kind": "lossy-path",
                    "how": "nftables in the middle namespace's forward hook: `numgen random mod 100 < P drop` per "
                           "direction (netem is not in this kernel)",
                    "loss_percent": percent, "loss_from": started, "loss_until": stopped, "dropped": dropped}


FAULTS = {catalog.PARTITION: _partition, catalog.IDLE_RESET: _idle_reset, catalog.IDLE_FORGET: _idle_forget,
          catalog.LOSS: _loss}


def _next_retransmission(first_send: float, after: float) -> float:
    """When a segment sent at `first_send` (at the latest) and never acknowledged is next retransmitted
    after `after`: Linux backs off from its 200 ms minimum RTO, doubling (a tail loss probe first)."""
    t, rto = first_send + MIN_RTO, MIN_RTO
    while t <= after:
        t += rto
        rto *= 2
    return t


MIN_RTO = 0.2  # TCP_RTO_MIN


def _sleep_until(t: float, client) -> None:
    while time.time() < t and client.poll() is None:
        time.sleep(POLL)


def _wait_for(done, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not done():
        time.sleep(POLL)


def _gave_up(log: EventLog, client) -> bool:
    return log.find("exception") is not None or client.poll() is not None


def _broker_gave_up(node: LocalBroker) -> bool:
    return any("heartbeat" in text or "closed TCP connection" in text for _t, _level, text in broker_log(node))


def broker_log(node: LocalBroker) -> list[tuple[float, str, str]]:
    """(epoch, level, text) of the node's log entries about AMQP connections (continuation lines joined)."""
    entries: list[tuple[float, str, str]] = []
    with contextlib.suppress(OSError), open(node.log_file, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = LOG_LINE.match(line.rstrip("\n"))
            if m:
                stamp = dt.datetime.fromisoformat(m.group(1)).timestamp()
                entries.append((stamp, m.group(2), m.group(3).strip()))
            elif entries and line.strip():
                t, level, text = entries[-1]
                entries[-1] = (t, level, f"{text} {line.strip()}")
    return [e for e in entries if any(word in e[2] for word in BROKER_LOG_WORDS)]


def _outcome(scenario: catalog.Scenario, log: EventLog) -> dict:
    """Ground truth common to every fault: the client's exception and the broker's teardown (its log)."""
    events = log.merged()
    exception = next((e for e in events if e["event"] == "exception"), None)
    gave_up = next((e for e in events if e["event"] == "broker_log" and
                    ("heartbeat" in e["text"] or "closed TCP connection" in e["text"])), None)
    return {"client_exception": exception["name"] if exception else None,
            "client_exception_at": exception["t"] if exception else None,
            "broker_closed_at": gave_up["t"] if gave_up else None,
            "broker_log": gave_up["text"] if gave_up else None}


def _from_the_wire(scenario: catalog.Scenario, params: dict, captures: dict) -> dict:
    """Truth that needs the captures: the TTLs of what each side received from the far end (a RST from
    a box in between has its own), the last packet that crossed each way (partition), and when the
    router's flow entry expired (its conntrack timeout after the last packet through it)."""
    far = {catalog.CLIENT_SIDE: "s2c", catalog.BROKER_SIDE: "c2s"}
    ttls = {}
    for side, way in far.items():
        directions = [conn[way] for conn in captures[side]["wire"].values()]
        ttls[f"{side}_side"] = {"peer_packets": sorted({t for d in directions for t in d["ttls"]}),
                                "peer_rsts": [r["ttl"] for d in directions for r in d["rsts"]]}
    found: dict[str, object] = {"received_ttls": ttls}
    broker_side = list(captures[catalog.BROKER_SIDE]["wire"].values())
    client_side = list(captures[catalog.CLIENT_SIDE]["wire"].values())
    if scenario.fault == catalog.PARTITION and broker_side and client_side:
        found["last_crossed"] = {"c2s": broker_side[0]["c2s"]["last"], "s2c": client_side[0]["s2c"]["last"]}
    if scenario.fault == catalog.IDLE_FORGET and broker_side:
        # Nothing crosses after the flow is forgotten: the broker side's last packet is the last through.
        last = max(d["last"] for d in (broker_side[0]["c2s"], broker_side[0]["s2c"]) if d["last"] is not None)
        found.update(last_packet_through_at=last, flow_expired_at=last + params["work"])
    return found


def _side_metadata(scenario: catalog.Scenario, side: str, params: dict, node: LocalBroker, cap: LiveCapture,
                   log: EventLog, client_params: dict, exit_status, started: float, work_dir: str, captures: dict,
                   fault: dict, sockets: dict, network: dict) -> dict:
    """One capture's `.json`: the run's ground truth with `capture` and `expected_verdicts` for this side."""
    wanted = scenario.side_verdicts[side]
    meta = build_metadata(dataclasses.replace(scenario, verdicts=wanted), params, {}, node, cap, log, client_params,
                          exit_status, [AMQP_PORT], started, os.path.basename(cap.path), work_dir)
    for info in meta["connections"].values():
        info["via"] = "middlebox" if scenario.fault == catalog.IDLE_RESET and info["role"] == catalog.CONSUMER \
            else info["via"]
        info["expected_verdict"] = wanted.get(info["role"])
        info["expected_verdict_by_side"] = {s: scenario.side_verdicts[s].get(info["role"]) for s in catalog.SIDES}
    meta["expected_verdicts"] = {cid: info["expected_verdict"] for cid, info in meta["connections"].items()
                                 if info["expected_verdict"] is not None}
    meta["side"] = side
    meta["capture"] = captures[side]
    meta["captures"] = captures
    meta["pair"] = {s: c["file"] for s, c in captures.items()}
    meta["network"] = network
    meta["fault"] = fault
    meta["sockets_at_end"] = sockets
    return meta
