"""The RabbitMQ broker model at its window edges, its blocked-connection rule and its inference
of T and tick phase from the broker's own heartbeats (analyzer/diagnosis/models/rabbitmq.py)."""
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from analyzer.diagnosis.models.common import ON_TICK_TOLERANCE, Check
from analyzer.diagnosis.models.rabbitmq import (
    broker_tick_times,
    infer_tick_anchor,
    infer_timeout_from_heartbeats,
    monitor_anchor,
    predict_from_tick_phase,
    predict_missed_client_heartbeats,
)

TUNE_OK = 0.003
T = 3


def close_of(last_byte, **kw):
    return predict_missed_client_heartbeats(last_byte, TUNE_OK, T, **kw).predicted


def test_blog_example_checks_window_and_sentence():
    p = predict_missed_client_heartbeats(4.506, TUNE_OK, T)
    assert p.model == "rabbitmq" and p.anchor_kind == "tune-ok"
    assert p.predicted == pytest.approx(12.003)
    assert p.window == pytest.approx((10.506, 13.506))
    assert [c.saw_activity for c in p.checks] == [True, False, False]
    assert [c.time for c in p.checks] == pytest.approx([6.003, 9.003, 12.003])
    assert p.error(12.007) == pytest.approx(0.004)
    assert p.explain() == (
        "RabbitMQ checks every 3 s from tune-ok at 0.003 s; the 6.003 s check saw the client byte "
        "at 4.506 s, the 9.003 s and 12.003 s checks saw nothing, so it closed at 12.003 s."
    )


@pytest.mark.parametrize(
    ("last_byte", "close"),
    [
        (5.999, 12.003),  # just before the 6.003 look: it sees the byte
        (6.003, 12.003),  # exactly on the look: seen by it, close at L + 2T
        (6.003 + ON_TICK_TOLERANCE / 2, 12.003),  # closer than a capture can resolve: on the tick
        (6.003 + 3 * ON_TICK_TOLERANCE, 15.003),  # resolvably after: the next look sees it
        (6.004, 15.003),  # just after the look: close just under L + 3T
    ],
)
def test_window_edges_around_a_tick(last_byte, close):
    p = predict_missed_client_heartbeats(last_byte, TUNE_OK, T)
    assert p.predicted == pytest.approx(close)
    assert 2 * T - ON_TICK_TOLERANCE <= p.predicted - last_byte < 3 * T


def test_first_look_always_counts_so_early_silence_closes_at_anchor_plus_3t():
    # The monitor starts from {0, 0}: its first look compares recv_oct with 0.
    p = predict_missed_client_heartbeats(0.001, TUNE_OK, T)
    assert p.predicted == pytest.approx(9.003)
    assert p.checks[0] == Check(pytest.approx(3.003), True)
    assert p.window == pytest.approx((6.003, 9.003))
    assert "always counts as activity" in p.explain()
    assert close_of(3.003) == pytest.approx(9.003)


@pytest.mark.parametrize("timeout", [0, 0.0])
def test_heartbeat_disabled_gives_no_prediction_and_no_ticks(timeout):
    assert predict_missed_client_heartbeats(4.5, TUNE_OK, timeout) is None
    assert broker_tick_times(TUNE_OK, timeout, 0, 100) == []


def test_tick_grid_is_inclusive_and_starts_after_the_anchor():
    assert broker_tick_times(TUNE_OK, T, 0, 9.003) == pytest.approx([3.003, 6.003, 9.003])
    assert broker_tick_times(TUNE_OK, T, 6.003, 12.0) == pytest.approx([6.003, 9.003])
    assert broker_tick_times(TUNE_OK, T, 10, 5) == []


def test_blocked_connection_restarts_the_grid_at_the_resume():
    anchor = monitor_anchor(TUNE_OK, [(20.0, 50.2)], at=70.0)
    assert anchor == 50.2
    # A client silent since before the unblock: the first look after the resume counts.
    during = predict_missed_client_heartbeats(30.0, TUNE_OK, T, monitor_anchor=anchor)
    assert during.anchor_kind == "unblocked" and during.predicted == pytest.approx(59.2)
    assert during.window == pytest.approx((56.2, 59.2))
    assert close_of(51.0, monitor_anchor=anchor) == pytest.approx(59.2)
    assert close_of(53.3, monitor_anchor=anchor) == pytest.approx(62.2)
    assert "connection.unblocked" in during.explain()


@pytest.mark.parametrize(
    ("periods", "at", "expected"),
    [
        ([], 70.0, TUNE_OK),
        ([(20.0, None)], 70.0, None),  # still blocked: the monitor is paused, it cannot fire
        ([(20.0, 80.0)], 70.0, None),
        ([(80.0, 90.0)], 70.0, TUNE_OK),  # blocked only after the moment asked about
        ([(30.0, 40.0), (10.0, 15.0)], 70.0, 40.0),
    ],
)
def test_monitor_anchor(periods, at, expected):
    assert monitor_anchor(TUNE_OK, periods, at=at) == expected


@given(
    tune_ok=st.floats(0, 1e5),
    timeout=st.integers(1, 600),
    delta=st.floats(1e-3, 1e5),
)
def test_invariant_close_between_2t_and_3t_on_the_grid(tune_ok, timeout, delta):
    last = tune_ok + delta
    p = predict_missed_client_heartbeats(last, tune_ok, timeout)
    k = (p.predicted - tune_ok) / timeout
    assert abs(k - round(k)) < 1e-6 and round(k) >= 3
    if last > tune_ok:
        assert 2 * timeout - 1e-5 <= p.predicted - last < 3 * timeout
        assert p.window[0] - 1e-5 <= p.predicted < p.window[1]
    seen = p.checks[0].time
    assert seen - timeout < last <= seen + 1e-5


def heartbeat_train(tune_ok, timeout, count, drift=0.001, missing=()):
    half = timeout / 2
    return [tune_ok + j * (half + drift) for j in range(1, count + 1) if j not in missing]


def test_timeout_inferred_from_drifting_train_with_a_missing_heartbeat():
    assert infer_timeout_from_heartbeats(heartbeat_train(TUNE_OK, T, 8, missing={5})) == 3.0
    assert infer_timeout_from_heartbeats(heartbeat_train(7.0, 60, 6)) == 60.0


def test_timeout_inference_ignores_busy_stretches_and_needs_two_agreeing_gaps():
    assert infer_timeout_from_heartbeats([1.5, 3.0, 4.5, 9.0, 10.5, 12.0]) == 3.0
    assert infer_timeout_from_heartbeats([1.5, 3.0]) is None
    assert infer_timeout_from_heartbeats([]) is None
    assert infer_timeout_from_heartbeats([0.7, 1.4, 2.1]) == pytest.approx(1.4)  # not whole: raw


def test_tick_phase_from_heartbeats_gives_two_candidates_half_t_apart():
    phase = infer_tick_anchor(heartbeat_train(TUNE_OK, T, 8, missing={5}), T)
    assert phase.heartbeats == 7
    assert phase.sender_period == pytest.approx(1.501)
    assert phase.anchors == pytest.approx((10.511, 12.011))
    assert phase.spread < 1e-9
    # One candidate is on the true grid (tune-ok + kT) up to the sender's accumulated drift.
    offsets = [math.remainder(a - TUNE_OK, T) for a in phase.anchors]
    assert min(abs(o) for o in offsets) == pytest.approx(0.008)


def test_prediction_from_inferred_phase_keeps_the_window_and_brackets_the_truth():
    phase = infer_tick_anchor(heartbeat_train(TUNE_OK, T, 8, missing={5}), T)
    early, late = predict_from_tick_phase(4.506, phase)
    assert (early.predicted, late.predicted) == pytest.approx((10.511, 12.011))
    for p in (early, late):
        assert p.anchor_kind == "inferred"
        assert 10.506 <= p.predicted < 13.506
    truth = predict_missed_client_heartbeats(4.506, TUNE_OK, T).predicted
    nearest = min((early, late), key=lambda p: abs(p.error(truth)))
    assert nearest is late and abs(late.error(truth)) < 0.01
    assert late.explain() == (
        "RabbitMQ checks every 3 s on a grid inferred from the broker's heartbeats, anchored at 12.011 s; "
        "the 6.011 s check saw the client byte at 4.506 s, the 9.011 s and 12.011 s checks saw nothing, "
        "so it closed at 12.011 s. (Heartbeats alone leave this grid's phase ambiguous by 1.5 s.)"
    )


def test_tick_phase_edge_inputs():
    assert infer_tick_anchor([], T) is None
    assert infer_tick_anchor([1.5], 0) is None
    one = infer_tick_anchor([4.5], T)
    assert one.anchors == (3.0, 4.5) and one.spread == 0 and one.heartbeats == 1


@given(
    tune_ok=st.floats(0, 1e4),
    timeout=st.integers(1, 600),
    drift=st.floats(0, 0.002),
    count=st.integers(5, 40),  # 5 - 1 missing still leaves two normal gaps
    data=st.data(),
)
def test_inference_recovers_t_and_phase_from_any_idle_train(tune_ok, timeout, drift, count, data):
    missing = data.draw(st.integers(2, count - 1))
    train = heartbeat_train(tune_ok, timeout, count, drift, missing={missing})
    assert infer_timeout_from_heartbeats(train) == timeout
    phase = infer_tick_anchor(train, timeout)
    error = min(abs(math.remainder(a - tune_ok, timeout)) for a in phase.anchors)
    assert error <= count * drift + 1e-6


@given(
    tune_ok=st.floats(0, 1e5),
    timeout=st.integers(1, 600),
    k=st.integers(1, 1000),
    offset=st.floats(-3 * ON_TICK_TOLERANCE, 3 * ON_TICK_TOLERANCE),
)
def test_invariant_holds_for_bytes_within_microseconds_of_a_tick(tune_ok, timeout, k, offset):
    last = tune_ok + k * timeout + offset
    p = predict_missed_client_heartbeats(last, tune_ok, timeout)
    assert 2 * timeout - ON_TICK_TOLERANCE * 1.1 <= p.predicted - last < 3 * timeout
