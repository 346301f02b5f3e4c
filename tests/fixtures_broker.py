"""pytest plugin: one throwaway RabbitMQ node for the whole session, always stopped afterwards.

Loaded from tests/conftest.py (`pytest_plugins`). Skip-free on purpose: `make test` installs
rabbitmq-server, so a missing broker is a failure with the install hint, never a silent skip.
"""
from __future__ import annotations

import os
import time

import pytest

from analyzer.errors import EnvironmentProblem
from analyzer.lab.broker import LocalBroker


def running(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie holds no socket, no memory)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def processes_matching(text: str) -> list[tuple[int, str]]:
    """(pid, command line) of live processes whose command line contains `text`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue  # a zombie holds nothing
        except OSError:
            continue
        if text in cmd:
            found.append((int(entry), cmd))
    return found


def live_children(parent: int) -> list[tuple[int, str]]:
    """(pid, command line) of live, non-zombie direct children of `parent`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) == parent:
            found.append((int(entry), cmd))
    return found


# multiprocessing's resource tracker: started by the first multiprocessing lock or semaphore in the
# test process (a Dask LocalCluster, a ProcessPoolExecutor) and kept until the interpreter exits, by
# design: Python's own helper, not something a run left behind.
INTERPRETER_HELPERS = ("multiprocessing.resource_tracker",)


def leftover_children(node: LocalBroker) -> list[tuple[int, str]]:
    """Live children of this process other than the session broker's node and epmd and the
    interpreter's own helpers: what a run left behind."""
    ours = {p.pid for p in (node.proc, node.epmd) if p is not None}
    return [(pid, cmd) for pid, cmd in live_children(os.getpid())
            if pid not in ours and not any(helper in cmd for helper in INTERPRETER_HELPERS)]


@pytest.fixture(scope="session")
def broker():
    """A LocalBroker with channel_tick_interval=1000 (consumer timeouts fire within a second) and a TLS
    listener (port 5671 when free: broker.amqps_port, amqps_url, ca_file) for the TLS runs."""
    try:
        node = LocalBroker(advanced={"channel_tick_interval": 1000}, tls=True)
        node.start()
    except EnvironmentProblem as exc:
        if "node" in locals():
            node.stop()
        pytest.fail(f"cannot start the test broker: {exc}", pytrace=False)
    try:
        yield node
    finally:
        # The Erlang VM's command line does not hold the node name: follow its processes instead.
        beams = node.beam_pids()
        node.stop()
        deadline = time.time() + 5
        while any(map(running, beams)) and time.time() < deadline:
            time.sleep(0.1)
        left = [pid for pid in beams if running(pid)]
        assert not left, f"broker node {node.node} still running after stop: beam.smp {left}"
