"""pytest plugin: the network fault scenarios (analyzer/lab/scenarios/faults.py), each recorded at most
once per session.

Loaded from tests/conftest.py (`pytest_plugins`), so any test file can read the same recordings:
`fault_runs(name)` returns the scenario's RunResult, recording it on first use with the short timings
below. Each run builds its own client, middle and broker network namespaces (root: `make test` runs as
root), starts its own RabbitMQ node inside the broker namespace, and removes everything afterwards.

Where the files are: `result.sides["client"]` and `result.sides["broker"]` (RunResults of their own:
`.pcap` = `<name>-client.pcap` / `<name>-broker.pcap`, `.metadata`, `.metadata_path`); `result` itself is
the client side. Both captures were taken on one host clock (offset 0). In either side's metadata:
`fault` (the ground truth: cut_at, client_exception_at, broker_closed_at from the node's log, the
middlebox's killed_at and last_byte_at, flow_expired_at, loss counters, received_ttls, ...), `captures`
(both sides' capture stats, namespace, interface, address and `wire` facts read back from the file),
`network` (namespaces, addresses, namespace inodes, the kernel's features, the middle namespace),
`expected_verdicts` for that side's capture and `sockets_at_end` (ss in each endpoint namespace).
"""
from __future__ import annotations

from collections.abc import Callable

import pytest

from analyzer.lab.scenarios.runner import RunResult, run_scenario

T = 2  # partition: pika gives up 2(T+5) = 14 s after connecting; the broker 2T..3T after its last client byte
IDLE_TIMEOUT = 4  # N of the middleboxes, seconds
FAULT_TIMINGS = {
    "partition": dict(heartbeat=T, work=3),  # 3 s of heartbeats both ways, then the cut
    "idle-timeout-middlebox": dict(heartbeat=0, work=IDLE_TIMEOUT),
    "idle-timeout-middlebox-silent": dict(heartbeat=0, work=IDLE_TIMEOUT),
    "lossy-path": dict(heartbeat=T, work=6),  # 6 s of heartbeats over 20% loss each way, then a normal close
}


@pytest.fixture(scope="session")
def fault_runs(tmp_path_factory) -> Callable[[str], RunResult]:
    """name -> RunResult (client side; both in .sides), each fault scenario run once per session, sequentially."""
    out = tmp_path_factory.mktemp("fault-runs")
    done: dict[str, RunResult] = {}

    def get(name: str) -> RunResult:
        if name not in done:
            done[name] = run_scenario(name, out_dir=str(out), basename=name, **FAULT_TIMINGS[name])
        return done[name]

    return get
