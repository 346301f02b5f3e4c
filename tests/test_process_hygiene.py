"""Process hygiene of the live commands, with real processes on loopback: `amqp-hb capture` stops
its capture tool on SIGTERM and Ctrl-C (SIGINT) and when killed outright, the pcap written so far
stays readable, and a missing tool, a busy port or an unreachable broker is one line on stderr.

Already covered elsewhere: missing privileges with a really unprivileged user and an unknown
interface (tests/test_capture.py), a missing rabbitmq-server and a node stopped after a failing
block (tests/test_broker.py), `scenario run` leaving nothing behind (tests/test_scenarios.py).
"""
from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from analyzer.lab.broker import free_port
from analyzer.lab.capture import count_pcap_records
from analyzer.sources.pcap import open_capture
from tests.fixtures_broker import live_children, processes_matching, running

REPO = pathlib.Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not shutil.which("tcpdump") or os.geteuid() != 0,
                                reason="needs tcpdump and root (make test installs tcpdump; CI runs as root)")


class Echo:
    """A loopback TCP server that echoes: traffic for the capture to record."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data)

    def talk(self, n: int = 3) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            for i in range(n):
                s.sendall(b"ping %d\n" % i)
                s.recv(100)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture()
def echo():
    server = Echo()
    yield server
    server.close()


def start_capture(path: pathlib.Path, port: int) -> tuple[subprocess.Popen, int]:
    """`amqp-hb capture` as a real process; returns it and its tcpdump's pid once capturing."""
    proc = subprocess.Popen([sys.executable, "-m", "analyzer", "capture", "-i", "lo", "--port", str(port),
                             "-o", str(path)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        tools = [pid for pid, cmd in live_children(proc.pid) if "tcpdump" in cmd]
        if tools and path.exists() and path.stat().st_size >= 24:
            return proc, tools[0]
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    _out, err = proc.communicate()
    pytest.fail(f"capture did not start: {err}")


def wait_for_records(path: pathlib.Path, at_least: int = 1, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while count_pcap_records(str(path)) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count_pcap_records(str(path)) >= at_least



def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not running(pid)


def read_back(path: pathlib.Path) -> tuple[list, list[str]]:
    with open(path, "rb") as f:
        reader = open_capture(f)
        packets = list(reader)
    return packets, reader.warnings


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_capture_stops_its_tool_on_a_signal_and_the_file_is_whole(tmp_path, echo, sig):
    path = tmp_path / "live.pcap"
    proc, tool = start_capture(path, echo.port)
    echo.talk()
    wait_for_records(path, at_least=6)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert err.splitlines()[-1] == "amqp-hb: interrupted" and "Traceback" not in err
    assert wait_gone(tool), f"tcpdump {tool} still running"
    packets, warnings = read_back(path)
    assert warnings == [] and len(packets) >= 6
    assert not processes_matching(str(path))


def test_capture_killed_outright_takes_its_tool_along_and_leaves_a_readable_file(tmp_path, echo):
    path = tmp_path / "killed.pcap"
    proc, tool = start_capture(path, echo.port)
    echo.talk()
    wait_for_records(path, at_least=6)
    proc.kill()  # no handler runs: the kernel's parent-death signal must stop tcpdump
    proc.communicate(timeout=10)
    assert wait_gone(tool), f"tcpdump {tool} outlived its parent"
    packets, _ = read_back(path)  # a record cut by the kill would be a warning, not an error
    assert len(packets) >= 6
    result = subprocess.run([sys.executable, "-m", "analyzer", "analyze", str(path)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_missing_tcpdump_is_one_line(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}
    result = subprocess.run([sys.executable, "-m", "analyzer", "capture", "-i", "lo", "--backend", "tcpdump",
                             "-o", str(tmp_path / "x.pcap"), "--duration", "1"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "tcpdump is not installed" in result.stderr and "apt-get install tcpdump" in result.stderr
    assert not (tmp_path / "x.pcap").exists()


def test_a_busy_port_is_never_taken():
    """Every port amqp-hb binds (throwaway node, its epmd and distribution port, the proxy) comes
    from free_port: a busy preferred port is passed over, not a crash."""
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        chosen = free_port(port)
        assert chosen != port
        with socket.create_server(("127.0.0.1", chosen)):
            pass  # really free


def test_unreachable_broker_is_one_line_and_leaves_nothing_running(tmp_path):
    url = f"amqp://guest:Unre4chableS3cret@127.0.0.1:{free_port()}/%2F"
    proc = subprocess.Popen([sys.executable, "-m", "analyzer", "scenario", "run", "idle", "--broker", url,
                             "--out", str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    errors = [line for line in err.splitlines() if not line.startswith("amqp-hb: ") or "cannot reach" in line]
    assert len(errors) == 1 and "cannot reach broker" in errors[0], err
    assert "Unre4chableS3cret" not in out + err and "Traceback" not in err
    assert not processes_matching(str(tmp_path))  # no capture tool or client left behind


def test_scenario_run_stopped_by_sigterm_leaves_nothing_running_and_a_readable_capture(tmp_path, broker):
    """Ctrl-C or SIGTERM in the middle of `scenario run`: the pika client and the capture tool go
    with it, and the pcap written so far still reads."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "analyzer", "scenario", "run", "idle", "--broker", broker.url, "--heartbeat", "2",
         "--work", "60", "--out", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob("idle-*.pcap")) and time.monotonic() < deadline:
        time.sleep(0.1)
    (pcap,) = tmp_path.glob("idle-*.pcap")
    wait_for_records(pcap, at_least=10, timeout=15)
    children = [pid for pid, _ in live_children(proc.pid)]
    assert children, "the run should have a client and a capture process"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert all(wait_gone(pid) for pid in children), "a child of the run is still alive"
    packets, warnings = read_back(pcap)
    assert len(packets) >= 10 and warnings == []
