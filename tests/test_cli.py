"""The CLI edge, run in-process with injected streams (httpie's tests/utils.py is the model)."""
from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from analyzer.api import find_connection
from analyzer.cli import ExitStatus, main
from analyzer.errors import UsageError
from tests import synth
from tests.conftest import REPO


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
    # the client endpoint, and its library (this synthetic start-ok says product "pika", which no
    # library sends: pika says "Pika Python Client Library")
    assert conn["client"] == {"ip": "10.0.0.1", "port": 52018, "library": "unknown", "version": None,
                              "wrapper_hint": None, "identified_by": "handshake", "product": "pika"}


def test_connection_filter(conversation_pcap):
    status, out, _ = run("analyze", "--format", "json", "--connection", "10.0.0.1:52018->10.0.0.2:5672",
                         str(conversation_pcap))
    assert status == ExitStatus.OK and len(json.loads(out)["connections"]) == 1
    status, _, err = run("analyze", "--connection", "1.2.3.4:1->5.6.7.8:9", str(conversation_pcap))
    assert status == ExitStatus.BAD_INPUT and "no connection matching" in err


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


# ---- issue 16: one --connection rule, errors that name their file, options that behave alike -------------

def _csv_ids(out: str) -> list[str]:
    return [row["id"] for row in csv.DictReader(io.StringIO(out))]


@pytest.fixture()
def proxy(captures_dir) -> tuple[str, list[str]]:
    """captures/proxy.pcap and its three connection ids in analyze's order (two share server port 5672)."""
    path = str(captures_dir / "proxy.pcap")
    ids = _csv_ids(run("analyze", path, "--format", "csv")[1])
    assert len(ids) == 3 and [cid.endswith(":5672") for cid in ids] == [False, True, True]
    return path, ids


def test_connection_rule_is_the_same_in_analyze_frames_and_plot(proxy, tmp_path):
    """The full id, a unique part (CLIENT_IP:PORT, the client port) and a position select the same
    connection in every command (frames used to print nothing for a client port, and exit 0)."""
    path, ids = proxy
    target = ids[1]
    client = target.split("->")[0]
    every_frame = run("frames", path, "--format", "jsonl")[1].splitlines(keepends=True)
    its_frames = "".join(line for line in every_frame if json.loads(line)["connection"] == target)
    assert its_frames
    for key in (target, client, client.rpartition(":")[2], "1"):
        status, out, err = run("analyze", path, "--format", "csv", "--connection", key)
        assert status == ExitStatus.OK and _csv_ids(out) == [target], (key, err)
        status, out, err = run("frames", path, "--format", "jsonl", "--connection", key)
        assert status == ExitStatus.OK and out == its_frames, (key, err)
        status, out, err = run("plot", path, "-o", str(tmp_path / "one.png"), "--connection", key)
        assert status == ExitStatus.OK and out == f"{tmp_path / 'one.png'}: {target} (missed-client-heartbeats)\n", err


def test_connection_without_a_unique_match_is_one_line_naming_the_file(proxy, tmp_path):
    path, ids = proxy
    cases = [("55934", f"no connection matching '55934'; the capture has: {', '.join(ids)}"),
             ("5672", f"'5672' matches 2 connections: {ids[1]}, {ids[2]}"),
             ("127.0.0.1", "'127.0.0.1' matches 3 connections"),
             ("3", "no connection matching '3'")]
    for command in (["analyze"], ["analyze", "--format", "json"], ["frames"], ["frames", "--format", "jsonl"],
                    ["plot", "-o", str(tmp_path / "x.png")]):
        for key, message in cases:
            status, out, err = run(*command, path, "--connection", key)
            assert status == ExitStatus.BAD_INPUT and out == "", (command, key)
            assert err.startswith(f"amqp-hb: {path}: ") and message in err and err.count("\n") == 1, (command, err)
    assert not list(tmp_path.iterdir())


def test_find_connection_is_the_one_rule():
    ids = ["10.0.0.1:52018->10.0.0.2:5672", "10.0.0.1:52019->10.0.0.2:5672", "[::1]:40000->[::1]:5673"]
    expected = {ids[2]: 2, "10.0.0.1:52019": 1, "[::1]": 2, "52019": 1, "40000": 2, "5673": 2,
                "0": 0, "1": 1, "2": 2}  # a number that is no connection's port is a position
    for key, position in expected.items():
        assert find_connection(key, ids) == position, key
    assert (find_connection(0, ids), find_connection(-1, ids)) == (0, 2)
    for key, message in (("5672", "'5672' matches 2 connections"), ("10.0.0.1", "matches 2 connections"),
                         ("3", "no connection matching '3'; the capture has: " + ", ".join(ids)),
                         ("nowhere", "no connection matching"), (3, "connection index 3 out of range")):
        with pytest.raises(UsageError, match=re.escape(message)):
            find_connection(key, ids)
    # A reused port pair: the id names its first connection, and counts once.
    assert find_connection(ids[0], [*ids, ids[0]]) == 0 and find_connection("52018", [*ids, ids[0]]) == 0
    many = [f"10.0.0.1:{port}->10.0.0.2:5672" for port in range(40000, 40050)]
    with pytest.raises(UsageError, match=re.escape(f"{many[19]}, ... (50 in all)")):
        find_connection("nowhere", many)


CONCRETE_ID = re.compile(r"(['\"]?)((?:\[[0-9a-fA-F:]+\]|[0-9.]+):\d+->(?:\[[0-9a-fA-F:]+\]|[0-9.]+):\d+)")


def _unquoted_ids(text: str) -> list[str]:
    """Connection ids a reader would paste into a shell as they are: `->` would redirect the output."""
    return [m.group(2) for m in CONCRETE_ID.finditer(text) if not m.group(1)]


def test_connection_examples_are_quoted_in_the_readme_and_the_help():
    assert _unquoted_ids("--connection 127.0.0.1:55934->127.0.0.1:5672") == ["127.0.0.1:55934->127.0.0.1:5672"]
    assert _unquoted_ids("--connection '[::1]:52018->[::1]:5672'") == []
    readme = (REPO / "README.md").read_text()
    assert "--connection '" in readme and _unquoted_ids(readme) == []
    for command in ("analyze", "frames", "plot"):
        status, out, _ = run(command, "--help")
        assert status == ExitStatus.OK and "--connection '" in out and _unquoted_ids(out) == [], command


def test_every_file_error_names_its_file_also_among_several(tmp_path, conversation_pcap):
    notes, missing, empty = tmp_path / "notes.txt", tmp_path / "nope.pcap", tmp_path / "empty.pcap"
    notes.write_text("hello, this is not a capture\n")
    empty.write_bytes(b"")
    expected = [f"amqp-hb: {notes}: not a pcap or pcapng file (starts with 68656c6c)",
                f"amqp-hb: {missing}: no such file",
                f"amqp-hb: {empty}: empty file: not a pcap or pcapng capture"]
    files = [str(notes), str(missing), str(empty), str(conversation_pcap)]
    for command in (["analyze", "--format", "csv"], ["analyze", "--format", "csv", "--jobs", "2"],
                    ["frames", "--format", "csv"], ["analyze", "--connection", "52018"]):
        status, out, err = run(*command, *files)
        assert status == ExitStatus.BAD_INPUT and err.splitlines() == expected, command
        assert "52018" in out, command  # the good file is still reported
    status, _, err = run("plot", str(notes), "-o", str(tmp_path / "x.png"))
    assert status == ExitStatus.BAD_INPUT and err == expected[0] + "\n"


def test_interrupt_is_one_line_and_status_130(monkeypatch, conversation_pcap, tmp_path):
    import analyzer.api
    import analyzer.notebook

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(analyzer.api, "analyze_file", interrupted)
    monkeypatch.setattr(analyzer.api, "read_frame_batches", interrupted)
    monkeypatch.setattr(analyzer.notebook, "analyze_file", interrupted)
    for argv in (["analyze"], ["frames", "--format", "jsonl"], ["plot", "-o", str(tmp_path / "x.png")]):
        assert run(*argv, str(conversation_pcap)) == (ExitStatus.INTERRUPTED, "", "amqp-hb: interrupted\n"), argv


def test_ctrl_c_during_analyze_jobs_prints_no_worker_traceback(tmp_path, captures_dir):
    """Ctrl-C reaches the whole process group: a worker that waits for its next file (idle.pcap is
    done) used to print a KeyboardInterrupt traceback; one reading a capture that never ends (a
    FIFO with no writer) must not keep the parent from exiting."""
    fifo = tmp_path / "never.pcap"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "analyzer", "analyze", str(captures_dir / "idle.pcap"), str(fifo),
                             "--jobs", "2", "--format", "csv"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        children = pathlib.Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(children.read_text().split()) < 2:
            time.sleep(0.05)
        time.sleep(1.5)  # idle.pcap analyzed, its worker back waiting; the other blocked opening the FIFO
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert (proc.returncode, err) == (ExitStatus.INTERRUPTED, "amqp-hb: interrupted\n")


def test_global_options_after_the_command(conversation_pcap, tmp_path):
    bad_output = ["plot", str(conversation_pcap), "-o", str(tmp_path / "figure.txt")]
    assert run(*bad_output)[0] == ExitStatus.BAD_INPUT
    for argv in (["--traceback", *bad_output], [*bad_output, "--traceback"]):
        with pytest.raises(UsageError, match=r"must end in \.png or \.svg"):
            main(argv, stdout=io.StringIO(), stderr=io.StringIO())
    assert run("analyze", str(conversation_pcap), "--traceback")[0] == ExitStatus.OK
    assert run("scenario", "list", "--traceback")[0] == ExitStatus.OK


def test_format_choices_defaults_and_json_aliases(conversation_pcap):
    for command, formats in (("frames", ("text", "jsonl", "csv")), ("analyze", ("text", "json", "csv"))):
        status, out, _ = run(command, "--help")
        assert status == ExitStatus.OK and "(default: text)" in " ".join(out.split())
        assert all(f"{name} (" in out for name in formats), command
    jsonl = run("frames", str(conversation_pcap), "--format", "jsonl")
    assert jsonl[0] == ExitStatus.OK and run("frames", str(conversation_pcap), "--format", "json") == jsonl
    status, out, err = run("analyze", str(conversation_pcap), "--format", "jsonl")
    assert status == ExitStatus.BAD_INPUT and out == "" and err.count("\n") == 1
    assert "analyze writes json, one amqp-hb/analysis/1 document per file" in err
    assert "choose from text, json, csv" in err


def test_dash_r_names_the_input_file_as_in_tshark(conversation_pcap, captures_dir, tmp_path):
    path = str(conversation_pcap)
    for argv in (["analyze", "--format", "csv"], ["frames", "--format", "jsonl"]):
        plain = run(*argv, path)
        assert plain[0] == ExitStatus.OK
        assert run(*argv, "-r", path) == plain and run(argv[0], "-r", path, *argv[1:]) == plain
    other = str(captures_dir / "idle.pcap")
    both = run("analyze", path, "-r", other, "--format", "csv")[1]
    assert [row["file"] for row in csv.DictReader(io.StringIO(both))] == [path, other]  # argument order kept
    status, out, _ = run("plot", "-r", path, "-o", str(tmp_path / "x.png"))
    assert status == ExitStatus.OK and out.startswith(str(tmp_path / "x.png"))
    for argv in (["analyze"], ["frames", "--format", "csv"], ["plot", "-o", str(tmp_path / "y.png")]):
        status, out, err = run(*argv)
        assert status == ExitStatus.BAD_INPUT and "required: FILE (or -r FILE)" in err and err.count("\n") == 1
    status, _, err = run("plot", path, path, "-o", str(tmp_path / "y.png"))
    assert status == ExitStatus.BAD_INPUT and "at most 1 capture file" in err


@pytest.mark.parametrize("argv", [
    ["analyze", "--port", "99999"], ["analyze", "--port", "0"], ["frames", "--port", "65536"],
    ["frames", "--port", "five"], ["frames", "--payload", "-1"], ["analyze", "--jobs", "0"],
    ["plot", "-o", "x.png", "--port", "70000"],
])
def test_numbers_out_of_range_are_one_line_argument_errors(conversation_pcap, argv):
    status, out, err = run(*argv, str(conversation_pcap))
    assert status == ExitStatus.BAD_INPUT and out == ""
    option, value = argv[-2:]
    assert err.count("\n") == 1 and f"amqp-hb {argv[0]}: error: argument {option}" in err.replace("-j/", "")
    assert value in err


def test_analyze_reads_a_pipe():
    """`tcpdump -w - | amqp-hb analyze /dev/stdin`: a pipe cannot tell its position, which the progress
    line asks for every PROGRESS_EVERY packets (40,000 packets here)."""
    out = io.BytesIO()
    synth.short_connections_pcap(out, 5000)
    done = subprocess.run([sys.executable, "-m", "analyzer", "analyze", "/dev/stdin", "--format", "csv"],
                          input=out.getvalue(), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.decode().splitlines()) == 1 + 5000


def test_csv_spells_booleans_as_json_does():
    status, out, _ = run("analyze", str(REPO / "captures" / "blocked-callback.pcap"), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert status == ExitStatus.OK and len(rows) == 2
    assert {row["handshake_seen"] for row in rows} == {"true"} and {row["close_inferred"] for row in rows} == {"false"}
    assert "True" not in out and "False" not in out
