"""`amqp-hb watch -i lo` live, as an operator runs it, while scenarios run against the session broker.

One watch process (a real tcpdump behind it, streaming pcap to it) sees a blocked-callback run and
then a threaded-worker run. The at-risk warning must arrive before the RST, within 100 ms of
RabbitMQ's first silent look, predicting the close within 50 ms of the RST; the teardown event must
carry analyze's verdict for the scenario's own capture; the threaded worker is never at risk.
Ctrl-C (SIGINT) ends the watch with the final states, no child left behind.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest

from analyzer.api import analyze_file
from analyzer.lab.scenarios.runner import run_scenario
from tests.fixtures_broker import live_children, running

T = 2
BLOCK = 3 * T + 0.5
ARRIVAL_TOLERANCE = 0.1  # the at-risk event, after RabbitMQ's first silent look
PREDICTION_TOLERANCE = 0.05  # the predicted close, against the observed RST
TEARDOWN_WAIT = 15.0  # the teardown is final RETIRE_AFTER (5 s) after the close


class WatchProcess:
    """`python -m analyzer watch ...` with every jsonl event and the wall time it arrived."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "analyzer", "watch", *args, "--format", "jsonl"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[tuple[float, dict]] = []
        self.stderr: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.events.append((time.time(), json.loads(line)))

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)
            if line.startswith("watching"):
                self.ready.set()

    def of(self, connection: str, kind: str) -> list[tuple[float, dict]]:
        return [(t, e) for t, e in self.events if e.get("connection") == connection and e["event"] == kind]

    def wait_for(self, connection: str, kind: str, timeout: float) -> list[tuple[float, dict]]:
        deadline = time.time() + timeout
        while time.time() < deadline and not self.of(connection, kind):
            time.sleep(0.1)
        return self.of(connection, kind)


@pytest.fixture(scope="module")
def watched(broker, tmp_path_factory):
    out = tmp_path_factory.mktemp("watch-live")
    watch = WatchProcess("-i", "lo", "--port", str(broker.port))
    try:
        assert watch.ready.wait(15), f"watch did not start: {''.join(watch.stderr)}"
        blocked = run_scenario("blocked-callback", out_dir=str(out), broker=broker, basename="blocked",
                               heartbeat=T, work=BLOCK)
        threaded = run_scenario("threaded-worker", out_dir=str(out), broker=broker, basename="threaded",
                                heartbeat=T, work=BLOCK)
        victim = next(d for d in analyze_file(blocked.pcap).connections if d.verdict == "missed-client-heartbeats")
        watch.wait_for(victim.timeline.info.id, "teardown", TEARDOWN_WAIT)
        children = live_children(watch.proc.pid)
        watch.proc.send_signal(signal.SIGINT)
        status = watch.proc.wait(15)
        yield watch, blocked, threaded, victim, status, children
    finally:
        if watch.proc.poll() is None:
            watch.proc.kill()
            watch.proc.wait()


def test_at_risk_arrives_at_the_first_silent_look_before_the_rst(watched):
    watch, _, _, victim, _, _ = watched
    cid = victim.timeline.info.id
    warnings = watch.of(cid, "at-risk")
    assert len(warnings) == 1, watch.events
    arrived, event = warnings[0]
    p = victim.prediction
    t0 = victim.t0
    first_silent_look = t0 + next(c.time for c in p.checks if not c.saw_activity)
    rst = t0 + victim.close.time
    assert event["closer"] == "broker" and event["silent_peer"] == "client"
    assert event["at_risk_from"] == pytest.approx(first_silent_look, abs=0.001)
    assert first_silent_look <= arrived <= first_silent_look + ARRIVAL_TOLERANCE, (arrived - first_silent_look)
    assert arrived < rst
    assert abs(event["predicted_close"] - rst) <= PREDICTION_TOLERANCE, event["predicted_close"] - rst
    assert "unless the client sends a byte" in event["message"]


def test_teardown_carries_analyzes_verdict(watched):
    watch, _, _, victim, _, _ = watched
    teardowns = watch.of(victim.timeline.info.id, "teardown")
    assert len(teardowns) == 1
    event = teardowns[0][1]
    assert event["verdict"] == victim.verdict == "missed-client-heartbeats"
    assert event["close"]["how"] == "rst" and event["close"]["initiator"] == "server"
    assert event["close"]["epoch"] == pytest.approx(victim.t0 + victim.close.time, abs=1e-5)
    assert event["prediction"]["fits"] is True


def test_threaded_worker_is_never_at_risk(watched):
    watch, _, threaded, _, _, _ = watched
    ids = {d.timeline.info.id for d in analyze_file(threaded.pcap).connections}
    assert ids and all(watch.of(cid, "connection-opened") for cid in ids)
    assert not [e for _, e in watch.events if e["event"] == "at-risk" and e["connection"] in ids]


def test_ctrl_c_gives_final_states_and_leaves_nothing(watched):
    watch, _, _, _, status, children = watched
    assert status == 130
    assert any("tcpdump" in cmd for _, cmd in children), children
    assert not [pid for pid, _ in children if running(pid)]
    # Every connection seen is reported at the end: torn down, or still open.
    opened = {e["connection"] for _, e in watch.events if e["event"] == "connection-opened"}
    ended = {e["connection"] for _, e in watch.events if e["event"] in ("teardown", "still-open")}
    assert opened == ended
