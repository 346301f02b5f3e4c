"""The pika HeartbeatChecker model at its window edges (analyzer/diagnosis/models/pika.py)."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from analyzer.diagnosis.models.common import ON_TICK_TOLERANCE
from analyzer.diagnosis.models.pika import (
    check_interval,
    pika_check_times,
    pika_send_times,
    predict_missed_server_heartbeats,
)

START = 0.010  # checker start: when pika handled Connection.Tune and sent Tune-Ok
T = 3  # check interval T + 5 = 8: looks at 8.010, 16.010, 24.010, ...


def test_check_interval_is_timeout_plus_five():
    assert check_interval(3) == 8
    assert check_interval(60) == 65


def test_one_silent_window_closes_with_sentence():
    p = predict_missed_server_heartbeats(5.0, START, T)
    assert p.model == "pika" and p.anchor_kind == "checker-start" and p.period == 8
    assert p.predicted == pytest.approx(16.010)
    assert p.window == pytest.approx((13.0, 21.0))
    assert [(c.time, c.saw_activity) for c in p.checks] == [
        (pytest.approx(8.010), True), (pytest.approx(16.010), False)]
    assert p.explain() == (
        "pika checks every 8 s (heartbeat 3 + 5) from its checker start (tune) at 0.010 s; the 8.010 s "
        "check saw the broker's byte at 5.000 s, the 16.010 s check saw nothing, so it gave up at 16.010 s."
    )


@pytest.mark.parametrize(
    ("last_byte", "close"),
    [
        (8.009, 16.010),  # just before a look
        (8.010, 16.010),  # on the look: close at L + (T+5)
        (8.010 + ON_TICK_TOLERANCE / 2, 16.010),
        (8.010 + 3 * ON_TICK_TOLERANCE, 24.010),
        (8.012, 24.010),  # just after: close just under L + 2(T+5)
    ],
)
def test_window_edges_around_a_check(last_byte, close):
    p = predict_missed_server_heartbeats(last_byte, START, T)
    assert p.predicted == pytest.approx(close)
    assert 8 - ON_TICK_TOLERANCE <= p.predicted - last_byte < 16


def test_byte_before_checker_start_is_in_the_first_snapshot():
    p = predict_missed_server_heartbeats(0.005, START, T)
    assert p.predicted == pytest.approx(8.010)
    assert [c.saw_activity for c in p.checks] == [False]
    assert p.window == pytest.approx((8.010, 16.010))
    assert "before the checks started" in p.explain()


@pytest.mark.parametrize("timeout", [0, 0.5])
def test_no_checker_below_one_second(timeout):
    assert predict_missed_server_heartbeats(5.0, START, timeout) is None
    assert pika_check_times(START, timeout, 0, 100) == []
    assert pika_send_times(START, timeout, 0, 100) == []


def test_send_and_check_grids():
    assert pika_send_times(START, T, 0, 4.51) == pytest.approx([1.51, 3.01, 4.51])
    assert pika_check_times(START, T, 0, 20) == pytest.approx([8.010, 16.010])
    assert pika_check_times(START, T, 8.010, 8.010) == pytest.approx([8.010])


@given(start=st.floats(0, 1e5), timeout=st.integers(1, 600), delta=st.floats(1e-3, 1e5))
def test_invariant_close_between_one_and_two_windows_on_the_grid(start, timeout, delta):
    last = start + delta
    p = predict_missed_server_heartbeats(last, start, timeout)
    period = timeout + 5
    k = (p.predicted - start) / period
    assert abs(k - round(k)) < 1e-6 and round(k) >= 2
    assert period - 1e-5 <= p.predicted - last < 2 * period
    assert p.window[0] - 1e-5 <= p.predicted < p.window[1]


@given(
    start=st.floats(0, 1e5),
    timeout=st.integers(1, 600),
    k=st.integers(1, 1000),
    offset=st.floats(-3 * ON_TICK_TOLERANCE, 3 * ON_TICK_TOLERANCE),
)
def test_invariant_holds_for_bytes_within_microseconds_of_a_check(start, timeout, k, offset):
    last = start + k * (timeout + 5) + offset
    p = predict_missed_server_heartbeats(last, start, timeout)
    assert timeout + 5 - ON_TICK_TOLERANCE * 1.1 <= p.predicted - last < 2 * (timeout + 5)
