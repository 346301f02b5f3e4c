"""The client profile table (models/clients.py), the give-up rules (models/client_timers.py) at
their window edges, identification (identify.py) and the profile's use in verdicts and advice,
on scripted captures with exact timing."""
from __future__ import annotations

import dataclasses
import re

import pytest
from pamqp import commands

from analyzer.api import analyze_file
from analyzer.diagnosis.models import clients
from analyzer.diagnosis.models.client_timers import CallInRule, DeadlineRule, LookRule, predict_give_up
from analyzer.diagnosis.models.common import ON_TICK_TOLERANCE
from analyzer.records import ACK, C2S, FIN, PSH, RST, S2C
from tests import synth

HB = synth.HEARTBEAT_FRAME
TUNE_OK, OPEN_OK = 0.007, 0.009  # handshake_steps' tune-ok and open-ok steps

# What each library's start-ok says (models/clients.py cites where each was read).
START_OK = {
    "pika": {"product": "Pika Python Client Library", "version": "1.4.4", "platform": "Python 3.11.7"},
    "py-amqp": {"product": "py-amqp", "product_version": "5.3.1"},
    "aiormq": {"product": "aiormq", "version": "6.9.3", "platform": "CPython 3.11.7 (main build)"},
    "amqplib": {"product": "amqplib", "version": "0.10.9", "platform": "Node.JS v20.20.2"},
    "java": {"product": "RabbitMQ", "version": "5.35.0", "platform": "Java"},
    "dotnet": {"product": "RabbitMQ", "version": "7.2.1", "platform": ".NET"},
    "go": {"product": "AMQP 0.9.1 Client", "version": "1.14.0", "platform": "golang"},
    "bunny": {"product": "Bunny", "version": "3.2.0", "platform": "ruby 3.3.0"},
    "php-amqplib": {"product": "AMQPLib", "version": "3.7.3", "platform": "PHP"},
}
FACTS = ("products", "negotiation", "sender", "detection", "gives_up_with", "normal_close_code", "fix")


# ---- the table ----------------------------------------------------------------------------------------


def test_every_row_has_every_field_and_a_source_for_each_fact():
    assert set(START_OK) | {"generic"} == set(clients.PROFILES)
    for row in clients.PROFILES.values():
        for f in dataclasses.fields(row):
            value = getattr(row, f.name)
            if f.name in ("blocked_timeout", "blocked_timeout_error", "blocked_timeout_wire", "platform_prefix",
                          "signature_period", "bare_capabilities", "wrappers"):
                continue  # None or () is a fact here: no such setting, no prefix needed, no wrapper
            if row.key == "generic" and f.name in ("products", "api_names"):
                continue
            assert value not in (None, "", ()), (row.key, f.name)
        facts = ("detection", "normal_close_code") if row.key == "generic" else FACTS
        for fact in facts:
            assert row.sources.get(fact, "").strip(), (row.key, fact)
        if row.blocked_timeout is not None:
            assert row.blocked_timeout_error and row.blocked_timeout_wire and row.sources.get("blocked_timeout")
        for fact, source in row.sources.items():
            assert fact in {f.name for f in dataclasses.fields(row)}, (row.key, fact)
            if row.key != "generic":
                assert "@" in source and "/" in source, f"{row.key}.{fact}: cite repo@tag and file: {source}"


def names_api(text: str, name: str) -> bool:
    """`name` as a whole identifier in `text` (setRequestedHeartbeat is not RequestedHeartbeat)."""
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text) is not None


def foreign_api_names(text: str, library: str) -> list[str]:
    """Every other profile's API names that `text` mentions."""
    return [f"{other.key}:{name}" for other in clients.PROFILES.values() if other.key != library
            for name in other.api_names if names_api(text, name)]


def test_no_row_advises_another_rows_api():
    for row in clients.PROFILES.values():
        text = " ".join((row.fix, row.loop, row.detection_text, row.app_sees))
        assert foreign_api_names(text, row.key) == [], row.key
        for name in row.api_names:
            assert names_api(text, name), f"{row.key}: api name {name} is not in its own words"


def test_generic_advice_uses_amqp_terms_only():
    generic = clients.profile("no-such-library")
    assert generic is clients.GENERIC and generic.api_names == ()
    for word in ("pika", "kombu", "asyncio", "Node", "Java", ".NET", "goroutine", "Bunny", "PHP"):
        assert word not in generic.fix


# ---- the rules at their edges ---------------------------------------------------------------------


AMQPLIB_RULE = clients.AMQPLIB.detection


def test_look_rule_two_silent_looks_like_amqplib():
    # T=2, looks every 2 s from open-ok at 1.0: 3.0, 5.0, 7.0, ...
    p = predict_give_up(AMQPLIB_RULE, "amqplib", 3.5, 2, {"open-ok": 1.0})
    assert (p.predicted, p.window, p.exact) == (pytest.approx(9.0), pytest.approx((7.5, 9.5)), True)
    assert [(c.time, c.saw_activity) for c in p.checks] == [
        (pytest.approx(5.0), True), (pytest.approx(7.0), False), (pytest.approx(9.0), False)]


@pytest.mark.parametrize(("last", "close"), [
    (4.999, 9.0), (5.0, 9.0), (5.0 + ON_TICK_TOLERANCE / 2, 9.0), (5.0 + 3 * ON_TICK_TOLERANCE, 11.0), (5.01, 11.0),
    (0.5, 7.0),  # before the timer started: amqplib's flag is already set, its first look counts
])
def test_look_rule_edges(last, close):
    p = predict_give_up(AMQPLIB_RULE, "amqplib", last, 2, {"open-ok": 1.0})
    assert p.predicted == pytest.approx(close)


def test_look_rule_without_its_anchor_gives_only_the_window():
    p = predict_give_up(AMQPLIB_RULE, "amqplib", 3.5, 2, {"tune-ok": 0.9})
    assert not p.exact and p.window == pytest.approx((7.5, 9.5)) and p.predicted == pytest.approx(7.5)


def test_deadline_rule_continuous_and_polled():
    go = predict_give_up(clients.GO.detection, "go", 10.0, 10, {})
    assert go.predicted == pytest.approx(25.0) and go.exact and go.rule == "deadline"
    # aiormq T=3: stuck after more than 3(T+1) = 12 s, looked at every max(1, 3//2) = 1 s from open-ok
    rule = clients.AIORMQ.detection
    assert isinstance(rule, DeadlineRule)
    p = predict_give_up(rule, "aiormq", 2.25, 3, {"open-ok": 0.5})
    assert p.predicted == pytest.approx(14.5) and p.window == pytest.approx((14.25, 15.25))
    on_look = predict_give_up(rule, "aiormq", 2.5, 3, {"open-ok": 0.5})  # due exactly on a look: strictly after
    assert on_look.predicted == pytest.approx(15.5)


def test_call_in_rule_is_a_window_that_may_come_late():
    p = predict_give_up(clients.PY_AMQP.detection, "py-amqp", 1.0, 2, {"open-ok": 0.0})
    assert isinstance(clients.PY_AMQP.detection, CallInRule)
    assert (p.exact, p.late_ok, p.window) == (False, True, pytest.approx((5.0, 7.0)))
    assert "gives up between 4 s and 6 s" in p.explain()


def test_no_rule_arms_for_heartbeat_zero():
    for row in clients.PROFILES.values():
        assert predict_give_up(row.detection, row.key, 1.0, 0, {"tune": 0, "tune-ok": 0, "open-ok": 0}) is None


def test_dotnet_first_look_is_300_ms_after_tune_ok():
    rule = clients.DOTNET.detection
    assert isinstance(rule, LookRule)
    assert rule.looks(1.0, 5, 0, 12) == pytest.approx([6.3, 11.3])


# ---- identification and its use -------------------------------------------------------------------


def write(tmp_path, steps, name="c.pcap"):
    path = tmp_path / name
    path.write_bytes(synth.pcap_bytes(synth.scripted_conversation(sorted(steps, key=lambda s: s[0])).packets()))
    return path


def only(analysis):
    assert len(analysis.connections) == 1
    return analysis.connections[0]


@pytest.mark.parametrize("library", sorted(START_OK))
def test_library_named_from_start_ok(tmp_path, library):
    d = only(analyze_file(write(tmp_path, synth.handshake_steps(5, client_properties=START_OK[library]))))
    assert (d.client.library, d.client.identified_by) == (library, "handshake")
    assert d.client.version == START_OK[library].get("version", START_OK[library].get("product_version"))


def test_go_without_its_name_is_known_by_its_capabilities(tmp_path):
    # amqp091-go drops product/version/platform when the application sets Config.Properties (a
    # connection name); its four capabilities stay. Seen on a real amqp091-go 1.5.0 capture.
    props = {"connection_name": "orders", "capabilities": {
        "publisher_confirms": True, "connection.blocked": True, "consumer_cancel_notify": True, "basic.nack": True}}
    d = only(analyze_file(write(tmp_path, synth.handshake_steps(5, client_properties=props))))
    assert (d.client.library, d.client.identified_by, d.client.product) == ("go", "handshake", None)
    props["capabilities"]["authentication_failure_close"] = True  # pika 1.3's and aiormq's five
    d = only(analyze_file(write(tmp_path, synth.handshake_steps(5, client_properties=props), name="c2.pcap")))
    assert d.client.library == "unknown"


def test_spring_named_from_its_connection_name_and_unknown_product_gets_generic_advice(tmp_path):
    spring = {**START_OK["java"], "connection_name": "rabbitConnectionFactory#1b2c3d4e:0"}
    d = only(analyze_file(write(tmp_path, synth.handshake_steps(5, client_properties=spring))))
    assert (d.client.library, d.client.wrapper_hint, d.client.wrapper_proven) == ("java", "Spring AMQP", True)
    plain = {**START_OK["java"], "connection_name": "orders-consumer"}
    d = only(analyze_file(write(tmp_path, synth.handshake_steps(5, client_properties=plain), name="c1.pcap")))
    assert (d.client.library, d.client.wrapper_proven) == ("java", False)
    other = {"product": "rabbitmq-c", "version": "0.11.0"}
    d = only(analyze_file(write(tmp_path, synth.handshake_steps(5, client_properties=other), name="c2.pcap")))
    assert (d.client.library, d.client.product, d.profile.key) == ("unknown", "rabbitmq-c", "generic")
    ambiguous = {"product": "RabbitMQ", "version": "1.0"}  # Java or .NET: the platform is missing
    d = only(analyze_file(write(tmp_path, synth.handshake_steps(5, client_properties=ambiguous), name="c3.pcap")))
    assert d.client.library == "unknown"


def client_heartbeats(every, until, start=OPEN_OK):
    steps, t = [], start + every
    while t <= until:
        steps += [(round(t, 6), C2S, PSH | ACK, HB), (round(t + 0.0002, 6), S2C, ACK, b"")]
        t += every
    return steps


def broker_heartbeats(timeout, until):
    steps, k = [], 1
    while (t := TUNE_OK + k * timeout / 2) <= until:
        steps += [(round(t + 0.0001, 6), S2C, PSH | ACK, HB), (round(t + 0.0003, 6), C2S, ACK, b"")]
        k += 1
    return steps


def handshake_cut(steps):
    """The capture started after the handshake: only what came after open-ok."""
    return [s for s in steps if s[0] > OPEN_OK]


def test_aiormq_named_from_its_cadence_when_the_handshake_was_not_captured(tmp_path):
    # T=3: aiormq sends every max(1, 3//2) = 1 s; nobody else has that cadence at T=3.
    steps = synth.handshake_steps(3, client_properties=START_OK["aiormq"])
    steps += client_heartbeats(1.0, 12) + broker_heartbeats(3, 12)
    d = only(analyze_file(write(tmp_path, handshake_cut(steps))))
    assert (d.client.library, d.client.identified_by, d.heartbeat.source) == ("aiormq", "behaviour", "inferred")


@pytest.mark.parametrize("timeout", [2, 4, 10])
def test_a_half_t_cadence_names_no_library(tmp_path, timeout):
    # every T/2: pika, the Java and Go clients, .NET 7 and aiormq with even T all do this
    steps = synth.handshake_steps(timeout) + client_heartbeats(timeout / 2, 6 * timeout)
    steps += broker_heartbeats(timeout, 6 * timeout)
    d = only(analyze_file(write(tmp_path, handshake_cut(steps))))
    assert (d.client.library, d.client.identified_by) == ("unknown", "unknown")
    assert d.profile is clients.GENERIC


def test_py_amqp_close_code_zero_is_graceful_and_pika_zero_is_not(tmp_path):
    close0 = commands.Connection.Close(reply_code=0, reply_text="", class_id=0, method_id=0)
    tail = [(1.0, C2S, PSH | ACK, synth.method_frame(close0)),
            (1.001, S2C, PSH | ACK, synth.method_frame(commands.Connection.CloseOk()))]
    d = only(analyze_file(write(tmp_path, synth.handshake_steps(0, client_properties=START_OK["py-amqp"]) + tail)))
    assert d.verdict == "graceful"
    d = only(analyze_file(write(tmp_path, synth.handshake_steps(0) + tail, name="pika.pcap")))
    assert d.verdict == "closed-with-error"


def frozen_broker(timeout, library, fin_at, *, broker_until=None):
    """The broker's last heartbeat at tune-ok + T/2 (or up to `broker_until`), then silence; the
    client keeps heartbeating."""
    steps = synth.handshake_steps(timeout, client_properties=START_OK[library])
    steps += broker_heartbeats(timeout, broker_until or timeout / 2 + 0.1)
    steps += client_heartbeats(timeout / 2, fin_at - 0.01)
    steps += [(fin_at, C2S, FIN | ACK, b""), (fin_at + 0.0005, S2C, ACK, b"")]
    return steps


def test_amqplib_gives_up_on_its_own_grid_and_its_sentence_is_its_own(tmp_path):
    # T=2: the broker's last byte at 1.0071; amqplib looks every 2 s from open-ok (0.009): the 2.009
    # look saw it, 4.009 and 6.009 saw nothing: FIN at 6.009.
    d = only(analyze_file(write(tmp_path, frozen_broker(2, "amqplib", 6.0095))))
    assert d.verdict == "missed-server-heartbeats"
    assert (d.prediction.model, d.prediction.predicted) == ("amqplib", pytest.approx(6.009, abs=1e-6))
    assert "amqplib (Node.js) looks every T s from open-ok" in d.explanation
    assert "Error('Heartbeat timeout')" in d.explanation
    assert "pika" not in d.explanation


def test_go_gives_up_one_and_a_half_t_after_the_broker_s_last_frame(tmp_path):
    d = only(analyze_file(write(tmp_path, frozen_broker(10, "go", 5.0071 + 15.0))))
    assert d.verdict == "missed-server-heartbeats"
    assert d.prediction.model == "go" and d.prediction.predicted == pytest.approx(20.0071, abs=1e-6)


def test_a_fin_too_early_for_the_library_is_not_its_heartbeat_timeout(tmp_path):
    d = only(analyze_file(write(tmp_path, frozen_broker(10, "go", 12.0))))
    assert d.verdict == "reset" and "amqp091-go's earliest heartbeat timeout" in d.misfit


def test_unknown_client_after_a_long_broker_silence_gets_generic_words(tmp_path):
    steps = frozen_broker(4, "pika", 14.0, broker_until=8.1)  # broker heartbeats show T = 4
    steps = [s for s in steps if s[0] > OPEN_OK]  # no start-ok: no library
    d = only(analyze_file(write(tmp_path, steps)))
    assert d.client.library == "unknown" and d.verdict == "missed-server-heartbeats"
    assert d.prediction.model == "generic" and "not identified" in d.explanation


def test_client_close_while_blocked_is_its_blocked_connection_timeout(tmp_path):
    blocked = commands.Connection.Blocked(reason="low on memory")
    steps = [*synth.handshake_steps(60), (1.0, C2S, PSH | ACK, synth.method_frame(commands.Basic.Publish(exchange="", routing_key="q"), 1)), (1.001, S2C, PSH | ACK, synth.method_frame(blocked)), (4.002, C2S, FIN | ACK, b""), (4.003, S2C, RST | ACK, b"")]
    d = only(analyze_file(write(tmp_path, steps)))
    assert d.verdict == "reset" and d.misfit is None
    finding = next(f for f in d.findings if f.kind == "client-gave-up-blocked")
    assert "3.001 s after connection.blocked" in finding.detail and "blocked_connection_timeout" in finding.detail
    assert "ConnectionBlockedTimeout" in d.explanation
