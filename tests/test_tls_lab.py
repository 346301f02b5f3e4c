"""The lab over TLS: throwaway certificates, the broker's TLS listener, scenario runs over AMQPS with a
key log (tests/fixtures_tls.py records them once per session), and the shipped TLS captures.

The wire is read by tshark with the run's key log (decrypted AMQP, TLS alerts, TCP flags) and by
tests/scenario_wire.py (TCP only: what a key-less reader sees), never by the analyzer.
"""
from __future__ import annotations

import io
import ipaddress
import json
import math
import os
import pathlib
import shutil
import ssl
import subprocess
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.x509 import verification

from analyzer.cli import main
from analyzer.lab import certs
from analyzer.lab.scenarios import catalog
from tests.fixtures_broker import leftover_children
from tests.fixtures_tls import TLS_RUNS
from tests.scenario_wire import summarize

SLACK = 0.1  # timer drift and loopback scheduling, seconds
# The broker's close_notify leaves a few ms after the tick that decided the teardown (field notes: 5-9 ms;
# each tick drifts about 1 ms), its RST a fraction of a millisecond after the alert.
TEARDOWN_AFTER_TICK = (-0.005, 0.05)
RST_AFTER_ALERT = 0.01
# TLS record of an 8-byte heartbeat frame: 5-byte header + 8-byte explicit nonce + 8 + 16-byte tag
# (TLS 1.2 AES-GCM); 5 + 8 + 1 (inner content type) + 16 (TLS 1.3). close_notify: 2 bytes instead of 8.
HEARTBEAT_RECORD = {"1.2": 37, "1.3": 30}
CLOSE_NOTIFY_RECORD = {"1.2": 31, "1.3": 24}
# What pika (Python's OpenSSL 3) and Erlang 25's ssl agree on with the lab's ECDSA certificate.
CIPHER = {"1.2": "ECDHE-ECDSA-AES256-GCM-SHA384", "1.3": "TLS_AES_256_GCM_SHA384"}
# The NSS key log labels each version's client writes (TLS 1.3: one line per traffic secret).
KEYLOG_LABELS = {"1.2": {"CLIENT_RANDOM"},
                 "1.3": {"CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                         "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0", "EXPORTER_SECRET"}}
CLIENT_HELLO, NEW_SESSION_TICKET = "1", "4"  # TLS handshake message types
ALERT, CLOSE_NOTIFY = "21", "0"  # TLS content type and alert description
HEARTBEAT_FRAME = "8"  # amqp.type
CONNECTION_START, CONNECTION_TUNE_OK = ("10", "10"), ("10", "31")  # (amqp.method.class, amqp.method.method)
FIELDS = ("frame.time_epoch", "tcp.srcport", "tcp.dstport", "tcp.flags.reset", "tls.record.content_type",
          "tls.record.length", "tls.alert_message.desc", "tls.handshake.type", "tls.handshake.random", "amqp.type",
          "amqp.method.class", "amqp.method.method")
SHIPPED = sorted(TLS_RUNS)  # captures/<key>.pcap, .keys, .json
CAPTURE_LIMIT = 32 * 1024
KEYS_LIMIT = 4 * 1024


# ---- certificates ---------------------------------------------------------------------------------------


def test_certificates_are_valid_for_every_loopback_name(tmp_path):
    files = certs.make_pki(str(tmp_path / "tls"))
    ca, server = (x509.load_pem_x509_certificate(pathlib.Path(path).read_bytes())
                  for path in (files.ca_cert, files.server_cert))
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.1"),
                                                            ipaddress.ip_address("::1")}
    store = verification.Store([ca])
    names = [verification.DNSName("localhost"), verification.IPAddress(ipaddress.ip_address("127.0.0.1")),
             verification.IPAddress(ipaddress.ip_address("::1"))]
    for name in names:  # the RFC 5280 / CA/B checks of cryptography's verifier, per name
        chain = verification.PolicyBuilder().store(store).build_server_verifier(name).verify(server, [])
        assert chain[-1] == ca
    with pytest.raises(verification.VerificationError):
        verification.PolicyBuilder().store(store).build_server_verifier(verification.DNSName("example.com")) \
            .verify(server, [])
    assert os.stat(files.server_key).st_mode & 0o077 == 0  # the key is readable by its owner only
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(files.server_cert, files.server_key)  # a matching pair


def test_client_context_pins_the_version_and_writes_the_key_log(tmp_path):
    files = certs.make_pki(str(tmp_path))
    context = certs.client_context(files.ca_cert, "1.2", str(tmp_path / "x.keys"))
    assert context.minimum_version == context.maximum_version == ssl.TLSVersion.TLSv1_2
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert context.keylog_filename == str(tmp_path / "x.keys")
    with pytest.raises(ValueError, match=r"1\.2, 1\.3"):
        certs.client_context(files.ca_cert, "1.1")


# ---- the broker's TLS listener ----------------------------------------------------------------------------


@pytest.mark.broker
@pytest.mark.parametrize("version", sorted(certs.TLS_VERSIONS))
def test_tls_listener_completes_a_handshake_in_each_version(broker, version):
    assert broker.amqps_port and broker.amqps_url == f"amqps://guest:guest@127.0.0.1:{broker.amqps_port}/%2F"
    facts = certs.handshake(broker.host, broker.amqps_port, broker.ca_file, version)
    assert facts == {"version": f"TLSv{version}", "cipher": CIPHER[version]}
    info = broker.info.as_dict()
    assert info["amqps_port"] == broker.amqps_port and info["tls_listener"]["versions"] == ["tlsv1.3", "tlsv1.2"]


@pytest.mark.broker
def test_tls_listener_serves_ipv6_and_only_its_own_ca(broker, tmp_path):
    if broker.host == "127.0.0.1" and os.path.exists("/proc/net/if_inet6"):
        assert certs.handshake("::1", broker.amqps_port, broker.ca_file, server_hostname="::1")["version"]
    other = certs.make_pki(str(tmp_path / "other"))
    with pytest.raises(ssl.SSLCertVerificationError):
        certs.handshake(broker.host, broker.amqps_port, other.ca_cert)


# ---- TLS runs and shipped TLS captures --------------------------------------------------------------------


@dataclass
class Recording:
    """The three files of a TLS run: capture, key log, metadata."""

    pcap: str
    keys: str
    meta: dict

    @property
    def version(self) -> str:
        return self.meta["tls"]["version_requested"]

    @property
    def port(self) -> int:
        return self.meta["tls"]["port"]

    def connection(self, role: str) -> str:
        (cid,) = [c for c, info in self.meta["connections"].items() if info["role"] == role]
        return cid


def recording_of(request, kind: str, key: str) -> Recording:
    if kind == "run":
        result = request.getfixturevalue("tls_runs")(key)
        assert result.keylog == os.path.splitext(result.pcap)[0] + ".keys"
        return Recording(result.pcap, result.keylog, result.metadata)
    base = request.getfixturevalue("captures_dir") / key
    return Recording(f"{base}.pcap", f"{base}.keys", json.loads(pathlib.Path(f"{base}.json").read_text()))


@pytest.fixture(params=[(kind, key) for kind in ("run", "shipped") for key in SHIPPED],
                ids=lambda p: f"{p[0]}-{p[1]}")
def recording(request) -> Recording:
    return recording_of(request, *request.param)


def client_port(cid: str) -> int:
    return int(cid.split("->")[0].rsplit(":", 1)[1])


def tshark(rec: Recording, keys: bool = True) -> list[dict[str, str]]:
    """One dict per packet (FIELDS; several values of a field joined by commas), decrypted with the key log."""
    assert shutil.which("tshark"), "tshark is not installed: `apt-get install tshark` (make test does it)"
    command = ["tshark", "-n", "-r", rec.pcap, "-d", f"tcp.port=={rec.port},tls", "-d", f"tls.port=={rec.port},amqp",
               "-T", "fields", "-E", "separator=\t", *(a for f in FIELDS for a in ("-e", f))]
    if keys:
        command[1:1] = ["-o", f"tls.keylog_file:{rec.keys}"]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout
    return [dict(zip(FIELDS, line.split("\t"), strict=True)) for line in out.splitlines()]


def of_connection(rows: list[dict[str, str]], cid: str) -> tuple[list[dict], list[dict]]:
    """(client to broker, broker to client) rows of one connection."""
    port = str(client_port(cid))
    return [r for r in rows if r["tcp.srcport"] == port], [r for r in rows if r["tcp.dstport"] == port]


def methods(rows: list[dict[str, str]]) -> set[tuple[str, str]]:
    return {pair for r in rows for pair in zip(r["amqp.method.class"].split(","), r["amqp.method.method"].split(","),
                                               strict=False)}


def heartbeats(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [r for r in rows if r["amqp.type"] == HEARTBEAT_FRAME]


def test_metadata_names_the_files_and_the_sessions(recording):
    rec, meta = recording, recording.meta
    key = os.path.splitext(os.path.basename(rec.pcap))[0]
    scenario, version, _timings = TLS_RUNS[key]
    assert meta["scenario"] == scenario and meta["as_expected"], (meta["observed_exceptions"], meta["client"])
    assert meta["capture"]["file"] == f"{key}.pcap" and meta["capture"]["dropped"] == 0
    assert meta["tls"]["keylog"] == f"{key}.keys" and os.path.exists(rec.keys)
    assert meta["tls"]["version_requested"] == version and meta["ports"]["amqps"] == rec.port
    assert f"port {rec.port}" in meta["capture"]["filter"] and meta["tls"]["server_hostname"] == "localhost"
    session = {"version": f"TLSv{version}", "cipher": CIPHER[version]}
    assert meta["tls"]["negotiated"] == [session]
    assert all(info["tls"] == session for info in meta["connections"].values())  # the publisher too
    assert meta["broker"]["amqps_port"] == rec.port
    # the same ground truth as the plaintext scenario
    assert {info["role"]: info["expected_verdict"] for info in meta["connections"].values()} == \
        catalog.SCENARIOS[scenario].verdicts
    assert meta["observed_exceptions"] == [catalog.SCENARIOS[scenario].exception]


@pytest.mark.tshark
def test_tshark_decrypts_the_handshake_heartbeats_and_teardown(recording):
    rec = recording
    T = rec.meta["parameters"]["heartbeat"]
    rows = tshark(rec)
    assert not methods(tshark(rec, keys=False)) - {("", "")}  # without the key log: no AMQP at all
    c2s, s2c = of_connection(rows, rec.connection(catalog.CONSUMER))
    assert CONNECTION_START in methods(s2c) and CONNECTION_TUNE_OK in methods(c2s)
    assert len(heartbeats(c2s)) >= 2 and len(heartbeats(s2c)) >= 4  # both ways while idle, the broker's during the callback
    # the heartbeat and close_notify record sizes of this version and suite (one record per packet here)
    sizes = {5 + int(r["tls.record.length"]) for r in heartbeats(c2s + s2c)}
    assert sizes == {HEARTBEAT_RECORD[rec.version]}
    # the broker's teardown: close_notify, then RST, on the tick that decided it
    tune_ok = next(float(r["frame.time_epoch"]) for r in c2s if CONNECTION_TUNE_OK in methods([r]))
    last_client = max(float(r["frame.time_epoch"]) for r in c2s if r["tls.record.length"])
    alerts = [r for r in s2c if r["tls.record.content_type"] == ALERT]
    assert [r["tls.alert_message.desc"] for r in alerts] == [CLOSE_NOTIFY]
    assert 5 + int(alerts[0]["tls.record.length"]) == CLOSE_NOTIFY_RECORD[rec.version]
    alert_at = float(alerts[0]["frame.time_epoch"])
    resets = [float(r["frame.time_epoch"]) for r in s2c if r["tcp.flags.reset"] == "1"]
    assert len(resets) == 1 and 0 < resets[0] - alert_at < RST_AFTER_ALERT
    assert not any(r["tcp.flags.reset"] == "1" for r in c2s)
    first_tick_after = tune_ok + math.ceil((last_client - tune_ok) / T) * T
    deciding = first_tick_after + 2 * T  # the second silent look (heartbeat-model.md)
    low, high = TEARDOWN_AFTER_TICK
    assert low <= alert_at - deciding < high, (alert_at - deciding, tune_ok, last_client)
    # no session tickets from the broker after the handshake (Erlang's ssl default), in either version
    assert not any(NEW_SESSION_TICKET in r["tls.handshake.type"].split(",") for r in s2c)


@pytest.mark.tshark
def test_key_log_holds_every_client_random(recording):
    rec = recording
    with open(rec.keys) as f:
        lines = [line.split() for line in f if line.strip() and not line.startswith("#")]
    randoms = [r["tls.handshake.random"] for r in tshark(rec) if r["tls.handshake.type"] == CLIENT_HELLO]
    assert len(randoms) == len(rec.meta["connections"]) == 2
    for random in randoms:
        assert {label for label, client_random, _secret in lines if client_random == random} == \
            KEYLOG_LABELS[rec.version]
    assert len(lines) == len(randoms) * len(KEYLOG_LABELS[rec.version])  # no other session's secrets


def test_tcp_timing_matches_the_ground_truth(recording):
    """What a key-less reader sees: the broker's RST 2T..3T after the client's last TLS record."""
    rec = recording
    T = rec.meta["parameters"]["heartbeat"]
    conns = summarize(rec.pcap)
    consumer, publisher = conns[rec.connection(catalog.CONSUMER)], conns[rec.connection(catalog.PUBLISHER)]
    assert consumer.server.rst_at is not None and consumer.server.fin_at is None
    assert consumer.client.fin_at is None or consumer.client.fin_at > consumer.server.rst_at
    assert 2 * T - SLACK <= consumer.server.rst_at - consumer.client.last_data_at <= 3 * T + SLACK
    # a graceful close over TLS: the client's FIN (pika sends no close_notify), then the broker's FIN — which
    # can wait for its ssl:close to give up on the client's close_notify (a 5 s cap in rabbit_net), past the
    # end of a short recording
    assert publisher.client.fin_at is not None and publisher.client.rst_at is None
    broker_end = publisher.server.fin_at if publisher.server.fin_at is not None else publisher.server.rst_at
    assert broker_end is None or broker_end >= publisher.client.fin_at


@pytest.mark.parametrize("key", SHIPPED)
def test_shipped_tls_captures_are_small(captures_dir, key):
    assert 0 < (captures_dir / f"{key}.pcap").stat().st_size < CAPTURE_LIMIT
    assert 0 < (captures_dir / f"{key}.keys").stat().st_size < KEYS_LIMIT
    meta = json.loads((captures_dir / f"{key}.json").read_text())
    assert meta["parameters"]["heartbeat"] == 3 and meta["parameters"]["work"] == 10  # the blog's timings


# ---- the command line ------------------------------------------------------------------------------------


@pytest.mark.broker
def test_scenario_run_tls_from_the_command_line(broker, tmp_path, monkeypatch):
    """`scenario run idle --tls --analyze` (negotiated version; its own TLS node, here the session's): the
    analyzer reads the capture with the run's key log and agrees with the ground truth."""
    import analyzer.lab.scenarios.runner as runner

    monkeypatch.setattr(runner, "open_broker", lambda *_a, **_k: pytest.fail("the session broker must be used"))
    real = runner.run_scenario
    monkeypatch.setattr(runner, "run_scenario", lambda *a, **k: real(*a, **{**k, "broker": broker}))
    out, err = io.StringIO(), io.StringIO()
    status = main(["scenario", "run", "idle", "--tls", "--heartbeat", "2", "--work", "1", "--out", str(tmp_path),
                   "--basename", "idle-tls", "--analyze"], stdout=out, stderr=err)
    assert status == 0, err.getvalue()
    assert f"key log:  {tmp_path / 'idle-tls.keys'} (TLS on port {broker.amqps_port}: TLSv1.3 " in out.getvalue()
    assert out.getvalue().count("agree ") == 1 and "expected open, analyzer says open" in out.getvalue()
    meta = json.loads((tmp_path / "idle-tls.json").read_text())
    assert meta["tls"]["version_requested"] is None and meta["expected_verdicts"] and meta["as_expected"]
    assert (tmp_path / "idle-tls.keys").stat().st_size > 0


@pytest.mark.parametrize(("argv", "message"), [
    (["--tls", "--broker", "amqp://guest:guest@127.0.0.1:5672/"], "run without --broker"),
    (["--tls-version", "1.2", "--broker", "amqps://guest:guest@127.0.0.1:5671/"], "run without --broker"),
])
def test_impossible_tls_runs_are_refused_before_anything_starts(tmp_path, argv, message):
    out, err = io.StringIO(), io.StringIO()
    assert main(["scenario", "run", "idle", *argv, "--out", str(tmp_path)], stdout=out, stderr=err) == 2
    assert message in err.getvalue() and "Traceback" not in err.getvalue() and not list(tmp_path.iterdir())


def test_py_amqp_cannot_pin_a_tls_version(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    status = main(["scenario", "run", "py-amqp-blocked-handler", "--tls-version", "1.3", "--out", str(tmp_path)],
                  stdout=out, stderr=err)
    assert status == 2 and "cannot pin a TLS version" in err.getvalue() and "--tls alone" in err.getvalue()


@pytest.mark.broker
def test_nothing_left_running(tls_runs, broker):
    """No client or capture tool outlives a TLS run (the session broker is our only child)."""
    for key in TLS_RUNS:
        tls_runs(key)
    leftovers = leftover_children(broker)
    assert not leftovers, leftovers
