"""The sender's TCP when its data goes unacknowledged, as a pure model: Linux's retransmission timer.

From the Linux kernel (torvalds/linux, net/ipv4/tcp_timer.c and include/net/tcp.h, unchanged in
behaviour since 3.x):
- `tcp_retransmit_timer()`: each time the timer fires the head of the retransmission queue is sent
  again and the timeout doubles, `icsk_rto = min(icsk_rto << 1, TCP_RTO_MAX)`: an unreachable peer or
  path shows on the wire as one segment repeated at intervals that double (200 ms, 400 ms, 800 ms,
  ... from `TCP_RTO_MIN` = 200 ms on a fast path), up to `TCP_RTO_MAX` = 120 s.
- New data written meanwhile waits behind the unacknowledged segment (the congestion window is one
  segment after a timeout), and so does a FIN: a close() during the back-off sends nothing new.
- `tcp_write_timeout()` / `retransmits_timed_out()`: after `tcp_retries2` (default `TCP_RETR2` = 15)
  back-offs, about 924.6 s from a 200 ms RTO, or after the socket's `TCP_USER_TIMEOUT`, the kernel
  gives up (`tcp_write_err()`): the connection is dead with no FIN and no RST on the wire, and the
  application's next call fails with ETIMEDOUT.
- `tcp_send_loss_probe()` (net/ipv4/tcp_output.c, RFC 8985's tail loss probe): before the first
  timeout the tail segment is often sent once more about two round trips after it went out, which
  on a fast path is no sooner than the 200 ms minimum either; the back-off starts after it (seen on
  namespace captures: intervals 0.206, 0.208, 0.42, 0.83, 1.66, 3.39 s).
A bare ACK is different evidence: it answers the peer's bytes, so the path in, and the receiving
kernel, work; a retransmission says the sender is not hearing the peer.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

TCP_RTO_MIN = 0.2  # include/net/tcp.h: TCP_RTO_MIN ((unsigned)(HZ / 5))
TCP_RTO_MAX = 120.0  # include/net/tcp.h: TCP_RTO_MAX ((unsigned)(120 * HZ))
TCP_RETRIES2 = 15  # include/net/tcp.h TCP_RETR2; /proc/sys/net/ipv4/tcp_retries2
# A back-off interval is about twice the one before; timer slack and a capture far from the sender
# blur it. 1.5 to 2.6 accepts that and refuses an application's own fixed-period resend.
_BACKOFF_RATIO = (1.5, 2.6)
# Retransmissions (so two intervals) before a train counts as back-off.
MIN_BACKOFF_RETRANSMISSIONS = 3


def is_backoff(send_and_retransmissions: Sequence[float]) -> bool:
    """A segment's first send and its retransmissions, spaced as the retransmission timer spaces them:
    each interval about twice the one before (or held at TCP_RTO_MAX), at least
    MIN_BACKOFF_RETRANSMISSIONS retransmissions."""
    times = sorted(send_and_retransmissions)
    if len(times) < MIN_BACKOFF_RETRANSMISSIONS + 1:
        return False
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # The first retransmission may be a tail loss probe, the timer's back-off starting after it.
    return _doubling(gaps) or (len(gaps) > MIN_BACKOFF_RETRANSMISSIONS and _doubling(gaps[1:]))


def _doubling(gaps: Sequence[float]) -> bool:
    lo, hi = _BACKOFF_RATIO
    for previous, gap in itertools.pairwise(gaps):
        held_at_max = previous >= TCP_RTO_MAX * 0.9 and gap >= TCP_RTO_MAX * 0.9
        if not (held_at_max or lo * previous <= gap <= hi * previous):
            return False
    return True


def next_retransmission(retransmission_times: Sequence[float]) -> float | None:
    """When the timer would fire next after a back-off train: the last interval doubled."""
    times = sorted(retransmission_times)
    if len(times) < 2:
        return None
    return times[-1] + min(2 * (times[-1] - times[-2]), TCP_RTO_MAX)
