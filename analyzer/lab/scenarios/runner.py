"""Run one scenario end to end (edge): broker, optional proxy, live capture, the client program, metadata.

Strategy: everything a run starts is entered on one ExitStack, so a failing scenario, Ctrl-C or
SIGTERM (turned into an exception by the CLI) still kills the client, stops the capture, closes
the proxy, restores broker settings and stops a node we started, in that order. The client runs
as a subprocess writing JSON lines (the program of the scenario's client library: PROGRAMS); the
runner polls that log to time its own
actions (pause the broker, kill an idle publisher, stop the capture of a connection held open,
raise and clear the broker's memory alarm), merges client, proxy and runner events by time, and
writes `<out>/<name>-<UTC>.pcap` + `.json`. A TLS run (tls=True) points every client connection at
the node's TLS listener (amqps://, the test CA, server name localhost, optionally one pinned
version), captures that port, and has the clients append their session secrets to
`<out>/<name>-<UTC>.keys` (NSS key log: Wireshark's tls.keylog_file), named in the metadata's `tls`.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field

from analyzer.errors import EnvironmentProblem, UsageError
from analyzer.lab import certs
from analyzer.lab.broker import CTL_SCRIPTS, INSTALL_HINT, LAB_EXTRA_HINT, LocalBroker, die_with_parent, open_broker
from analyzer.lab.capture import LiveCapture
from analyzer.lab.netns import exec_prefix
from analyzer.lab.scenarios import catalog
from analyzer.lab.scenarios.proxy import TcpProxy

SCHEMA = "amqp-hb/scenario-run/1"
# pika checks received bytes every T+5 s and gives up after one silent window (pika/heartbeat.py),
# so detection comes (T+5)..2(T+5) after the broker's last byte.
PIKA_GRACE = 5
# Extra seconds a client may take beyond its scripted timings (connect, declare, publish, close).
CLIENT_SLACK = 30.0
POLL = 0.05
SETTLE_AFTER_CLIENT = 0.5  # lets the broker's answer to the client's last packet reach the capture

HERE = os.path.dirname(os.path.abspath(__file__))
# The program each client library's scenarios run: a Python module (run with this interpreter) and
# the module it needs, or a Node.js script (run with node, amqplib found through NODE_PATH).
PROGRAMS = {
    catalog.PIKA: ("python", "analyzer.lab.scenarios.client", "pika"),
    catalog.PY_AMQP: ("python", "analyzer.lab.scenarios.client_pyamqp", "amqp"),
    catalog.AIO_PIKA: ("python", "analyzer.lab.scenarios.client_aiopika", "aio_pika"),
    catalog.AMQPLIB: ("node", os.path.join(HERE, "client_amqplib.js"), "amqplib"),
}
# Where `make venv` installs amqplib with npm (npm install --prefix .venv/node amqplib).
NODE_MODULES = os.path.join(sys.prefix, "node", "node_modules")
NODE_HINT = ("Node.js and amqplib: `apt-get install nodejs npm`, then `make venv` "
             f"(npm install --prefix {os.path.dirname(NODE_MODULES)} amqplib)")
# py-amqp builds its SSLContext itself: the `context` form of its `ssl` option (create_default_context,
# which honours SSLKEYLOGFILE) takes no version bounds, and the form with bounds writes no key log.
TLS_VERSION_UNPINNABLE = {catalog.PY_AMQP}
TLS_CA_NOTE = "test CA generated at broker start, deleted with the node"


@dataclass
class RunResult:
    scenario: str
    pcap: str
    metadata_path: str
    metadata: dict
    keylog: str | None = None  # TLS runs: the clients' key log (NSS format) beside the pcap
    # Network fault runs: side ("client", "broker") -> that capture's RunResult (its pcap and its own
    # metadata); pcap, metadata_path and metadata above are then the client side's.
    sides: dict[str, RunResult] = field(default_factory=dict)

    @property
    def expected_verdicts(self) -> dict:
        return self.metadata["expected_verdicts"]


class EventLog:
    """Client JSON-lines log plus events the runner and proxy add; read incrementally."""

    def __init__(self, path: str):
        self.path = path
        self.client: list[dict] = []
        self.other: list[dict] = []
        self._offset = 0
        self._lock = threading.Lock()
        open(path, "w").close()

    def add(self, source: str, event: str, **fields) -> None:
        self.add_at(time.time(), source, event, **fields)

    def add_at(self, t: float, source: str, event: str, **fields) -> None:
        """An event that happened at epoch `t` (e.g. read from the broker's log afterwards)."""
        with self._lock:
            self.other.append({"t": t, "source": source, "event": event, **fields})

    def poll(self) -> list[dict]:
        with open(self.path, encoding="utf-8") as f:
            f.seek(self._offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind("\n") + 1]  # a line being written stays for the next poll
        self._offset += len(complete.encode("utf-8"))
        new = [json.loads(line) for line in complete.splitlines() if line.strip()]
        self.client += new
        return new

    def find(self, event: str) -> dict | None:
        self.poll()
        return next((e for e in self.client if e["event"] == event), None)

    def merged(self) -> list[dict]:
        self.poll()
        with self._lock:
            return sorted(self.client + self.other, key=lambda e: e["t"])


def utc_stamp(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def utc_iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")


def client_problem(scenario: catalog.Scenario) -> str | None:
    """What is missing to run the scenario's client program, in one line (None: nothing)."""
    kind, _program, needs = PROGRAMS[scenario.client]
    python_needs = [needs, "pika"] if kind == "python" else []  # the Python programs publish through pika
    missing = [m for m in python_needs if importlib.util.find_spec(m) is None]
    if missing:
        return (f"scenario {scenario.name} runs {scenario.client}: the `lab` extra is missing "
                f"({', '.join(missing)} not importable): {LAB_EXTRA_HINT}")
    if kind != "node":
        return None
    node = shutil.which("node")
    if node is None:
        return f"scenario {scenario.name} runs Node.js amqplib: node is not installed; install {NODE_HINT}"
    found = subprocess.run([node, "-e", f"require.resolve({needs!r})"], env=_node_env(), capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=30, check=False)
    if found.returncode != 0:
        return f"scenario {scenario.name} runs Node.js amqplib: amqplib is not in {NODE_MODULES}; install {NODE_HINT}"
    return None


def _node_env() -> dict[str, str]:
    env = dict(os.environ)
    env["NODE_PATH"] = os.pathsep.join(p for p in (NODE_MODULES, env.get("NODE_PATH", "")) if p)
    return env


def resolve_params(scenario: catalog.Scenario, heartbeat=None, work=None, messages=None) -> dict:
    p = {"heartbeat": scenario.heartbeat if heartbeat is None else int(heartbeat),
         "work": scenario.work if work is None else float(work),
         "messages": scenario.messages if messages is None else int(messages)}
    if p["heartbeat"] < 0 or p["work"] < 0 or p["messages"] < 0:
        raise UsageError("--heartbeat, --work and --messages must not be negative")
    return p


def run_scenario(name: str, *, out_dir: str = ".", broker=None, broker_url: str | None = None,
                 heartbeat: int | None = None, work: float | None = None, messages: int | None = None,
                 backend: str = "auto", basename: str | None = None, progress=None,
                 interface: str | None = None, ipv6: bool = False, tls: bool = False,
                 tls_version: str | None = None) -> RunResult:
    """Run scenario `name` and return the files written.

    broker: an already entered LocalBroker/ExternalBroker to share (the test session's), else
    `broker_url` (an existing broker) or, when both are None, a fresh local node for this run.
    basename: file name without extension (default `<name>-<UTC timestamp>`).
    progress: optional callable(str) for one-line status messages.
    interface: capture interface (default: lo for a local broker, else any).
    ipv6: clients reach a local broker over [::1] (RabbitMQ listens on both families by default).
    tls: every client connection speaks TLS to the node's TLS listener (a LocalBroker(tls=True):
    the one started here, or `broker`), writing its secrets to `<base>.keys`; tls_version "1.2"
    or "1.3" pins it (and implies tls), None lets client and broker negotiate.
    """
    scenario = catalog.get(name)
    params = resolve_params(scenario, heartbeat, work, messages)
    tls = tls or tls_version is not None
    if scenario.fault:
        from analyzer.lab.scenarios.faults import run_fault

        return run_fault(scenario, params, out_dir=out_dir, broker=broker, broker_url=broker_url, backend=backend,
                         basename=basename, progress=progress, interface=interface, ipv6=ipv6, tls=tls)
    if tls:
        check_tls(scenario, tls_version, broker_url)
    missing = client_problem(scenario)
    if missing:
        raise EnvironmentProblem(missing)
    say = progress or (lambda _msg: None)
    started = time.time()
    base = os.path.join(out_dir, basename or f"{name}-{utc_stamp(started)}")
    os.makedirs(out_dir or ".", exist_ok=True)
    pcap_path, meta_path = base + ".pcap", base + ".json"
    keylog_path = os.path.abspath(base + ".keys") if tls else None
    work_dir = tempfile.mkdtemp(prefix="amqphb-run-")
    log = EventLog(os.path.join(work_dir, "events.jsonl"))
    meta: dict = {}

    settings = catalog.broker_settings(scenario, params)
    with contextlib.ExitStack() as stack:
        stack.callback(_remove_dir, work_dir)
        if broker is None:
            conf = {k: v for k, v in settings.items() if k == "consumer_timeout"}
            advanced = {k: v for k, v in settings.items() if k != "consumer_timeout"}
            if broker_url and scenario.needs_local_broker:
                raise UsageError(f"scenario {name} pauses or reconfigures the broker: run it without --broker")
            say("starting a throwaway RabbitMQ node" if not broker_url else "probing the broker")
            broker = stack.enter_context(open_broker(broker_url, conf=conf, advanced=advanced, tls=tls))
        else:
            if scenario.needs_local_broker and not isinstance(broker, LocalBroker):
                raise UsageError(f"scenario {name} pauses or reconfigures the broker: it needs a local node")
            if settings:
                previous = broker.set_runtime(settings)
                stack.callback(broker.restore_runtime, previous)
        tls_run = _tls_run(broker, tls_version, keylog_path)
        port = tls_run["port"] if tls_run else broker.port
        ports = [port]
        publish_url = client_url = broker.amqps_url if tls_run else broker.info.url
        if ipv6:
            if not _is_local(broker.host):
                raise UsageError("--ipv6 needs a local broker (the clients connect to [::1])")
            publish_url = client_url = _with_host(publish_url, "[::1]")
        if scenario.proxy:
            proxy = stack.enter_context(TcpProxy(broker.host, port,
                                                 on_event=lambda ev, **f: log.add("proxy", ev, **f)))
            ports.append(proxy.port)
            client_url = _with_port(client_url, proxy.port)
        iface = interface or ("lo" if _is_local(broker.host) else "any")
        cap = stack.enter_context(LiveCapture(pcap_path, iface=iface, ports=ports, backend=backend))
        log.add("runner", "capture_started", backend=cap.backend, filter=cap.filter)
        client_params = {**params, "url": client_url, "publish_url": publish_url,
                         "queue": f"amqphb-{name}-{uuid.uuid4().hex[:8]}", "events": log.path,
                         "idle_first": catalog.idle_seconds(scenario, params["heartbeat"]),
                         # the runner creates this file once it has raised the memory alarm
                         "runner_signal": os.path.join(work_dir, ALARM_SIGNAL)}
        if tls_run:
            client_params["tls"] = tls_run["client"]
        say(f"running {name} (heartbeat={params['heartbeat']} work={params['work']:g})")
        client = _start_client(scenario, client_params, work_dir)
        stack.callback(_kill, client)
        exit_status = _orchestrate(scenario, params, broker, client, log, cap)
        cap.stop()
        log.add("runner", "capture_stopped", packets=cap.stats.packets, dropped=cap.stats.dropped)
        if client.poll() is None:
            _kill(client)
            log.add("runner", "client_killed", signal="SIGTERM")
        exit_status = client.returncode if exit_status is None else exit_status
        meta = build_metadata(scenario, params, settings, broker, cap, log, client_params, exit_status,
                              ports, started, os.path.basename(pcap_path), work_dir,
                              tls_run["metadata"] if tls_run else None)
    with open(meta_path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    return RunResult(name, pcap_path, meta_path, meta, keylog=keylog_path)


def check_tls(scenario: catalog.Scenario, tls_version: str | None, broker_url: str | None) -> None:
    """Refuse, before anything starts, a TLS run that cannot happen as asked."""
    if broker_url:
        raise UsageError("TLS runs need a node started by amqp-hb (its test CA signs the TLS listener's "
                         "certificate): run without --broker")
    if tls_version is not None:
        if tls_version not in certs.TLS_VERSIONS:
            raise UsageError(f"--tls-version must be one of {', '.join(certs.TLS_VERSIONS)}, got {tls_version!r}")
        if scenario.client in TLS_VERSION_UNPINNABLE:
            raise UsageError(f"scenario {scenario.name} runs {scenario.client}, which cannot pin a TLS version "
                             "and write a key log at once: run it with --tls alone (it negotiates TLS 1.3)")


def _tls_run(broker, tls_version: str | None, keylog_path: str | None) -> dict | None:
    """What a TLS run hands the client (`client`) and records (`metadata`); None for a plaintext run.

    Starts the key log empty: the clients append to it (Python's SSLContext.keylog_filename, node's
    --tls-keylog), so a file left by an earlier run with the same name would mix two sessions' secrets.
    """
    if keylog_path is None:
        return None
    if broker.amqps_port is None or broker.ca_file is None:
        raise UsageError("a TLS run needs a broker node with a TLS listener (LocalBroker(tls=True))")
    open(keylog_path, "w").close()
    client = {"ca": broker.ca_file, "version": tls_version, "keylog": keylog_path,
              "server_hostname": certs.SERVER_NAME}
    metadata = {"version_requested": tls_version, "port": broker.amqps_port,
                "keylog": os.path.basename(keylog_path), "server_hostname": certs.SERVER_NAME,
                "ca": TLS_CA_NOTE}
    return {"port": broker.amqps_port, "client": client, "metadata": metadata}


def _orchestrate(scenario, params, broker, client, log: EventLog, cap) -> int | None:
    """Drive the scenario's timeline; returns the client's exit status when it exited."""
    T, work = params["heartbeat"], params["work"]
    budget = params["messages"] * work + 3 * max(T, 1) + CLIENT_SLACK + catalog.idle_seconds(scenario, T)
    if scenario.name == "broker-paused":
        _wait_event(log, client, "consuming", CLIENT_SLACK)
        time.sleep(max(T, 1))  # let a few heartbeats flow both ways first
        longest = work or 2 * (T + PIKA_GRACE) + 2
        broker.pause()
        log.add("runner", "broker_paused", signal="SIGSTOP", longest=longest)
        try:
            deadline = time.time() + longest
            while time.time() < deadline and not log.find("exception") and client.poll() is None:
                time.sleep(POLL)
            if log.find("exception"):
                time.sleep(0.5)  # the client's FIN goes out while the broker is still frozen
            else:
                log.add("runner", "pause_ended_without_client_timeout", seconds=longest)
        finally:
            broker.resume()
            log.add("runner", "broker_resumed", signal="SIGCONT")
        budget = CLIENT_SLACK
    elif scenario.name == "publisher-idle":
        published = _wait_event(log, client, "published", CLIENT_SLACK)
        # The broker gives up < 3T after the client's last byte (heartbeat-model.md): kill after that.
        kill_at = published["t"] + max(work, 3 * T + 1.5)
        while time.time() < kill_at and client.poll() is None:
            time.sleep(POLL)
        _kill(client, signal.SIGKILL)
        log.add("runner", "client_killed", signal="SIGKILL")
        time.sleep(SETTLE_AFTER_CLIENT)
        return client.returncode
    elif scenario.memory_alarm:
        _memory_alarm(scenario, broker, client, log, params, budget)
    elif scenario.hold:
        _wait_event(log, client, "holding", budget)
        return None  # the caller stops the capture, then kills the client: the connection stays open
    try:
        status = client.wait(budget)
    except subprocess.TimeoutExpired:
        log.add("runner", "client_timeout", seconds=budget)
        return None
    time.sleep(SETTLE_AFTER_CLIENT)
    return status


# A high watermark this small puts any node over it: the memory alarm goes up at once.
ALARM_WATERMARK = "0.0000001"
ALARM_SIGNAL = "memory-alarm-raised"  # created in the run directory (the client polls for it) once raised


def _memory_alarm(scenario, broker, client, log: EventLog, params: dict, budget: float) -> None:
    """Raise the node's memory alarm when the client asks, clear it `work` s after Connection.Blocked,
    or once the client has logged the event scenario.alarm_cleared_after.

    The watermark is set with `rabbitmqctl eval vm_memory_monitor:set_vm_memory_high_watermark(...)`
    (what `rabbitmqctl set_vm_memory_high_watermark` calls), and always put back to the node's
    previous value, even when the client fails. The client is told through a file (runner_signal).
    """
    ctl = next((p for p in CTL_SCRIPTS if os.access(p, os.X_OK)), None)
    if ctl is None:
        raise EnvironmentProblem(INSTALL_HINT)
    previous = broker._ctl(ctl, "vm_memory_monitor:get_vm_memory_high_watermark().")  # e.g. 0.4
    _wait_event(log, client, "alarm_wanted", budget)
    try:
        requested = time.time()
        broker._ctl(ctl, f"vm_memory_monitor:set_vm_memory_high_watermark({ALARM_WATERMARK}).")
        log.add("runner", "memory_alarm_raised", vm_memory_high_watermark=ALARM_WATERMARK, requested=requested)
        open(os.path.join(os.path.dirname(log.path), ALARM_SIGNAL), "w").close()
        _wait_event(log, client, "blocked", CLIENT_SLACK)
        if scenario.alarm_cleared_after:
            _wait_event(log, client, scenario.alarm_cleared_after, params["work"] + CLIENT_SLACK)
        else:
            time.sleep(params["work"])
    finally:
        requested = time.time()  # the broker may unblock before rabbitmqctl returns: log both times
        broker._ctl(ctl, f"vm_memory_monitor:set_vm_memory_high_watermark({previous}).")
        log.add("runner", "memory_alarm_cleared", vm_memory_high_watermark=previous, requested=requested)


def _wait_event(log: EventLog, client, event: str, timeout: float) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = log.find(event)
        if found:
            return found
        if client.poll() is not None:
            found = log.find(event)
            if found:
                return found
            break
        time.sleep(POLL)
    failure = log.find("exception")
    detail = f": {failure['name']}: {failure['text']}" if failure else ""
    raise EnvironmentProblem(f"scenario client never reached '{event}'{detail}")


def _start_client(scenario: catalog.Scenario, params: dict, work_dir: str,
                  netns: str | None = None) -> subprocess.Popen:
    kind, program, _needs = PROGRAMS[scenario.client]
    if kind == "node":
        env = _node_env()
        # Node writes the TLS secrets of every connection of the process to this file (NSS key log).
        keylog = [f"--tls-keylog={params['tls']['keylog']}"] if params.get("tls") else []
        command = [shutil.which("node") or "node", *keylog, program]
    else:
        env = python_env()
        command = [sys.executable, "-m", program]
    out = open(os.path.join(work_dir, "client.out"), "wb")  # noqa: SIM115 (handed to the child, closed below)
    try:
        return subprocess.Popen([*exec_prefix(netns), *command, scenario.name, json.dumps(params)],
                                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=die_with_parent)
    finally:
        out.close()


def python_env() -> dict[str, str]:
    """The environment of a Python program the lab runs with `-m` (this package importable)."""
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
    env = dict(os.environ)
    env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _kill(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _with_port(url: str, port: int) -> str:
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] if parts.port else parts.netloc
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{netloc}:{port}"))


def _with_host(url: str, host: str) -> str:
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    port = f":{parts.port}" if parts.port else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}{host}{port}"))


def _is_local(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def build_metadata(scenario, params, settings, broker, cap, log: EventLog, client_params, exit_status,
                   ports, started, pcap_name, work_dir, tls: dict | None = None) -> dict:
    """The run's `.json`. tls: the TLS run's facts (_tls_run); each connection then gets `tls` (what its
    client negotiated: version, cipher; null for a plaintext one) and `negotiated` lists them."""
    events = log.merged()
    connections: dict[str, dict] = {}
    blocked_at = {e["role"]: e["t"] for e in events if e["event"] == "blocked" and e["source"] == "client"}
    for e in events:
        if e["event"] == "connected":
            connections[e["connection"]] = {"role": e["role"], "via": "proxy" if scenario.proxy and
                                            e["role"] == catalog.CONSUMER else "direct",
                                            # programs before the `library` field were all pika
                                            "library": e.get("library", catalog.PIKA),
                                            "library_version": e.get("library_version"),
                                            "heartbeat": e.get("heartbeat"),
                                            "server_heartbeat": e.get("server_heartbeat")}
            if tls is not None:
                connections[e["connection"]]["tls"] = e.get("tls")
            if e.get("blocked_connection_timeout") is not None:
                connections[e["connection"]]["blocked_connection_timeout"] = e["blocked_connection_timeout"]
        elif e["event"] == "proxy_accept":
            connections[e["upstream"]] = {"role": catalog.UPSTREAM, "via": "proxy-to-broker",
                                          "client_leg": e["connection"]}
    for info in connections.values():
        if info["role"] == catalog.UPSTREAM:
            # The upstream leg carries the client leg's bytes (TLS records too, unchanged); the proxy
            # accepts before the client logs `connected`, so the leg is looked up once all are known.
            leg = connections.get(info["client_leg"], {})
            info["library"], info["library_version"] = leg.get("library"), leg.get("library_version")
            if tls is not None:
                info["tls"] = leg.get("tls")
        info["expected_verdict"] = scenario.verdicts.get(info["role"], catalog.UNKNOWN)
        if info["role"] in scenario.expected_causes:
            info["expected_cause"] = scenario.expected_causes[info["role"]]
        if info["role"] in blocked_at:
            info["blocked_at"] = blocked_at[info["role"]]  # when the client saw Connection.Blocked (epoch)
    exceptions = [e for e in events if e["event"] == "exception"]
    observed = [e["name"] for e in exceptions]
    client_start = next((e for e in events if e["event"] == "start"), {})
    with contextlib.suppress(OSError), open(os.path.join(work_dir, "client.out"), encoding="utf-8",
                                            errors="replace") as f:
        client_output = f.read()[-2000:]
    ended = time.time()
    expected_exception = scenario.expected_exception(tls is not None)
    ports_used = {"amqp": broker.port}
    if tls is not None:
        ports_used["amqps"] = tls["port"]
        sessions = [c["tls"] for c in connections.values() if c.get("tls")]
        tls = {**tls, "negotiated": [s for i, s in enumerate(sessions) if s not in sessions[:i]]}
    if len(ports) > 1:
        ports_used["proxy"] = ports[1]
    return {
        "schema": SCHEMA,
        "scenario": scenario.name,
        "description": scenario.summary,
        "parameters": {**params, "queue": client_params["queue"], "work_means": scenario.work_means,
                       "broker_settings": settings},
        "started_utc": utc_iso(started), "ended_utc": utc_iso(ended),
        "started_epoch": started, "ended_epoch": ended,
        "broker": broker.info.as_dict(),
        "client": {"library": client_start.get("library", scenario.client), "version": client_start.get("version"),
                   # the other runtimes and libraries the program ran (pika: the Python programs' publisher)
                   **{k: client_start[k] for k in ("pika", "aiormq", "python", "node") if k in client_start},
                   "exit_status": exit_status, "output_tail": client_output if exit_status not in (0, None) else ""},
        "ports": ports_used,
        **({"tls": tls} if tls is not None else {}),
        "capture": {**cap.stats.as_dict(), "file": pcap_name},
        "expected_exception": expected_exception,
        "observed_exceptions": observed,
        "as_expected": _as_expected(scenario, expected_exception, observed, connections),
        "connections": connections,
        "expected_verdicts": {cid: info["expected_verdict"] for cid, info in connections.items()},
        "events": events,
    }


def _as_expected(scenario, expected: str | None, observed: list[str], connections: dict) -> bool:
    if expected and expected not in observed:
        return False
    if not expected and observed:
        return False
    return set(scenario.verdicts) <= {c["role"] for c in connections.values()}
