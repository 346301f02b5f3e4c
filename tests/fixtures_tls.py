"""pytest plugin: scenario runs over TLS (AMQPS), each recorded at most once per session against the
session broker's TLS listener.

Loaded from tests/conftest.py (`pytest_plugins`), so any test file can read the same recordings:
`tls_runs(key)` returns the RunResult of TLS_RUNS[key], recording it on first use with the short
timings of tests/fixtures_clients.py (T=2, a 6.5 s callback: the broker tears down). The keys are the
names of the shipped captures (captures/tls12-blocked-callback.*), so a test can run on either.

Where the files are: `result.pcap`, `result.keylog` (the clients' NSS key log, `<key>.keys`, beside
the pcap) and `result.metadata_path` (`<key>.json`); in the metadata, `tls` holds version_requested,
port (the TLS listener, also ports.amqps), keylog (the file name), server_hostname and `negotiated`
(version and cipher), and each connection its own `tls` {version, cipher}. Decrypt with
`tshark -r PCAP -o tls.keylog_file:KEYS -d tcp.port==PORT,tls -d tls.port==PORT,amqp`.
"""
from __future__ import annotations

from collections.abc import Callable

import pytest

from analyzer.lab.scenarios.runner import RunResult, run_scenario
from tests.fixtures_clients import BLOCK, T

# key (basename of the files) -> (scenario, TLS version, run_scenario timings)
TLS_RUNS = {
    "tls12-blocked-callback": ("blocked-callback", "1.2", dict(heartbeat=T, work=BLOCK)),
    "tls13-blocked-callback": ("blocked-callback", "1.3", dict(heartbeat=T, work=BLOCK)),
}


@pytest.fixture(scope="session")
def tls_runs(broker, tmp_path_factory) -> Callable[[str], RunResult]:
    """key -> RunResult, each TLS run recorded once per session (on first use), sequentially."""
    out = tmp_path_factory.mktemp("tls-runs")
    done: dict[str, RunResult] = {}

    def get(key: str) -> RunResult:
        if key not in done:
            name, version, timings = TLS_RUNS[key]
            done[key] = run_scenario(name, out_dir=str(out), broker=broker, basename=key, tls_version=version,
                                     **timings)
        return done[key]

    return get
