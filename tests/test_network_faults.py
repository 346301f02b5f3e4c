"""Network faults told apart from blocked applications (issue 14): the TCP retransmission model at its
edges, and partitions seen from each side on scripted captures with exact timing.

The real recordings in network namespaces (tests/fixtures_faults.py) are checked against ground truth
in tests/test_fault_lab.py and below when they are there.
"""
from __future__ import annotations

import pytest

from analyzer.api import analyze_file
from analyzer.diagnosis.models import linux_tcp
from analyzer.records import ACK, C2S, PSH, RST, S2C
from tests import synth
from tests.test_diagnose import HB, TUNE_OK, idle_heartbeats, only, write

RTX = synth.RETRANSMIT


# ---- the retransmission timer model -------------------------------------------------------------------


def test_linux_backoff_train_is_recognised():
    sent = 6.0
    times = [sent + 0.2 * (2**k - 1) for k in range(1, 6)]  # 6.2, 6.6, 7.4, 9.0, 12.2
    assert linux_tcp.is_backoff([sent, *times])
    assert linux_tcp.next_retransmission([sent, *times]) == pytest.approx(12.2 + 6.4)


@pytest.mark.parametrize(("ratio", "backoff"), [(1.49, False), (1.51, True), (2.0, True), (2.59, True), (2.61, False)])
def test_backoff_ratio_edges(ratio, backoff):
    gaps = [0.2, 0.2 * ratio, 0.2 * ratio * ratio]
    times = [0.0]
    for gap in gaps:
        times.append(times[-1] + gap)
    assert linux_tcp.is_backoff(times) is backoff


def test_an_application_resending_every_second_is_not_backoff():
    assert not linux_tcp.is_backoff([0.0, 1.0, 2.0, 3.0, 4.0])


def test_too_few_retransmissions_say_nothing():
    assert not linux_tcp.is_backoff([0.0, 0.2, 0.6])  # the send and two retransmissions: one doubling
    assert linux_tcp.is_backoff([0.0, 0.2, 0.6, 1.4])


def test_intervals_held_at_rto_max():
    t = [0.0, 60.0, 180.0, 300.0, 420.0]
    assert linux_tcp.is_backoff(t)


# ---- a partition on scripted captures --------------------------------------------------------------------


CUT = 5.9  # after the idle heartbeats up to here, nothing crosses the path


def backoff_after(first: float, direction: str, until: float) -> list:
    steps, rto, t = [], 0.2, first
    while t + rto <= until:
        t += rto
        steps.append((t, direction, PSH | ACK, b"", RTX))
        rto *= 2
    return steps


def broker_side_partition() -> list:
    """Seen from the broker: the client's last heartbeat at 4.5075; after the cut the broker's heartbeat
    at 6.007 is never acknowledged and is retransmitted with back-off; the broker resets at its tick."""
    steps = synth.handshake_steps(3)
    steps += idle_heartbeats(0.01, CUT, 3, client_until=4.508)
    steps.append((6.007, S2C, PSH | ACK, HB))
    steps += backoff_after(6.007, S2C, 12.0)
    steps.append((12.011, S2C, RST | ACK, b""))
    return sorted(steps, key=lambda s: s[0])


def client_side_partition(end: float = 19.0) -> list:
    """Seen from the client: the broker's last heartbeat at 4.507; after the cut the client's heartbeat at
    6.0075 is retransmitted into silence; pika gives up at its check, but no FIN reaches the wire."""
    steps = synth.handshake_steps(3, client_properties=synth.PIKA_CLIENT_PROPERTIES)
    steps += idle_heartbeats(0.01, CUT, 3)
    steps.append((6.0075, C2S, PSH | ACK, HB))
    steps += backoff_after(6.0075, C2S, end)
    return sorted(steps, key=lambda s: s[0])


def kinds(d) -> set[str]:
    return {f.kind for f in d.findings}


def test_broker_side_partition_is_the_broker_timeout_and_the_client_unreachable(tmp_path):
    d = only(analyze_file(write(tmp_path, broker_side_partition())))
    assert d.verdict == "missed-client-heartbeats"
    assert d.prediction.predicted == pytest.approx(TUNE_OK + 12, abs=1e-6)
    assert "broker-app-blocked" not in kinds(d) and "client-app-blocked" not in kinds(d)
    (unreachable,) = [f for f in d.findings if f.kind == "peer-unreachable"]
    assert "client sent nothing" in unreachable.detail and "exponential back-off" in unreachable.detail
    assert d.timeline.s2c.retransmissions == 4 and d.timeline.s2c.ack_only_since_payload == 0  # 6.2 .. 9.0


def test_client_side_partition_is_pika_giving_up_off_the_wire(tmp_path):
    d = only(analyze_file(write(tmp_path, client_side_partition())))
    assert d.client.library == "pika"
    assert d.verdict == "missed-server-heartbeats"
    assert d.close.inferred and d.close.how == "fin" and d.close.initiator == "client"
    # pika looks every T+5 = 8 s from tune-ok; the look at 8.007 saw the broker's bytes, 16.007 nothing.
    assert d.close.time == pytest.approx(d.prediction.predicted) == pytest.approx(TUNE_OK + 16, abs=0.01)
    assert "broker-app-blocked" not in kinds(d) and "client-app-blocked" not in kinds(d)
    (unreachable,) = [f for f in d.findings if f.kind == "peer-unreachable"]
    assert "broker sent nothing" in unreachable.detail
    assert "No FIN or RST reached the wire" in d.explanation


def test_a_capture_that_ends_before_the_client_gives_up_stays_open(tmp_path):
    d = only(analyze_file(write(tmp_path, client_side_partition(end=15.0))))
    assert d.verdict == "open" and not d.close.inferred
    (pending,) = [f for f in d.findings if f.kind == "client-gives-up-after-capture"]
    assert "pika gives up at 16.007 s" in pending.detail


def test_a_client_that_acks_the_broker_is_still_blocked_not_unreachable(tmp_path):
    """The blog's case keeps its verdict and finding: the client's kernel ACKs every broker heartbeat."""
    from tests.test_diagnose import blog_steps

    d = only(analyze_file(write(tmp_path, blog_steps())))
    assert "client-app-blocked" in kinds(d) and "peer-unreachable" not in kinds(d)


# ---- middleboxes ------------------------------------------------------------------------------------------


def pcap_with_ttl(tmp_path, steps, ttl_of_last: int):
    """The scripted capture with its last packet's IPv4 TTL set to `ttl_of_last` (the others have 64)."""
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether

    conv = synth.scripted_conversation(steps)
    packets = conv.packets()
    t, linktype, frame = packets[-1]
    pkt = Ether(frame)
    pkt[IP].ttl = ttl_of_last
    del pkt[IP].chksum
    packets[-1] = (t, linktype, bytes(pkt))
    path = tmp_path / "ttl.pcap"
    path.write_bytes(synth.pcap_bytes(packets))
    return path


def test_a_reset_with_another_ttl_came_from_a_middlebox(tmp_path):
    steps = synth.handshake_steps(3) + idle_heartbeats(0.01, 5.9, 3)
    steps.append((6.2, S2C, RST | ACK, b""))
    d = only(analyze_file(pcap_with_ttl(tmp_path, sorted(steps, key=lambda s: s[0]), 61)))
    (finding,) = [f for f in d.findings if f.kind == "middlebox-teardown"]
    assert "TTL 61" in finding.detail and "had 64" in finding.detail and "not the broker" in finding.detail
    assert d.verdict == "reset"


def test_the_same_ttl_is_the_peer_itself(tmp_path):
    steps = synth.handshake_steps(3) + idle_heartbeats(0.01, 5.9, 3)
    steps.append((6.2, S2C, RST | ACK, b""))
    d = only(analyze_file(pcap_with_ttl(tmp_path, sorted(steps, key=lambda s: s[0]), 64)))
    assert "middlebox-teardown" not in kinds(d)


def test_an_idle_flow_reset_without_heartbeats_is_an_idle_timeout(tmp_path):
    steps = synth.handshake_steps(0)
    steps.append((7.0, S2C, RST | ACK, b""))
    d = only(analyze_file(write(tmp_path, steps)))
    (finding,) = [f for f in d.findings if f.kind == "idle-timeout"]
    assert "heartbeat 0" in finding.detail and "about 7 s" in finding.detail
    assert d.verdict == "reset"


def test_a_flow_whose_heartbeats_were_due_is_not_an_idle_timeout(tmp_path):
    """With T = 3 both peers owed heartbeats every 1.5 s: 7 s of silence is two silent peers, not an idle flow."""
    steps = synth.handshake_steps(3)
    steps.append((7.0, S2C, RST | ACK, b""))
    d = only(analyze_file(write(tmp_path, steps)))
    assert "idle-timeout" not in kinds(d)


def test_a_quick_close_is_not_an_idle_timeout(tmp_path):
    steps = synth.handshake_steps(0)
    steps.append((0.5, S2C, RST | ACK, b""))
    assert "idle-timeout" not in kinds(only(analyze_file(write(tmp_path, steps))))


def test_a_tail_loss_probe_before_the_backoff():
    """Measured in a namespace partition (Linux 6.x): a loss probe at +0.206 s, then 0.208, 0.42, 0.83, ..."""
    gaps = [0.206, 0.208, 0.42, 0.832, 1.664, 3.392]
    times = [4.007]
    for gap in gaps:
        times.append(times[-1] + gap)
    assert linux_tcp.is_backoff(times)
    assert not linux_tcp.is_backoff(times[:4])  # probe + two timeouts: one doubling only


# ---- two captures of one connection -------------------------------------------------------------------------


def two_captures(tmp_path, *, offset: float, delay: float, cut: float, nat_port: int | None = None):
    """The broker-side and client-side captures of one partitioned connection: each side captures what it
    sends, and what it receives `delay` later, up to the cut; the broker capture's clock runs `offset` ahead.
    With `nat_port`, the broker sees the client behind NAT (another source port, the same sequence numbers)."""
    steps = synth.handshake_steps(3) + idle_heartbeats(0.01, 8.9, 3)
    steps.sort(key=lambda s: s[0])
    conv = synth.scripted_conversation(steps)
    client_side, broker_side = [], []
    for seg in conv.segments:
        sent_at = seg.timestamp - 1700000000.0
        arrives = sent_at < cut
        ours, theirs = (client_side, broker_side) if seg.direction == C2S else (broker_side, client_side)
        shift_sender = 0.0 if seg.direction == C2S else offset
        shift_receiver = offset if seg.direction == C2S else 0.0
        ours.append((seg, sent_at + shift_sender))
        if arrives:
            theirs.append((seg, sent_at + delay + shift_receiver))
    paths = []
    for name, rows, client in (("client", client_side, conv.client), ("broker", broker_side,
                                                                       (conv.client[0], nat_port or conv.client[1]))):
        view = synth.Conversation(client, conv.server, [])
        packets = sorted((round(1700000000.0 + t, 6), synth.LINKTYPE_ETHERNET,
                          synth.wrap(synth.LINKTYPE_ETHERNET, view.ip_packet(seg))) for seg, t in rows)
        path = tmp_path / f"{name}.pcap"
        path.write_bytes(synth.pcap_bytes(packets))
        paths.append(path)
    return paths


def test_two_captures_give_the_clock_offset_the_delay_and_the_cut(tmp_path):
    from analyzer.api import pair_files

    client, broker = two_captures(tmp_path, offset=0.0123, delay=0.0005, cut=5.0)
    (report,) = pair_files([broker, client])  # in any order: the client's capture is found
    assert report.client_capture == str(client) and report.matched_by == "initial sequence numbers"
    assert report.offset == pytest.approx(0.0123, abs=1e-5)
    assert report.one_way_delay == pytest.approx(0.0005, abs=1e-5)
    c2s, s2c = report.directions
    assert c2s.lost > 0 and s2c.lost > 0
    lo, hi = report.cut
    assert lo < 5.0 <= hi  # the last delivered segment before the cut, the first lost after it
    assert all(sent_at >= 5.0 for sent_at, *_ in c2s.lost_segments + s2c.lost_segments)


def test_pairing_through_nat_matches_by_sequence_numbers(tmp_path):
    from analyzer.api import pair_files

    client, broker = two_captures(tmp_path, offset=0.0, delay=0.0002, cut=99.0, nat_port=61000)
    (report,) = pair_files([client, broker])
    assert report.client_id != report.broker_id and "61000" in report.broker_id
    assert all(d.lost == 0 for d in report.directions) and report.cut is None


def test_analyze_pairs_files_that_share_a_connection(tmp_path):
    import io
    import json

    from analyzer.cli import main

    client, broker = two_captures(tmp_path, offset=0.0, delay=0.0002, cut=5.0)
    out = io.StringIO()
    assert main(["analyze", str(client), str(broker)], stdout=out, stderr=io.StringIO()) == 0
    assert "the path failed between" in out.getvalue() and "(a partition, not a silent peer)" in out.getvalue()
    out = io.StringIO()
    assert main(["analyze", "--format", "json", str(client), str(broker)], stdout=out, stderr=io.StringIO()) == 0
    documents = [json.loads(doc) for doc in out.getvalue().replace("}\n{", "}\x00{").split("\x00")]
    (pairs,) = [doc for doc in documents if doc["schema"] == "amqp-hb/pairs/1"]
    assert pairs["pairs"][0]["directions"]["c2s"]["lost"] > 0


def test_retransmissions_that_stop_while_the_capture_goes_on_are_the_kernel_giving_up(tmp_path):
    """TCP_USER_TIMEOUT-style: the client's back-off stops at 12.2 s; another flow's packet at 30 s shows
    the capture was still running when the next retransmission (18.6 s) was due."""
    steps = client_side_partition(end=12.3)
    conv = synth.scripted_conversation(steps)
    packets = conv.packets()
    other = synth.tcp_packet("127.0.0.1", "127.0.0.1", 40001, 9999, 1, 1, ACK)
    packets.append((1700000030.0, synth.LINKTYPE_ETHERNET, synth.wrap(synth.LINKTYPE_ETHERNET, other)))
    path = tmp_path / "gave-up.pcap"
    path.write_bytes(synth.pcap_bytes(packets))
    (d,) = analyze_file(path).connections
    (finding,) = [f for f in d.findings if f.kind == "kernel-gave-up"]
    assert "client's TCP retransmitted" in finding.detail and "TCP_USER_TIMEOUT" in finding.detail
    assert d.capture_end == pytest.approx(30.0, abs=0.01)
    # pika's give-up (16.007 s) fell inside the capture: the verdict is still the client's.
    assert d.verdict == "missed-server-heartbeats"


def test_a_backoff_still_running_at_the_capture_end_is_not_the_kernel_giving_up(tmp_path):
    d = only(analyze_file(write(tmp_path, client_side_partition())))
    assert "kernel-gave-up" not in kinds(d)


def test_a_first_byte_after_a_long_idle_answered_by_a_reset_is_an_idle_timeout(tmp_path):
    """A NAT or conntrack router that forgot an idle flow: nothing on the wire when it expires, then the
    client's next byte meets its RST (seen in idle-timeout-middlebox-silent-client.pcap)."""
    steps = synth.handshake_steps(0)
    steps += [(6.0, C2S, PSH | ACK, HB), (6.0001, S2C, RST | ACK, b"")]
    d = only(analyze_file(write(tmp_path, steps)))
    (finding,) = [f for f in d.findings if f.kind == "idle-timeout"]
    assert "the first one (at 6.000 s) was answered with a RST" in finding.detail and "at most 6 s" in finding.detail


# ---- the real fault runs, recorded in namespaces in this session (tests/fixtures_faults.py) --------------


WITHIN = 0.050


def analyzed(run, side):
    result = run.sides[side]
    (d,) = analyze_file(result.pcap).connections
    return d, result.metadata


@pytest.mark.broker
def test_partition_seen_from_the_broker(fault_runs):
    d, meta = analyzed(fault_runs("partition"), "broker")
    assert d.verdict == "missed-client-heartbeats" == meta["expected_verdicts"][d.timeline.info.id]
    assert abs(d.prediction.error(d.close.time)) < WITHIN
    assert "peer-unreachable" in kinds(d) and "broker-app-blocked" not in kinds(d)
    assert "client-app-blocked" not in kinds(d)


@pytest.mark.broker
def test_partition_seen_from_the_client(fault_runs):
    d, meta = analyzed(fault_runs("partition"), "client")
    assert d.verdict == "missed-server-heartbeats" == meta["expected_verdicts"][d.timeline.info.id]
    assert d.close.inferred and d.close.how == "fin"
    exception_at = meta["fault"]["client_exception_at"] - d.t0
    assert abs(d.prediction.predicted - exception_at) < WITHIN
    assert not kinds(d) & {"client-app-blocked", "broker-app-blocked"}
    assert "peer-unreachable" in kinds(d)


@pytest.mark.broker
def test_partition_two_point(fault_runs):
    from analyzer.api import pair_files

    run = fault_runs("partition")
    client, broker = run.sides["client"], run.sides["broker"]
    (report,) = pair_files([broker.pcap, client.pcap])
    assert report.client_capture == client.pcap
    assert abs(report.offset) < 0.005  # one host clock
    (d,) = analyze_file(client.pcap).connections
    cut = client.metadata["fault"]["cut_at"] - d.t0
    lo, hi = report.cut
    assert lo - 0.010 <= cut <= hi + 0.010 and hi - lo <= 0.020  # located within 10 ms
    c2s, s2c = report.directions
    assert c2s.lost and s2c.lost and c2s.lost_segments and s2c.lost_segments
    assert all(sent_at >= cut - 0.001 for sent_at, *_ in c2s.lost_segments)


@pytest.mark.broker
@pytest.mark.parametrize("name", ["idle-timeout-middlebox", "idle-timeout-middlebox-silent"])
def test_the_idle_timeout_middlebox_is_named(fault_runs, name):
    d, meta = analyzed(fault_runs(name), "client")
    assert d.verdict == meta["expected_verdicts"][d.timeline.info.id]
    (finding,) = [f for f in d.findings if f.kind == "idle-timeout"]
    assert "heartbeat 0" in finding.detail
    if name.endswith("silent"):
        assert "middlebox-teardown" in kinds(d)  # the router's own RST, TTL 64 against the broker's 63


def test_a_capture_of_one_direction_says_so(tmp_path):
    steps = synth.handshake_steps(3) + idle_heartbeats(0.01, 6.0, 3)
    steps = [s for s in sorted(steps, key=lambda s: s[0]) if s[1] == C2S]
    d = only(analyze_file(write(tmp_path, steps)))
    (finding,) = [f for f in d.findings if f.kind == "direction-not-captured"]
    assert "no packet at all from the broker" in finding.detail
    assert "peer-unreachable" not in kinds(d)


def test_a_zero_window_is_an_application_not_reading(tmp_path):
    """The broker's kernel ACKs with a zero window: its buffer is full, RabbitMQ is not reading (it stops
    reading a connection it has blocked). Zero windows leave the quick path for the plain one."""
    steps = synth.handshake_steps(3) + idle_heartbeats(0.01, 3.0, 3)
    steps = sorted(steps, key=lambda s: s[0])
    conv = synth.scripted_conversation(steps)
    packets = conv.packets()
    last = conv.segments[-1]
    for t in (3.2, 3.4, 3.6):
        seg = synth.ConvSegment(round(1700000000.0 + t, 6), S2C, ACK, last.seq + 100, last.ack, b"")
        pkt = synth.tcp_packet(conv.server[0], conv.client[0], conv.server[1], conv.client[1], seg.seq, seg.ack, ACK,
                               window=0)
        packets.append((seg.timestamp, synth.LINKTYPE_ETHERNET, synth.wrap(synth.LINKTYPE_ETHERNET, pkt)))
    path = tmp_path / "zero.pcap"
    path.write_bytes(synth.pcap_bytes(packets))
    d = only(analyze_file(path))
    (finding,) = [f for f in d.findings if f.kind == "not-reading"]
    assert "broker advertised a zero receive window 3 times" in finding.detail
    assert d.timeline.s2c.zero_windows == 3
