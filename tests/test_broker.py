"""Broker control against real RabbitMQ nodes: version, pause/resume, runtime settings, always stopped."""
from __future__ import annotations

import os
import socket
import time

import pika
import pytest

from analyzer.errors import EnvironmentProblem, UsageError
from analyzer.lab import broker as broker_mod
from analyzer.lab.broker import ExternalBroker, LocalBroker, free_port, probe
from tests.fixtures_broker import running


def test_session_broker_accepts_amqp(broker):
    assert broker.info.product == "RabbitMQ" and broker.info.version
    assert broker.info.managed and broker.info.node == broker.node
    assert probe(broker.url)["version"] == broker.info.version
    assert broker.beam_pids()
    assert broker.info.as_dict()["url"].startswith("amqp://guest:***@127.0.0.1:")


def test_external_broker_reports_version(broker):
    with ExternalBroker(broker.url) as ext:
        assert ext.info.version == broker.info.version and not ext.info.managed
        assert not ext.pausable
        with pytest.raises(UsageError, match="started by amqp-hb"):
            ext.pause()


def test_external_broker_errors():
    with pytest.raises(UsageError, match="amqp://"):
        ExternalBroker("http://localhost:5672/")
    with pytest.raises(EnvironmentProblem, match="cannot reach broker"):
        ExternalBroker(f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F").__enter__()


def test_pause_freezes_the_broker_and_resume_thaws_it(broker):
    broker.pause()
    try:
        with socket.create_connection((broker.host, broker.port), timeout=2) as s:
            s.sendall(b"AMQP\x00\x00\x09\x01")
            s.settimeout(1.0)
            with pytest.raises(socket.timeout):
                s.recv(100)  # the kernel accepted the connection; a frozen broker never answers
    finally:
        broker.resume()
    assert probe(broker.url)["product"] == "RabbitMQ"


def test_runtime_settings_are_applied_and_restored(broker):
    previous = broker.set_runtime({"consumer_timeout": 1234})
    try:
        assert broker._ctl(broker_mod.CTL_SCRIPTS[0], "application:get_env(rabbit, consumer_timeout).") == "{ok,1234}"
        assert broker.info.settings["consumer_timeout"] == 1234
    finally:
        broker.restore_runtime(previous)
    assert "consumer_timeout" not in broker.info.settings
    assert broker._ctl(broker_mod.CTL_SCRIPTS[0], "application:get_env(rabbit, consumer_timeout).") != "{ok,1234}"


def test_missing_rabbitmq_server_says_how_to_install(monkeypatch):
    monkeypatch.setattr(broker_mod, "SERVER_SCRIPTS", ("/nonexistent/rabbitmq-server",))
    with pytest.raises(EnvironmentProblem, match="apt-get install rabbitmq-server"):
        LocalBroker()


def test_node_is_stopped_after_a_failure_inside_the_block(broker):
    """A second node (the session's holds 5672): conf applied, stopped even when the block raises."""
    node = LocalBroker(conf={"consumer_timeout": 4000})
    with pytest.raises(RuntimeError, match="scenario failed"), node:
        assert node.port != broker.port
        conn = pika.BlockingConnection(pika.URLParameters(node.url))
        conn.close()
        beams = node.beam_pids()
        assert beams
        tempdir = node.dir
        raise RuntimeError("scenario failed")
    deadline = time.time() + 5
    while any(map(running, beams)) and time.time() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in beams if running(pid)]
    assert node.epmd is None and not os.path.exists(tempdir)
    with pytest.raises(ConnectionRefusedError, match="Connection refused"):
        socket.create_connection((node.host, node.port), timeout=1).close()  # nothing listens there any more
