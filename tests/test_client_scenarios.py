"""The scenarios of the other client libraries (py-amqp, aio-pika, Node.js amqplib) and pika's
blocked_connection_timeout, each run once per session (tests/fixtures_clients.py) against the session
broker: the wire and the metadata must show what the scenario claims (each library's heartbeats, who
tore the connection down and how, the client's exception), and the analyzer's verdict must equal the
ground truth. The wire is read by tests/scenario_wire.py (scapy and pamqp), not by the analyzer.
"""
from __future__ import annotations

import itertools
import json
import os
import statistics

import pytest

from analyzer.api import analyze_file
from analyzer.lab.scenarios import catalog, runner
from tests.fixtures_broker import leftover_children
from tests.fixtures_clients import BLOCK, BLOCKED_TIMEOUT, CLIENT_TIMINGS, HEALTHY, T
from tests.scenario_wire import connection_close, methods, summarize
from tests.test_scenarios import by_role, events, wire  # the same wire and event-log helpers

SLACK = 0.1  # timer drift and loopback scheduling, seconds
NAMES = sorted(CLIENT_TIMINGS)
BLOCKED = [f"{client}-blocked-handler" for client in ("py-amqp", "aio-pika", "amqplib")]
HEALTHY_RUNS = [f"{client}-healthy" for client in ("py-amqp", "aio-pika", "amqplib")]
SHIPPED = [*BLOCKED, "blocked-connection-timeout"]  # captures/NAME.pcap + .json
# The publisher connection's library: the Python programs publish through pika, amqplib through amqplib.
PUBLISHER_LIBRARY = {catalog.PY_AMQP: catalog.PIKA, catalog.AIO_PIKA: catalog.PIKA, catalog.AMQPLIB: catalog.AMQPLIB,
                     catalog.PIKA: catalog.PIKA}
# Each library's heartbeat interval on an idle connection, (low, high) in seconds, for T=2:
#   aiormq: every max(1, T // 2) s from a timer task, whatever else was sent;
#   amqplib: checks every T/2 and skips a beat after sending anything (its own beat too): every T;
#   py-amqp: heartbeat_tick sends when it finds nothing sent for T/2, and counts its own last beat
#   as sent at the next tick (the loop ticks every T/4 or on each frame): between T/2 and T + T/4.
CADENCE = {"aio-pika": (max(1, T // 2) - SLACK, max(1, T // 2) + SLACK), "amqplib": (T - SLACK, T + SLACK),
           "py-amqp": (T / 2, T + T / 4 + SLACK)}


def work_span(result):
    """(start, end) of the message's work: in the callback, or in the worker thread it started."""
    start, end = events(result, "work_start") or events(result, "callback_start"), \
        events(result, "work_end") or events(result, "callback_end")
    return start[0]["t"], end[0]["t"]


def assert_closed_normally(conn):
    """The client's Connection.Close, then its FIN; the broker's linger-0 close answers with an RST."""
    assert "Connection.Close" in methods(conn.client.payload) and "Connection.CloseOk" in methods(conn.server.payload)
    assert conn.client.fin_at is not None and conn.client.rst_at is None
    assert conn.server.fin_at is None


# ---- every run --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_metadata_and_files(client_runs, name):
    result = client_runs(name)
    scenario = catalog.SCENARIOS[name]
    with open(result.metadata_path) as f:
        meta = json.load(f)
    assert meta == json.loads(json.dumps(result.metadata))
    assert os.path.basename(result.pcap) == meta["capture"]["file"] == f"{name}.pcap"
    assert meta["schema"] == "amqp-hb/scenario-run/1" and meta["scenario"] == name
    assert meta["client"]["library"] == scenario.client and meta["client"]["version"]
    assert meta["capture"]["packets"] > 0 and meta["capture"]["dropped"] == 0
    assert meta["as_expected"], (meta["observed_exceptions"], meta["events"])
    assert {c["role"] for c in meta["connections"].values()} == set(scenario.verdicts)
    for info in meta["connections"].values():
        expected = scenario.client if info["role"] == catalog.CONSUMER else PUBLISHER_LIBRARY[scenario.client]
        assert info["library"] == expected and info["library_version"], info
    ts = [e["t"] for e in meta["events"]]
    assert ts == sorted(ts) and meta["started_epoch"] <= ts[0]


# ---- a handler that blocks longer than 3T: the broker resets the connection --------------------------


@pytest.mark.parametrize("name", BLOCKED)
def test_blocked_handler_dies(client_runs, name):
    r = client_runs(name)
    c = wire(r, "consumer")
    # RST from the broker 2T..3T after the client's last byte, and no FIN from the client before
    assert c.server.rst_at is not None and c.server.fin_at is None
    assert c.client.fin_at is None or c.client.fin_at > c.server.rst_at
    assert 2 * T - SLACK <= c.server.rst_at - c.client.last_data_at <= 3 * T + SLACK
    assert c.heartbeats("server") >= 2  # the broker kept sending; the client's kernel only ACKed
    assert c.heartbeats("client") >= 1  # it did beat while it idled before the message
    assert "Connection.Close" not in methods(c.client.payload) + methods(c.server.payload)
    start, end = events(r, "callback_start")[0]["t"], events(r, "callback_end")[0]["t"]
    assert c.client.last_data_at <= start + SLACK and end > c.server.rst_at  # silent for the whole handler
    assert end - start >= BLOCK - SLACK
    connected = events(r, "connected")[0]
    assert connected["heartbeat"] == T and connected["server_heartbeat"] == 60
    exc = events(r, "exception")
    assert r.metadata["observed_exceptions"] == [catalog.SCENARIOS[name].exception]
    assert "ECONNRESET" in exc[0]["text"] or "Connection reset by peer" in exc[0]["text"], exc
    assert_closed_normally(wire(r, "publisher"))


# ---- healthy: the work leaves the I/O loop running, heartbeats flow both ways, normal close ----------


@pytest.mark.parametrize("name", HEALTHY_RUNS)
def test_healthy_heartbeats_flow(client_runs, name):
    r = client_runs(name)
    c = wire(r, "consumer")
    library = catalog.SCENARIOS[name].client
    start, end = work_span(r)
    assert end - start >= HEALTHY - SLACK
    during = [t for t in c.client.heartbeat_times if start <= t <= end]
    assert len(during) >= 2 and sum(start <= t <= end for t in c.server.heartbeat_times) >= 4
    # the client never went silent for 1.5T while the work ran (the broker gives up after 2T at the earliest)
    sent = [start, *(t for t in c.client.data_times if start < t < end), end]
    assert max(b - a for a, b in itertools.pairwise(sent)) < 1.5 * T
    low, high = CADENCE[library]
    gaps = [b - a for a, b in itertools.pairwise(c.client.heartbeat_times)]
    assert low <= statistics.median(gaps) <= high, gaps
    connected = events(r, "connected")[0]
    assert connected["heartbeat"] == T and connected["server_heartbeat"] == 60
    assert c.client.heartbeat_times[0] >= connected["t"] + min(1, T / 2) - SLACK  # timers start after open-ok
    assert events(r, "ack") and not r.metadata["observed_exceptions"]
    assert_closed_normally(c)
    assert_closed_normally(wire(r, "publisher"))


def test_close_reply_codes(client_runs):
    """What each library's plain close() puts in Connection.Close."""
    expected = {"py-amqp-healthy": (0, ""), "aio-pika-healthy": (200, "normally closed"),
                "amqplib-healthy": (200, "Cheers, thanks")}
    for name, (code, text) in expected.items():
        close = connection_close(wire(client_runs(name), "consumer").client.payload)
        assert (close.reply_code, close.reply_text) == (code, text), name


def test_amqplib_heartbeats_start_after_open_ok(client_runs):
    """amqplib's timers start on Open-Ok: the first beat T/2 or T later, never during the handshake."""
    r = client_runs("amqplib-healthy")
    c = wire(r, "consumer")
    first = c.client.heartbeat_times[0]
    assert events(r, "connected")[0]["t"] + T / 2 - SLACK <= first <= events(r, "connected")[0]["t"] + T + SLACK


# ---- pika's blocked_connection_timeout --------------------------------------------------------------


def test_blocked_connection_timeout(client_runs):
    r = client_runs("blocked-connection-timeout")
    c = wire(r, "publisher")
    info = r.metadata["connections"][by_role(r, "publisher")]
    assert info["expected_cause"] == catalog.BLOCKED_CONNECTION_TIMEOUT
    assert info["blocked_connection_timeout"] == BLOCKED_TIMEOUT
    assert info["blocked_at"] == events(r, "blocked")[0]["t"]
    assert "Basic.Publish" in methods(c.client.payload) and "Connection.Blocked" in methods(c.server.payload)
    # pika tore the stream down B s after Connection.Blocked: a FIN, no Connection.Close, no RST first
    assert c.client.fin_at is not None and (c.client.rst_at is None or c.client.rst_at > c.client.fin_at)
    assert "Connection.Close" not in methods(c.client.payload) + methods(c.server.payload)
    # The broker reads nothing from a blocked connection (it sees the FIN only once the runner clears
    # the alarm) but keeps its heartbeat timer: what it sends after the FIN draws the client's RST.
    assert all(t > c.client.fin_at for t in c.server.data_times if t > info["blocked_at"] + BLOCKED_TIMEOUT)
    after_fin = [t for t in c.server.data_times if t > c.client.fin_at]
    if c.client.rst_at is not None:  # the broker's next heartbeat, or its Connection.Unblocked, met the closed socket
        assert after_fin and after_fin[0] <= c.client.rst_at
    assert BLOCKED_TIMEOUT - SLACK <= c.client.fin_at - info["blocked_at"] <= BLOCKED_TIMEOUT + 2 * SLACK
    assert c.server.fin_at is None or c.server.fin_at > c.client.fin_at
    # both kept beating while blocked (the broker stops reading a blocked connection, not its timers)
    assert sum(info["blocked_at"] < t < c.client.fin_at for t in c.client.heartbeat_times) >= 2
    assert r.metadata["observed_exceptions"] == ["ConnectionBlockedTimeout"]
    exc = events(r, "exception")[0]
    assert 0 <= exc["t"] - c.client.fin_at < 0.5
    cleared = events(r, "memory_alarm_cleared")[0]
    assert cleared["requested"] > exc["t"] and cleared["vm_memory_high_watermark"] != runner.ALARM_WATERMARK


# ---- the analyzer against the ground truth -----------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_analyzer_agrees(client_runs, name):
    r = client_runs(name)
    analysis = analyze_file(r.pcap, ports=(r.metadata["ports"]["amqp"],))
    got = {d.timeline.info.id: d.verdict for d in analysis.connections}
    assert got == r.metadata["expected_verdicts"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_capture(captures_dir, name):
    """captures/<name>.pcap + .json exist, are small, clean, and the analyzer agrees with them."""
    pcap, meta_path = captures_dir / f"{name}.pcap", captures_dir / f"{name}.json"
    meta = json.loads(meta_path.read_text())
    scenario = catalog.SCENARIOS[name]
    assert meta["scenario"] == name and meta["as_expected"] and meta["capture"]["dropped"] == 0
    assert meta["client"]["library"] == scenario.client
    assert 0 < pcap.stat().st_size < 32 * 1024
    assert set(summarize(str(pcap))) == set(meta["expected_verdicts"])
    got = {d.timeline.info.id: d.verdict for d in analyze_file(str(pcap)).connections}
    assert got == meta["expected_verdicts"]


# ---- what is missing is said, not hidden ---------------------------------------------------------------


def test_a_missing_client_is_named(monkeypatch):
    amqplib = catalog.SCENARIOS["amqplib-healthy"]
    monkeypatch.setattr(runner.shutil, "which", lambda _name: None)
    assert "node is not installed" in runner.client_problem(amqplib)
    monkeypatch.undo()
    if runner.shutil.which("node"):
        monkeypatch.setattr(runner, "NODE_MODULES", "/nonexistent/node_modules")
        monkeypatch.setenv("NODE_PATH", "")
        problem = runner.client_problem(amqplib)
        assert "amqplib is not in /nonexistent/node_modules" in problem and "make venv" in problem
    real = runner.importlib.util.find_spec
    monkeypatch.setattr(runner.importlib.util, "find_spec", lambda name: None if name == "amqp" else real(name))
    problem = runner.client_problem(catalog.SCENARIOS["py-amqp-healthy"])
    assert "amqp not importable" in problem and "lab" in problem


def test_nothing_left_running(client_runs, broker):
    """No client (Python or node), capture tool or helper outlives its run."""
    for name in NAMES:
        try:
            client_runs(name)
        except pytest.skip.Exception:
            continue
    leftovers = leftover_children(broker)
    assert not leftovers, leftovers
