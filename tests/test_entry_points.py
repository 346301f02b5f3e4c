"""Every entry point runs the one engine and agrees: the CLI (`analyze --format json`, `frames`),
`read_frames`, `analyze_file` with and without an observer and streaming, and the notebook's
`load` give the same timelines, diagnoses and frames — on captures holding every method the
timeline reasons about: the real captures/every-method.pcap and a synthetic one whose runs of
ordinary packets are long enough to be applied as runs."""
from __future__ import annotations

import io
import json
import pathlib

import pytest
from pamqp import body as pamqp_body
from pamqp import commands
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header

import analyzer
from analyzer.api import FrameBatch, analyze_file, frame_record, read_frame_batches, read_frames
from analyzer.cli import ExitStatus, main
from analyzer.engine import EventObserver, analyze_timelines, iter_events
from analyzer.records import ACK, C2S, FIN, PSH, S2C, CaptureSummary, Frame
from analyzer.render.analysis_json import connection_document
from analyzer.timeline import (
    BLOCKED,
    CHANNEL_CLOSE,
    CONNECTION_CLOSE,
    CONNECTION_CLOSE_OK,
    NEGOTIATION_METHODS,
    UNBLOCKED,
    timeline_order,
)
from tests import synth
from tests.conftest import CAPTURES
from tests.synth import handshake_steps, method_frame, scripted_conversation

# Every method TimelineBuilder keeps something of.
TIMELINE_METHODS = {*NEGOTIATION_METHODS, CONNECTION_CLOSE, CONNECTION_CLOSE_OK, CHANNEL_CLOSE, BLOCKED, UNBLOCKED}
HEARTBEAT = synth.HEARTBEAT_FRAME


def publish_steps(at: float, count: int) -> list:
    """`count` publishes (method + header + body in one segment) each ACKed: a run's worth."""
    one = (pamqp_frame.marshal(commands.Basic.Publish(exchange="", routing_key="q"), 1)
           + pamqp_frame.marshal(pamqp_header.ContentHeader(0, 8, commands.Basic.Properties()), 1)
           + pamqp_frame.marshal(pamqp_body.ContentBody(b"x" * 8), 1))
    steps = []
    for k in range(count):
        steps.append((round(at + k * 0.001, 6), C2S, PSH | ACK, one))
        steps.append((round(at + k * 0.001 + 0.0005, 6), S2C, ACK, b""))
    return steps


def every_method_synthetic(path: pathlib.Path) -> pathlib.Path:
    steps = handshake_steps(2)
    steps += [
        (0.02, C2S, PSH | ACK, method_frame(commands.Channel.Open(), 1)),
        (0.021, S2C, PSH | ACK, method_frame(commands.Channel.OpenOk(), 1)),
        (1.0, C2S, PSH | ACK, HEARTBEAT),
        (1.0005, S2C, PSH | ACK, HEARTBEAT),
    ]
    steps += publish_steps(1.1, 150)
    steps += [
        (1.5, S2C, PSH | ACK, method_frame(commands.Connection.Blocked(reason="low on memory"))),
        (1.6, S2C, PSH | ACK, method_frame(commands.Connection.Unblocked())),
    ]
    steps += publish_steps(1.7, 150)
    steps += [
        (2.0, S2C, PSH | ACK, method_frame(commands.Channel.Close(reply_code=404, reply_text="NOT_FOUND", class_id=50, method_id=10), 1)
         + HEARTBEAT),
        (2.001, C2S, PSH | ACK, method_frame(commands.Channel.CloseOk(), 1)),
        (2.1, S2C, PSH | ACK, method_frame(commands.Basic.Cancel(consumer_tag="ctag"), 1)),
        (2.2, C2S, PSH | ACK, method_frame(commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))),
        (2.201, S2C, PSH | ACK, method_frame(commands.Connection.CloseOk())),
        (2.202, C2S, FIN | ACK, b""),
        (2.203, S2C, FIN | ACK, b""),
        (2.204, C2S, ACK, b""),
    ]
    path.write_bytes(synth.pcap_bytes(scripted_conversation(steps).packets()))
    return path


@pytest.fixture(params=["real", "synthetic"])
def capture(request, tmp_path, monkeypatch) -> pathlib.Path:
    if request.param == "real":
        return CAPTURES / "every-method.pcap"
    # Read blocks of a few KiB and runs from 8 packets: a flow's packets are applied as runs from
    # the first block after its handshake (test_runs_were_applied checks that they were).
    monkeypatch.setattr("analyzer.sources.pcap.CHUNK_SIZE", 4096)
    monkeypatch.setattr("analyzer.engine.engine.MIN_RUN", 8)
    return every_method_synthetic(tmp_path / "every-method-synthetic.pcap")


class RunCounter(EventObserver):
    def __init__(self) -> None:
        self.runs = 0

    def event(self, event) -> None:
        pass

    def run(self, run) -> None:
        self.runs += 1
        super().run(run)


def test_runs_were_applied(capture) -> None:
    counter = RunCounter()
    analyze_timelines(io.BytesIO(capture.read_bytes()), CaptureSummary(), observer=counter)
    if "synthetic" in capture.name:
        assert counter.runs >= 1
    else:
        # One read block holds the whole 11 KiB capture and its flows start inside it, so every packet
        # goes one by one: the synthetic capture (small blocks) is the one that exercises the runs.
        assert counter.runs == 0


def methods_in(path: pathlib.Path) -> set:
    return {(e.class_id, e.method_id) for e in iter_events(io.BytesIO(path.read_bytes()), CaptureSummary(), batch=False)
            if type(e) is Frame and e.class_id is not None}


def test_the_captures_hold_every_method_the_timeline_reasons_about(capture) -> None:
    assert methods_in(capture) >= TIMELINE_METHODS


def test_analyze_entry_points_agree(capture) -> None:
    reference = analyze_file(capture)
    assert reference.connections and all(d.timeline.c2s.frames for d in reference.connections)
    seen: list = []
    observed = analyze_file(capture, observer=seen.append)
    assert observed.connections == reference.connections and observed.summary == reference.summary
    assert any(type(e) is Frame for e in seen)
    streamed: list = []
    analyze_file(capture, on_connection=streamed.append)
    assert sorted(streamed, key=lambda d: timeline_order(d.timeline)) == reference.connections
    assert analyzer.load(capture).result.connections == reference.connections
    out, err = io.StringIO(), io.StringIO()
    assert main(["analyze", str(capture), "--format", "json"], stdout=out, stderr=err) == ExitStatus.OK, err.getvalue()
    document = json.loads(out.getvalue())
    cli_connections = [c for f in document["files"] for c in f["connections"]] if "files" in document else \
        document["connections"]
    assert cli_connections == [json.loads(json.dumps(connection_document(d))) for d in reference.connections]


def test_frame_entry_points_agree(capture) -> None:
    summary = CaptureSummary()
    expected = [frame_record(e, 0.0) for e in iter_events(io.BytesIO(capture.read_bytes()), summary, batch=False)
                if type(e) is Frame]
    t0 = summary.start_epoch
    for record in expected:
        record.t -= t0
    assert list(read_frames(capture)) == expected
    fast = []
    for item in read_frame_batches(capture, all_arguments=False):
        fast.extend(item.records() if isinstance(item, FrameBatch) else [item])
    assert [(r.packet, r.offset, r.type, r.method) for r in fast] == [(r.packet, r.offset, r.type, r.method)
                                                                      for r in expected]
    out = io.StringIO()
    assert main(["frames", str(capture), "--format", "jsonl"], stdout=out, stderr=io.StringIO()) == ExitStatus.OK
    assert [json.loads(line)["packet"] for line in out.getvalue().splitlines()] == [r.packet for r in expected]
