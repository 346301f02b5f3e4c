"""Live capture with every installed backend, on loopback, against the session broker."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time

import pika
import pytest
from scapy.layers.inet import TCP
from scapy.utils import rdpcap

from analyzer.cli import main
from analyzer.errors import EnvironmentProblem, UsageError
from analyzer.lab import capture as capture_mod
from analyzer.lab.capture import LiveCapture, available_backends, count_pcap_records
from tests.fixtures_broker import processes_matching

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("backend", ["tcpdump", "dumpcap", "scapy"])
def test_backend_records_a_connection_incrementally(broker, tmp_path, backend):
    if backend not in available_backends():
        pytest.skip(f"{backend} is not installed")  # tcpdump and scapy always are (make test)
    path = str(tmp_path / f"{backend}.pcap")
    with LiveCapture(path, ports=[broker.port], backend=backend) as cap:
        conn = pika.BlockingConnection(pika.URLParameters(broker.url))
        conn.close()
        deadline = time.time() + 3  # dumpcap writes up to ~0.6 s late; the others at once
        while count_pcap_records(path) == 0 and time.time() < deadline:
            time.sleep(0.1)
        assert count_pcap_records(path) > 0  # already on disk while capturing
    assert cap.stats.backend == backend
    packets = rdpcap(path)
    assert len(packets) == cap.stats.packets >= 10
    flags = [str(p[TCP].flags) for p in packets]
    assert flags[0] == "S" and flags.count("S") == 1  # one copy of each loopback packet
    assert all(broker.port in (p[TCP].sport, p[TCP].dport) for p in packets)
    assert cap.stats.dropped == (None if backend == "scapy" else 0)
    assert not processes_matching(path)


def test_auto_prefers_a_tool(tmp_path):
    cap = LiveCapture(str(tmp_path / "x.pcap"))
    assert cap.backend == available_backends()[0]
    if shutil.which("tcpdump"):
        assert cap.backend == "tcpdump"


def test_unknown_backend_and_missing_privilege(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="unknown capture backend"):
        LiveCapture(str(tmp_path / "x.pcap"), backend="wireshark")
    monkeypatch.setattr(capture_mod, "has_capture_privilege", lambda: False)
    with pytest.raises(EnvironmentProblem, match="root or CAP_NET_RAW"):
        LiveCapture(str(tmp_path / "x.pcap")).start()


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
def test_unprivileged_user_gets_one_line(tmp_path):
    """Really drop root: the CLI must print one line and exit 2, no traceback."""
    os.chmod(tmp_path, 0o777)
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
           sys.executable, "-m", "analyzer", "capture", "-i", "lo", "-o", str(tmp_path / "x.pcap"),
           "--duration", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "root or CAP_NET_RAW" in res.stderr


def test_capture_cli(broker, tmp_path):
    out, err = io.StringIO(), io.StringIO()
    path = tmp_path / "cli.pcap"
    status = main(["capture", "-i", "lo", "--port", str(broker.port), "-o", str(path), "--duration", "1"], out, err)
    assert status == 0, err.getvalue()
    assert "packets recorded" in out.getvalue() and path.exists()
    status = main(["capture", "-i", "no-such-if0", "-o", str(tmp_path / "y.pcap"), "--duration", "1"], out, err)
    assert status == 2 and err.getvalue().count("\n") == 1 and "no-such-if0" in err.getvalue()


def test_scenario_list_cli():
    out, err = io.StringIO(), io.StringIO()
    assert main(["scenario", "list"], out, err) == 0
    text = out.getvalue()
    for name in ("idle", "blocked-callback", "broker-paused", "consumer-timeout", "proxy"):
        assert name in text
    assert main(["scenario", "run", "no-such-scenario"], out, err) == 2
    assert "unknown scenario" in err.getvalue()


def test_count_pcap_records_ignores_a_cut_record(tmp_path):
    path = tmp_path / "cut.pcap"
    header = bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000")
    record = (1).to_bytes(4, "little") + (0).to_bytes(4, "little") + (4).to_bytes(4, "little") * 2 + b"abcd"
    path.write_bytes(header + record + record[:10])
    assert count_pcap_records(str(path)) == 1
