"""What the timing models share: the check-grid arithmetic and the `Prediction` result.

Both peers watch the other with the same kind of timer: a periodic check of a received-bytes
counter (RabbitMQ every T, pika every T+5). So both models reduce to "which check of a grid
anchor + k*period is the first at or after the last byte, and how many silent checks follow";
the grid helpers below do that arithmetic once. Pure: no I/O, no clock; times are float seconds
with any origin.

Boundary convention, used by both models: a byte captured within `ON_TICK_TOLERANCE` of a check
instant (or exactly on it) is seen by that check. Why this is the honest choice is argued in
rabbitmq.py and pika.py; the tolerance is classic pcap's microsecond timestamp resolution, below
which a capture cannot order a byte against a timer.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

# "rabbitmq" is the broker's monitor; the others are client libraries' rules (models/clients.py,
# one per profile row; "generic" is an unknown client's).
ModelName = Literal["rabbitmq", "pika", "py-amqp", "aiormq", "amqplib", "java", "dotnet", "go", "bunny",
                    "php-amqplib", "generic"]
# Where the check grid starts: the broker's monitor at tune-ok or at a resume after
# connection.unblocked; a phase inferred from broker heartbeats; pika's checker start; a client
# timer started at open-ok; a read deadline counted from the broker's last frame.
AnchorKind = Literal["tune-ok", "unblocked", "inferred", "checker-start", "open-ok", "last-frame"]
# How the deciding timer works (models/client_timers.py): periodic looks at a received counter, a
# read deadline re-armed by every frame, or a check that runs only when the application calls in.
RuleKind = Literal["look", "deadline", "call-in"]

# Classic pcap timestamps have microsecond resolution: a byte nearer a check than this cannot be
# ordered against it from the capture, so it counts as "on" the check.
ON_TICK_TOLERANCE = 1e-6

_ANCHOR_WORDS = {
    "tune-ok": "from tune-ok",
    "unblocked": "from the monitor's restart after connection.unblocked",
    "inferred": "on a grid inferred from the broker's heartbeats, anchored",
    "checker-start": "from its checker start (tune)",
    "open-ok": "from connection.open-ok",
    "last-frame": "from the broker's last frame",
}


def interval_gaps(times: Sequence[float]) -> list[float]:
    """The positive gaps between consecutive times (sorted first)."""
    return [b - a for a, b in itertools.pairwise(sorted(times)) if b > a]


def largest_cluster(gaps: Sequence[float], tolerance: Callable[[float], float]) -> list[float]:
    """The largest set of gaps within `tolerance(g)` of one gap g (ties: the shortest g): a timer's
    cadence, undisturbed by missed beats (2x gaps) and busy stretches."""
    best: list[float] = []
    for g in sorted(gaps):
        cluster = [h for h in gaps if abs(h - g) <= tolerance(g)]
        if len(cluster) > len(best):
            best = cluster
    return best


def first_tick_index(anchor: float, period: float, t: float) -> int:
    """Index k of the first grid instant anchor + k*period at or after `t` (k may be <= 0)."""
    return math.ceil((t - anchor - ON_TICK_TOLERANCE) / period)


def grid_times(anchor: float, period: float, start: float, end: float, *, first_index: int = 1) -> list[float]:
    """Grid instants anchor + k*period, k >= first_index, within [start, end] (edges inclusive,
    to `ON_TICK_TOLERANCE`)."""
    if period <= 0 or end < start:
        return []
    k = max(first_index, first_tick_index(anchor, period, start))
    out = []
    while (t := anchor + k * period) <= end + ON_TICK_TOLERANCE:
        out.append(t)
        k += 1
    return out


@dataclass(frozen=True, slots=True)
class Check:
    """One look at the received-bytes counter: did it change since the previous look?"""

    time: float
    saw_activity: bool


@dataclass(frozen=True, slots=True)
class Prediction:
    """When a peer's heartbeat monitor gives up on a silent partner, and why.

    `window` is the half-open interval [lo, hi) the teardown falls in given only the last byte
    (the check phase unknown); `predicted` is the exact grid instant given the phase. `checks`
    are the checks that decide it: the one that saw the last byte (when there is one), then the
    silent ones, the last of which fires. `lateness_allowance` is how much later than
    `predicted` the real timer may fire and still fit the model (timer slop accumulated per tick).
    """

    model: ModelName
    timeout: float  # the negotiated heartbeat T, seconds
    period: float  # the check period: T for RabbitMQ, T + 5 for pika
    anchor: float
    anchor_kind: AnchorKind
    last_byte: float  # the silent peer's last payload byte, as captured
    window: tuple[float, float]
    predicted: float
    checks: tuple[Check, ...]
    lateness_allowance: float = 0.0
    rule: RuleKind = "look"
    silent_looks: int = 2  # looks in a row that saw nothing before a "look" rule gives up
    # False when only the window is known (the timer's phase was not captured, or the
    # application drives the check): `predicted` is then the window's start.
    exact: bool = True
    # The timer runs only when the application lets the library run (pika's BlockingConnection,
    # py-amqp's heartbeat_tick): it may give up any time after the window, never before.
    late_ok: bool = False
    peer: str = ""  # who decides, as the report names it ("RabbitMQ", "pika", "amqplib", ...)

    def error(self, observed: float) -> float:
        """Observed minus predicted teardown time, seconds (positive: it came late)."""
        return observed - self.predicted

    @property
    def decider(self) -> str:
        """Who decides, as a sentence starts with it ("RabbitMQ", "pika", "The client")."""
        name = self.peer or ("RabbitMQ" if self.model == "rabbitmq" else self.model)
        return "T" + name[1:] if name.startswith("the ") else name

    def explain(self) -> str:
        """One sentence with the window arithmetic, e.g. for the blog's capture:

        "RabbitMQ checks every 3 s from tune-ok at 0.003 s; the 6.003 s check saw the client
        byte at 4.506 s, the 9.003 s and 12.003 s checks saw nothing, so it closed at 12.003 s."
        """
        whose = "client" if self.model == "rabbitmq" else "broker's"
        verb = "closed" if self.model == "rabbitmq" else "gave up"
        if self.rule == "deadline" and self.exact:
            if self.anchor_kind == "last-frame":
                return (f"{self.decider} gives up when no frame arrived for {self.period:g} s; the broker's last "
                        f"byte came at {self.last_byte:.3f} s, so it gave up at {self.predicted:.3f} s.")
            return (f"{self.decider} looks every {self.period:g} s {_ANCHOR_WORDS[self.anchor_kind]} at "
                    f"{self.anchor:.3f} s and gives up at the first look more than "
                    f"{self.window[0] - self.last_byte:g} s after the broker's last frame ({self.last_byte:.3f} s), "
                    f"so at {self.predicted:.3f} s.")
        if not self.exact:
            lo, hi = self.window
            late = ", or later if the application does not call in" if self.late_ok else ""
            return (f"{self.decider} gives up between {lo - self.last_byte:g} s and {hi - self.last_byte:g} s after "
                    f"the {whose} last byte at {self.last_byte:.3f} s: in [{lo:.3f}, {hi:.3f}){late}.")
        period = f"{self.period:g} s" + (f" (heartbeat {self.timeout:g} + 5)" if self.model == "pika" else "")
        head = f"{self.decider} checks every {period} {_ANCHOR_WORDS[self.anchor_kind]} at {self.anchor:.3f} s"
        seen = [c for c in self.checks if c.saw_activity]
        silent = [f"{c.time:.3f} s" for c in self.checks if not c.saw_activity]
        if seen and self.last_byte <= self.anchor and self.anchor_kind in ("tune-ok", "unblocked"):
            saw = (f"its first check at {seen[0].time:.3f} s always counts as activity (its baseline is 0), "
                   f"whatever came before (last {whose} byte {self.last_byte:.3f} s)")
        elif seen:
            saw = f"the {seen[0].time:.3f} s check saw the {whose} byte at {self.last_byte:.3f} s"
        else:
            saw = f"the {whose} last byte at {self.last_byte:.3f} s came before the checks started"
        silent_text = " and ".join(silent) + (" checks" if len(silent) > 1 else " check")
        text = f"{head}; {saw}, the {silent_text} saw nothing, so it {verb} at {self.predicted:.3f} s."
        if self.anchor_kind == "inferred":
            text += f" (Heartbeats alone leave this grid's phase ambiguous by {self.period / 2:g} s.)"
        return text
