"""One connection's heartbeat timeline as a matplotlib Figure: why the teardown came when it did.

Strategy: one Axes, time (seconds since the file's first packet) across, one lane per direction
(client → broker above broker → client) and a lane below for the peer timers that decide the
teardown: RabbitMQ's monitor looks (tune-ok + k·T) or pika's checks (every T+5), each marked
"saw bytes" or "silent". Over that: the model's window shaded, the naive "last byte + T" line,
the predicted and the observed teardown, the silence bracket, and a caption with the verdict and
the window arithmetic. The figure is built without pyplot (a bare `Figure`), so it works with
any backend and is never shown twice in Jupyter. Artists carry `gid`s ("lane-c2s", "window",
"observed", ...) and legend labels ("heartbeat c2s", ...) so tests check the figure, not pixels.

Inputs are the notebook API's DataFrames (analyzer.notebook) or any iterables of mappings or
objects with the same column names: frames need t, direction, type; segments t, direction,
payload_len, retransmission, ack_only and flags; gaps t, direction, missing.
"""
from __future__ import annotations

import textwrap
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from analyzer.diagnosis.diagnose import GRACEFUL, MISSED_SERVER, Diagnosis
from analyzer.diagnosis.models import pika as pika_model
from analyzer.diagnosis.models import rabbitmq as rabbitmq_model
from analyzer.diagnosis.models.client_timers import LookRule
from analyzer.diagnosis.models.common import ON_TICK_TOLERANCE, grid_times
from analyzer.records import C2S, S2C

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

# One row of frames, segments or gaps: a DataFrame row or an object's attributes, by column name
# (the columns hold floats, ints, strings and bools: the notebook API's tables).
Row = dict[str, Any]

LANES = {C2S: 2.0, S2C: 1.0}
CHECK_LANE = 0.0
LANE_NAMES = {C2S: "client → broker", S2C: "broker → client"}
COLOURS = {
    "heartbeat": "#d62728", "frame": "#1f77b4", "ack": "#7f7f7f", "retransmission": "#ff7f0e",
    "gap": "#e377c2", "saw": "#2ca02c", "silent": "#d62728", "window": "#f5b041", "predicted": "#8e44ad",
    "observed": "#000000", "naive": "#7f7f7f", "silence": "#c0392b", "paused": "#bdc3c7", "unknown": "#aab7b8",
}
FIGSIZE = (13.0, 5.4)
CAPTION_WIDTH = 165  # characters per caption line at FIGSIZE
# A timer's checks are drawn this long past the teardown, so a check right on it still shows.
CHECKS_PAST_TEARDOWN = 0.05
# first_index for a grid inferred from heartbeats: tune-ok is unknown, so it extends before its anchor.
GRID_BOTH_WAYS = -(10 ** 9)


def _records(data: Any, connection: str) -> list[Row]:
    """Rows of a DataFrame or an iterable of mappings/objects, as dicts, this connection's only."""
    if data is None:
        return []
    if hasattr(data, "to_dict") and hasattr(data, "columns"):
        rows = data.to_dict("records")
    else:
        rows = [r if isinstance(r, dict) else {k: getattr(r, k) for k in dir(r) if not k.startswith("_")}
                for r in data]
    return [r for r in rows if r.get("connection", connection) == connection]


def plot_connection(
    diagnosis: Diagnosis,
    frames: Iterable[object] | None = None,
    segments: Iterable[object] | None = None,
    gaps: Iterable[object] | None = None,
    *,
    ax: Axes | None = None,
    xlim: tuple[float, float] | None = None,
    checks: str = "auto",
) -> Figure | SubFigure:
    """Draw one connection's timeline; returns the Figure (the one `ax` belongs to, when given).

    `checks`: which peer's timer to draw in the bottom lane — "broker" (RabbitMQ's monitor),
    "client" (the client library's own timer, from its profile; "pika" is accepted for it), "both",
    "none", or "auto" (the client's when the client's model decided the teardown, else the broker's).
    """
    from matplotlib.figure import Figure

    d = diagnosis
    cid = d.timeline.info.id
    frame_rows = _records(frames, cid)
    segment_rows = _records(segments, cid)
    gap_rows = _records(gaps, cid)
    fig: Figure | SubFigure
    if ax is None:
        fig = Figure(figsize=FIGSIZE)
        ax = fig.add_axes((0.075, 0.25, 0.70, 0.63))
    else:
        fig = ax.figure

    start = d.rel(d.timeline.first_seen)
    end = d.rel(d.timeline.last_seen)
    timeout = d.heartbeat.effective or 0.0
    p = d.prediction
    if checks == "auto":
        checks = "client" if p is not None and p.model != "rabbitmq" else "broker"
    check_lanes = {"broker": ["broker"], "client": ["client"], "pika": ["client"], "both": ["broker", "client"],
                   "none": []}[checks]

    # ---- lanes -------------------------------------------------------------------------------------
    for direction, y in LANES.items():
        ax.axhspan(y - 0.4, y + 0.4, color="#eaf2f8" if direction == C2S else "#fdf2e9", zorder=0,
                   gid=f"lane-{direction}", label=f"_lane {direction}")
    lane_y: dict[str, float] = {}
    for i, which in enumerate(check_lanes):
        y = CHECK_LANE - i
        lane_y[which] = y
        ax.axhspan(y - 0.4, y + 0.4, color="#f4f6f6", zorder=0, gid=f"lane-{_lane_name(d, which)}-checks",
                   label=f"_lane {which} checks")

    # ---- traffic -----------------------------------------------------------------------------------
    for direction, y in LANES.items():
        mine = [r for r in frame_rows if r["direction"] == direction]
        heartbeats = [r["t"] for r in mine if r["type"] == "heartbeat"]
        others = [r["t"] for r in mine if r["type"] != "heartbeat"]
        segs = [r for r in segment_rows if r["direction"] == direction]
        acks = [r["t"] for r in segs if r.get("ack_only")]
        retrans = [r["t"] for r in segs if r.get("retransmission")]
        if others:
            ax.scatter(others, [y + 0.12] * len(others), marker="o", s=28, color=COLOURS["frame"], zorder=3,
                       label=f"frames {direction}", gid=f"frames-{direction}")
        if heartbeats:
            ax.scatter(heartbeats, [y + 0.12] * len(heartbeats), marker="D", s=46, color=COLOURS["heartbeat"],
                       zorder=4, label=f"heartbeat {direction}", gid=f"heartbeats-{direction}")
        if acks:
            ax.scatter(acks, [y - 0.2] * len(acks), marker="|", s=90, color=COLOURS["ack"], zorder=3,
                       label=f"ACK-only {direction} (kernel alive)", gid=f"acks-{direction}")
        if retrans:
            ax.scatter(retrans, [y + 0.12] * len(retrans), marker="x", s=40, color=COLOURS["retransmission"],
                       zorder=4, label=f"retransmission {direction}", gid=f"retransmissions-{direction}")
        holes = [r["t"] for r in gap_rows if r["direction"] == direction]
        if holes:
            ax.vlines(holes, y - 0.38, y + 0.38, colors=COLOURS["gap"], linewidths=3, zorder=2,
                      label=f"capture gap {direction} (bytes lost, not silence)", gid=f"gaps-{direction}")
        side = d.timeline.side(direction)
        for t, marker, name in ((side.fin, "s", "FIN"), (side.rst, "X", "RST")):
            if t is not None:
                who = "client" if direction == C2S else "broker"
                benign = name == "RST" and d.close.benign_rst is not None
                # A white edge keeps the marker readable on the observed-teardown line drawn at the same time.
                ax.scatter([d.rel(t)], [y], marker=marker, s=150, color="black", edgecolors="white", linewidths=1.2,
                           zorder=5,
                           label=f"{name} from {who}" + (" (benign, after the close)" if benign else ""),
                           gid=f"{name.lower()}-{direction}")

    # ---- timers ------------------------------------------------------------------------------------
    if "broker" in lane_y:
        _broker_checks(ax, d, lane_y["broker"], segment_rows, frame_rows, start, end)
    if "client" in lane_y:
        _client_checks(ax, d, lane_y["client"], frame_rows, start, end)
    model_lane = ("broker" if p.model == "rabbitmq" else "client") if p is not None else None
    if p is not None and model_lane in lane_y:
        silent_no = 0
        for check in p.checks:
            if check.saw_activity:
                text = "saw the last byte"
            else:
                silent_no += 1
                text = "silent → close" if check is p.checks[-1] else f"silent #{silent_no}"
            ax.text(check.time, lane_y[model_lane] + 0.2, text, ha="center", va="bottom", fontsize=8,
                    color=COLOURS["saw"] if check.saw_activity else COLOURS["silent"], gid="decisive-check",
                    zorder=6, bbox=dict(facecolor="white", edgecolor="none", pad=1.0, alpha=0.85))

    # ---- the model and the teardown ----------------------------------------------------------------
    right = end
    close = d.close
    if p is not None:
        lo, hi = p.window
        span = {"rabbitmq": "[L+2T, L+3T)", "pika": "[L+(T+5), L+2(T+5))"}.get(p.model, "its window")
        ax.axvspan(lo, hi, color=COLOURS["window"], alpha=0.28, zorder=1, gid="window",
                   label=f"{p.decider} closes in {span} = [{lo:.3f}, {hi:.3f})")
        ax.axvline(p.predicted, color=COLOURS["predicted"], ls="--", lw=1.8, zorder=3, gid="predicted",
                   label=f"predicted close {p.predicted:.3f} s" if p.exact else
                         f"earliest close {p.predicted:.3f} s (the exact time is not known)")
        right = max(right, hi, p.predicted)
    if close.time is not None and close.how != "open" and not (close.inferred and close.how == "fin"):
        what = "connection.close" if close.how == "connection.close" else close.how.upper()
        err = f" ({p.error(close.time) * 1000:+.0f} ms)" if p is not None else ""
        ax.axvline(close.time, color=COLOURS["observed"], lw=2.5, zorder=2, gid="observed",
                   label=f"observed {what} {close.time:.3f} s{err}")
    silent_dir = C2S if close.initiator == "server" else S2C
    last = d.last_client_byte if silent_dir == C2S else d.last_server_byte
    if timeout and last is not None and close.how in ("rst", "fin"):
        ax.axvline(last + timeout, color=COLOURS["naive"], ls=":", lw=1.6, zorder=2, gid="naive-timeout",
                   label=f"last byte + T = {last + timeout:.3f} s (a naive timeout)")
        y = LANES[silent_dir] + 0.55
        ax.annotate("", xy=(last + timeout, y), xytext=(last, y), gid="timeout",
                    arrowprops=dict(arrowstyle="|-|", color=COLOURS["naive"], lw=1.2, shrinkA=0, shrinkB=0))
        ax.text(last + timeout / 2, y + 0.05, f"T = {timeout:g} s", ha="center", va="bottom", fontsize=8,
                color="#555555")
    if d.silence is not None and d.silence > 0 and last is not None and close.time is not None:
        y = LANES[silent_dir] - 0.55 if silent_dir == S2C else LANES[silent_dir] + 0.85
        ax.annotate("", xy=(close.time, y), xytext=(last, y), gid="silence",
                    arrowprops=dict(arrowstyle="<->", color=COLOURS["silence"], lw=1.5, shrinkA=0, shrinkB=0))
        who = "client" if silent_dir == C2S else "broker"
        # In the unit of the timer that decided: RabbitMQ looks every T, pika every T + 5 s.
        if not timeout:
            ratio = ""
        elif d.prediction is not None and d.prediction.model == "pika":
            ratio = f" = {d.silence / pika_model.check_interval(timeout):.2f} (T+{pika_model.CHECK_MARGIN:g})"
        else:
            ratio = f" = {d.silence / timeout:.2f} T"
        ax.text((last + close.time) / 2, y + 0.05, f"{who} silent {d.silence:.3f} s{ratio}", ha="center",
                va="bottom", fontsize=9, color=COLOURS["silence"], fontweight="bold")

    _blocked_note(ax, d, silent_dir, last, close.time)
    _event_findings(ax, d)

    # ---- axes, legend, caption ---------------------------------------------------------------------
    ticks = {y: LANE_NAMES[direction] for direction, y in LANES.items()}
    for which, y in lane_y.items():
        ticks[y] = ("RabbitMQ checks\n(every T from tune-ok)" if which == "broker"
                    else "pika checks\n(every T+5 s)" if d.profile.key == "pika"
                    else f"{d.profile.name} checks")
    ax.set_yticks(list(ticks), list(ticks.values()))
    bottom = min(lane_y.values(), default=1.0)
    ax.set_ylim(bottom - 0.6, 3.1)
    width = max(right - start, 1e-3)
    ax.set_xlim(xlim if xlim is not None else (start - 0.02 * width, right + 0.06 * width))
    ax.set_xlabel("seconds since the first packet of the capture")
    ax.grid(axis="x", color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)
    hb = d.heartbeat
    beat = ("heartbeat disabled" if hb.effective == 0 else "heartbeat unknown" if hb.effective is None
            else f"heartbeat T = {hb.effective:g} s ({hb.source})")
    ax.set_title(f"{cid}   ·   {beat}   ·   verdict: {d.verdict}", fontsize=11, loc="left")
    handles, labels = ax.get_legend_handles_labels()
    seen: dict[str, Any] = {}
    for h, lab in zip(handles, labels, strict=True):
        # A symbol means the same in both lanes (frames, heartbeats, bare ACKs, ...): one legend entry
        # each, not one per direction; the artists keep their per-direction labels and gids.
        seen.setdefault(_legend_label(lab), h)
    ax.legend(list(seen.values()), list(seen), loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              frameon=False, borderaxespad=0.0)
    fig.text(0.01, 0.015, caption(d), fontsize=9, va="bottom", ha="left", gid="caption", wrap=False)
    return fig


def _legend_label(label: str) -> str:
    """An artist's label without its direction ("heartbeat c2s" -> "heartbeat")."""
    return label.replace(f" {C2S}", "").replace(f" {S2C}", "")


# A connection shorter than this (or than its heartbeat interval, when longer) that closed normally
# with no finding has nothing a timeline shows: a publisher that connected, sent and left.
SHORT_CONNECTION = 1.0


def worth_plotting(d: Diagnosis) -> bool:
    """False for a short connection that closed normally with no finding (its figure would be empty)."""
    lasted = d.timeline.last_seen - d.timeline.first_seen
    return not (d.verdict == GRACEFUL and not d.findings
                and lasted < max(SHORT_CONNECTION, d.heartbeat.effective or 0.0))


def caption(d: Diagnosis) -> str:
    """The verdict and the one sentence that explains the teardown time, wrapped for the figure."""
    if d.prediction is not None:
        body = d.prediction.explain()
        if d.close.inferred and d.close.how == "fin":
            body += " No FIN or RST reached the wire: its data was unacknowledged (a partition)."
        elif d.close.time is not None:
            body += f" Observed: {d.close.how.upper() if d.close.how in ('rst', 'fin') else d.close.how} " \
                    f"at {d.close.time:.3f} s ({d.prediction.error(d.close.time) * 1000:+.0f} ms)."
        if d.prediction.model == "rabbitmq":
            body += (" Why not at T: RabbitMQ looks at the client's bytes only every T and gives up on the second"
                     " silent look in a row, so it always closes 2T to 3T after the client's last byte.")
        elif d.prediction.model == "pika":
            body += (" pika looks at the broker's bytes every T+5 s and gives up after one silent look, so it"
                     " detects a silent broker (T+5) to 2(T+5) after its last byte.")
        else:
            body += f" {d.profile.name} {d.profile.detection_text}."
        if d.misfit:
            body += f" Note: {d.misfit}."
    else:
        body = d.explanation.split(". ")[0].rstrip(".") + "." if d.explanation else ""
        events = [f"{f.kind} at {f.time:.3f} s" for f in d.findings][:4]
        if events:
            body += " Findings: " + ", ".join(events) + "."
    lines = textwrap.wrap(body, CAPTION_WIDTH)[:4]
    return f"Verdict: {d.verdict}\n" + "\n".join(lines)


_BLOCKED_NOTES = {
    "client-app-blocked": "no AMQP bytes from the client, yet its kernel ACKs the broker: the process is alive "
                          "but its I/O loop is not running (a long callback?)",
    "broker-app-blocked": "no AMQP bytes from the broker, yet its kernel ACKs the client: the broker process is "
                          "alive but frozen",
    "peer-unreachable": "nothing at all from this side, not even TCP ACKs: host or network gone",
}


NOTE_OFFSET = 0.33  # a silence note's distance from its lane's centre line


def _blocked_note(ax: Axes, d: Diagnosis, silent_dir: str, last: float | None, close: float | None) -> None:
    """One line of plain words in the silent lane, from the finding that explains the silence."""
    if last is None:
        return
    for f in d.findings:
        note = _BLOCKED_NOTES.get(f.kind)
        if note is None:
            continue
        if f.kind == "client-app-blocked" and d.profile.sender_runs == "own-thread":
            # Its heartbeats do not wait for a handler: the whole process stalled.
            note = (f"no AMQP bytes from the client, yet its kernel ACKs the broker: the process is alive but not "
                    f"running {d.profile.loop} (a process-wide stall)")
        elif f.kind == "client-app-blocked":
            note = (f"no AMQP bytes from the client, yet its kernel ACKs the broker: the process is alive but not "
                    f"running {d.profile.loop} (a long callback?)")
        direction = C2S if f.kind == "client-app-blocked" or (f.kind == "peer-unreachable" and silent_dir == C2S) \
            else S2C
        end = close if close is not None else d.rel(d.timeline.last_seen)
        # Across the lane from the silence arrow (drawn below the broker's lane, above the client's).
        y = LANES[direction] + (NOTE_OFFSET if direction == S2C else -NOTE_OFFSET)
        ax.text((f.time + end) / 2, y, note, ha="center", va="center", fontsize=8,
                style="italic", color="#444444", gid=f"note-{f.kind}", zorder=6)
        return


# Findings drawn as events on the lane of the side that sent them: (lane, marker label).
_EVENT_FINDINGS = {
    "consumer-timeout": (S2C, "consumer timeout: broker closed the channel (406)"),
    "channel-error": (S2C, "channel error (channel.close)"),
    "connection-blocked": (S2C, "connection.blocked / unblocked (resource alarm)"),
}


FINDING_ROW = 0.3  # height of an event finding's star in its lane (frames sit at +0.12, bare ACKs at -0.2)


def _event_findings(ax: Axes, d: Diagnosis) -> None:
    for f in d.findings:
        if f.kind not in _EVENT_FINDINGS:
            continue
        direction, label = _EVENT_FINDINGS[f.kind]
        if f.kind == "channel-error" and f.detail.startswith("client"):
            direction = C2S
        y = LANES[direction]
        # Above the frame row (y + 0.12), so the event does not hide the frame it came with.
        ax.scatter([f.time], [y + FINDING_ROW], marker="*", s=220, color="#f1c40f", edgecolors="black",
                   linewidths=0.8, zorder=6, label=label, gid=f"finding-{f.kind}")
        ax.text(f.time, y + FINDING_ROW + 0.14, f.kind, ha="center", va="bottom", fontsize=8, zorder=6,
                bbox=dict(facecolor="white", edgecolor="none", pad=1.0, alpha=0.85))


def _new_bytes(rows: list[Row], direction: str) -> list[float]:
    """Times of segments carrying new payload in `direction` (what a received-bytes counter counts)."""
    return sorted(r["t"] for r in rows if r["direction"] == direction and r.get("payload_len")
                  and not r.get("retransmission"))


def _saw(times: list[float], after: float, upto: float) -> bool:
    """Any time in (after, upto], with the models' on-the-tick tolerance."""
    return any(after + ON_TICK_TOLERANCE < t <= upto + ON_TICK_TOLERANCE for t in times)


def _draw_checks(ax: Axes, ticks: list[tuple[float, bool]], y: float, who: str, gid: str) -> None:
    saw = [t for t, s in ticks if s]
    silent = [t for t, s in ticks if not s]
    if saw:
        ax.scatter(saw, [y] * len(saw), marker="o", s=60, color=COLOURS["saw"], zorder=4, gid=f"{gid}-saw",
                   label=f"{who} check: saw new bytes")
    if silent:
        ax.scatter(silent, [y] * len(silent), marker="o", s=60, facecolors="white", edgecolors=COLOURS["silent"],
                   linewidths=2, zorder=4, gid=f"{gid}-silent", label=f"{who} check: nothing new (silent)")


def _no_checks(ax: Axes, y: float, start: float, end: float, who: str, timeout: float | None, gid: str) -> None:
    """Say in the lane why it holds no check, rather than leave it empty."""
    why = (f"heartbeat disabled (0 in tune-ok): {who} never checks" if timeout == 0
           else "heartbeat not negotiated in the capture: no checks to draw")
    ax.text((start + end) / 2, y, why, ha="center", va="center", fontsize=9, color="#555555", style="italic",
            gid=gid)


def _broker_checks(ax: Axes, d: Diagnosis, y: float, segments: list[Row], frames: list[Row], start: float,
                   end: float) -> None:
    """RabbitMQ's monitor: looks at tune-ok + k·T (rabbit_heartbeat.erl), paused while blocked."""
    tl, timeout = d.timeline, d.heartbeat.effective
    if not timeout:
        _no_checks(ax, y, start, end, "RabbitMQ", timeout, "broker-checks-none")
        return
    right = _checks_end(d, end, "rabbitmq")
    grids: list[tuple[float, float, float, bool]] = []  # (anchor, from, to, anchor-is-real)
    if tl.tune_ok is not None:
        anchor = d.rel(tl.tune_ok.time)
        periods = _blocked_periods(d)
        t_from = anchor
        paused_at_end = False
        for blocked, unblocked in periods:
            grids.append((anchor, t_from, blocked, True))
            ax.fill_between([blocked, unblocked if unblocked is not None else right], y - 0.4, y + 0.4,
                            color=COLOURS["paused"], alpha=0.6, zorder=1, gid="monitor-paused",
                            label="broker monitor paused (connection.blocked)")
            if unblocked is None:
                paused_at_end = True
                break
            anchor = t_from = unblocked
        if not paused_at_end:
            grids.append((anchor, t_from, right, True))
    elif d.tune_ok_time is not None and d.prediction is not None and d.prediction.anchor == d.tune_ok_time:
        grids.append((d.tune_ok_time, d.tune_ok_time, right, True))  # tune-ok inferred (TLS without keys)
    elif d.prediction is not None and d.prediction.model == "rabbitmq":
        grids.append((d.prediction.anchor, start, right, False))
    else:
        return
    arrivals = _new_bytes(segments, C2S) or sorted(r["t"] for r in frames if r["direction"] == C2S)
    ticks: list[tuple[float, bool]] = []
    for anchor, t_from, t_to, real in grids:
        if real:
            times = rabbitmq_model.broker_tick_times(anchor, timeout, t_from, t_to)
        else:
            times = grid_times(anchor, timeout, t_from, t_to, first_index=GRID_BOTH_WAYS)
        prev = anchor if real else None
        for i, t in enumerate(times):
            if real and i == 0 and t - anchor <= timeout + ON_TICK_TOLERANCE:
                saw = True  # the monitor's first look compares with 0: it always counts as activity
            else:
                saw = _saw(arrivals, prev if prev is not None else t - timeout, t)
            ticks.append((t, saw))
            prev = t
    broker_last = tl.s2c.last_payload
    if d.verdict == MISSED_SERVER and broker_last is not None:
        # The client gave up on a silent broker: after the broker's last byte the wire cannot say
        # whether its monitor still looked (a frozen broker looks at nothing), so no verdict is drawn.
        after = d.rel(broker_last)
        unknown = [t for t, _ in ticks if t > after]
        ticks = [(t, saw) for t, saw in ticks if t <= after]
        if unknown:
            ax.scatter(unknown, [y] * len(unknown), marker="o", s=60, facecolors="white",
                       edgecolors=COLOURS["unknown"], linewidths=1.5, linestyle="--", zorder=4,
                       gid="broker-checks-unknown", label="broker check: not known (the broker sent nothing)")
    _draw_checks(ax, ticks, y, "broker", "broker-checks")
    if not ticks:
        ax.text(start, y, f"  no broker check within this connection's life (the first comes T = {timeout:g} s "
                "after tune-ok)", va="center", fontsize=8, color="#555555")


def _lane_name(d: Diagnosis, which: str) -> str:
    """A check lane's name in gids: "broker", "pika" for pika's checker (as before profiles), else "client"."""
    return "pika" if which == "client" and d.profile.key == "pika" else which


def _client_checks(ax: Axes, d: Diagnosis, y: float, frames: list[Row], start: float, end: float) -> None:
    """The client library's own timer (its profile row): pika's checker every T+5 from tune-ok, or
    another library's periodic looks; a deadline or application-driven check has no grid to draw."""
    timeout, row = d.heartbeat.effective, d.profile
    gid = "pika-checks" if row.key == "pika" else "client-checks"
    rule = row.detection
    checker = d.timer_anchors().get(rule.start) if isinstance(rule, LookRule) else None
    if not timeout or not isinstance(rule, LookRule) or checker is None:
        if timeout and not isinstance(rule, LookRule):
            ax.text((start + end) / 2, y, f"{row.name} {row.detection_text}: no grid of looks to draw", ha="center",
                    va="center", fontsize=9, color="#555555", style="italic", gid=f"{gid}-none")
        else:
            _no_checks(ax, y, start, end, row.name, timeout, f"{gid}-none")
        return
    right = _checks_end(d, end, row.key)
    times = rule.looks(checker, timeout, checker, right)
    arrivals = sorted(r["t"] for r in frames if r["direction"] == S2C)
    ticks: list[tuple[float, bool]] = []
    prev = checker + rule.offset
    for t in times:
        ticks.append((t, _saw(arrivals, prev, t)))
        prev = t
    _draw_checks(ax, ticks, y, row.name, gid)


def _checks_end(d: Diagnosis, end: float, model: str) -> float:
    """Draw a timer's checks until the teardown (a closed socket has no timer), or through the model's
    decisive check when that model predicted this teardown."""
    right = d.close.time + CHECKS_PAST_TEARDOWN if d.close.time is not None and d.close.how != "open" else end
    if d.prediction is not None and d.prediction.model == model:
        right = max(right, d.prediction.predicted)
    return right


def _blocked_periods(d: Diagnosis) -> list[tuple[float, float | None]]:
    periods: list[tuple[float, float | None]] = []
    for t, what in d.timeline.blocked:
        if what == "blocked" and (not periods or periods[-1][1] is not None):
            periods.append((d.rel(t), None))
        elif what == "unblocked" and periods and periods[-1][1] is None:
            periods[-1] = (periods[-1][0], d.rel(t))
    return periods


def save(fig: Figure, path: str, *, dpi: int = 110) -> None:
    """Write the figure as PNG or SVG (by extension), trimmed to its content."""
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
