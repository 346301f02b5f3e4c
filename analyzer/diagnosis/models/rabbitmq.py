"""RabbitMQ's heartbeat timers as a pure model: when the broker gives up on a silent client.

Models deps/rabbit_common/src/rabbit_heartbeat.erl, unchanged in behaviour from 3.7.11 to 4.3.x
(line numbers below are at rabbitmq/rabbitmq-server commit c38a3d6, the 2022 tree):
- `start_heartbeat_receiver/4` (lines 79-84): the monitor looks at `recv_oct` every
  `TimeoutSec * 1000` ms, the full T, with `Threshold` 1.
- `heartbeater/3` (lines 120-156): `receive ... after TimeoutMillisec`; a look that finds the counter
  unchanged bumps `SameCount`, the next unchanged look (`SameCount` = `Threshold`) runs the handler,
  which closes the connection. Its own comment: "we will time out between 2 and 3 intervals after the
  last data has been received". The process starts with state `{0, 0}` (line 117), so the first
  look compares the counter with 0 and always counts as activity.
- `pause`/`resume` (lines 128-130): a paused monitor waits for `resume` with no timeout and then
  restarts from `{0, 0}`: a fresh grid anchored at the resume time, whose first look again counts.
  rabbit_reader.erl pauses it in `maybe_block/1` (a publish arrives while an alarm is on: the
  moment the broker sends connection.blocked) and resumes it in `control_throttle/1` ({blocked, false}:
  when it sends connection.unblocked). While blocked the reader does not read the socket, so bytes the
  client sends meanwhile reach `recv_oct` only after the resume.
- `start_heartbeat_sender/4` (lines 72-77): every T/2 (`TimeoutSec * 1000 div 2`) the sender looks at
  `send_oct` and sends a heartbeat if nothing was sent since; its first look always sends (lines
  140-145). It is never paused. An idle broker so emits heartbeats at anchor + T/2, T, 3T/2, ...
- `start_heartbeater(0, ...)` (lines 102-104): T = 0 starts neither timer.
Both timers are started by rabbit_reader.erl when it handles connection.tune-ok.

Boundary conventions. A client byte captured at time L is seen by the first look at or after L
(within `ON_TICK_TOLERANCE`): the capture stamps the byte a little before `recv_oct` counts it, and the
real monitor starts a little after the captured tune-ok, so both sides of "exactly on a tick" carry an
unknown microsecond offset of the same sign; we take the reading that makes the close fall in the
half-open window [L + 2T, L + 3T) that the Erlang comment and heartbeat-model.md state. A byte at or
before the grid's anchor is seen by its first look (baseline 0), so the close is then anchor + 3T,
the top of the window [anchor + 2T, anchor + 3T] (closed in this one case).
Each Erlang `after` fires at or a little after its deadline (heartbeat-model.md measures about 1 ms
per tick on the sender; we assume the same for the monitor, which emits nothing to measure):
`predicted` is the drift-free grid instant and `lateness_allowance` bounds the accumulated slip.
Times are as captured: a capture taken far from the broker sees client bytes earlier, and the
broker's close later, than the broker does (by the one-way latency each).
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from analyzer.diagnosis.models.common import (
    AnchorKind,
    Check,
    Prediction,
    first_tick_index,
    grid_times,
    interval_gaps,
    largest_cluster,
)

# Timer slip per Erlang `after` tick, seconds (heartbeat-model.md: "about 1 ms drift per tick",
# measured on the sender, assumed for the monitor).
TICK_SLIP = 0.001
# The close window after the client's last byte L is [L + 2T, L + 3T): heartbeater/3 closes at the
# second silent look ("we will time out between 2 and 3 intervals after the last data has been
# received", its comment); the look that saw L is at most one T after it.
WINDOW_START_PERIODS = 2
WINDOW_END_PERIODS = 3
# Heartbeat intervals within this fraction of each other belong to the same cadence: drift is ~1 ms
# on a T/2 of at least 500 ms, scheduling jitter a few ms more.
_SAME_INTERVAL = 0.05
# An inferred T this near a whole number of seconds is that number (the wire carries an integer): the
# ~1 ms drift per tick and scheduling jitter stay well inside max(50 ms, 2 %).
_WHOLE_SECONDS_ABS = 0.05
_WHOLE_SECONDS_REL = 0.02


def broker_tick_times(tune_ok_time: float, timeout: float, start: float, end: float) -> list[float]:
    """The monitor's looks at `recv_oct`, tune_ok_time + k*T for k >= 1, within [start, end].

    Pass a resume time (after connection.unblocked) as `tune_ok_time` for the restarted grid.
    Empty when heartbeats are disabled (T = 0).
    """
    return grid_times(tune_ok_time, timeout, start, end) if timeout > 0 else []


def predict_missed_client_heartbeats(
    last_client_byte: float,
    tune_ok_time: float,
    timeout: float,
    *,
    monitor_anchor: float | None = None,
) -> Prediction | None:
    """When the broker closes a connection whose client fell silent at `last_client_byte`.

    The grid starts at `monitor_anchor` when given (the resume time after the last
    connection.unblocked, see `monitor_anchor`), else at `tune_ok_time`. None when T = 0.
    """
    if timeout <= 0:
        return None
    anchor = tune_ok_time if monitor_anchor is None else monitor_anchor
    kind: AnchorKind = "tune-ok" if monitor_anchor is None else "unblocked"
    k = max(1, first_tick_index(anchor, timeout, last_client_byte))  # look 1 always counts
    return _closing(last_client_byte, max(last_client_byte, anchor), anchor, kind, timeout, k,
                    slip_ticks=k + 2)


def monitor_anchor(
    tune_ok_time: float, blocked_periods: Sequence[tuple[float, float | None]], *, at: float
) -> float | None:
    """The start of the monitor grid in force at time `at` (e.g. the teardown).

    `blocked_periods` are (connection.blocked, connection.unblocked) times, the second None when the
    capture shows no unblock. Returns the last resume at or before `at`, else `tune_ok_time`; None
    when the monitor is paused at `at` (then it cannot have fired).
    """
    anchor = tune_ok_time
    for blocked, unblocked in sorted(blocked_periods):
        if blocked > at:
            break
        if unblocked is None or unblocked > at:
            return None
        anchor = max(anchor, unblocked)
    return anchor


@dataclass(frozen=True, slots=True)
class TickPhase:
    """The monitor's grid phase as far as the broker's own heartbeats reveal it.

    The sender and the monitor start together, so the monitor looks at every other sender tick; which
    half of the sender ticks, the heartbeats cannot tell. Hence two candidate anchors, T/2 apart
    (`anchors`, earlier first; the later is the fitted time of the last heartbeat), both to be tried.
    `spread` is the largest deviation of a heartbeat from the fitted grid, `sender_period` the fitted
    spacing (T/2 plus the sender's drift).
    """

    timeout: float
    anchors: tuple[float, float]
    sender_period: float
    spread: float
    heartbeats: int


def infer_tick_anchor(broker_heartbeat_times: Sequence[float], timeout: float) -> TickPhase | None:
    """Fit the idle broker's heartbeat train to a T/2 grid; None without heartbeats or with T = 0.

    Indices are counted from consecutive gaps (a missing heartbeat is a gap of two), so the ~1 ms
    drift per tick never accumulates into a wrong index. The phase is reported at the last heartbeat,
    the point nearest a teardown: the monitor's timer slip differs from the sender's (which also
    sends), so the further the sender's grid is extrapolated, the further the two part.
    """
    if timeout <= 0 or not broker_heartbeat_times:
        return None
    half = timeout / 2
    times = sorted(broker_heartbeat_times)
    kept, index = [times[0]], [0]
    for t in times[1:]:
        step = round((t - kept[-1]) / half)
        if step >= 1:  # a second heartbeat within one tick is not the sender's; ignore it
            kept.append(t)
            index.append(index[-1] + step)
    if len(kept) == 1:
        period, last = half, kept[0]
    else:
        period, intercept = statistics.linear_regression(index, kept)
        last = intercept + period * index[-1]
    spread = max(abs(t - (last - period * (index[-1] - j))) for t, j in zip(kept, index, strict=True))
    return TickPhase(timeout, (last - half, last), period, spread, len(kept))


def predict_from_tick_phase(last_client_byte: float, phase: TickPhase) -> tuple[Prediction, Prediction]:
    """`predict_missed_client_heartbeats` for each candidate phase, earlier close first.

    Both closes lie in [L + 2T, L + 3T), T/2 apart: the window holds, only the exact tick is ambiguous.
    The grid extends both ways from the anchor (tune-ok is unknown). `lateness_allowance` adds the
    fit's spread to the slip accumulated between the anchor and the close.
    """
    out = []
    for anchor in phase.anchors:
        k = first_tick_index(anchor, phase.timeout, last_client_byte)
        out.append(_closing(last_client_byte, last_client_byte, anchor, "inferred", phase.timeout, k,
                            slip_ticks=abs(k + 2), extra=phase.spread))
    out.sort(key=lambda p: p.predicted)
    return out[0], out[1]


# How far a tune-ok time may sit off the broker's heartbeat grid and still be its anchor: the sender
# writes a few ms after its tick, the capture stamps the tune-ok record a little before the broker
# reads it.
ANCHOR_ON_GRID_TOLERANCE = 0.05


def anchor_on_grid(anchor: float, phase: TickPhase) -> bool:
    """Whether `anchor` (a tune-ok time not read from a decoded frame) is a point of the sender's
    T/2 grid that the broker's heartbeats reveal: the sender and the monitor start together there."""
    steps = round((phase.anchors[1] - anchor) / phase.sender_period)
    residual = phase.anchors[1] - (anchor + steps * phase.sender_period)
    return abs(residual) <= ANCHOR_ON_GRID_TOLERANCE + phase.spread


def infer_timeout_from_heartbeats(broker_heartbeat_times: Sequence[float]) -> float | None:
    """T from an idle broker's cadence: 2 x the typical gap between its heartbeats.

    The typical gap is the median of the largest cluster of gaps within `_SAME_INTERVAL` of each other
    (ties: the shortest), so missing heartbeats (2x gaps) and busy stretches do not skew it. At least
    two gaps must agree, else None. The result is rounded to whole seconds (the wire carries an
    integer) when within max(50 ms, 2%) of one; otherwise the raw estimate is returned. A broker older
    than 3.7.9 sends every T, not T/2, and would read as 2T.
    """
    best = largest_cluster(interval_gaps(broker_heartbeat_times), lambda g: _SAME_INTERVAL * g)
    if len(best) < 2:
        return None
    estimate = 2 * statistics.median(best)
    whole = round(estimate)
    if whole >= 1 and abs(estimate - whole) <= max(_WHOLE_SECONDS_ABS, _WHOLE_SECONDS_REL * whole):
        return float(whole)
    return estimate


def _closing(last_byte: float, effective: float, anchor: float, kind: AnchorKind, timeout: float,
             k: int, *, slip_ticks: int, extra: float = 0.0) -> Prediction:
    """The prediction whose look k saw the last byte and looks k+1, k+2 saw nothing.

    `effective` is when the monitor could first count the byte: max(L, anchor) for a real anchor.
    """
    seen, silent1, close = (anchor + i * timeout for i in (k, k + 1, k + 2))
    return Prediction(
        model="rabbitmq", timeout=timeout, period=timeout, anchor=anchor, anchor_kind=kind,
        last_byte=last_byte,
        window=(effective + WINDOW_START_PERIODS * timeout, effective + WINDOW_END_PERIODS * timeout),
        predicted=close,
        checks=(Check(seen, True), Check(silent1, False), Check(close, False)),
        lateness_allowance=slip_ticks * TICK_SLIP + extra,
    )
