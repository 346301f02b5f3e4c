"""The CLI edge, run in-process with injected streams (httpie's tests/utils.py is the model)."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest

from analyzer.cli import ExitStatus, main
from tests import synth


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), stdout=out, stderr=err)
    assert type(status) is ExitStatus, f"{argv}: exited with {status!r}, not an ExitStatus"
    return status, out.getvalue(), err.getvalue()


@pytest.fixture()
def conversation_pcap(tmp_path):
    path = tmp_path / "conv.pcap"
    path.write_bytes(synth.pcap_bytes(synth.amqp_conversation(heartbeat=10, heartbeats=2).packets()))
    return path


def test_not_a_capture_is_one_line_and_status_2(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not a capture\n")
    for command in ("frames", "analyze"):
        status, out, err = run(command, str(path))
        assert status == ExitStatus.BAD_INPUT
        assert out == ""
        assert err.count("\n") == 1 and "not a pcap or pcapng file" in err and "Traceback" not in err


@pytest.mark.parametrize("content, message", [(b"", "empty file"), (b"\xd4\xc3\xb2\xa1\x02\x00", "header cut short")])
def test_empty_and_cut_header(tmp_path, content, message):
    path = tmp_path / "bad.pcap"
    path.write_bytes(content)
    status, _, err = run("analyze", str(path))
    assert status == ExitStatus.BAD_INPUT and message in err


def test_missing_file_and_bad_arguments(tmp_path):
    status, _, err = run("frames", str(tmp_path / "nope.pcap"))
    assert status == ExitStatus.BAD_INPUT and "no such file" in err
    status, _, _ = run("frames", "--format", "xml", str(tmp_path / "nope.pcap"))
    assert status == ExitStatus.BAD_INPUT


def test_one_bad_file_among_good_ones_still_reports_the_good(tmp_path, conversation_pcap):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"garbage!")
    status, out, _ = run("analyze", "--format", "csv", str(bad), str(conversation_pcap))
    assert status == ExitStatus.BAD_INPUT
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["verdict"] for r in rows] == ["graceful"]


def test_truncated_capture_gives_frames_up_to_the_cut_and_a_warning(tmp_path, conversation_pcap):
    data = conversation_pcap.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) - 30])  # inside the last record
    status, out, err = run("frames", "--format", "jsonl", str(cut))
    full_status, full_out, _ = run("frames", "--format", "jsonl", str(conversation_pcap))
    assert status == full_status == ExitStatus.OK
    assert out.splitlines() == full_out.splitlines()[: len(out.splitlines())]
    assert len(out.splitlines()) >= len(full_out.splitlines()) - 1
    assert f"cut at byte {len(data) - 30}" in err


def test_frames_jsonl_fields(conversation_pcap):
    status, out, _ = run("frames", "--format", "jsonl", str(conversation_pcap))
    assert status == ExitStatus.OK
    records = [json.loads(line) for line in out.splitlines()]
    assert {"t", "epoch", "connection", "direction", "channel", "type", "method", "size", "args"} <= set(records[0])
    tune_ok = next(r for r in records if r["method"] == "connection.tune-ok")
    assert tune_ok["direction"] == "c2s" and tune_ok["args"]["heartbeat"] == 10
    assert tune_ok["connection"] == "10.0.0.1:52018->10.0.0.2:5672"
    start_ok = next(r for r in records if r["method"] == "connection.start-ok")
    assert start_ok["args"]["response"]["password"] == "<redacted>"
    assert [r["type"] for r in records].count("heartbeat") == 4
    _, shown_out, _ = run("frames", "--format", "jsonl", "--show-secrets", str(conversation_pcap))
    shown = [json.loads(line) for line in shown_out.splitlines()]
    assert next(r for r in shown if r["method"] == "connection.start-ok")["args"]["response"]["password"] == "guest"


def test_frames_csv_and_text(conversation_pcap):
    _, out, _ = run("frames", "--format", "csv", str(conversation_pcap))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows[0]["method"] == "connection.start" and len(rows) == 12
    _, text, _ = run("frames", str(conversation_pcap))
    assert len(text.splitlines()) == 12 and "connection.tune-ok" in text


def test_analyze_json_contract(conversation_pcap):
    status, out, _ = run("analyze", "--format", "json", str(conversation_pcap))
    assert status == ExitStatus.OK
    doc = json.loads(out)
    assert doc["schema"] == "amqp-hb/analysis/1"
    assert {"file", "format", "packets", "start_epoch", "duration", "warnings", "connections"} <= set(doc)
    (conn,) = doc["connections"]
    required = {"id", "client", "server", "start", "end", "handshake_seen", "server_properties", "client_properties",
                "heartbeat", "last_client_byte", "last_server_byte", "close", "verdict", "silence", "prediction",
                "findings", "explanation"}
    assert required <= set(conn)
    assert conn["heartbeat"] == {"server_proposed": 10, "client_requested": 10, "effective": 10, "source": "negotiated"}
    assert conn["close"]["how"] == "connection.close" and conn["verdict"] == "graceful"
    assert conn["client"] == {"ip": "10.0.0.1", "port": 52018}


def test_connection_filter(conversation_pcap):
    status, out, _ = run("analyze", "--format", "json", "--connection", "10.0.0.1:52018->10.0.0.2:5672",
                         str(conversation_pcap))
    assert status == ExitStatus.OK and len(json.loads(out)["connections"]) == 1
    status, _, err = run("analyze", "--connection", "1.2.3.4:1->5.6.7.8:9", str(conversation_pcap))
    assert status == ExitStatus.BAD_INPUT and "no AMQP connection" in err


def test_python_dash_m_runs_the_same_cli(conversation_pcap):
    result = subprocess.run([sys.executable, "-m", "analyzer", "analyze", "--format", "csv", str(conversation_pcap)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "graceful" in result.stdout


def test_analyze_jobs_keeps_argument_order_and_equals_one_process(captures_dir) -> None:
    files = [str(captures_dir / name) for name in ("proxy.pcap", "idle.pcap", "blocked-callback.pcap")]
    one = run("analyze", *files, "--format", "csv")
    two = run("analyze", *files, "--format", "csv", "--jobs", "2")
    assert one == two and one[0] == 0
    assert run("analyze", files[0], "--jobs", "0")[0] == 2


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_only_on_a_terminal_after_a_second_and_never_with_quiet(captures_dir, monkeypatch) -> None:
    from analyzer import cli
    from analyzer.engine import files

    monkeypatch.setattr(cli.Progress, "DELAY", 0.0)
    monkeypatch.setattr(files, "PROGRESS_EVERY", 1)
    path = str(captures_dir / "idle.pcap")
    # frames --args expands the engine's runs into events, frames keeps them as columns.
    for command in (["frames"], ["frames", "--args"], ["analyze"]):
        for quiet in (False, True):
            err = _Terminal()
            argv = [*command, path, *(["--quiet"] if quiet else [])]
            assert cli.main(argv, stdout=io.StringIO(), stderr=err) == 0
            assert ("packets/s" in err.getvalue()) is not quiet, argv
    assert "packets/s" not in run("frames", path)[2]  # stderr not a terminal


def test_every_command_exits_through_exit_status(tmp_path, conversation_pcap):
    """Each subcommand's status goes through ExitStatus (run() checks the type): the commands of
    analyzer.cli, of analyzer.cli.plot and of analyzer.lab, on success and on a usage error."""
    cases = [
        (["scenario", "list"], ExitStatus.OK),
        (["capture", "-i", "lo", "-o", str(tmp_path / "c.pcap"), "--duration", "0"], ExitStatus.BAD_INPUT),
        (["plot", str(conversation_pcap), "-o", str(tmp_path / "figure.png")], ExitStatus.OK),
        (["plot", str(conversation_pcap), "-o", str(tmp_path / "figure.txt")], ExitStatus.BAD_INPUT),
        (["frames", str(conversation_pcap)], ExitStatus.OK),
        (["analyze"], ExitStatus.BAD_INPUT),
    ]
    for argv, expected in cases:
        status, _, err = run(*argv)
        assert status == expected, (argv, err)
