"""What a report says first: which connections need attention, in what order, and the capture's
overview (connections by verdict and finding kind, clients, heartbeat values, time span).

The one home of "a problem connection" (needs_attention) and of the order reports list connections
in (attention_key): the text report, the JSON summary, the HTML report and the notebook's
summary all call these. CaptureOverview is filled one Diagnosis at a time (add), so a streamed
file's summary holds counters, never the connections.
"""
from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from analyzer.diagnosis.results import (
    CLOSED_WITH_ERROR,
    GRACEFUL,
    MISSED_CLIENT,
    MISSED_SERVER,
    OPEN,
    RESET,
    UNKNOWN,
    Diagnosis,
)
from analyzer.records import CaptureSummary

# Attention groups, most urgent first: a report lists connections in this order.
HEARTBEAT_TEARDOWN = 0  # closed for missed heartbeats (by the broker, or by the client on a silent broker)
RESET_OR_ERROR = 1  # reset, or closed with an error reply code
FINDINGS = 2  # any other verdict, with at least one finding
NO_ATTENTION = 3  # closed normally, still open or unknown, without a finding
ATTENTION_GROUPS = {
    HEARTBEAT_TEARDOWN: "heartbeat-teardown", RESET_OR_ERROR: "reset-or-error", FINDINGS: "findings",
    NO_ATTENTION: "none",
}
TEARDOWN_VERDICTS = {MISSED_CLIENT: HEARTBEAT_TEARDOWN, MISSED_SERVER: HEARTBEAT_TEARDOWN,
                     RESET: RESET_OR_ERROR, CLOSED_WITH_ERROR: RESET_OR_ERROR}

# How the headline says each verdict (most urgent first; the order of the verdicts line too).
VERDICT_PHRASES = {
    MISSED_CLIENT: "closed by the broker for missed client heartbeats",
    MISSED_SERVER: "given up by the client on a silent broker",
    RESET: "reset",
    CLOSED_WITH_ERROR: "closed with an error",
    GRACEFUL: "closed normally",
    OPEN: "still open at the end of the capture",
    UNKNOWN: "of unknown outcome",
}


def attention(d: Diagnosis) -> int:
    """The connection's attention group: HEARTBEAT_TEARDOWN, RESET_OR_ERROR, FINDINGS or NO_ATTENTION."""
    group = TEARDOWN_VERDICTS.get(d.verdict)
    if group is not None:
        return group
    return FINDINGS if d.findings else NO_ATTENTION


def needs_attention(d: Diagnosis) -> bool:
    """A problem connection: a teardown verdict (missed heartbeats either way, reset, closed with an
    error) or at least one finding. What `analyze --problems` keeps and what reports show first."""
    return attention(d) != NO_ATTENTION


def attention_key(d: Diagnosis) -> tuple[int, float, int]:
    """The sort key of the reports' order: attention group, then start order within a group."""
    return (attention(d), d.timeline.first_seen, d.timeline.number)


def by_attention(diagnoses: Iterable[Diagnosis]) -> list[Diagnosis]:
    """The connections in the order reports list them (attention_key)."""
    return sorted(diagnoses, key=attention_key)


def heartbeat_label(value: float | None) -> str:
    """A heartbeat timeout as the summaries name it: "3 s", "off" (0 disables it) or "unknown"."""
    if value is None:
        return "unknown"
    return "off" if value == 0 else f"{value:g} s"


def heartbeat_words(value: float | None) -> str:
    """How a count of connections with this heartbeat reads ("8 at 3 s", "1 off", "1 unknown")."""
    label = heartbeat_label(value)
    return f"at {label}" if value else label


def client_label(d: Diagnosis) -> str:
    """The client library and version as the summaries name it ("pika 1.4.4", "unknown")."""
    c = d.client
    if c.library == "unknown":
        return c.product or "unknown"
    return f"{c.name} {c.version}" if c.version else c.name


# Problem connections a summary names one line each (the rest: "and N more"): with the summary's
# own lines, they fit a 40-line terminal screen.
LISTED_PROBLEMS = 20


@dataclass
class CaptureOverview:
    """The summary of one capture's connections, accumulated one Diagnosis at a time."""

    connections: int = 0
    need_attention: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    groups: Counter[int] = field(default_factory=Counter)
    findings: Counter[str] = field(default_factory=Counter)  # kind -> connections with it
    clients: Counter[str] = field(default_factory=Counter)  # client_label -> connections
    heartbeats: Counter[float | None] = field(default_factory=Counter)  # effective value -> connections
    first_start: float | None = None  # relative to the capture's first packet
    last_end: float | None = None
    # The LISTED_PROBLEMS most urgent problem connections (a heap on -attention_key), for a summary
    # that names them before the details.
    _urgent: list[tuple[tuple[int, float, int], Diagnosis]] = field(default_factory=list)

    def add(self, d: Diagnosis) -> None:
        self.connections += 1
        group = attention(d)
        self.groups[group] += 1
        if group != NO_ATTENTION:
            self.need_attention += 1
            a, first_seen, number = attention_key(d)
            entry = ((-a, -first_seen, -number), d)
            if len(self._urgent) < LISTED_PROBLEMS:
                heapq.heappush(self._urgent, entry)
            else:
                heapq.heappushpop(self._urgent, entry)
        self.verdicts[d.verdict] += 1
        self.findings.update({f.kind for f in d.findings})
        self.clients[client_label(d)] += 1
        self.heartbeats[d.heartbeat.effective] += 1
        start, end = d.rel(d.timeline.first_seen), d.rel(d.timeline.last_seen)
        self.first_start = start if self.first_start is None else min(self.first_start, start)
        self.last_end = end if self.last_end is None else max(self.last_end, end)

    @classmethod
    def of(cls, diagnoses: Iterable[Diagnosis]) -> CaptureOverview:
        overview = cls()
        for d in diagnoses:
            overview.add(d)
        return overview

    def most_urgent(self) -> list[Diagnosis]:
        """The first LISTED_PROBLEMS problem connections in the reports' order."""
        return [d for _, d in sorted(self._urgent, reverse=True)]

    def verdict_counts(self) -> list[tuple[str, int]]:
        """(verdict, connections), most urgent verdict first."""
        order = list(VERDICT_PHRASES)
        return sorted(self.verdicts.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order))

    def finding_counts(self) -> list[tuple[str, int]]:
        """(finding kind, connections with it), most frequent first, then by name."""
        return sorted(self.findings.items(), key=lambda item: (-item[1], item[0]))

    def client_counts(self) -> list[tuple[str, int]]:
        return sorted(self.clients.items(), key=lambda item: (-item[1], item[0]))

    def heartbeat_counts(self) -> list[tuple[float | None, int]]:
        """(effective heartbeat or None, connections), by value; unknown last."""
        return sorted(self.heartbeats.items(), key=lambda item: (item[0] is None, item[0] or 0.0))

    def headline(self) -> str:
        """One sentence: how many connections need attention, and why."""
        total = self.connections
        if not total:
            return "no AMQP 0-9-1 connection"
        plural = "s" if total != 1 else ""
        if not self.need_attention and total == 1:
            (verdict,) = self.verdicts
            return f"the connection needs no attention: {VERDICT_PHRASES.get(verdict, verdict)}"
        if not self.need_attention:
            parts = [f"{n} {VERDICT_PHRASES.get(v, v)}" for v, n in self.verdict_counts()]
            return f"none of the {total} connections needs attention: {', '.join(parts)}"
        teardowns = [f"{n} {VERDICT_PHRASES[v]}" for v, n in self.verdict_counts() if v in TEARDOWN_VERDICTS]
        with_findings = self.groups[FINDINGS]
        if with_findings:
            other = ("other " if with_findings == 1 else "others ") if teardowns else ""
            teardowns.append(f"{with_findings} {other}with findings")
        verb = "needs" if self.need_attention == 1 else "need"
        return f"{self.need_attention} of {total} connection{plural} {verb} attention: {', '.join(teardowns)}"

    def document(self, capture: CaptureSummary) -> dict[str, object]:
        """The JSON document's `summary` object (README: JSON schema)."""
        span = capture_span(capture)
        return {
            "connections": self.connections,
            "need_attention": self.need_attention,
            "headline": self.headline(),
            "groups": {ATTENTION_GROUPS[g]: self.groups[g] for g in sorted(ATTENTION_GROUPS)},
            "verdicts": dict(self.verdict_counts()),
            "findings": dict(self.finding_counts()),
            "clients": [{"client": name, "connections": n} for name, n in self.client_counts()],
            "heartbeats": [{"effective": value, "connections": n} for value, n in self.heartbeat_counts()],
            "span": None if span is None else {"first_packet_utc": span[0], "last_packet_utc": span[1],
                                               "duration": round(span[2], 6)},
            "warnings": len(capture.warnings),
        }


def capture_span(capture: CaptureSummary) -> tuple[str, str, float] | None:
    """The capture's first and last packet as UTC times, and its duration; None without packets."""
    if capture.start_epoch is None or capture.end_epoch is None:
        return None
    return (utc(capture.start_epoch), utc(capture.end_epoch), capture.duration)


def utc(epoch: float) -> str:
    """An epoch time as ISO 8601 UTC to the millisecond ("2026-01-01T00:00:00.000Z")."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
