"""Rotated captures read as one (issue 17 §1): a connection that crosses a file boundary stays whole.

- A real capture split at every packet boundary into two files gives the whole file's verdicts,
  predictions, explanations, findings and frame listing (packet numbers too).
- On the command line, in any order: one note, the whole file's report; files that do not continue
  each other (another link type, overlapping times) are analyzed on their own with a note saying why.
- A pause between two files joined with --series is a capture gap (warning and finding, with its
  duration) and never silence: the verdict says it depends on the gap.
- tcpdump's own rotation (-G) during a scenario run gives the verdicts and predictions of one
  capture of the same run.
"""
from __future__ import annotations

import glob
import itertools
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time

import pytest

from analyzer.api import analyze_file, read_frames
from analyzer.lab.scenarios.runner import run_scenario
from analyzer.sources.series import SERIES_MAX_GAP, Series, group_series, series_facts
from tests.conftest import CAPTURES

PCAP_HEADER = 24


def pcap_records(path) -> tuple[bytes, list[bytearray]]:
    """A little-endian classic pcap's file header and its records (header and data each)."""
    with open(path, "rb") as f:
        data = f.read()
    pos, records = PCAP_HEADER, []
    while pos + 16 <= len(data):
        incl = struct.unpack_from("<I", data, pos + 8)[0]
        records.append(bytearray(data[pos : pos + 16 + incl]))
        pos += 16 + incl
    return data[:PCAP_HEADER], records


def write_parts(tmp_path, path, cuts, *, shift_after: float = 0.0) -> list[str]:
    """The capture cut before each record index in `cuts`, as files part-0.pcap, part-1.pcap, ...;
    with `shift_after`, every part after the first is that many seconds later (a pause)."""
    head, records = pcap_records(path)
    bounds = [0, *cuts, len(records)]
    paths = []
    for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        part = [bytearray(r) for r in records[lo:hi]]
        if i and shift_after:
            for r in part:
                struct.pack_into("<I", r, 0, struct.unpack_from("<I", r, 0)[0] + int(shift_after))
        out = tmp_path / f"part-{i}.pcap"
        out.write_bytes(head + b"".join(part))
        paths.append(str(out))
    return paths


def analysis_key(analysis):
    return [(d.timeline.info.id, d.verdict, d.explanation, d.prediction and round(d.prediction.predicted, 6),
             [(f.time, f.kind, f.detail) for f in d.findings]) for d in analysis.connections]


def frame_key(capture):
    return [(f.t, f.epoch, f.connection, f.direction, f.channel, f.method, f.packet) for f in read_frames(capture)]


@pytest.mark.parametrize("name", ["blocked-callback", "partition-client", "consumer-timeout"])
def test_split_at_every_packet_boundary_is_the_whole_capture(tmp_path, name):
    path = str(CAPTURES / f"{name}.pcap")
    whole, whole_frames = analysis_key(analyze_file(path)), frame_key(path)
    _, records = pcap_records(path)
    for k in range(1, len(records)):
        a, b = write_parts(tmp_path, path, [k])
        series = Series([a, b])
        assert analysis_key(analyze_file(series)) == whole, k
        assert frame_key(series) == whole_frames, k


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analyzer", *args], capture_output=True, text=True, timeout=120)


def test_command_line_in_any_order_reads_one_capture(tmp_path):
    path = str(CAPTURES / "blocked-callback.pcap")
    parts = write_parts(tmp_path, path, [20, 45])
    shuffled = parts[:]
    random.Random(17).shuffle(shuffled)
    done = run_cli("analyze", "--format", "json", *shuffled)
    assert done.returncode == 0, done.stderr
    assert done.stderr == (f"amqp-hb: note: 3 files read as one capture, a rotated series in time order: "
                           f"{', '.join(parts)} (--separate to analyze them one by one)\n")
    document = json.loads(done.stdout)
    whole = json.loads(run_cli("analyze", "--format", "json", path).stdout)
    assert document["file"] == parts[0] and document["files"] == parts
    for key in ("file", "files"):
        document.pop(key, None)
        whole.pop(key, None)
    assert document == whole
    frames = run_cli("frames", "--format", "jsonl", *shuffled)
    assert frames.stdout.splitlines() == run_cli("frames", "--format", "jsonl", path).stdout.splitlines()
    separate = run_cli("analyze", "--format", "json", "--separate", *parts)
    assert separate.stderr == "" and separate.stdout.count('"schema"') == 3


def test_files_that_do_not_continue_each_other_stay_apart(tmp_path):
    ethernet = str(CAPTURES / "blocked-callback.pcap")
    other_link = str(CAPTURES / "blocked-callback-ipv6-any.pcap")  # Linux cooked capture (-i any)
    assert series_facts(ethernet).linktypes != series_facts(other_link).linktypes
    done = run_cli("analyze", "--format", "json", "--series", ethernet, other_link)
    assert done.returncode == 0 and done.stdout.count('"schema"') == 2
    assert "link type" in done.stderr and "analyzed on its own" in done.stderr
    twice = run_cli("analyze", "--format", "json", ethernet, ethernet)
    assert twice.stdout.count('"schema"') == 2  # the same capture twice: overlapping times
    grouping = group_series([series_facts(ethernet), series_facts(ethernet)], force=True)
    assert len(grouping.units) == 2 and "overlap" in grouping.notes[0]


def test_a_pause_between_files_is_a_capture_gap_never_silence(tmp_path):
    path = str(CAPTURES / "blocked-callback.pcap")
    first, second = write_parts(tmp_path, path, [40], shift_after=30)  # the capture stopped for 30 s
    apart = run_cli("analyze", "--format", "json", first, second)
    assert apart.stdout.count('"schema"') == 2 and "--series" in apart.stderr  # 30 s > SERIES_MAX_GAP
    assert SERIES_MAX_GAP < 30
    analysis = analyze_file(Series([first, second]))
    (warning,) = [w for w in analysis.summary.warnings if "nothing captured" in w]
    assert warning.startswith("nothing captured for 30.000 s between part-0.pcap and part-1.pcap")
    victim = analysis.connections[0]
    gaps = [f for f in victim.findings if f.kind == "capture-gap"]
    assert gaps and "30.000 s" in gaps[0].detail
    # The client's silence runs through the pause: the verdict must not rest on it.
    assert victim.verdict != "missed-client-heartbeats"
    assert victim.gap_last is not None and "depends on what the capture lost" in victim.explanation
    assert all(not (f.kind.endswith("app-blocked") and f.time < victim.gap_last) for f in victim.findings)


def test_tcpdump_rotation_during_a_scenario_run(broker, tmp_path):
    """tcpdump -G 2 next to the scenario's own capture: the rotated files, given in any order, are
    the scenario's capture."""
    pattern = str(tmp_path / "rotated-%s.pcap")
    rotating = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "--immediate-mode", "-n", "-s", "65550", "-Z", "root",
                                 "-G", "2", "-w", pattern, f"tcp port {broker.port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert b"listening on" in rotating.stderr.readline()
        run = run_scenario("blocked-callback", out_dir=str(tmp_path), broker=broker, basename="whole",
                           heartbeat=2, work=6.5)
        time.sleep(0.5)
    finally:
        os.killpg(rotating.pid, signal.SIGINT)
        rotating.wait(10)
    files = sorted(glob.glob(str(tmp_path / "rotated-*.pcap")))
    assert len(files) >= 4, files
    shuffled = files[:]
    random.Random(4).shuffle(shuffled)
    done = run_cli("analyze", "--format", "json", *shuffled)
    assert done.returncode == 0 and "rotated series" in done.stderr, done.stderr
    rotated = {c["id"]: c for c in json.loads(done.stdout)["connections"]}
    whole = {d.timeline.info.id: d for d in analyze_file(run.pcap).connections}
    assert set(rotated) == set(whole)
    for cid, d in whole.items():
        assert rotated[cid]["verdict"] == d.verdict
        if d.prediction is not None:
            assert rotated[cid]["prediction"]["predicted"] == pytest.approx(d.prediction.predicted, abs=0.002)


def test_the_notebook_loads_a_series(tmp_path):
    import analyzer

    path = str(CAPTURES / "blocked-callback.pcap")
    parts = write_parts(tmp_path, path, [25, 50])
    series, whole = analyzer.load(parts, progress=False), analyzer.load(path, progress=False)
    assert series.frames.equals(whole.frames) and series.segments.equals(whole.segments)
    assert list(series.connections["verdict"]) == list(whole.connections["verdict"])


def test_report_reads_a_series_and_empty_files_are_noted(tmp_path):
    path = str(CAPTURES / "blocked-callback.pcap")
    parts = write_parts(tmp_path, path, [30])
    empty = tmp_path / "part-9.pcap"  # a ring buffer's file after the traffic stopped
    empty.write_bytes(pcap_records(path)[0])
    done = run_cli("report", "-o", str(tmp_path / "r.html"), *parts, str(empty))
    assert done.returncode == 0, done.stderr
    assert f"amqp-hb: note: no packets in {empty}: nothing to analyze there" in done.stderr
    assert "2 files read as one capture" in done.stderr
    assert "2 connections, 1 needing attention, 1 plot" in done.stdout
    analyzed = run_cli("analyze", "--format", "json", *parts, str(empty))
    assert analyzed.stdout.count('"schema"') == 1


def test_captures_of_different_things_are_never_joined_unasked(tmp_path):
    """Two scenario recordings one after the other look like a rotation in time, not in name."""
    from analyzer.sources.series import rotation_name

    assert rotation_name("/x/ring_00002_20261202031841.pcapng") == rotation_name("ring_00003_20261202031845.pcapng")
    assert rotation_name("amqp.pcap") == rotation_name("amqp.pcap17")  # tcpdump -C
    assert rotation_name("cap-20261202-0310.pcap") == rotation_name("cap-20261202-0410.pcap")  # tcpdump -G
    assert rotation_name("consumer-timeout.pcap") != rotation_name("proxy.pcap")
    first, second = (str(CAPTURES / f"{name}.pcap") for name in ("consumer-timeout", "proxy"))
    facts = [series_facts(first), series_facts(second)]
    assert 0 <= facts[1].first - facts[0].last <= SERIES_MAX_GAP  # recorded one after the other
    done = run_cli("analyze", "--format", "json", first, second)
    assert done.stderr == "" and done.stdout.count('"schema"') == 2
    assert len(group_series(facts, force=True).units) == 1  # --series still joins them


def test_a_pipe_among_the_files_is_read_once_by_the_analysis(tmp_path):
    path = str(CAPTURES / "blocked-callback.pcap")
    fifo = tmp_path / "live.pcap"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "analyzer", "analyze", "--format", "csv", str(fifo), path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with open(fifo, "wb") as writer, open(path, "rb") as capture:
        writer.write(capture.read())
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    files = [line.split(",")[0] for line in out.splitlines()[1:]]
    assert files == [str(fifo)] * 2 + [path] * 2
