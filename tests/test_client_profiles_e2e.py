"""Client profiles on real recordings of each client the scenario runner drives (issue 12's checks):
verdict = ground truth, the broker's teardown within 50 ms of the model, the library named from the
handshake, the explanation giving that library's fix and no other library's API; handshake-less
copies name the library from behaviour only where its profile says it can, never a wrong one.

The recordings come from tests/fixtures_clients.py (`client_runs`, one run per scenario per session).
"""
from __future__ import annotations

import dpkt
import pytest

from analyzer.api import analyze_file
from analyzer.diagnosis.models import clients
from tests.fixtures_clients import CLIENT_TIMINGS
from tests.test_client_profiles import foreign_api_names, names_api

# The scenario catalog's client names -> the library the wire names (aio-pika runs on aiormq).
LIBRARY_ON_THE_WIRE = {"pika": "pika", "py-amqp": "py-amqp", "aio-pika": "aiormq", "amqplib": "amqplib"}
NAMES = sorted(CLIENT_TIMINGS)
BROKER_PREDICTION_TOLERANCE = 0.05


def analyzed(result):
    analysis = analyze_file(result.pcap, ports=(result.metadata["ports"]["amqp"],))
    return {d.timeline.info.id: d for d in analysis.connections}


def library_of(result, cid):
    return LIBRARY_ON_THE_WIRE[result.metadata["connections"][cid]["library"]]


@pytest.mark.parametrize("name", NAMES)
def test_verdict_library_and_advice(client_runs, name):
    r = client_runs(name)
    diagnoses = analyzed(r)
    assert {cid: d.verdict for cid, d in diagnoses.items()} == r.metadata["expected_verdicts"]
    for cid, d in diagnoses.items():
        library = library_of(r, cid)
        assert (d.client.library, d.client.identified_by) == (library, "handshake"), cid
        assert foreign_api_names(d.explanation, library) == [], (cid, d.explanation)
        if d.verdict == "missed-client-heartbeats":
            assert d.prediction.model == "rabbitmq"
            assert abs(d.prediction.error(d.close.time)) <= BROKER_PREDICTION_TOLERANCE, d.explanation
            row = clients.profile(library)
            assert any(names_api(d.explanation, api) for api in row.api_names), d.explanation
            assert row.loop in d.explanation


def test_py_amqp_normal_close_is_graceful(client_runs):
    r = client_runs("py-amqp-healthy")
    consumer = [d for cid, d in analyzed(r).items() if library_of(r, cid) == "py-amqp"]
    assert [(d.close.reply_code, d.verdict) for d in consumer] == [(0, "graceful")]


def test_blocked_connection_timeout_explained(client_runs):
    r = client_runs("blocked-connection-timeout")
    (d,) = [d for d in analyzed(r).values() if d.verdict == "reset"]
    finding = next(f for f in d.findings if f.kind == "client-gave-up-blocked")
    assert "blocked_connection_timeout" in finding.detail and "ConnectionBlockedTimeout" in d.explanation
    assert d.misfit is None
    waited = float(finding.detail.split(" s after connection.blocked")[0].rsplit(" ", 1)[-1])
    assert waited == pytest.approx(CLIENT_TIMINGS["blocked-connection-timeout"]["work"], abs=0.2)


def cut_handshake(pcap: str, out, after: float) -> None:
    """A copy of `pcap` without the packets up to `after` (epoch): as if the capture started late."""
    with open(pcap, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        kept = [(ts, buf) for ts, buf in reader if ts > after]
        linktype = reader.datalink()
    with open(out, "wb") as f:
        writer = dpkt.pcap.Writer(f, linktype=linktype)
        for ts, buf in kept:
            writer.writepkt(buf, ts)


@pytest.mark.parametrize("name", NAMES)
def test_handshake_less_copies_never_name_a_wrong_library(client_runs, name, tmp_path):
    r = client_runs(name)
    full = analyze_file(r.pcap, ports=(r.metadata["ports"]["amqp"],))
    cut_at = max(d.timeline.open_ok.time for d in full.connections if d.timeline.open_ok is not None) + 0.01
    copy = tmp_path / "cut.pcap"
    cut_handshake(r.pcap, copy, cut_at)
    for d in analyze_file(str(copy), ports=(r.metadata["ports"]["amqp"],)).connections:
        cid = d.timeline.info.id
        assert d.client.identified_by in ("behaviour", "unknown")
        if d.client.identified_by == "behaviour":
            assert d.client.library == library_of(r, cid), (cid, d.client)
        else:
            assert d.client.library == "unknown" and d.profile is clients.GENERIC
            assert foreign_api_names(d.explanation, "generic") == [], d.explanation
