"""`amqp-hb scenario run` from the command line against an existing broker (`--broker URL`)."""
from __future__ import annotations

import io
import json

from analyzer.cli import main


def test_scenario_run_against_an_existing_broker_agrees_with_the_analyzer(broker, tmp_path):
    out, err = io.StringIO(), io.StringIO()
    status = main(["scenario", "run", "long-heartbeat", "--broker", broker.url, "--heartbeat", "2", "--work", "1",
                   "--out", str(tmp_path), "--analyze"], stdout=out, stderr=err)
    assert status == 0, err.getvalue()
    text = out.getvalue()
    assert "disagree" not in text and text.count("agree ") == 2
    (meta_file,) = tmp_path.glob("long-heartbeat-*.json")
    meta = json.loads(meta_file.read_text())
    assert meta["broker"]["managed"] is False
    assert "guest:guest" not in meta_file.read_text()  # the URL password is redacted
    assert sorted(meta["expected_verdicts"].values()) == ["graceful", "graceful"]


def test_unreachable_broker_url_is_one_line(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    status = main(["scenario", "run", "idle", "--broker", "amqp://guest:secret@127.0.0.1:1/", "--out", str(tmp_path)],
                  stdout=out, stderr=err)
    assert status == 2
    errors = [line for line in err.getvalue().splitlines() if "cannot reach broker" in line]
    assert len(errors) == 1 and "check the host, port" in errors[0] and "Traceback" not in err.getvalue()
    assert "secret" not in err.getvalue()
