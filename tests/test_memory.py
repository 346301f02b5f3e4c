"""Memory stays bounded (tracemalloc; not timed): what the analyzer keeps grows with connections,
never with packets, frames or declared sizes.

- 50,000 short connections: peak per connection is a few KB (the timeline the result needs, its
  flow and decoders), not a copy of the traffic; streamed (on_connection, as the CLI runs), the peak follows
  the connections open at once: three times as many connections, about the same peak.
- A frame declaring 400 MiB, followed by 4 MiB of its body: bodies are counted, never held.
- A method frame declaring 4 GiB: rejected when its header arrives, nothing allocated for it.
- Ten times the traffic on one connection: the same peak.
"""
from __future__ import annotations

import io
import struct
import tracemalloc

import pytest
from pamqp import commands

from analyzer.engine import analyze_timelines, iter_events
from analyzer.records import ACK, C2S, PSH, S2C, CaptureSummary
from analyzer.sources import pcap
from tests import synth

MB = 1 << 20


def peak_of(run) -> int:
    tracemalloc.start()
    try:
        result = run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return peak


def test_50000_short_connections_cost_a_few_kilobytes_each() -> None:
    buf = io.BytesIO()
    synth.short_connections_pcap(buf, 50_000)
    data = buf.getvalue()  # made before tracing: the input is not the analyzer's memory
    summary = CaptureSummary()
    timelines = []
    peak = peak_of(lambda: timelines.extend(analyze_timelines(io.BytesIO(data), summary)))
    assert len(timelines) == 50_000 and summary.packets == 400_000
    # Measured about 4.7 KB a connection (timeline with its decoded connection.start, flow,
    # decoders, flow-table entries); 6 KB leaves room without hiding per-packet state
    # (eight packets a connection here).
    assert peak / 50_000 < 6 * 1024, f"{peak / 50_000:.0f} bytes per connection"


def test_bounded_memory_follows_connections_open_at_once_not_all(tmp_path, monkeypatch) -> None:
    """analyze_file(on_connection=...), what the CLI runs: each connection handed over once closed
    and forgotten, so three times the connections (1 ms apart) cost about the same peak.
    (Retirement after 1 s and retired ports kept 2 s instead of 5 s and 15 s: the steady state
    within a short capture.)"""
    from analyzer.api import analyze_file

    monkeypatch.setattr("analyzer.flows.RETIRE_AFTER", 1.0)
    monkeypatch.setattr("analyzer.flows.RETIRED_KEYS_KEPT", 2.0)
    peaks = []
    for count in (5_000, 15_000):
        path = tmp_path / f"short-{count}.pcap"
        with open(path, "wb") as f:
            synth.short_connections_pcap(f, count)
        verdicts = []
        peaks.append(peak_of(lambda path=path, verdicts=verdicts: analyze_file(
            path, on_connection=lambda d: verdicts.append(d.verdict))))
        assert len(verdicts) == count
    small, large = peaks
    assert large < small * 1.3, f"{small / MB:.1f} MB for 5,000 connections, {large / MB:.1f} MB for 15,000"


def _huge_frame_capture(size: int, frame_type: int, body_bytes: int) -> bytes:
    """A handshake, then one frame header declaring `size`, then `body_bytes` bytes of it in 16 KB segments."""
    steps = synth.handshake_steps(60)
    t = 0.1
    chunk = 16 * 1024
    steps.append((t, C2S, PSH | ACK, synth.method_frame(commands.Channel.Open(), 1)))
    steps.append((t, C2S, PSH | ACK, struct.pack("!BHI", frame_type, 1, size) + b"\x00" * chunk))
    for i in range(body_bytes // chunk):
        steps.append((t + 0.001 * i, C2S, PSH | ACK, b"\x00" * chunk))
        if i % 8 == 0:
            steps.append((t + 0.001 * i, S2C, ACK, b""))
    steps.append((t + 10, C2S, PSH | ACK, synth.HEARTBEAT_FRAME))
    conv = synth.scripted_conversation(steps)
    return synth.pcap_bytes(conv.packets())


@pytest.fixture(autouse=True)
def small_read_chunks(monkeypatch) -> None:
    """The reader holds one CHUNK_SIZE (1 MiB) read buffer, briefly two: shrink it so what is
    measured here is the analysis's own memory."""
    monkeypatch.setattr(pcap, "CHUNK_SIZE", 64 * 1024)


def test_huge_declared_body_is_counted_not_held() -> None:
    data = _huge_frame_capture(400 * MB, 3, 4 * MB)
    assert peak_of(lambda: analyze_timelines(io.BytesIO(data), CaptureSummary())) < MB // 2
    assert peak_of(lambda: sum(1 for _ in iter_events(io.BytesIO(data), CaptureSummary()))) < MB // 2
    timelines = analyze_timelines(io.BytesIO(data), CaptureSummary())
    assert timelines[0].c2s.decode_error_count == 0  # still in sync: the body's end is known


def test_huge_declared_method_frame_is_rejected_at_its_header() -> None:
    data = _huge_frame_capture(0xFFFFFFF0, 1, 1 * MB)
    assert peak_of(lambda: analyze_timelines(io.BytesIO(data), CaptureSummary())) < MB // 2
    timelines = analyze_timelines(io.BytesIO(data), CaptureSummary())
    assert any("impossible frame size" in e.reason for e in timelines[0].c2s.decode_errors)


def test_ten_times_the_traffic_same_peak(monkeypatch) -> None:
    monkeypatch.setattr(pcap, "CHUNK_SIZE", 4096)  # both captures many read chunks long
    def capture(rounds: int) -> bytes:
        steps = synth.handshake_steps(60)
        for i in range(rounds):
            t = 0.1 + i * 0.01
            steps.append((t, C2S, PSH | ACK, synth.HEARTBEAT_FRAME * 3))
            steps.append((t + 0.001, S2C, PSH | ACK, synth.HEARTBEAT_FRAME))
        return synth.pcap_bytes(synth.scripted_conversation(steps).packets())

    small, large = capture(300), capture(3000)
    peak_small = peak_of(lambda: analyze_timelines(io.BytesIO(small), CaptureSummary()))
    peak_large = peak_of(lambda: analyze_timelines(io.BytesIO(large), CaptureSummary()))
    assert peak_large < peak_small * 1.2 + 64 * 1024, (peak_small, peak_large)
