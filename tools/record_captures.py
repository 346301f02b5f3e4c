"""Regenerate captures/<scenario>.pcap + .json: every scenario once, with its default (blog-like) timings.

Usage (root, rabbitmq-server and tcpdump installed):  .venv/bin/python tools/record_captures.py [NAME ...]

The network fault scenarios (catalog.FAULT_SCENARIOS: partition, idle-timeout-middlebox,
idle-timeout-middlebox-silent; nftables installed) each start their own node inside a network
namespace and write two captures, captures/<name>-client.pcap and -broker.pcap, each with its .json;
they run with the short timings in FAULT_TIMINGS so that the files stay a few KiB. lossy-path is not
shipped (random loss: a new recording differs every time); name it to record it anyway.

One throwaway node serves all runs (broker-paused freezes it, consumer-timeout reconfigures it at
runtime and restores it). The node gets channel_tick_interval=1000 so the consumer timeout fires
within a second of expiring, and a TLS listener (port 5671 when free, a test CA made at its start)
for the tls* variants, which also write captures/<name>.keys (the clients' key log). Files carry no
timestamp in their names, so tests and docs can refer to them stably; the run's UTC time is inside
the .json.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from analyzer.lab.broker import LocalBroker
from analyzer.lab.scenarios import catalog
from analyzer.lab.scenarios.runner import run_scenario

# Recordings of a scenario under other capture conditions: (file name, scenario, run_scenario options).
VARIANTS = {
    # `tcpdump -i any` (Linux cooked SLL2) of clients reaching the broker over IPv6 loopback.
    "blocked-callback-ipv6-any": ("blocked-callback", {"ipv6": True, "interface": "any"}),
    # The blog's run over TLS (AMQPS), each TLS version pinned; with the key log that decrypts it.
    "tls12-blocked-callback": ("blocked-callback", {"tls_version": "1.2"}),
    "tls13-blocked-callback": ("blocked-callback", {"tls_version": "1.3"}),
}

# Network fault scenarios shipped, with the timings they are recorded with (the tests' short ones).
FAULT_TIMINGS = {
    "partition": {"heartbeat": 2, "work": 3},
    "idle-timeout-middlebox": {"heartbeat": 0, "work": 4},
    "idle-timeout-middlebox-silent": {"heartbeat": 0, "work": 4},
}

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "captures")


def main(names: list[str]) -> int:
    names = names or [*catalog.SCENARIOS, *VARIANTS, *FAULT_TIMINGS]
    faults = [n for n in names if n in catalog.FAULT_SCENARIOS]
    names = [n for n in names if n not in faults]
    failed = [name for name in faults if not record_fault(name)]
    if not names:
        return 1 if failed else 0
    with LocalBroker(advanced={"channel_tick_interval": 1000}, tls=True) as broker:
        print(f"broker {broker.info.product} {broker.info.version} on port {broker.port}, TLS on {broker.amqps_port}",
              flush=True)
        for name in names:
            t = time.time()
            scenario, options = VARIANTS.get(name, (name, {}))
            result = run_scenario(scenario, out_dir=OUT, broker=broker, basename=name, backend="auto", **options)
            meta = result.metadata
            size = os.path.getsize(result.pcap)
            clean = meta["as_expected"] and meta["capture"]["dropped"] in (0, None)
            ok = "ok" if clean else f"NOT AS EXPECTED (dropped {meta['capture']['dropped']})"
            tls = f"  {meta['tls']['negotiated']} key log {meta['tls']['keylog']}" if result.keylog else ""
            print(f"{name:<20} {time.time() - t:5.1f} s  {meta['capture']['packets']:4d} packets  {size:6d} bytes  "
                  f"{ok}  {meta['expected_verdicts']}{tls}", flush=True)
            if not clean:
                failed.append(name)
    return 1 if failed else 0


def record_fault(name: str) -> bool:
    """Record a network fault scenario (its own node, in a namespace): two captures; True when clean."""
    t = time.time()
    result = run_scenario(name, out_dir=OUT, basename=name, backend="auto", **FAULT_TIMINGS.get(name, {}))
    clean = True
    for side, run in result.sides.items():
        meta = run.metadata
        ok = meta["as_expected"] and meta["capture"]["dropped"] in (0, None)
        clean = clean and ok
        print(f"{name + '-' + side:<20} {time.time() - t:5.1f} s  {meta['capture']['packets']:4d} packets  "
              f"{os.path.getsize(run.pcap):6d} bytes  {'ok' if ok else 'NOT AS EXPECTED'}  {meta['expected_verdicts']}",
              flush=True)
    return clean


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
