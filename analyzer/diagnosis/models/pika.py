"""pika's HeartbeatChecker as a pure model: when the client gives up on a silent broker.

Models pika/heartbeat.py, `HeartbeatChecker`, pika 1.0 to 1.4 (the two-timer design of pika PR
#1072; line numbers at 1.4.4):
- `__init__` (lines 19-80): `_send_interval = float(timeout) / 2` (line 53), `_check_interval =
  timeout + 5` (line 65), then starts both timers (lines 79-80). A timeout below 1 raises
  (lines 37-38); heartbeat 0 or None creates no checker at all (`_create_heartbeat_checker`,
  pika/connection.py lines 1647-1660).
- `_send_heartbeat` (lines 104-110): sends a heartbeat frame every T/2, whatever else flowed.
- `_start_check_timer` (lines 190-199) snapshots `bytes_received` at the start of each window, and
  `_check_heartbeat` (lines 112-133) compares at its end: any change resets `_idle_byte_intervals`,
  none makes it 1, and `connection_is_idle` (`> 0`, line 97) closes at once (`_close_connection`,
  lines 146-156: AMQPHeartbeatTimeout, the stream is aborted, no Connection.Close). One silent
  window of T+5 is enough.
- The checker is created in `Connection._on_connection_tune` (pika/connection.py line 2036) just
  before Tune-Ok is sent (line 2039): its start is the tune-ok's send time on the client side, and
  its first snapshot already includes the Connection.Tune bytes.
- `bytes_received` grows in `Connection._trim_frame_buffer` (pika/connection.py line 2430), when a
  whole frame is parsed: pass as `last_server_byte` the time of the broker's last complete frame.

Boundary conventions. A byte captured at or within `ON_TICK_TOLERANCE` of a check instant counts
for that check, as in the RabbitMQ model, giving the half-open window [L + (T+5), L + 2(T+5)). A
byte at or before the checker start is already in its first snapshot, so it counts for no check.
Timers are re-armed when they fire (`_adapter_call_later` from the callback), and a
BlockingConnection fires them only inside process_data_events/sleep/start_consuming: this model
gives the earliest time pika *could* detect the silence. A teardown later than `predicted` means
the client was not servicing its I/O loop for that long, not that the model is off.
"""
from __future__ import annotations

from dataclasses import replace

from analyzer.diagnosis.models.client_timers import LookRule, predict_give_up
from analyzer.diagnosis.models.common import Prediction, grid_times

# pika/heartbeat.py line 65: the check interval is the negotiated timeout plus 5 s.
CHECK_MARGIN = 5.0


def check_interval(timeout: float) -> float:
    """pika's window length, T + 5 seconds."""
    return timeout + CHECK_MARGIN


def pika_check_times(checker_start: float, timeout: float, start: float, end: float) -> list[float]:
    """The checker's looks at `bytes_received`, checker_start + k*(T+5), k >= 1, within [start, end].

    Empty when heartbeats are off (pika creates no checker for T < 1).
    """
    return PIKA_RULE.looks(checker_start, timeout, start, end) if timeout >= 1 else []


def pika_send_times(checker_start: float, timeout: float, start: float, end: float) -> list[float]:
    """When pika sends its own heartbeats, checker_start + k*T/2, k >= 1, within [start, end].

    Unconditional: pika sends them even while other frames flow (lines 104-110).
    """
    return grid_times(checker_start, timeout / 2, start, end) if timeout >= 1 else []


# The checker as a look rule: every T+5 from its start, one silent look closes, and the bytes
# before its start are in its first snapshot (they count for no look).
PIKA_RULE = LookRule(period=check_interval, silent_looks=1, start="tune-ok", prior_bytes_seen=False,
                     anchor_kind="checker-start")


def predict_missed_server_heartbeats(
    last_server_byte: float, checker_start: float, timeout: float
) -> Prediction | None:
    """When pika gives up on a broker whose last frame arrived at `last_server_byte`.

    The look k* at or after the byte sees it; the next look, T+5 later, sees nothing and closes.
    A byte at or before `checker_start` is seen by no look: the first look closes. None when the
    checker does not exist (T < 1).
    """
    prediction = predict_give_up(PIKA_RULE, "pika", last_server_byte, timeout, {"tune-ok": checker_start})
    return None if prediction is None else replace(prediction, peer="pika", late_ok=True)
