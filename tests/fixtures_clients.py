"""pytest plugin: the scenarios of the other client libraries (py-amqp, aio-pika, Node.js amqplib) and
pika's blocked_connection_timeout, each recorded at most once per session against the session broker.

Loaded from tests/conftest.py (`pytest_plugins`), so any test file can read the same recordings:
`client_runs(name)` returns the scenario's RunResult, recording it on first use with the short
timings below. A scenario whose client cannot run here (Node.js or amqplib missing, which `make
venv` installs when npm can) is skipped with the runner's one-line reason naming what is missing.
"""
from __future__ import annotations

from collections.abc import Callable

import pytest

from analyzer.lab.scenarios import catalog
from analyzer.lab.scenarios.runner import RunResult, client_problem, run_scenario

T = 2  # heartbeat timeout: the broker gives up 2T..3T after the client's last byte
BLOCK = 3 * T + 0.5  # a handler longer than 3T always outlives the broker's patience
HEALTHY = 2.5 * T  # heartbeats flow at least this long while the work runs off the I/O loop
BLOCKED_TIMEOUT = 3  # pika's blocked_connection_timeout, seconds
CLIENT_TIMINGS = {
    "py-amqp-blocked-handler": dict(heartbeat=T, work=BLOCK),
    "py-amqp-healthy": dict(heartbeat=T, work=HEALTHY),
    "aio-pika-blocked-handler": dict(heartbeat=T, work=BLOCK),
    "aio-pika-healthy": dict(heartbeat=T, work=HEALTHY),
    "amqplib-blocked-handler": dict(heartbeat=T, work=BLOCK),
    "amqplib-healthy": dict(heartbeat=T, work=HEALTHY),
    "blocked-connection-timeout": dict(heartbeat=T, work=BLOCKED_TIMEOUT),
}


@pytest.fixture(scope="session")
def client_runs(broker, tmp_path_factory) -> Callable[[str], RunResult]:
    """name -> RunResult, each scenario run once per session (on first use), sequentially."""
    out = tmp_path_factory.mktemp("client-runs")
    done: dict[str, RunResult] = {}

    def get(name: str) -> RunResult:
        missing = client_problem(catalog.get(name))
        if missing:
            pytest.skip(missing)
        if name not in done:
            done[name] = run_scenario(name, out_dir=str(out), broker=broker, basename=name, **CLIENT_TIMINGS[name])
        return done[name]

    return get
