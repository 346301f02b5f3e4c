"""Shared fixtures. Broker fixtures live in tests/fixtures_broker.py (a throwaway RabbitMQ node)."""
import pathlib

import pytest

pytest_plugins = ["tests.fixtures_broker", "tests.fixtures_clients", "tests.fixtures_tls", "tests.fixtures_faults"]

REPO = pathlib.Path(__file__).resolve().parent.parent
CAPTURES = REPO / "captures"


@pytest.fixture(scope="session")
def captures_dir() -> pathlib.Path:
    return CAPTURES
