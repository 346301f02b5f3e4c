"""ConnectionTimeline → ClientIdentity: which client library is on the other end of a connection.

From connection.start-ok's client_properties when the capture has it (each library names itself:
models/clients.py `products`, `platform_prefix`); otherwise from behaviour, and only where a
library's idle heartbeat cadence is a signature no other row shares (`signature_period`); else
unknown. Never a guess: a cadence two rows could produce, or an application-driven sender could,
names no library.
"""
from __future__ import annotations

import re
import statistics
from collections.abc import Mapping
from typing import Any

from analyzer.diagnosis.models.clients import PROFILES, ClientProfile
from analyzer.diagnosis.models.common import interval_gaps, largest_cluster
from analyzer.diagnosis.results import ClientIdentity
from analyzer.timeline import ConnectionTimeline

# Spring AMQP's default connection name: <beanName or "SpringAMQP">#<identity hex>:<counter>
# (spring-projects/spring-amqp@v4.1.1 spring-rabbit/.../connection/AbstractConnectionFactory.java,
# the default connectionNameStrategy, l.151-154).
SPRING_CONNECTION_NAME = re.compile(r"#[0-9a-f]+:\d+$")
# Heartbeat intervals within this much of each other are one cadence: timer jitter on a loaded
# host is a few ms; a signature must be met by most of the idle intervals, not one.
SAME_CADENCE_ABS = 0.03
SAME_CADENCE_REL = 0.03
MIN_SIGNATURE_INTERVALS = 3


def identify(tl: ConnectionTimeline, timeout: float | None) -> ClientIdentity:
    if tl.start_ok is not None:
        return _from_handshake(tl.start_ok.args.get("client_properties"))
    return _from_behaviour(tl, timeout)


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _from_handshake(properties: Any) -> ClientIdentity:
    props: Mapping[str, Any] = properties if isinstance(properties, Mapping) else {}
    product, platform = _text(props.get("product")), _text(props.get("platform")) or ""
    version = _text(props.get("version")) or _text(props.get("product_version"))
    if product is None:
        return _from_capabilities(props)
    matches = [p for p in PROFILES.values()
               if product in p.products and (p.platform_prefix is None or platform.startswith(p.platform_prefix))]
    evidence = f"connection.start-ok product {product!r}" + (f", platform {platform!r}" if platform else "")
    if len(matches) != 1:
        return ClientIdentity("unknown", "the client", version, None, "handshake", product, evidence)
    row = matches[0]
    name = _text(props.get("connection_name")) or ""
    if row.key == "java" and SPRING_CONNECTION_NAME.search(name):
        return ClientIdentity(row.key, row.name, version, "Spring AMQP", "handshake", product,
                              f"{evidence}, Spring's connection_name {name!r}", wrapper_proven=True)
    return ClientIdentity(row.key, row.name, version, _possible_wrappers(row), "handshake", product, evidence)


def _possible_wrappers(row: ClientProfile) -> str | None:
    return " or ".join(row.wrappers) if row.wrappers else None


def _from_capabilities(props: Mapping[str, Any]) -> ClientIdentity:
    """A start-ok without a product: some libraries drop their name when the application passes
    its own properties, but keep their capabilities table (`ClientProfile.bare_capabilities`)."""
    capabilities = props.get("capabilities")
    keys = frozenset(capabilities) if isinstance(capabilities, Mapping) else frozenset()
    matches = [p for p in PROFILES.values() if p.bare_capabilities is not None and p.bare_capabilities == keys]
    if len(matches) != 1:
        return ClientIdentity("unknown", "the client", None, None, "unknown", None,
                              "connection.start-ok names no product, and its capabilities match no one library")
    row = matches[0]
    evidence = (f"connection.start-ok names no product (the application set its own properties), but its "
                f"capabilities are exactly {row.name}'s: {', '.join(sorted(keys))}")
    return ClientIdentity(row.key, row.name, None, _possible_wrappers(row), "handshake", None, evidence)


def idle_heartbeat_interval(times: list[float]) -> float | None:
    """The cadence most of a side's heartbeats keep: the median of the largest cluster of
    consecutive intervals within SAME_CADENCE of each other; None with too few."""
    gaps = interval_gaps(times)
    best = largest_cluster(gaps, lambda g: max(SAME_CADENCE_ABS, SAME_CADENCE_REL * g))
    if len(best) < MIN_SIGNATURE_INTERVALS or 2 * len(best) < len(gaps):
        return None
    return statistics.median(best)


def _no_start_ok(tl: ConnectionTimeline) -> str:
    if tl.tls is not None:
        return "connection.start-ok is encrypted (TLS, not decrypted)"
    return "no connection.start-ok in the capture"


def _from_behaviour(tl: ConnectionTimeline, timeout: float | None) -> ClientIdentity:
    unknown = ClientIdentity("unknown", "the client", None, None, "unknown", None,
                             f"{_no_start_ok(tl)}, and no heartbeat cadence unique to one library")
    if not timeout:
        return unknown
    interval = idle_heartbeat_interval(tl.c2s.heartbeat_times())
    if interval is None:
        return unknown
    matches = []
    for row in PROFILES.values():
        expected = row.signature_period(timeout) if row.signature_period is not None else None
        if expected is not None and abs(interval - expected) <= max(SAME_CADENCE_ABS, SAME_CADENCE_REL * expected):
            matches.append((row, expected))
    if len(matches) != 1:
        return unknown
    row, expected = matches[0]
    evidence = (f"{_no_start_ok(tl)}; the client's heartbeats come every {interval:.3f} s at "
                f"heartbeat {timeout:g} s, {row.name}'s cadence ({expected:g} s) and no other library's")
    return ClientIdentity(row.key, row.name, None, _possible_wrappers(row), "behaviour", None, evidence)
