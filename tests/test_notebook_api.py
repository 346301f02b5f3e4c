"""The notebook API (analyzer.load) and the timeline plot, on a recorded capture and on scripted ones.

Expected counts come from elsewhere: frames from `amqp-hb frames --format jsonl` run as a
separate process, TCP segments from scapy's own pcap reader. The plot is checked through its
artists (gids and legend labels), never its pixels.
"""
from __future__ import annotations

import collections
import json
import subprocess
import sys

import matplotlib
import pytest

matplotlib.use("Agg")

import analyzer
from analyzer.cli import main
from analyzer.errors import UsageError
from analyzer.notebook import FRAME_COLUMNS, SEGMENT_COLUMNS, flags_text
from analyzer.records import ACK, C2S, PSH, RST, S2C
from analyzer.render.plot import plot_connection
from tests import synth

BLOCKED = "blocked-callback"


@pytest.fixture(scope="module")
def blocked_pcap():
    from tests.conftest import CAPTURES

    path = CAPTURES / f"{BLOCKED}.pcap"
    if not path.exists():
        pytest.fail(f"{path} is missing: record it with `tools/record_captures.py {BLOCKED}`")
    return path


@pytest.fixture(scope="module")
def blocked(blocked_pcap):
    return analyzer.load(blocked_pcap)


def cli_frames(path) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "analyzer", "frames", "--format", "jsonl", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def scapy_segments(path, ports) -> list:
    from scapy.layers.inet import TCP
    from scapy.utils import rdpcap

    return [p for p in rdpcap(str(path)) if TCP in p and (p[TCP].sport in ports or p[TCP].dport in ports)]


# ---- tables on the recorded blog capture ---------------------------------------------------------------


def test_frames_table_matches_the_frames_command(blocked, blocked_pcap):
    expected = cli_frames(blocked_pcap)
    df = blocked.frames
    assert list(df.columns) == list(FRAME_COLUMNS)
    assert len(df) == len(expected) > 20
    assert collections.Counter(df["type"]) == collections.Counter(f["type"] for f in expected)
    assert collections.Counter(df["method"].dropna()) == collections.Counter(f["method"] for f in expected
                                                                             if f["method"])
    assert df["t"].tolist() == pytest.approx([f["t"] for f in expected], abs=1e-6)
    assert df["t"].iloc[0] >= 0 and df["t"].is_monotonic_increasing
    tune_ok = df[df["method"] == "connection.tune-ok"]
    assert set(tune_ok["heartbeat"]) == {f["args"]["heartbeat"] for f in expected
                                         if f["method"] == "connection.tune-ok"}
    deliver = df[df["method"] == "basic.deliver"]
    assert len(deliver) == 1 and deliver["delivery_tag"].iloc[0] == 1
    assert (df[df["type"] == "heartbeat"]["channel"] == 0).all()


def test_segments_table_matches_scapy(blocked, blocked_pcap):
    packets = scapy_segments(blocked_pcap, {5672})
    df = blocked.segments
    assert list(df.columns) == list(SEGMENT_COLUMNS)
    assert len(df) == len(packets)
    from scapy.layers.inet import IP, TCP

    def bare_ack(p) -> bool:
        flags = int(p[TCP].flags)
        return len(p[TCP].payload) == 0 and flags & ACK and not flags & 0x07
    assert int(df["ack_only"].sum()) == sum(bare_ack(p) for p in packets)
    assert int(df["payload_len"].sum()) == sum(p[IP].len - 4 * p[IP].ihl - 4 * p[TCP].dataofs for p in packets)
    assert collections.Counter(df["flags"]) == collections.Counter(flags_text(int(p[TCP].flags)) for p in packets)
    assert not df["retransmission"].any() and (df["missing"] == 0).all()
    assert blocked.gaps.empty and list(blocked.gaps.columns[:3]) == ["t", "epoch", "connection"]


def test_connections_and_findings(blocked):
    conns = blocked.connections
    assert len(conns) == len(blocked) == 2
    consumer = conns[conns["verdict"] == "missed-client-heartbeats"]
    assert len(consumer) == 1
    row = consumer.iloc[0]
    assert row["heartbeat_effective"] == 3 and row["close_how"] == "rst" and row["close_initiator"] == "server"
    assert 6.0 <= row["silence"] < 9.05 and abs(row["prediction_error"]) < 0.05
    findings = blocked.findings
    assert list(findings.columns) == ["connection", "t", "kind", "channel", "detail"]
    assert ((findings["connection"] == row["id"]) & (findings["kind"] == "client-app-blocked")).sum() == 1
    view = blocked.connection(row["id"])
    assert view.verdict == "missed-client-heartbeats"
    assert len(view.frames) == (blocked.frames["connection"] == row["id"]).sum()
    assert blocked.connection(str(row["client_port"])).id == row["id"]


def test_html_summaries_name_the_verdicts(blocked):
    page = blocked._repr_html_()
    assert "missed-client-heartbeats" in page and "graceful" in page and "<table>" in page
    assert "rst by server" in page and " T)" in page and " ms (rabbitmq)" in page
    view = blocked.by_verdict("missed-client-heartbeats")[0]
    html = view._repr_html_()
    assert "missed-client-heartbeats" in html and "add_callback_threadsafe" in html


def test_connection_filter_and_bad_keys(blocked_pcap, blocked):
    cid = blocked.connections["id"].iloc[0]
    one = analyzer.load(blocked_pcap, connection=cid)
    assert len(one) == 1 and set(one.frames["connection"]) == {cid} and set(one.segments["connection"]) == {cid}
    with pytest.raises(UsageError, match="out of range"):
        blocked.connection(5)
    with pytest.raises(UsageError, match="matches 2 connections"):
        blocked.connection("127.0.0.1")
    with pytest.raises(UsageError, match="no connection matching"):
        blocked.connection("nowhere")


def test_core_import_does_not_load_pandas_or_matplotlib():
    code = "import sys, analyzer, analyzer.cli; print('pandas' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ---- scripted captures: gaps, and the plot's artists -------------------------------------------------

HB = synth.HEARTBEAT_FRAME
TUNE_OK = 0.007


def blog_steps():
    """heartbeat=3; the client's last heartbeat at 4.5075; the broker's heartbeats ACKed; RST at 12.010."""
    steps = synth.handshake_steps(3)
    k = 1
    while (t := TUNE_OK + k * 1.5) <= 11.9:
        steps += [(t, S2C, PSH | ACK, HB), (t + 0.0002, C2S, ACK, b"")]
        if t + 0.0005 <= 4.508:
            steps += [(t + 0.0005, C2S, PSH | ACK, HB), (t + 0.0007, S2C, ACK, b"")]
        k += 1
    steps.append((12.010, S2C, RST | ACK, b""))
    return sorted(steps, key=lambda s: s[0])


@pytest.fixture()
def blog_pcap(tmp_path):
    path = tmp_path / "blog.pcap"
    path.write_bytes(synth.pcap_bytes(synth.scripted_conversation(blog_steps()).packets()))
    return path


def test_a_lost_segment_is_a_gap_row(tmp_path):
    conv = synth.scripted_conversation(blog_steps())
    kept = [s for s in conv.segments
            if not (s.direction == C2S and s.payload and abs(s.timestamp - 1700000003.0075) < 1e-6)]
    path = tmp_path / "gap.pcap"
    path.write_bytes(synth.pcap_bytes(conv.packets(segments=kept)))
    a = analyzer.load(path)
    assert len(a.gaps) == 1
    gap = a.gaps.iloc[0]
    assert gap["direction"] == C2S and gap["missing"] == 8
    assert len(a.segments) == len(kept)
    assert (a.findings["kind"] == "capture-gap").sum() == 1
    fig = a.connection(0).plot()
    assert _gids(fig) >= {"gaps-c2s"}


def _gids(fig) -> set[str]:
    return {a.get_gid() for a in fig.findobj() if a.get_gid()}


def _labels(fig) -> set[str]:
    return {t.get_text() for t in fig.axes[0].get_legend().get_texts()}


def test_plot_has_the_lanes_timers_window_and_teardown(blog_pcap, tmp_path):
    a = analyzer.load(blog_pcap)
    view = a.connection(0)
    d = view.diagnosis
    assert d.verdict == "missed-client-heartbeats"
    fig = view.plot()
    gids = _gids(fig)
    assert {"lane-c2s", "lane-s2c", "lane-broker-checks", "heartbeats-c2s", "heartbeats-s2c", "frames-c2s",
            "acks-c2s", "rst-s2c", "broker-checks-saw", "broker-checks-silent", "window", "predicted",
            "observed", "naive-timeout", "timeout", "silence", "caption", "note-client-app-blocked"} <= gids
    labels = _labels(fig)
    assert {"heartbeat", "frames", "ACK-only (kernel alive)", "RST from broker", "predicted close 12.007 s"} <= labels
    # One legend entry per symbol, not one per direction (both lanes draw heartbeats, frames and ACKs).
    assert not any(" c2s" in lab or " s2c" in lab for lab in labels), labels
    assert len(labels) == len(fig.axes[0].get_legend().get_texts())
    assert any(lab.startswith("observed RST 12.010 s") for lab in labels)
    # The window [L+2T, L+3T) is shaded where the model says.
    window = next(a for a in fig.findobj() if a.get_gid() == "window")
    if hasattr(window, "get_width"):  # a Rectangle (matplotlib >= 3.9)
        x0, x1 = window.get_x(), window.get_x() + window.get_width()
    else:  # a Polygon before 3.9
        xs = [x for x, _ in window.get_xy()]
        x0, x1 = min(xs), max(xs)
    assert (x0, x1) == pytest.approx(d.prediction.window, abs=1e-6)
    # Broker checks every 3 s from tune-ok: 6.007 saw the last heartbeat, 9.007 and 12.007 were silent.
    silent = next(a for a in fig.findobj() if a.get_gid() == "broker-checks-silent")
    assert sorted(round(x, 3) for x, _ in silent.get_offsets()) == [9.007, 12.007]
    caption = next(a for a in fig.findobj() if a.get_gid() == "caption").get_text()
    assert "missed-client-heartbeats" in caption and "2T to 3T" in caption
    out = tmp_path / "blog.png"
    fig.savefig(out)
    assert out.stat().st_size > 10_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_into_a_given_axes_and_with_pika_checks(blog_pcap):
    from matplotlib.figure import Figure

    a = analyzer.load(blog_pcap)
    fig = Figure()
    ax = fig.add_subplot()
    assert plot_connection(a.diagnoses[0], a.frames, a.segments, a.gaps, ax=ax, checks="both") is fig
    assert {"lane-broker-checks", "lane-pika-checks", "pika-checks-saw"} <= _gids(fig)


def test_plot_cli_writes_one_file_per_connection(blocked_pcap, tmp_path):
    import io

    out, err = io.StringIO(), io.StringIO()
    status = main(["plot", str(blocked_pcap), "-o", str(tmp_path / "t.png"), "--all"], stdout=out, stderr=err)
    assert status == 0, err.getvalue()
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["t-1.png", "t-2.png"]
    assert all((tmp_path / n).stat().st_size > 10_000 for n in written)
    assert out.getvalue().count("\n") == 2 and "missed-client-heartbeats" in out.getvalue()
    # Without --all, the publisher (4 ms, closed normally, no finding) is listed, not drawn.
    out = io.StringIO()
    assert main(["plot", str(blocked_pcap), "-o", str(tmp_path / "u.png")], stdout=out, stderr=err) == 0
    assert (tmp_path / "u.png").exists() and not list(tmp_path.glob("u-*.png"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("not drawn: ") and "(graceful, " in lines[0]
    assert "missed-client-heartbeats" in lines[1]
    svg = tmp_path / "one.svg"
    status = main(["plot", str(blocked_pcap), "-o", str(svg), "--connection", "1"], stdout=out, stderr=err)
    assert status == 0 and svg.read_text().lstrip().startswith("<?xml")
    for argv, message in ((["-o", str(tmp_path / "x.pdf")], ".png or .svg"),
                          (["-o", str(tmp_path / "x.png"), "--connection", "nowhere"], "no connection matching")):
        err = io.StringIO()
        assert main(["plot", str(blocked_pcap), *argv], stdout=io.StringIO(), stderr=err) == 2
        assert message in err.getvalue() and err.getvalue().count("\n") == 1


def test_pika_model_plot_marks_the_decisive_pika_checks(tmp_path):
    """The broker freezes after 3.0 s (its kernel still ACKs); pika gives up with a FIN at its check."""
    steps = synth.handshake_steps(3)
    steps += [(TUNE_OK + 1.5, S2C, PSH | ACK, HB), (TUNE_OK + 1.5002, C2S, ACK, b""),
              (TUNE_OK + 3.0, S2C, PSH | ACK, HB), (TUNE_OK + 3.0002, C2S, ACK, b"")]
    for k in range(1, 11):
        steps += [(TUNE_OK + k * 1.5 + 0.0005, C2S, PSH | ACK, HB), (TUNE_OK + k * 1.5 + 0.0007, S2C, ACK, b"")]
    from analyzer.records import FIN
    steps.append((TUNE_OK + 16.0, C2S, FIN | ACK, b""))
    path = tmp_path / "paused.pcap"
    path.write_bytes(synth.pcap_bytes(synth.scripted_conversation(sorted(steps, key=lambda s: s[0])).packets()))
    view = analyzer.load(path).connection(0)
    assert view.diagnosis.prediction is not None and view.diagnosis.prediction.model == "pika"
    fig = view.plot()
    gids = _gids(fig)
    assert {"lane-pika-checks", "pika-checks-saw", "pika-checks-silent", "fin-c2s", "window"} <= gids
    assert "lane-broker-checks" not in gids
    assert any("pika closes in" in lab for lab in _labels(fig))


def test_a_lane_without_checks_says_why(captures_dir):
    """heartbeat=0: the check lane carries a sentence, not nothing (and draws no check)."""
    view = analyzer.load(captures_dir / "heartbeat-disabled.pcap").connection(0)
    assert view.diagnosis.heartbeat.effective == 0
    for checks, gid in (("auto", "broker-checks-none"), ("pika", "pika-checks-none")):
        fig = view.plot(checks=checks)
        notes = [a for a in fig.findobj() if a.get_gid() == gid]
        assert len(notes) == 1 and "heartbeat disabled" in notes[0].get_text()
        assert not {g for g in _gids(fig) if g.endswith(("-saw", "-silent"))}


def test_the_silence_is_measured_in_the_deciding_timer_s_unit(captures_dir):
    """broker-paused is decided by pika's T+5 checker: its silence is given in T+5, not in T."""
    view = analyzer.load(captures_dir / "broker-paused.pcap").connection(0)
    assert view.diagnosis.prediction.model == "pika"
    texts = [t.get_text() for t in view.plot().findobj(matplotlib.text.Text) if "silent" in t.get_text()
             and "s =" in t.get_text()]
    assert texts == [f"broker silent {view.diagnosis.silence:.3f} s = {view.diagnosis.silence / 8:.2f} (T+5)"]


def test_an_event_finding_does_not_hide_the_frame_it_came_with(captures_dir):
    """consumer-timeout: the 406 star sits above the broker's frame row, not on its heartbeat."""
    view = analyzer.load(captures_dir / "consumer-timeout.pcap").connection(0)
    fig = view.plot()
    star = next(a for a in fig.findobj() if a.get_gid() == "finding-consumer-timeout")
    beats = next(a for a in fig.findobj() if a.get_gid() == "heartbeats-s2c")
    (star_x, star_y), = star.get_offsets()
    near = [(x, y) for x, y in beats.get_offsets() if abs(x - star_x) < 0.05]
    assert near, "the broker's heartbeat next to the channel.close"
    assert all(star_y - y >= 0.15 for _, y in near)


def test_a_frozen_broker_s_checks_are_not_drawn_as_seen_and_the_notes_do_not_overprint(captures_dir):
    """broker-paused with both timers: after the broker's last byte its checks are 'not known' (a
    frozen broker looks at nothing), and the silence note and the silence label do not overlap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    view = analyzer.load(captures_dir / "broker-paused.pcap").connection(0)
    d = view.diagnosis
    fig = view.plot(checks="both")
    broker_last = d.rel(d.timeline.s2c.last_payload)
    by_gid = {a.get_gid(): a for a in fig.findobj() if a.get_gid()}
    assert all(x <= broker_last for x, _ in by_gid["broker-checks-saw"].get_offsets())
    assert len(by_gid["broker-checks-unknown"].get_offsets()) >= 3
    FigureCanvasAgg(fig).draw()
    note = by_gid["note-broker-app-blocked"].get_window_extent()
    label = next(t for t in fig.findobj(matplotlib.text.Text) if t.get_text().startswith("broker silent"))
    assert not note.overlaps(label.get_window_extent())
