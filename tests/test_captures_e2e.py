"""`analyze` on the real captures shipped in captures/, against the ground truth recorded with them.

Each capture was recorded by `amqp-hb scenario run` against a real RabbitMQ with real pika clients
(tools/record_captures.py); its .json holds the verdict expected for every connection the scenario
opened. Derived captures (handshake cut off, one segment deleted) are made from the same real
packets, so the analysis of damage is checked on real timing too.
"""
from __future__ import annotations

import json
import pathlib

import pytest

from analyzer.api import analyze_file
from analyzer.sources.pcap import open_capture
from tests import synth

CAPTURES = pathlib.Path(__file__).resolve().parent.parent / "captures"
SHIPPED = sorted(CAPTURES.glob("*.pcap"))
HEARTBEAT_VERDICTS = {"missed-client-heartbeats", "missed-server-heartbeats"}
# Loopback: the model must place a heartbeat teardown within 50 ms (issue 3's bar).
MAX_PREDICTION_ERROR = 0.050


def metadata(pcap: pathlib.Path) -> dict:
    return json.loads(pcap.with_suffix(".json").read_text())


def ports(meta: dict) -> tuple[int, ...]:
    return tuple(sorted({p for p in meta.get("ports", {}).values() if isinstance(p, int)})) or (5672,)


def test_captures_are_shipped():
    names = {p.stem for p in SHIPPED}
    assert {"blocked-callback", "threaded-worker", "heartbeat-disabled", "broker-paused", "proxy"} <= names


@pytest.mark.parametrize("pcap", SHIPPED, ids=lambda p: p.stem)
def test_verdicts_match_ground_truth(pcap):
    meta = metadata(pcap)
    analysis = analyze_file(pcap, ports=ports(meta))
    got = {d.timeline.info.id: d for d in analysis.connections}
    expected = meta["expected_verdicts"]
    assert set(expected) <= set(got), f"connections missing from the analysis: {set(expected) - set(got)}"
    for connection_id, verdict in expected.items():
        d = got[connection_id]
        assert d.verdict == verdict, f"{connection_id}: {d.verdict} != {verdict}\n{d.explanation}"
        if verdict in HEARTBEAT_VERDICTS:
            error = d.prediction.error(d.close.time)
            assert abs(error) <= MAX_PREDICTION_ERROR, f"{connection_id}: prediction off by {error * 1000:.1f} ms"


def test_blocked_callback_tells_the_blog_story():
    analysis = analyze_file(CAPTURES / "blocked-callback.pcap")
    d = next(d for d in analysis.connections if d.verdict == "missed-client-heartbeats")
    assert d.heartbeat.effective == 3 and d.heartbeat.source == "negotiated"
    assert d.close.how == "rst" and d.close.initiator == "server"
    assert 2 * 3 <= d.silence < 3 * 3 + 0.05
    assert "client-app-blocked" in {f.kind for f in d.findings}
    assert "add_callback_threadsafe" in d.explanation


def test_broker_paused_is_pika_giving_up():
    d = next(d for d in analyze_file(CAPTURES / "broker-paused.pcap").connections)
    assert d.verdict == "missed-server-heartbeats"
    assert d.prediction.model == "pika" and d.close.how == "fin" and d.close.initiator == "client"
    assert "broker-app-blocked" in {f.kind for f in d.findings}


def test_proxy_leg_is_found_without_flags_and_fin_is_explained():
    meta = metadata(CAPTURES / "proxy.pcap")
    proxy_port = next(p for name, p in meta["ports"].items() if name != "amqp" and isinstance(p, int))
    analysis = analyze_file(CAPTURES / "proxy.pcap")  # no --port: the proxy port is auto-detected
    leg = next(d for d in analysis.connections if d.timeline.info.server.port == proxy_port)
    assert leg.verdict == "missed-client-heartbeats"
    assert leg.close.how == "fin" and "proxy" in leg.misfit


def test_heartbeat_disabled_is_flagged():
    analysis = analyze_file(CAPTURES / "heartbeat-disabled.pcap")
    consumer = next(d for d in analysis.connections if d.heartbeat.effective == 0)
    assert "heartbeat-disabled" in {f.kind for f in consumer.findings}


def _rewrite(src: pathlib.Path, dst: pathlib.Path, keep) -> None:
    """Copy a capture keeping the packets for which keep(index, raw) is true."""
    with open(src, "rb") as f:
        reader = open_capture(f)
        packets = [(raw.timestamp, raw.linktype, raw.data) for raw in reader if keep(raw.index, raw)]
    dst.write_bytes(synth.pcap_bytes(packets))


def test_capture_without_the_handshake_infers_heartbeat_and_phase(tmp_path):
    src = CAPTURES / "blocked-callback.pcap"
    full = analyze_file(src)
    blocked = next(d for d in full.connections if d.verdict == "missed-client-heartbeats")
    # Start the capture two broker heartbeats after tune-ok: no handshake, mid-stream.
    cut = blocked.timeline.tune_ok.time + 3.2
    cut_file = tmp_path / "no-handshake.pcap"
    _rewrite(src, cut_file, lambda i, raw: raw.timestamp >= cut)
    d = next(d for d in analyze_file(cut_file).connections if d.timeline.info.id == blocked.timeline.info.id)
    assert not d.timeline.handshake_seen
    assert d.heartbeat.source == "inferred" and d.heartbeat.effective == 3
    assert d.verdict == "missed-client-heartbeats"
    # The client's heartbeat at ~4.5 s is after the cut: the grid phase comes from the broker's
    # heartbeats and still places the RST within 50 ms.
    assert d.timeline.c2s.last_payload == pytest.approx(blocked.timeline.c2s.last_payload, abs=1e-6)
    assert abs(d.prediction.error(d.close.time)) <= MAX_PREDICTION_ERROR
    assert "inferred from the broker's heartbeats" in d.explanation


def test_silent_peer_whose_last_byte_predates_the_capture_is_bounded(tmp_path):
    src = CAPTURES / "blocked-callback.pcap"
    blocked = next(d for d in analyze_file(src).connections if d.verdict == "missed-client-heartbeats")
    cut_file = tmp_path / "late-start.pcap"
    _rewrite(src, cut_file, lambda i, raw: raw.timestamp >= blocked.timeline.c2s.last_payload + 0.5)
    d = next(d for d in analyze_file(cut_file).connections if d.timeline.info.id == blocked.timeline.info.id)
    assert d.timeline.c2s.last_payload is None
    assert d.verdict == "missed-client-heartbeats"
    assert "before the capture started" in d.misfit and "sent nothing during the capture" in d.explanation


def test_deleted_segment_becomes_a_capture_gap(tmp_path):
    src = CAPTURES / "threaded-worker.pcap"
    events = analyze_file(src)
    consumer = max(events.connections, key=lambda d: d.timeline.c2s.heartbeats)
    client_port = consumer.timeline.info.client.port
    # Delete the consumer's third heartbeat segment (an 8-byte payload from the client port).
    seen = []

    def keep(index, raw):
        if raw.data[-8:] == synth.HEARTBEAT_FRAME and client_port.to_bytes(2, "big") in raw.data[34:36]:
            seen.append(index)
            return len(seen) != 3
        return True

    damaged = tmp_path / "gap.pcap"
    _rewrite(src, damaged, keep)
    d = next(d for d in analyze_file(damaged).connections if d.timeline.info.id == consumer.timeline.info.id)
    gaps = [f for f in d.findings if f.kind == "capture-gap"]
    assert len(gaps) == 1 and "8 bytes c2s" in gaps[0].detail
    assert d.verdict == consumer.verdict


def test_tcpdump_any_ipv6_capture():
    """`tcpdump -i any` writes Linux cooked SLL2; the clients reached the broker over [::1]."""
    path = CAPTURES / "blocked-callback-ipv6-any.pcap"
    with open(path, "rb") as f:
        assert next(iter(open_capture(f))).linktype == 276
    analysis = analyze_file(path)
    d = next(d for d in analysis.connections if d.verdict == "missed-client-heartbeats")
    assert d.timeline.info.id.startswith("[::1]:") and d.timeline.info.server.port == 5672
    assert abs(d.prediction.error(d.close.time)) <= MAX_PREDICTION_ERROR
