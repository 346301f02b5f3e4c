"""`analyze --engine dask` (analyzer/cli/archive.py, analyzer/archive.py) against one process, on a
real Dask LocalCluster: the same bytes in every format, the same verdicts, and Parquet datasets that
read back in pandas as the CSV output; a damaged file among the others; the errors one line each;
Ctrl-C and every close leave no process behind.

One cluster for the module, two workers as processes (processes=True), as the command starts
them: threads would share one interpreter, so nothing would be pickled on the way to a worker and
back (the unit's options, a FileAnalysis, a CaptureFileError) and analyzer would not have to be
importable by name in a fresh process; both are what breaks on a real cluster. Its start (a second or
two) is paid once; the tests hand its address to the CLI with --scheduler. One test starts the
command's own LocalCluster, since that is the default path.
"""
from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("distributed", reason="the archive extra (make test installs it)")
pytest.importorskip("pyarrow", reason="the archive extra (make test installs it)")
pd = pytest.importorskip("pandas", reason="the plot extra (make test installs it)")

from distributed import Client, LocalCluster  # noqa: E402

from analyzer.api import analyze_file  # noqa: E402
from analyzer.archive import (  # noqa: E402
    CONNECTION_TYPES,
    FINDING_COLUMNS,
    FRAME_COLUMNS,
    UnitOptions,
    analyze_unit,
    distributed_results,
)
from analyzer.cli import ExitStatus, main  # noqa: E402
from analyzer.engine import DEFAULT_PORTS  # noqa: E402
from analyzer.lab.broker import free_port  # noqa: E402
from analyzer.render.analysis_json import CSV_COLUMNS  # noqa: E402
from tests import synth  # noqa: E402
from tests.conftest import CAPTURES, REPO  # noqa: E402
from tests.fixtures_broker import INTERPRETER_HELPERS, live_children  # noqa: E402

# A spread of the shipped captures: both heartbeat teardowns, resets, a partition, TLS without keys
# (timing inferred), IPv6, every AMQP method, heartbeats off, many connections (proxy).
SHIPPED = ["blocked-callback", "partition-client", "proxy", "tls13-blocked-callback", "blocked-callback-ipv6-any",
           "every-method", "heartbeat-disabled", "publisher-idle", "idle-timeout-middlebox-broker", "idle"]


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def our_children() -> set[int]:
    """Live child processes of this test process, but multiprocessing's resource tracker: the first
    process spawned starts it, and it stays for the life of the process by design."""
    return {pid for pid, cmd in live_children(os.getpid()) if not any(h in cmd for h in INTERPRETER_HELPERS)}


@pytest.fixture(scope="module")
def scheduler():
    before = our_children()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}, silence_logs=logging.ERROR)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()
    assert our_children() <= before, "the LocalCluster left processes behind"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The shipped captures, with a damaged file in the middle (a text file named .pcap)."""
    damaged = tmp_path_factory.mktemp("damaged") / "damaged.pcap"
    damaged.write_text("not a capture at all\n")
    paths = [str(CAPTURES / f"{name}.pcap") for name in SHIPPED]
    return [*paths[:4], str(damaged), *paths[4:]]


@pytest.mark.parametrize("fmt", ["json", "csv", "text"])
def test_dask_writes_the_bytes_one_process_writes(scheduler, files, fmt):
    one = run("analyze", *files, "--format", fmt)
    dask = run("analyze", *files, "--format", fmt, "--engine", "dask", "--scheduler", scheduler)
    assert dask == one
    status, _, err = dask
    assert status == ExitStatus.BAD_INPUT  # the damaged file: reported by name, the rest analyzed
    assert any(line.startswith(f"amqp-hb: {files[4]}: not a pcap or pcapng file") for line in err.splitlines())


def test_problems_and_connection_are_the_same_too(scheduler, files):
    for option in (["--problems"], ["--connection", "0"]):
        argv = ["analyze", *files[:4], "--format", "csv", *option]
        assert run(*argv, "--engine", "dask", "--scheduler", scheduler) == run(*argv), option


# How the Parquet columns read in pandas with dtype_backend="numpy_nullable" (README: Parquet
# datasets): integers and booleans stay so when a value is missing (Int64, boolean), floats are
# Float64, text is string. The CSV cannot tell an empty text from a missing one; Parquet can (null:
# unknown, "": empty, as `findings` of a connection without any).
NULLABLE = {"int64": "Int64", "float64": "Float64", "bool": "boolean"}


def read_parquet(path):
    return pd.read_parquet(path, dtype_backend="numpy_nullable")


def test_parquet_datasets_read_back_as_the_csv_output(scheduler, files, tmp_path):
    out = tmp_path / "archive"
    status, csv_text, _ = run("analyze", *files, "--format", "csv", "--engine", "dask", "--scheduler", scheduler,
                              "--output-dir", str(out), "--frames")
    assert status == ExitStatus.BAD_INPUT
    good = [f for f in files if "damaged" not in f]
    # One part per file analyzed, numbered by its place on the command line; none for the damaged one.
    for table in ("connections", "findings", "frames"):
        assert sorted(p.name for p in (out / table).iterdir()) == [f"part-{i:05d}.parquet" for i, f in enumerate(files)
                                                                   if "damaged" not in f], table

    connections = read_parquet(out / "connections")
    assert list(connections.columns) == CSV_COLUMNS
    assert {c: str(t) for c, t in connections.dtypes.items()} == {
        c: NULLABLE[CONNECTION_TYPES[c]] if c in CONNECTION_TYPES else "string" for c in CSV_COLUMNS}
    from_csv = pd.read_csv(io.StringIO(csv_text), dtype_backend="numpy_nullable")
    text = [c for c in CSV_COLUMNS if c not in CONNECTION_TYPES]
    from_csv[text] = from_csv[text].astype("string").fillna("")
    connections[text] = connections[text].fillna("")
    pd.testing.assert_frame_equal(connections, from_csv.astype(connections.dtypes.to_dict()), check_exact=True)
    assert connections["handshake_seen"].any() and connections["close_reply_code"].isna().any()  # (both kinds seen)

    # Verdicts: those of analyze_file in this process, file by file.
    expected = [(path, d.verdict) for path in good for d in sorted(
        analyze_file(path).connections, key=lambda d: (d.timeline.first_seen, d.timeline.number))]
    assert list(zip(connections["file"], connections["verdict"], strict=True)) == expected

    # Findings: the JSON documents' findings, one row each.
    _, json_text, _ = run("analyze", *files, "--format", "json")
    documents = [json.loads(part) for part in _json_documents(json_text)]
    rows = [(doc["file"], c["id"], f["time"], f["kind"], f["channel"], f["detail"])
            for doc in documents for c in doc["connections"] for f in c["findings"]]
    findings = read_parquet(out / "findings")
    assert list(findings.columns) == FINDING_COLUMNS and len(findings) == len(rows) > 0
    assert [tuple(None if v is pd.NA else v for v in row) for row in findings.itertuples(index=False)] == rows
    assert str(findings["channel"].dtype) == "Int64" and findings["channel"].isna().any()

    # Frames: `frames --format csv` of the same files (args as JSON text, null where not decoded).
    _, frames_csv, _ = run("frames", *good, "--format", "csv")
    frames = read_parquet(out / "frames")
    assert list(frames.columns) == FRAME_COLUMNS
    listed = pd.read_csv(io.StringIO(frames_csv), dtype_backend="numpy_nullable",
                         keep_default_na=False, na_values={"method": [""], "args": [""]})
    pd.testing.assert_frame_equal(frames, listed.astype(frames.dtypes.to_dict()), check_exact=True)


def _json_documents(text: str) -> list[str]:
    """analyze --format json's documents (one indented document after another)."""
    decoder, i, found = json.JSONDecoder(), 0, []
    while i < len(text):
        _, end = decoder.raw_decode(text, i)
        found.append(text[i:end])
        i = end + 1
    return found


def test_problems_thin_the_datasets_as_they_thin_the_csv(scheduler, files, tmp_path):
    status, csv_text, _ = run("analyze", *files[:4], "--format", "csv", "--problems", "--engine", "dask",
                              "--scheduler", scheduler, "--output-dir", str(tmp_path))
    assert status == ExitStatus.OK
    connections = read_parquet(tmp_path / "connections")
    assert list(connections["id"]) == list(pd.read_csv(io.StringIO(csv_text))["id"])
    assert 0 < len(connections) < sum(len(analyze_file(f).connections) for f in files[:4])


def test_results_come_back_in_unit_order_whatever_finishes_first(scheduler, tmp_path):
    """A slow unit first: the quick ones finish before it and wait; at most `ahead` are in flight."""
    slow = tmp_path / "slow.pcap"
    with open(slow, "wb") as f:
        synth.short_connections_pcap(f, 3000)
    units = [[str(slow)], *([str(CAPTURES / f"{name}.pcap")] for name in SHIPPED[:5])]
    options = UnitOptions(DEFAULT_PORTS)
    with Client(scheduler, set_as_default=False) as client:
        for ahead in (1, 3):
            results = list(distributed_results(client, units, options, ahead=ahead))
            assert [r.paths for r in results] == units
            assert [len(r.outcome.connections) for r in results] == [
                len(analyze_file(paths[0]).connections) for paths in units]


def split_pcap(source, first, second) -> None:
    """A classic pcap cut in two at its middle record, as rotation leaves it (each half with the header)."""
    data = source.read_bytes()
    header, records, pos = data[:24], [], 24
    while pos < len(data):
        length = int.from_bytes(data[pos + 8 : pos + 12], "little")
        records.append(data[pos : pos + 16 + length])
        pos += 16 + length
    half = len(records) // 2
    first.write_bytes(header + b"".join(records[:half]))
    second.write_bytes(header + b"".join(records[half:]))


def test_a_rotated_series_is_one_unit_and_reads_as_the_whole_capture(scheduler, tmp_path):
    whole = CAPTURES / "blocked-callback.pcap"
    first, second = tmp_path / "cap-00.pcap", tmp_path / "cap-01.pcap"
    split_pcap(whole, first, second)
    unit = analyze_unit([str(first), str(second)], UnitOptions(DEFAULT_PORTS), 0).outcome
    expected = analyze_file(str(whole)).connections
    assert [(d.timeline.info.id, d.verdict, d.prediction_fits) for d in unit.connections] == [
        (d.timeline.info.id, d.verdict, d.prediction_fits) for d in expected]
    for fmt in ("json", "csv"):  # given in either order: the series found, then one unit on a worker
        argv = ["analyze", str(second), str(first), "--format", fmt]
        assert run(*argv, "--engine", "dask", "--scheduler", scheduler) == run(*argv)


def test_own_local_cluster_by_default_and_nothing_left_behind(files):
    before = our_children()
    argv = ["analyze", *files[:3], "--format", "csv"]
    assert run(*argv, "--engine", "dask", "--jobs", "2") == run(*argv)
    assert our_children() <= before


def test_errors_are_one_line_and_status_2(files, tmp_path, scheduler, monkeypatch):
    idle = files[-1]
    cases = [
        (["--output-dir", str(tmp_path)], "--output-dir goes with --engine dask"),
        (["--engine", "dask", "--frames"], "--frames writes the frames dataset: give --output-dir DIR too"),
        (["--engine", "dask", "--scheduler", scheduler, "--jobs", "2"], "--jobs N sets the workers of the "),
        (["--engine", "dask", "--output-dir", str(tmp_path), "--connection", "0"], "--output-dir writes whole "),
        (["--engine", "dask", "--scheduler", "nonsense"], "--scheduler nonsense: not a Dask scheduler address"),
    ]
    for option, message in cases:
        status, out, err = run("analyze", idle, *option)
        assert (status, out) == (ExitStatus.BAD_INPUT, ""), option
        assert err.startswith(f"amqp-hb: {message}") and err.count("\n") == 1, err

    # An output directory holding an earlier run's parts is refused before anything is analyzed.
    argv = ["analyze", idle, "--engine", "dask", "--scheduler", scheduler, "--output-dir", str(tmp_path)]
    assert run(*argv)[0] == ExitStatus.OK
    status, out, err = run(*argv)
    assert (status, out) == (ExitStatus.BAD_INPUT, "")
    assert err == (f"amqp-hb: {tmp_path / 'connections'}: already holds 1 Parquet part file(s) from an earlier run; "
                   "give an empty or new --output-dir\n")

    # Nothing listens there: dask retries until SCHEDULER_TIMEOUT (5 s), then one line.
    address = f"tcp://127.0.0.1:{free_port()}"
    status, out, err = run("analyze", idle, "--engine", "dask", "--scheduler", address)
    assert (status, out) == (ExitStatus.BAD_INPUT, "")
    assert err.startswith(f"amqp-hb: no Dask scheduler reachable at {address} (") and err.count("\n") == 1, err

    # Without the archive extra (its import fails, as where it is not installed): which extra, and how.
    monkeypatch.setitem(sys.modules, "distributed", None)
    status, out, err = run("analyze", idle, "--engine", "dask")
    assert (status, out) == (ExitStatus.BAD_INPUT, "")
    assert err.count("\n") == 1 and "`archive` extra (distributed is missing)" in err
    assert "pip install 'amqp-hb[archive]'" in err and "pipx inject amqp-hb distributed" in err


def _sigint_ignored(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    return bool(mask & (1 << (signal.SIGINT - 1)))


def test_ctrl_c_stops_the_cluster_in_one_line_and_leaves_no_process(tmp_path):
    """Ctrl-C reaches the whole process group: the workers (which ignore it) must print nothing,
    the command one line, and the LocalCluster's processes must be gone."""
    slow = tmp_path / "slow.pcap"
    with open(slow, "wb") as f:
        synth.short_connections_pcap(f, 40_000)  # some seconds on a worker: still running at the Ctrl-C
    proc = subprocess.Popen([sys.executable, "-m", "analyzer", "analyze", str(slow), str(CAPTURES / "idle.pcap"),
                             "--engine", "dask", "--format", "csv"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        # The cluster is up once its worker processes exist and SIGINT is no longer ignored (it is
        # while they start, so that they inherit that).
        while time.monotonic() < deadline and (len(live_children(proc.pid)) < 3 or _sigint_ignored(proc.pid)):
            time.sleep(0.05)
        time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        time.sleep(0.5)  # (the workers' exit, once their nanny has closed them)
        left = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == ExitStatus.INTERRUPTED, err
    assert err.endswith("amqp-hb: interrupted\n") and "Traceback" not in err, err
    assert not [pid for pid in left if os.path.exists(f"/proc/{pid}") and _state(pid) != "Z"], left


def _state(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
