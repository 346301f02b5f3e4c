"""The reports' summary and order (issue 18): on a broker host's capture of several clients at once
(tests/merged_captures.py: blocked consumers, a paused broker, healthy consumers and publishers,
error closes), the text report's first screen holds the summary and every problem connection,
`--problems` keeps exactly the connections with a teardown verdict or a finding, and the JSON
summary counts what the document's connections say.

What counts as a problem is restated here from the CSV's columns, on purpose: the test checks
render.summary.needs_attention against the contract, not against itself.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
from collections import Counter

import pytest

from analyzer.cli import ExitStatus, main
from tests.merged_captures import merged_capture, thousand_connections

TEARDOWN_VERDICTS = {"missed-client-heartbeats", "missed-server-heartbeats", "reset", "closed-with-error"}
SCREEN = 40  # lines of a terminal's first screen


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def busy(tmp_path_factory) -> str:
    return str(merged_capture(tmp_path_factory.mktemp("busy") / "busy.pcap"))


def _rows(path: str, *extra: str) -> list[dict[str, str]]:
    status, out, err = run("analyze", path, "--format", "csv", *extra)
    assert status == ExitStatus.OK, err
    return list(csv.DictReader(io.StringIO(out)))


def _problem(row: dict[str, str]) -> bool:
    return row["verdict"] in TEARDOWN_VERDICTS or bool(row["findings"])


def _group(verdict: str, findings: str) -> int:
    """The issue's order: heartbeat teardowns, resets and errors, findings, then the healthy ones."""
    if verdict.startswith("missed-"):
        return 0
    if verdict in TEARDOWN_VERDICTS:
        return 1
    return 2 if findings else 3


def _headers(text: str) -> list[str]:
    """The ids of the connections shown in full (their block's first line)."""
    return [line.split("  verdict: ")[0] for line in text.splitlines() if "  verdict: " in line]


def test_the_merged_capture_is_a_busy_broker(busy):
    rows = _rows(busy)
    verdicts = Counter(r["verdict"] for r in rows)
    assert len(rows) == 19 and len({r["client_ip"] for r in rows}) == 11
    assert verdicts["missed-client-heartbeats"] == 3 and verdicts["missed-server-heartbeats"] == 1
    assert verdicts["reset"] == 1 and verdicts["graceful"] >= 10 and verdicts["open"] == 1
    assert len({r["client_library"] for r in rows}) == 3  # pika, py-amqp, aiormq


def test_the_first_screen_holds_the_summary_and_every_problem_connection(busy):
    rows = _rows(busy)
    problems = [r["id"] for r in rows if _problem(r)]
    healthy = [r["id"] for r in rows if not _problem(r)]
    status, out, _ = run("analyze", busy)
    assert status == ExitStatus.OK
    screen = "\n".join(out.splitlines()[:SCREEN])
    assert f"{len(problems)} of {len(rows)} connections need attention: 3 closed by the broker for missed client " \
           "heartbeats, 1 given up by the client on a silent broker, 1 reset" in screen
    for label in ("verdicts", "findings", "clients", "heartbeat", "span"):
        assert f"\n  {label} " in screen, label
    assert "missed-client-heartbeats 3" in screen and "client-app-blocked 3" in screen
    assert "17 pika 1.4.4" in screen and "1 py-amqp 5.4.2" in screen and "1 aiormq 7.2.4" in screen
    assert "8 at 3 s" in screen and "1 off" in screen
    assert "2026-01-01 00:00:00.000 → 00:00:19.560 UTC" in screen
    for cid in problems:
        assert f"    {cid}  " in screen, cid
    for cid in healthy:
        assert cid not in screen, cid


def test_problems_come_first_in_full_and_the_others_one_line_each(busy):
    rows = {r["id"]: r for r in _rows(busy)}
    status, out, _ = run("analyze", busy)
    assert status == ExitStatus.OK
    shown = _headers(out)
    assert sorted(shown) == sorted(cid for cid, r in rows.items() if _problem(r))
    groups = [_group(rows[cid]["verdict"], rows[cid]["findings"]) for cid in shown]
    assert groups == sorted(groups) and groups[0] == 0
    # within a group: start order
    for a, b in itertools.pairwise(shown):
        if _group(rows[a]["verdict"], rows[a]["findings"]) == _group(rows[b]["verdict"], rows[b]["findings"]):
            assert float(rows[a]["start"]) <= float(rows[b]["start"])
    tail = out.split("needing no attention, one line each (--all shows them in full):\n")[1].splitlines()
    healthy = [cid for cid, r in rows.items() if not _problem(r)]
    assert [line.split()[0] for line in tail] == healthy  # one line each, in start order
    assert all(rows[line.split()[0]]["verdict"] in line for line in tail)
    status, everything, _ = run("analyze", busy, "--all")
    assert sorted(_headers(everything)) == sorted(rows)


@pytest.mark.parametrize("fmt", ["text", "csv", "json"])
def test_problems_lists_exactly_the_connections_with_a_teardown_verdict_or_a_finding(busy, fmt):
    expected = sorted(r["id"] for r in _rows(busy) if _problem(r))
    status, out, err = run("analyze", busy, "--problems", "--format", fmt)
    assert status == ExitStatus.OK, err
    if fmt == "text":
        listed = _headers(out)
        assert "needing no attention" not in out and f"the {len(expected)} that need attention" in out
    elif fmt == "csv":
        listed = [r["id"] for r in csv.DictReader(io.StringIO(out))]
    else:
        document = json.loads(out)
        listed = [c["id"] for c in document["connections"]]
        assert document["summary"]["connections"] == 19  # the summary still counts every connection
    assert sorted(listed) == expected and len(listed) == len(set(listed))


def test_json_summary_counts_what_the_connections_say(busy):
    status, out, _ = run("analyze", busy, "--format", "json")
    assert status == ExitStatus.OK
    document = json.loads(out)
    summary, connections = document["summary"], document["connections"]
    assert summary["connections"] == len(connections) == 19
    assert summary["need_attention"] == sum(
        c["verdict"] in TEARDOWN_VERDICTS or bool(c["findings"]) for c in connections)
    assert summary["verdicts"] == dict(Counter(c["verdict"] for c in connections))
    assert summary["findings"] == dict(Counter(k for c in connections for k in {f["kind"] for f in c["findings"]}))
    assert sum(summary["groups"].values()) == 19 and summary["groups"]["none"] == 19 - summary["need_attention"]
    assert {(x["client"], x["connections"]) for x in summary["clients"]} == set(Counter(
        f"{c['client']['library']} {c['client']['version']}" for c in connections).items())
    assert {(x["effective"], x["connections"]) for x in summary["heartbeats"]} == set(Counter(
        c["heartbeat"]["effective"] for c in connections).items())
    assert summary["span"] == {"first_packet_utc": "2026-01-01T00:00:00.000Z",
                               "last_packet_utc": "2026-01-01T00:00:19.560Z", "duration": document["duration"]}
    assert summary["headline"].startswith(f"{summary['need_attention']} of 19 connections need attention")
    assert [c["id"] for c in connections] == [r["id"] for r in _rows(busy)]  # JSON keeps the start order


def test_the_streamed_cli_report_is_the_whole_analysis_report(busy):
    """The CLI renders connections as they close and sorts them at the end; render.text's
    analysis_report does the same from a whole FileAnalysis: one layout, one order."""
    from analyzer.api import analyze_file
    from analyzer.render.text import analysis_report

    analysis = analyze_file(busy)
    for extra, full in (((), False), (("--all",), True)):
        status, out, _ = run("analyze", busy, *extra)
        assert status == ExitStatus.OK and out == analysis_report(analysis, full=full)


def test_connection_positions_stay_in_start_order_and_a_chosen_connection_is_shown_in_full(busy):
    rows = _rows(busy)
    healthy_first = rows[0]  # threaded-worker's consumer: graceful, no finding
    assert not _problem(healthy_first)
    status, out, _ = run("analyze", busy, "--connection", "0")
    assert status == ExitStatus.OK and _headers(out) == [healthy_first["id"]]
    assert "shown below: 1 of 19 (--connection)" in out


def test_jobs_give_the_same_report(busy, captures_dir):
    files = [busy, str(captures_dir / "blocked-callback.pcap")]
    assert run("analyze", *files) == run("analyze", *files, "--jobs", "2")
    assert run("analyze", *files, "--problems") == run("analyze", *files, "--problems", "--jobs", "2")


def test_a_thousand_connections_summary_names_the_first_problems_and_counts_the_rest(tmp_path):
    path = str(thousand_connections(tmp_path / "k.pcap"))
    status, out, _ = run("analyze", path)
    assert status == ExitStatus.OK
    lines = out.splitlines()
    screen = "\n".join(lines[:SCREEN])
    assert "40 of 1000 connections need attention" in screen
    assert "    ... and 20 more below" in screen  # 20 named, one line each
    assert len(_headers(out)) == 40
    assert sum(1 for line in lines if line.startswith("  10.1.")) == 905  # the healthy ones, one line each
