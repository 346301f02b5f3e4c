"""How a client library gives up on a silent broker, as three kinds of pure rule.

Every AMQP client we profile (models/clients.py) detects a dead broker in one of three ways:
- `LookRule`: a periodic timer looks at a received-bytes (or frames) flag on a grid anchored at
  a handshake step and gives up after `silent_looks` looks in a row that saw nothing (pika every
  T+5 with one silent look; amqplib every T with two; the .NET client every T with three).
- `DeadlineRule`: a read deadline re-armed by every frame read; the client gives up once no frame
  arrived for `after(T)` (Go 1.5T, Java 9 x T/4, Bunny 2.2T), looked at continuously or, with
  `poll`, on a grid of its own (aiormq looks every max(1, T//2) s).
- `CallInRule`: the check runs only when the application calls into the library (py-amqp's
  `heartbeat_tick`, php-amqplib's `wait`): the earliest give-up is known, the latest is not.

Each rule turns "the broker's last byte at L, heartbeat T, anchors" into a `Prediction`. Times
are float seconds with any origin; the boundary convention is common.py's (a byte within
`ON_TICK_TOLERANCE` of a look is seen by it).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from analyzer.diagnosis.models.common import (
    ON_TICK_TOLERANCE,
    AnchorKind,
    Check,
    ModelName,
    Prediction,
    first_tick_index,
    grid_times,
)

# The handshake step a client starts its timers at, as the capture shows it.
TimerStart = Literal["tune", "tune-ok", "open-ok"]
Seconds = Callable[[float], float]  # a duration as a function of the negotiated heartbeat T
MaybeSeconds = Callable[[float], float | None]


@dataclass(frozen=True, slots=True)
class LookRule:
    """A timer that looks every `period(T)` from `start` + `offset` and gives up after
    `silent_looks` looks in a row saw nothing. `prior_bytes_seen`: bytes received before the
    timer started make its first look count as activity (amqplib's flag is already set); False
    when the first look's baseline already includes them (pika snapshots the counter at start)."""

    period: Seconds
    silent_looks: int
    start: TimerStart
    prior_bytes_seen: bool
    offset: float = 0.0  # first look at start + offset + period (the .NET timer's 300 ms start)
    anchor_kind: AnchorKind | None = None  # how reports name the start, when not the step's name

    def looks(self, anchor: float, timeout: float, start: float, end: float) -> list[float]:
        """The timer's looks within [start, end], given the anchor step's captured time."""
        period = self.period(timeout)
        return grid_times(anchor + self.offset, period, start, end)


@dataclass(frozen=True, slots=True)
class DeadlineRule:
    """Gives up once no frame arrived for `after(T)`; with `poll`, only at the next look of a
    grid every `poll(T)` from `start` (otherwise at the deadline itself)."""

    after: Seconds
    start: TimerStart
    poll: Seconds | None = None


@dataclass(frozen=True, slots=True)
class CallInRule:
    """The check runs only when the application calls in: it gives up no earlier than
    `earliest(T)` after the broker's last frame, and `usual(T)` bounds it when the application
    calls in as the library's documentation asks (the window's upper end, not a guarantee)."""

    earliest: Seconds
    usual: Seconds


DetectionRule = LookRule | DeadlineRule | CallInRule


_START_KINDS: dict[TimerStart, AnchorKind] = {"tune": "checker-start", "tune-ok": "tune-ok", "open-ok": "open-ok"}


def timer_start_kind(start: TimerStart) -> AnchorKind:
    return _START_KINDS[start]


def predict_give_up(rule: DetectionRule, model: ModelName, last_server_byte: float, timeout: float,
                    anchors: Mapping[TimerStart, float]) -> Prediction | None:
    """When a client following `rule` gives up on a broker whose last frame came at
    `last_server_byte`. `anchors` holds the captured times of the handshake steps; a rule whose
    start is missing falls back to its window alone (a `CallInRule`-like answer: exact=False).
    None when heartbeats are off (T < 1: no client arms a timer for 0)."""
    if timeout < 1:
        return None
    if isinstance(rule, LookRule):
        anchor = anchors.get(rule.start)
        if anchor is not None:
            return _look(rule, model, last_server_byte, timeout, anchor)
        period = rule.period(timeout)
        lo = last_server_byte + rule.silent_looks * period
        return _window(model, last_server_byte, timeout, period, lo, lo + period, late_ok=False, rule="look")
    if isinstance(rule, DeadlineRule):
        return _deadline(rule, model, last_server_byte, timeout, anchors.get(rule.start))
    lo = last_server_byte + rule.earliest(timeout)
    return _window(model, last_server_byte, timeout, rule.usual(timeout) - rule.earliest(timeout), lo,
                   last_server_byte + rule.usual(timeout), late_ok=True)


def _look(rule: LookRule, model: ModelName, last: float, timeout: float, anchor: float) -> Prediction:
    period = rule.period(timeout)
    grid = anchor + rule.offset
    k = first_tick_index(grid, period, last)
    if k < 1:  # before the timer started
        k = 1 if rule.prior_bytes_seen else 0
    effective = max(last, grid) if k >= 1 else grid
    close = grid + (k + rule.silent_looks) * period
    checks = tuple(Check(grid + i * period, i == k) for i in range(max(k, 1), k + rule.silent_looks + 1))
    return Prediction(
        model=model, timeout=timeout, period=period, anchor=grid,
        anchor_kind=rule.anchor_kind or timer_start_kind(rule.start),
        last_byte=last, window=(effective + rule.silent_looks * period, effective + (rule.silent_looks + 1) * period),
        predicted=close, checks=checks, rule="look", silent_looks=rule.silent_looks,
    )


def _deadline(rule: DeadlineRule, model: ModelName, last: float, timeout: float,
              anchor: float | None) -> Prediction:
    after = rule.after(timeout)
    due = last + after
    if rule.poll is None:
        return Prediction(model=model, timeout=timeout, period=after, anchor=last, anchor_kind="last-frame",
                          last_byte=last, window=(due, due + ON_TICK_TOLERANCE), predicted=due,
                          checks=(Check(due, False),), rule="deadline")
    poll = rule.poll(timeout)
    if anchor is None:
        return _window(model, last, timeout, poll, due, due + poll, late_ok=False, rule="deadline")
    # The first look strictly after the deadline ("no frame for more than `after`").
    looks = grid_times(anchor, poll, due + 2 * ON_TICK_TOLERANCE, due + poll + 2 * ON_TICK_TOLERANCE)
    close = looks[0] if looks else due + poll
    return Prediction(model=model, timeout=timeout, period=poll, anchor=anchor,
                      anchor_kind=timer_start_kind(rule.start), last_byte=last, window=(due, due + poll),
                      predicted=close, checks=(Check(close, False),), rule="deadline")


def _window(model: ModelName, last: float, timeout: float, period: float, lo: float, hi: float, *,
            late_ok: bool, rule: Literal["look", "deadline", "call-in"] = "call-in") -> Prediction:
    """Only the window is known (the timer's phase was not captured, or the application drives it):
    `predicted` is the window's start, marked inexact."""
    return Prediction(model=model, timeout=timeout, period=period, anchor=last, anchor_kind="last-frame",
                      last_byte=last, window=(lo, hi), predicted=lo, checks=(), rule=rule, exact=False,
                      late_ok=late_ok)
