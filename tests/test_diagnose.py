"""Verdicts, predictions and findings end to end on scripted captures with exact timing."""
from __future__ import annotations

import pytest
from pamqp import commands

from analyzer.api import analyze_file
from analyzer.records import ACK, C2S, FIN, PSH, RST, S2C
from tests import synth

HB = synth.HEARTBEAT_FRAME
TUNE_OK = 0.007  # handshake_steps puts tune-ok at step 7


def write(tmp_path, steps, name="c.pcap", **kwargs):
    conv = synth.scripted_conversation(steps, **kwargs)
    path = tmp_path / name
    path.write_bytes(synth.pcap_bytes(conv.packets()))
    return path


def only(analysis):
    assert len(analysis.connections) == 1
    return analysis.connections[0]


def idle_heartbeats(t_from, t_to, timeout, *, client=True, server=True, client_until=None):
    """Both peers' heartbeats every T/2 from tune-ok, each answered by a bare ACK."""
    steps = []
    k = 1
    while (t := TUNE_OK + k * timeout / 2) <= t_to:
        if t >= t_from:
            if server:
                steps += [(t, S2C, PSH | ACK, HB), (t + 0.0002, C2S, ACK, b"")]
            if client and (client_until is None or t + 0.0005 <= client_until):
                steps += [(t + 0.0005, C2S, PSH | ACK, HB), (t + 0.0007, S2C, ACK, b"")]
        k += 1
    return steps


def blog_steps(rst_at=12.010):
    """heartbeat=3; the client's last heartbeat goes out at 4.5075; the broker keeps sending."""
    steps = synth.handshake_steps(3)
    steps += idle_heartbeats(0.01, 11.9, 3, client_until=4.508)
    steps.append((rst_at, S2C, RST | ACK, b""))
    return sorted(steps, key=lambda s: s[0])


def test_blog_case_is_missed_client_heartbeats_at_the_predicted_tick(tmp_path):
    d = only(analyze_file(write(tmp_path, blog_steps())))
    assert d.heartbeat.effective == 3 and d.heartbeat.source == "negotiated"
    assert d.last_client_byte == pytest.approx(4.5075, abs=1e-6)
    assert d.verdict == "missed-client-heartbeats"
    # Ticks at 0.007 + 3k: 6.007 saw the byte, 9.007 and 12.007 saw nothing.
    assert d.prediction.predicted == pytest.approx(12.007, abs=1e-6)
    assert d.prediction.window == pytest.approx((10.5075, 13.5075), abs=1e-6)
    assert d.prediction.error(d.close.time) == pytest.approx(0.003, abs=1e-6)
    assert d.close.how == "rst" and d.close.initiator == "server"
    kinds = {f.kind for f in d.findings}
    assert "client-app-blocked" in kinds
    assert "12.007" in d.explanation and "4.507" in d.explanation
    assert "add_callback_threadsafe" in d.explanation


@pytest.mark.parametrize("last_client, expected_close", [
    (6.0065, 12.007),  # just before the 6.007 tick: that tick sees it
    (6.0075, 15.007),  # just after: the 9.007 tick sees it, 12.007 and 15.007 are silent
])
def test_last_byte_on_either_side_of_a_tick(tmp_path, last_client, expected_close):
    steps = synth.handshake_steps(3)
    steps += idle_heartbeats(0.01, 14.9, 3, client=False)
    steps.append((last_client, C2S, PSH | ACK, HB))
    steps.append((expected_close + 0.002, S2C, RST | ACK, b""))
    d = only(analyze_file(write(tmp_path, sorted(steps, key=lambda s: s[0]))))
    assert d.verdict == "missed-client-heartbeats"
    assert d.prediction.predicted == pytest.approx(expected_close, abs=1e-6)


def test_rst_before_the_window_is_a_plain_reset(tmp_path):
    d = only(analyze_file(write(tmp_path, blog_steps(rst_at=7.0))))
    assert d.verdict == "reset"
    assert d.prediction_fits is False
    assert "before" in d.misfit


def test_broker_frozen_pika_gives_up_with_a_fin(tmp_path):
    # T=3: pika checks every 8 s from tune-ok (0.007): 8.007 saw the broker's last byte at 1.507,
    # 16.007 saw nothing and closed.
    steps = synth.handshake_steps(3)
    steps += [s for s in idle_heartbeats(0.01, 16.0, 3) if not (s[1] == S2C and s[2] & PSH and s[0] > 1.6)]
    steps = [s for s in steps if not (s[1] == C2S and s[2] == ACK and s[0] > 1.6)]
    steps.append((16.008, C2S, FIN | ACK, b""))
    steps.append((16.0085, S2C, ACK, b""))
    d = only(analyze_file(write(tmp_path, sorted(steps, key=lambda s: s[0]))))
    assert d.verdict == "missed-server-heartbeats"
    assert d.prediction.model == "pika"
    assert d.prediction.predicted == pytest.approx(16.007, abs=1e-6)
    assert "broker-app-blocked" in {f.kind for f in d.findings}


def test_graceful_close_and_benign_rst(tmp_path):
    steps = synth.handshake_steps(60)
    steps += [
        (1.0, C2S, PSH | ACK, synth.method_frame(commands.Connection.Close(reply_code=200, reply_text="Normal shutdown", class_id=0, method_id=0))),
        (1.001, S2C, PSH | ACK, synth.method_frame(commands.Connection.CloseOk())),
        (1.002, C2S, FIN | ACK, b""),
        (1.003, S2C, RST | ACK, b""),
    ]
    d = only(analyze_file(write(tmp_path, steps)))
    assert d.verdict == "graceful"
    assert d.close.how == "connection.close" and d.close.initiator == "client"
    assert d.close.benign_rst == pytest.approx(1.003, abs=1e-6)


def test_connection_close_with_error(tmp_path):
    steps = synth.handshake_steps(60)
    steps += [(1.0, S2C, PSH | ACK, synth.method_frame(commands.Connection.Close(
        reply_code=320, reply_text="CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'", class_id=0, method_id=0)))]
    d = only(analyze_file(write(tmp_path, steps)))
    assert d.verdict == "closed-with-error"
    assert d.close.reply_code == 320 and d.close.initiator == "server"


def test_consumer_timeout_channel_close_leaves_connection_open(tmp_path):
    text = ("PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. "
            "Timeout value used: 1000 ms. This timeout value can be configured, see consumers doc guide to learn more")
    steps = synth.handshake_steps(60)
    steps += [(5.0, S2C, PSH | ACK, synth.method_frame(commands.Channel.Close(reply_code=406, reply_text=text, class_id=60, method_id=80), 1))]
    d = only(analyze_file(write(tmp_path, steps)))
    assert d.verdict == "open"
    finding = next(f for f in d.findings if f.kind == "consumer-timeout")
    assert finding.channel == 1 and finding.time == pytest.approx(5.0, abs=1e-6)


def test_heartbeat_disabled_and_above_proposal(tmp_path):
    d = only(analyze_file(write(tmp_path, [*synth.handshake_steps(0), (30.0, S2C, RST | ACK, b"")])))
    assert d.heartbeat.effective == 0
    assert d.verdict == "reset"
    assert "heartbeat-disabled" in {f.kind for f in d.findings}
    d = only(analyze_file(write(tmp_path, synth.handshake_steps(120, proposed=60), name="above.pcap")))
    assert "heartbeat-above-proposal" in {f.kind for f in d.findings}


def test_missing_handshake_infers_timeout_and_tick_phase(tmp_path):
    steps = [s for s in blog_steps() if s[0] > 0.5]  # the capture starts mid-stream
    d = only(analyze_file(write(tmp_path, steps)))
    assert d.heartbeat.source == "inferred" and d.heartbeat.effective == 3
    assert not d.timeline.handshake_seen
    assert d.verdict == "missed-client-heartbeats"
    assert abs(d.prediction.error(d.close.time)) < 0.05


def test_capture_gap_in_the_silence_is_reported_not_taken_for_silence(tmp_path):
    steps = blog_steps()
    # Drop the client's heartbeat at 3.0075: the broker's next ACK acknowledges bytes never captured.
    steps = [s for s in steps if not (s[1] == C2S and s[2] & PSH and abs(s[0] - 3.0075) < 1e-6)]
    conv = synth.scripted_conversation(blog_steps())
    kept = [seg for seg in conv.segments
            if not (seg.direction == C2S and seg.payload and abs(seg.timestamp - 1700000003.0075) < 1e-6)]
    path = tmp_path / "gap.pcap"
    path.write_bytes(synth.pcap_bytes(conv.packets(segments=kept)))
    d = only(analyze_file(path))
    gaps = [f for f in d.findings if f.kind == "capture-gap"]
    assert gaps and "8 bytes c2s" in gaps[0].detail
    assert d.timeline.c2s.missing_bytes == 8


def test_resource_alarm_pauses_the_monitor_and_restarts_the_grid(tmp_path):
    # connection.blocked at 2.0 pauses RabbitMQ's monitor; connection.unblocked at 20.0 restarts it
    # with a fresh grid whose first look counts as activity: close at 20.0 + 3T = 29.0.
    steps = synth.handshake_steps(3)
    steps += [(1.0, C2S, PSH | ACK, HB),
              (2.0, S2C, PSH | ACK, synth.method_frame(commands.Connection.Blocked(reason="low on memory"))),
              (20.0, S2C, PSH | ACK, synth.method_frame(commands.Connection.Unblocked())),
              (20.0002, C2S, ACK, b""),
              (29.003, S2C, RST | ACK, b"")]
    d = only(analyze_file(write(tmp_path, steps)))
    assert d.verdict == "missed-client-heartbeats"
    assert d.prediction.anchor_kind == "unblocked"
    assert d.prediction.predicted == pytest.approx(29.0, abs=1e-6)
    assert [f.kind for f in d.findings if f.kind == "connection-blocked"] == ["connection-blocked"] * 2


def test_no_acks_at_all_is_peer_unreachable(tmp_path):
    # The client vanished (cable pulled): the broker's heartbeats go unanswered, not even ACKed.
    steps = synth.handshake_steps(3)
    steps += [(1.5, C2S, PSH | ACK, HB), (1.5002, S2C, ACK, b"")]
    steps += [(t, S2C, PSH | ACK, HB) for t in (1.507, 3.007, 4.507, 6.007, 7.507)]
    steps.append((9.010, S2C, RST | ACK, b""))
    d = only(analyze_file(write(tmp_path, steps)))
    assert d.verdict == "missed-client-heartbeats"
    kinds = {f.kind for f in d.findings}
    assert "peer-unreachable" in kinds and "client-app-blocked" not in kinds


@pytest.mark.parametrize("product, code, error", [
    ("py-amqp", 0, False),  # py-amqp's own Channel.close() sends reply code 0 (its normal close)
    ("Pika Python Client Library", 0, True),  # pika's is 200: a 0 from pika is not its normal close
    ("py-amqp", 200, False),
    ("py-amqp", 406, True),
])
def test_a_clients_own_normal_channel_close_is_no_channel_error(tmp_path, product, code, error):
    steps = synth.handshake_steps(60, client_properties={"product": product, "version": "5.4.2"})
    steps += [(1.0, C2S, PSH | ACK, synth.method_frame(commands.Channel.Close(
        reply_code=code, reply_text="", class_id=0, method_id=0), 1))]
    d = only(analyze_file(write(tmp_path, steps)))
    findings = [f for f in d.findings if f.kind == "channel-error"]
    assert bool(findings) == error
    if findings:
        assert findings[0].detail == f"client closed channel 1: {code}"  # no trailing space without a text
