"""analyzer.watch (sans-IO) and `amqp-hb watch -r` (the edge), on shipped captures and synthetic ones,
with the clock driven by packet times: no sleeping.

- Replay: every shipped capture piped through `watch -r -` ends with analyze's verdict and explanation
  for every connection; fed as whole blocks or packet by packet, a Watch gives the same events.
- When: the at-risk warning is RabbitMQ's first silent look, and its predicted close is the model's;
  `at_risk_from` at the edges of each kind of rule; recovery and a second warning on one connection.
- Edges: bad input (not a capture, standard input, a cut stream), --exit-on, --follow on a file that
  grows, the table format, the metrics, a user without capture privilege.
"""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from analyzer.api import analyze_file
from analyzer.diagnosis.models import clients, rabbitmq
from analyzer.diagnosis.models.client_timers import predict_give_up
from analyzer.records import ACK, C2S, PSH, RST, S2C, RawPacket
from analyzer.sources.pcap import open_capture
from analyzer.watch import AT_RISK, OPENED, RECOVERED, STILL_OPEN, TEARDOWN, Watch, at_risk_from
from tests import synth
from tests.fixtures_broker import live_children

CAPTURES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "captures", "*.pcap")))
HEARTBEAT = pytest.importorskip("pamqp.heartbeat").Heartbeat().marshal()


def run_cli(*args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}  # the table's width when stdout is no terminal (rich reads it)
    return subprocess.run([sys.executable, "-m", "analyzer", "watch", *args], input=stdin, capture_output=True,
                          timeout=timeout, env=env)


def events_of(stdout: bytes) -> list[dict]:
    return [json.loads(line) for line in stdout.decode().splitlines()]


def replay(path: str, *, per_packet: bool = False) -> tuple[Watch, list]:
    watch = Watch()
    events = []
    with open(path, "rb") as f:
        reader = open_capture(f)
        for block in reader.blocks():
            if per_packet:
                for record in block.records():
                    events += watch.feed(RawPacket(*record))
            else:
                events += watch.feed_block(block)
    return watch, events + watch.finish()


# ---- replay: analyze's verdicts, whatever the feeding ----------------------------------------------


@pytest.mark.parametrize("path", CAPTURES, ids=os.path.basename)
def test_piped_replay_ends_with_analyzes_verdicts(path):
    with open(path, "rb") as f:
        done = run_cli("-r", "-", stdin=f.read())
    assert done.returncode == 0, done.stderr
    ended = {e["connection"]: e for e in events_of(done.stdout) if e["event"] in (TEARDOWN, STILL_OPEN)}
    analysis = analyze_file(path)
    assert set(ended) == {d.timeline.info.id for d in analysis.connections}
    for d in analysis.connections:
        event = ended[d.timeline.info.id]
        assert (event["verdict"], event["explanation"]) == (d.verdict, d.explanation)
        assert event["event"] == (STILL_OPEN if d.close.how == "open" else TEARDOWN)


@pytest.mark.parametrize("path", CAPTURES, ids=os.path.basename)
def test_blocks_and_single_packets_give_the_same_events(path):
    def key(events):
        # Teardowns come when the engine lets a closed connection go, which block boundaries move (within
        # a second): compared in time order, with everything they carry.
        return sorted((round(e.time, 6), e.kind, e.connection, e.risk and round(e.risk.predicted_close, 6),
                       e.diagnosis and e.diagnosis.explanation) for e in events)

    assert key(replay(path)[1]) == key(replay(path, per_packet=True)[1])


# ---- when the warning comes --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["blocked-callback", "tls13-blocked-callback", "py-amqp-blocked-handler",
                                  "amqplib-blocked-handler", "aio-pika-blocked-handler"])
def test_at_risk_is_rabbitmqs_first_silent_look(name):
    path = os.path.join(os.path.dirname(CAPTURES[0]), f"{name}.pcap")
    victim = next(d for d in analyze_file(path).connections if d.verdict == "missed-client-heartbeats")
    _, events = replay(path)
    warnings = [e for e in events if e.kind == AT_RISK and e.connection == victim.timeline.info.id]
    assert len(warnings) == 1
    risk = warnings[0].risk
    first_silent = next(c.time for c in victim.prediction.checks if not c.saw_activity)
    assert warnings[0].time == pytest.approx(victim.t0 + first_silent, abs=1e-6)
    assert risk.predicted_close == pytest.approx(victim.t0 + victim.prediction.predicted, abs=1e-6)
    assert risk.closer == "broker" and risk.peer == "RabbitMQ"
    # Announced before the RST, in capture order too.
    order = [e.kind for e in events if e.connection == victim.timeline.info.id]
    assert order == [OPENED, AT_RISK, TEARDOWN]


def test_threaded_worker_and_healthy_captures_are_never_at_risk():
    for name in ("threaded-worker", "long-heartbeat", "heartbeat-disabled", "idle", "consumer-timeout"):
        path = os.path.join(os.path.dirname(CAPTURES[0]), f"{name}.pcap")
        assert not [e for e in replay(path)[1] if e.kind == AT_RISK], name


def test_a_silent_broker_is_judged_with_pikas_own_rule():
    path = os.path.join(os.path.dirname(CAPTURES[0]), "broker-paused.pcap")
    (d,) = analyze_file(path).connections
    (warning,) = [e for e in replay(path)[1] if e.kind == AT_RISK]
    assert warning.risk.closer == "client" and warning.risk.peer == "pika"
    # pika gives up at its first silent look: warned once the broker missed two of its T/2 heartbeats.
    assert warning.time == pytest.approx(d.t0 + d.last_server_byte + d.heartbeat.effective, abs=1e-6)
    assert warning.risk.predicted_close == pytest.approx(d.t0 + d.prediction.predicted, abs=1e-6)


def test_at_risk_from_at_the_edges_of_each_rule():
    t, tune_ok = 3.0, 0.0
    # RabbitMQ: a byte just after a look is seen by the next one; the warning is the look after that.
    p = rabbitmq.predict_missed_client_heartbeats(3.0 + 1e-3, tune_ok, t)
    assert (at_risk_from(p), p.predicted) == (pytest.approx(9.0), pytest.approx(12.0))
    p = rabbitmq.predict_missed_client_heartbeats(3.0, tune_ok, t)  # on the look: seen by it
    assert (at_risk_from(p), p.predicted) == (pytest.approx(6.0), pytest.approx(9.0))
    anchors = {"tune": 0.0, "tune-ok": 0.0, "open-ok": 0.0}
    for key, expected in (("pika", 4.0), ("go", 4.0), ("java", 4.0), ("py-amqp", 4.0)):
        row = clients.profile(key)
        p = predict_give_up(row.detection, row.key, 1.0, t, anchors)
        assert at_risk_from(p) == pytest.approx(expected), key  # L + T: two missed T/2 heartbeats
        assert at_risk_from(p) < p.predicted
    # amqplib: two silent looks every T from open-ok; the first one warns.
    row = clients.profile("amqplib")
    p = predict_give_up(row.detection, row.key, 1.0, t, anchors)
    silent = [c.time for c in p.checks if not c.saw_activity]
    assert at_risk_from(p) == silent[0] == pytest.approx(6.0) and p.predicted == pytest.approx(9.0)


def recovering_capture(tmp_path) -> str:
    """T = 3; the client falls silent after 1.0 s, speaks again at 7.5 s (after RabbitMQ's first
    silent look at 6.007 s), falls silent again, and the broker resets it at 15.010 s."""
    steps = synth.handshake_steps(3)
    for i in range(1, 10):  # the broker's heartbeats every T/2 from tune-ok
        steps.append((round(0.007 + 1.5 * i, 6), S2C, PSH | ACK, HEARTBEAT))
    steps += [(1.0, C2S, PSH | ACK, HEARTBEAT), (7.5, C2S, PSH | ACK, HEARTBEAT), (15.010, S2C, RST | ACK, b"")]
    steps.sort(key=lambda s: s[0])
    conversation = synth.scripted_conversation(steps)
    path = str(tmp_path / "recovering.pcap")
    with open(path, "wb") as f:
        f.write(synth.pcap_bytes(conversation.packets()))
    return path


def test_recovery_then_a_second_warning(tmp_path):
    path = recovering_capture(tmp_path)
    for per_packet in (False, True):
        watch, events = replay(path, per_packet=per_packet)
        t0 = watch.summary.start_epoch
        seen = [(e.kind, round(e.time - t0, 3)) for e in events]
        assert seen == [(OPENED, 0.0), (AT_RISK, 6.007), (RECOVERED, 7.5), (AT_RISK, 12.007), (TEARDOWN, 15.01)]
        assert events[-1].diagnosis.verdict == "missed-client-heartbeats"
        assert events[3].risk.predicted_close - t0 == pytest.approx(15.007)


def test_advance_without_packets_warns_on_time(tmp_path):
    """A live source: no packet comes after the client falls silent; the clock alone brings the warning."""
    path = recovering_capture(tmp_path)
    watch = Watch()
    with open(path, "rb") as f:
        records = [RawPacket(*r) for block in open_capture(f).blocks() for r in block.records()]
    for packet in records:
        if packet.timestamp - records[0].timestamp > 5:
            break
        assert not [e for e in watch.feed(packet) if e.kind == AT_RISK]
    t0 = watch.summary.start_epoch
    assert watch.advance(t0 + 6.006) == []
    (warning,) = watch.advance(t0 + 6.008)
    assert warning.kind == AT_RISK and warning.time - t0 == pytest.approx(6.007)
    assert watch.statuses()[0].state == "at-risk"


# ---- the edge: bad input, exit statuses, growing files -------------------------------------------------


def test_not_a_capture_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello, not a capture\n")
    done = run_cli("-r", str(bad))
    assert done.returncode == 2
    assert done.stderr.decode().splitlines() == [
        f"amqp-hb: {bad}: not a pcap or pcapng file (starts with 68656c6c)"]
    done = run_cli("-r", "-", stdin=b"garbage!" * 10)
    assert done.returncode == 2 and done.stderr.decode().startswith("amqp-hb: standard input: not a pcap")
    done = run_cli("-r", str(tmp_path / "missing.pcap"))
    assert done.returncode == 2 and "no such file" in done.stderr.decode()


def test_a_stream_cut_mid_record_warns_and_gives_final_states():
    path = os.path.join(os.path.dirname(CAPTURES[0]), "blocked-callback.pcap")
    with open(path, "rb") as f:
        data = f.read()
    done = run_cli("-r", "-", stdin=data[: len(data) * 2 // 3 + 7])
    assert done.returncode == 0, done.stderr
    events = events_of(done.stdout)
    assert [e for e in events if e["event"] == "warning" and "cut" in e["message"]]
    opened = {e["connection"] for e in events if e["event"] == OPENED}
    assert opened == {e["connection"] for e in events if e["event"] in (TEARDOWN, STILL_OPEN)}


def test_exit_on():
    captures = os.path.dirname(CAPTURES[0])
    done = run_cli("-r", os.path.join(captures, "blocked-callback.pcap"), "--exit-on", "at-risk")
    assert done.returncode == 0
    assert events_of(done.stdout)[-1]["event"] == AT_RISK
    done = run_cli("-r", os.path.join(captures, "threaded-worker.pcap"), "--exit-on", "at-risk")
    assert done.returncode == 3
    # teardown: one that needs attention; the graceful close of the capture's publisher does not count.
    done = run_cli("-r", os.path.join(captures, "blocked-callback.pcap"), "--exit-on", "teardown")
    assert done.returncode == 0
    teardowns = [e for e in events_of(done.stdout) if e["event"] == TEARDOWN]
    assert [e["verdict"] for e in teardowns] == ["graceful", "missed-client-heartbeats"]
    assert events_of(done.stdout)[-1] == teardowns[-1]
    done = run_cli("-r", os.path.join(captures, "long-heartbeat.pcap"), "--exit-on", "teardown")
    assert done.returncode == 3


def test_late_packets_are_waited_for_not_taken_for_silence():
    """A capture tool that buffers (tcpdump without --immediate-mode): every packet reaches the watch
    0.6 s after its timestamp, and the client's heartbeat comes 0.2 s before each of RabbitMQ's
    looks. Judged on time, each look would find silence; the watch waits as long as packets lag."""
    start = time.time() + 0.5
    steps = synth.handshake_steps(2)
    for k in range(1, 6):
        steps.append((round(0.007 + 2 * k - 0.2, 6), C2S, PSH | ACK, HEARTBEAT))
    for k in range(1, 11):  # the broker's, every T/2
        steps.append((round(0.007 + k, 6), S2C, PSH | ACK, HEARTBEAT))
    steps.sort(key=lambda step: step[0])
    packets = synth.scripted_conversation(steps, start=start).packets()
    proc = subprocess.Popen([sys.executable, "-m", "analyzer", "watch", "-r", "-", "--format", "jsonl"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(synth.pcap_header(packets[0][1]))
        for timestamp, _, frame in packets:
            time.sleep(max(0.0, timestamp + 0.6 - time.time()))
            proc.stdin.write(synth.pcap_record(timestamp, frame))
            proc.stdin.flush()
        time.sleep(1.0)  # the last look (10.007 s) is judged with the lag's wait before the input ends
        out, _ = proc.communicate(b"", timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    events = events_of(out)
    assert not [e for e in events if e["event"] == AT_RISK], events
    (warning,) = [e for e in events if e["event"] == "warning"]
    assert warning["message"].startswith("standard input: packets arrive up to 0.6")
    assert "--immediate-mode" in warning["message"]


def test_follow_reads_a_file_as_it_grows(tmp_path):
    source = os.path.join(os.path.dirname(CAPTURES[0]), "blocked-callback.pcap")
    with open(source, "rb") as f:
        data = f.read()
    growing = tmp_path / "growing.pcap"
    growing.write_bytes(data[:24])  # the file header only, as tcpdump leaves it before the first packet
    proc = subprocess.Popen([sys.executable, "-m", "analyzer", "watch", "-r", str(growing), "--follow",
                             "--format", "jsonl"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[dict] = []
    reader = threading.Thread(target=lambda: lines.extend(json.loads(x) for x in proc.stdout), daemon=True)
    reader.start()
    try:
        time.sleep(0.5)
        with open(growing, "ab") as f:
            f.write(data[24:])
        deadline = time.time() + 20
        while time.time() < deadline and not any(e["event"] == AT_RISK for e in lines):
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    kinds = [e["event"] for e in lines]
    assert AT_RISK in kinds
    assert kinds.count(TEARDOWN) + kinds.count(STILL_OPEN) == kinds.count(OPENED)


def test_text_and_table_formats():
    path = os.path.join(os.path.dirname(CAPTURES[0]), "blocked-callback.pcap")
    text = run_cli("-r", path, "--format", "text").stdout.decode()
    assert "AT RISK      RabbitMQ will close 127.0.0.1:37356->127.0.0.1:5672 at " in text
    assert "unless the client sends a byte (client silent since" in text
    assert "teardown     127.0.0.1:37356->127.0.0.1:5672: missed-client-heartbeats" in text
    table = run_cli("-r", path, "--format", "table").stdout.decode()
    assert "broker's next look" in table and "torn down" in table and "missed-client-heartbeats" in table


def test_metrics_while_following(tmp_path):
    path = os.path.join(os.path.dirname(CAPTURES[0]), "blocked-callback.pcap")
    with open(path, "rb") as f:
        data = f.read()
    growing = tmp_path / "growing.pcap"
    growing.write_bytes(data)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "analyzer", "watch", "-r", str(growing), "--follow",
                             "--format", "jsonl", "--metrics-port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        body = ""
        deadline = time.time() + 20
        while time.time() < deadline and "amqp_hb_teardowns_total" not in body:
            time.sleep(0.3)
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                continue
        # Both connections were closed in the file; each teardown is counted by its verdict once the
        # engine retires it (5 s of capture time after its close: the followed file's clock runs on).
        deadline = time.time() + 20
        while time.time() < deadline and 'verdict="missed-client-heartbeats"' not in body:
            time.sleep(0.5)
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        assert 'amqp_hb_teardowns_total{verdict="missed-client-heartbeats"} 1.0' in body
        assert 'amqp_hb_teardowns_total{verdict="graceful"} 1.0' in body
        assert "amqp_hb_connections_open 0.0" in body
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)


def test_no_capture_privilege_is_one_line():
    done = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all",
                           sys.executable, "-m", "analyzer", "watch", "-i", "lo"], capture_output=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.decode().splitlines() == [
        "amqp-hb: capturing needs root or CAP_NET_RAW (try sudo, or setcap cap_net_raw+eip on the tool)"]


def test_a_capture_tool_that_dies_is_a_warning_final_states_and_exit_2():
    proc = subprocess.Popen([sys.executable, "-m", "analyzer", "watch", "-i", "lo", "--port", "9", "--format",
                             "jsonl"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr.readline().startswith("watching lo (tcpdump)")
        children = live_children(proc.pid)
        (tool,) = [pid for pid, cmd in children if cmd.startswith("tcpdump")] or [children]
        os.kill(tool, signal.SIGKILL)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err
    assert [json.loads(line)["message"] for line in out.splitlines()] == ["lo: tcpdump was killed by SIGKILL"], err


def test_an_unknown_interface_is_one_line():
    done = run_cli("-i", "no-such-if0")
    assert done.returncode == 2
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("amqp-hb: ") and "no-such-if0" in lines[0]


def test_a_directory_and_a_lonely_metrics_address_are_one_line(tmp_path):
    done = run_cli("-r", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.decode().splitlines() == [f"amqp-hb: {tmp_path}: is a directory, not a capture file"]
    done = run_cli("-r", CAPTURES[0], "--metrics-address", "0.0.0.0")
    assert done.returncode == 2 and done.stderr.decode() == "amqp-hb: --metrics-address goes with --metrics-port\n"


def test_follow_needs_a_file():
    done = run_cli("-r", "-", "--follow", stdin=b"")
    assert done.returncode == 2 and "--follow goes with -r FILE" in done.stderr.decode()

