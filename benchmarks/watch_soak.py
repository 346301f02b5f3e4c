"""Soak benchmark for `amqp-hb watch` (issue 15): a day of synthetic AMQP traffic piped into one
`amqp-hb watch -r - --format jsonl`, its memory sampled every capture hour.

    .venv/bin/python benchmarks/watch_soak.py                        # 24 h of capture time, defaults below
    .venv/bin/python benchmarks/watch_soak.py --hours 2 --long 50    # a quick look
    .venv/bin/python benchmarks/watch_soak.py --analyze              # also analyze the same stream, verdicts compared
    .venv/bin/python benchmarks/watch_soak.py --pcap-out - | tcpdump -r - -c 20   # the stream itself

Not a test: nothing is asserted, the numbers are printed (and written as JSON with --json FILE).
The capture is never written to disk: the records go straight into the watch's standard input as
they are made, at the speed the watch reads them (the pipe's back-pressure paces the generator).
With --analyze the same stream (same seed) is made again into a temporary file in
benchmarks/data/ (analyze does not read pipes), analyzed, and the file removed. Also checked: each
silent client's at-risk event against RabbitMQ's grid, and that no other connection gets one.
Results and the 2026-12-02 run are in benchmarks/README.md, "watch soak (issue 15)".

What the stream holds (client 10.x.y.z, a new address and port per connection; broker
10.255.255.254:5672; Ethernet; every connection with a full TCP and AMQP handshake as pika and
RabbitMQ send it, tests/synth.handshake_steps, and exact sequence and acknowledgement numbers):
  - long-lived connections (--long, 100): heartbeat --long-heartbeat (60 s), both peers sending a
    heartbeat every T/2, each answered by the other's delayed bare ACK (40 ms), and a publish
    (basic.publish, content header and body in one segment) every 10 minutes. A quarter of them
    stay open all day; the others live 0.5-6 h, then close (connection.close/close-ok, FIN both
    ways) and a new connection takes their place a few seconds later, so the population is steady.
    One ending in 50 is a broker RST instead of the close handshake.
  - short-lived connections (one every --short-every, 3 s, jittered +-50%): heartbeat 60 s,
    channel.open, 1-4 publishes over a few seconds (exponential, mean 8 s, capped at 120 s, with heartbeats when
    they last past T/2), then connection.close/close-ok and FIN both ways; one in 20 ends with a
    client RST instead.
  - silent clients (one every --silent-every, 600 s): heartbeat --silent-heartbeat (10 s), healthy
    for 1-5 minutes, then the client sends nothing more (its kernel still ACKs the broker's
    heartbeats). Two in three get the broker's RST at RabbitMQ's second silent look (tune-ok + kT,
    2 ms late): an at-risk event, then a teardown. One in three sends a heartbeat T/4 after the
    first silent look (a recovered event), stays healthy for two minutes and closes normally.

Speed: scapy builds each kind of packet once (tests/synth.py: tcp_packet, ethernet, method_frame,
handshake_steps); every copy is that template with time, addresses, ports, sequence and
acknowledgement numbers patched in with struct (TCP checksums are left stale: nothing checks them).

Memory: the watch process's VmRSS (/proc/PID/status) is read each time its event stream reaches
the next capture hour (the `time` of its events), so the sample is taken when the watch has
processed that hour, whatever the pipe holds. The peak is VmHWM, polled from the end of input
until the process exits, and wait4's ru_maxrss. The watch is started before the generator is
built, because ru_maxrss also counts a child's pages from before exec, which are this process's.
"""
from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import resource
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from typing import IO, cast

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/synth.py
VENV_BIN = os.path.dirname(sys.executable)
AMQP_HB = os.path.join(VENV_BIN, "amqp-hb")

START_US = 1_700_000_000 * 1_000_000  # capture start, epoch microseconds (far from the wall clock: not "live")
SECOND = 1_000_000
MS = 1_000
SERVER_IP = bytes((10, 255, 255, 254))
SERVER_PORT = 5672
DELAYED_ACK = 40 * MS  # the peer's bare ACK of a heartbeat or a publish
PUBLISH_EVERY = 600 * SECOND  # long-lived connections
LONG_WHOLE_DAY = 0.25  # fraction of long-lived slots whose connection stays open all day
LONG_LIFE_HOURS = (0.5, 6.0)
LONG_RST_ONE_IN = 50
SHORT_MEAN = 8.0  # seconds
SHORT_MAX = 120.0
SHORT_RST_ONE_IN = 20
SILENT_RECOVERS_ONE_IN = 3

C2S, S2C = 0, 1
F_FIN, F_SYN, F_RST, F_PSH, F_ACK = 0x01, 0x02, 0x04, 0x08, 0x10

_STAMP = struct.Struct("<II")  # a pcap record's seconds and microseconds
_TCP = struct.Struct("!4s4sHHII")  # IPv4 source, destination, TCP ports, seq, ack (Ethernet offset 26)
_RECORD = struct.Struct("<IIII")
_ADDR_AT = 16 + 14 + 12  # record header, Ethernet, IPv4 up to the source address


# ---- packet templates ----------------------------------------------------------------------------


class Templates:
    """One record per (direction, kind), built once with tests/synth.py; copies are patched."""

    def __init__(self) -> None:
        from pamqp import body, commands, header
        from pamqp import frame as pamqp_frame

        from tests import synth

        self.synth = synth
        self.payloads: dict[str, tuple[int, bytes]] = {
            "syn": (F_SYN, b""), "synack": (F_SYN | F_ACK, b""), "ack": (F_ACK, b""),
            "fin": (F_FIN | F_ACK, b""), "rst": (F_RST | F_ACK, b""),
            "hb": (F_PSH | F_ACK, synth.HEARTBEAT_FRAME),
            "chopen": (F_PSH | F_ACK, synth.method_frame(commands.Channel.Open(), 1)),
            "chopenok": (F_PSH | F_ACK, synth.method_frame(commands.Channel.OpenOk(), 1)),
            "publish": (F_PSH | F_ACK, synth.method_frame(commands.Basic.Publish(exchange="", routing_key="soak"), 1)
                        + pamqp_frame.marshal(header.ContentHeader(0, 64, commands.Basic.Properties(delivery_mode=2)),
                                              1)
                        + pamqp_frame.marshal(body.ContentBody(b"m" * 64), 1)),
            "close": (F_PSH | F_ACK, synth.method_frame(commands.Connection.Close(
                reply_code=200, reply_text="Normal shutdown", class_id=0, method_id=0))),
            "closeok": (F_PSH | F_ACK, synth.method_frame(commands.Connection.CloseOk())),
        }
        self.records: dict[tuple[int, str], tuple[bytes, int]] = {}

    def handshake(self, heartbeat: int) -> list[tuple[int, str]]:
        """The handshake's (direction, kind) steps for heartbeat T (tune and tune-ok carry T)."""
        steps = []
        for i, (_t, direction, _flags, payload) in enumerate(self.synth.handshake_steps(heartbeat, proposed=heartbeat)):
            kind = ("syn", "synack", "ack", "ph", "start", "startok", f"tune{heartbeat}", f"tuneok{heartbeat}",
                    "open", "openok")[i]
            if kind not in self.payloads:
                self.payloads[kind] = (_flags, payload)
            steps.append((C2S if direction == self.synth.C2S else S2C, kind))
        return steps

    def get(self, direction: int, kind: str) -> tuple[bytes, int]:
        """(record template, sequence space the segment takes: payload length, +1 for SYN or FIN)."""
        key = (direction, kind)
        found = self.records.get(key)
        if found is None:
            flags, payload = self.payloads[kind]
            client, server = ("10.0.0.1", 40000), ("10.255.255.254", SERVER_PORT)
            (src, sport), (dst, dport) = (client, server) if direction == C2S else (server, client)
            frame = self.synth.ethernet(self.synth.tcp_packet(src, dst, sport, dport, 0, 0, flags, payload))
            found = self.records[key] = (_RECORD.pack(0, 0, len(frame), len(frame)) + frame,
                                         len(payload) + (1 if flags & (F_SYN | F_FIN) else 0))
        return found


class Conn:
    """One TCP connection's addresses and next sequence numbers; `rec` makes its records."""

    __slots__ = ("ip", "last_client_payload", "nxt", "port", "templates")

    def __init__(self, templates: Templates, number: int, rng: random.Random) -> None:
        self.templates = templates
        self.ip = bytes((10, 1 + (number >> 16) % 250, (number >> 8) & 0xFF, number & 0xFF))
        self.port = 1024 + number % 60000
        self.nxt = [rng.randrange(1, 1 << 31), rng.randrange(1, 1 << 31)]
        self.last_client_payload = 0

    @property
    def id(self) -> str:
        """The connection's id as analyze and watch name it."""
        return f"{'.'.join(map(str, self.ip))}:{self.port}->{'.'.join(map(str, SERVER_IP))}:{SERVER_PORT}"

    def rec(self, t: int, direction: int, kind: str) -> tuple[int, bytearray]:
        template, space = self.templates.get(direction, kind)
        out = bytearray(template)
        sec, usec = divmod(t, SECOND)
        _STAMP.pack_into(out, 0, sec, usec)
        nxt = self.nxt
        ack = 0 if kind == "syn" else nxt[1 - direction]
        if direction == C2S:
            _TCP.pack_into(out, _ADDR_AT, self.ip, SERVER_IP, self.port, SERVER_PORT, nxt[0], ack)
            if space and kind not in ("syn", "fin"):
                self.last_client_payload = t
        else:
            _TCP.pack_into(out, _ADDR_AT, SERVER_IP, self.ip, SERVER_PORT, self.port, nxt[1], ack)
        nxt[direction] = (nxt[direction] + space) & 0xFFFFFFFF
        return t, out


# ---- connection scripts: generators of (time, record), time in epoch microseconds ----------------

Script = Iterator[tuple[int, object]]  # object: a record (bytearray) or a script to start
Records = Iterator[tuple[int, bytearray]]


def handshake(c: Conn, t: int, heartbeat: int) -> Generator[tuple[int, bytearray], None, int]:
    """TCP and AMQP handshake from t, then channel.open; returns tune-ok's time (the broker's grid)."""
    gaps = (0, 100, 100, 200, 1 * MS, 1 * MS, 1 * MS, 1 * MS, 100, 1 * MS)
    tune_ok = t
    for gap, (direction, kind) in zip(gaps, c.templates.handshake(heartbeat), strict=True):
        t += gap
        if kind.startswith("tuneok"):
            tune_ok = t
        yield c.rec(t, direction, kind)
    yield c.rec(t + 500, C2S, "chopen")
    yield c.rec(t + 1 * MS, S2C, "chopenok")
    yield c.rec(t + 1 * MS + DELAYED_ACK, C2S, "ack")
    return tune_ok


def active(c: Conn, anchor: int, heartbeat: int, start: int, until: int, publishes: list[int], *,
           client_phase: float, client_sends: bool = True) -> Records:
    """Traffic in [start, until): the broker's heartbeat at anchor + k T/2 and the client's at
    anchor + (k + client_phase) T/2 (each ACKed by the peer 40 ms later), and the client's
    publishes at the given times (ACKed by the broker). `client_sends=False`: a silent client
    (its kernel still ACKs)."""
    half = heartbeat * SECOND // 2
    k = max(0, (start - anchor) // half)
    pub = 0
    carried: list[tuple[int, int, str]] = []  # ACKs that fall after the next half period's start
    while True:
        base = anchor + k * half
        if base >= until:
            break
        events = carried + ([(base, S2C, "hb"), (base + DELAYED_ACK, C2S, "ack")] if k > 0 else [])
        if client_sends:
            ct = base + int(client_phase * half)
            events += [(ct, C2S, "hb"), (ct + DELAYED_ACK, S2C, "ack")]
        while pub < len(publishes) and publishes[pub] < base + half:
            if client_sends:
                events += [(publishes[pub], C2S, "publish"), (publishes[pub] + DELAYED_ACK // 2, S2C, "ack")]
            pub += 1
        events.sort()
        carried = [e for e in events if e[0] >= base + half]
        for t, direction, kind in events:
            if t < base + half and start <= t < until:
                yield c.rec(t, direction, kind)
        k += 1
    for t, direction, kind in carried:
        if start <= t < until:
            yield c.rec(t, direction, kind)


def close(c: Conn, t: int) -> Records:
    """connection.close / close-ok, then FIN both ways and the last ACK."""
    yield c.rec(t, C2S, "close")
    yield c.rec(t + 1 * MS, S2C, "closeok")
    yield c.rec(t + 1 * MS + 200, C2S, "fin")
    yield c.rec(t + 1 * MS + 400, S2C, "fin")
    yield c.rec(t + 1 * MS + 500, C2S, "ack")


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.templates = Templates()
        self.end = START_US + int(args.hours * 3600 * SECOND)
        self.connections: Counter[str] = Counter()
        self.numbered = 0
        # silent clients: id -> (RabbitMQ's first silent look, its close or None if the client recovers), epoch s
        self.silent_clients: dict[str, tuple[float, float | None]] = {}

    def conn(self, kind: str) -> Conn:
        self.connections[kind] += 1
        self.numbered += 1
        return Conn(self.templates, self.numbered, self.rng)

    def long_slot(self, t: int) -> Script:
        """A slot of the steady population: one long-lived connection after another."""
        rng, hb = self.rng, self.args.long_heartbeat
        whole_day = rng.random() < LONG_WHOLE_DAY
        while t < self.end:
            c = self.conn("long-lived")
            anchor = yield from handshake(c, t, hb)
            life = self.end if whole_day else anchor + int(rng.uniform(*LONG_LIFE_HOURS) * 3600 * SECOND)
            first = anchor + rng.randrange(PUBLISH_EVERY)
            publishes = list(range(first, min(life, self.end), PUBLISH_EVERY))
            yield from active(c, anchor, hb, anchor + 1, life, publishes, client_phase=rng.uniform(0.1, 0.9))
            if rng.randrange(LONG_RST_ONE_IN) == 0 and life < self.end:
                self.connections["long-lived: ending in a broker RST"] += 1
                yield c.rec(life, S2C, "rst")
            else:
                yield from close(c, life)
            t = life + rng.randrange(1 * SECOND, 10 * SECOND)

    def short(self, t: int) -> Script:
        rng, hb = self.rng, 60
        c = self.conn("short-lived")
        anchor = yield from handshake(c, t, hb)
        length = int((min(rng.expovariate(1 / SHORT_MEAN), SHORT_MAX) + 0.05) * SECOND)
        publishes = sorted(anchor + 50 * MS + rng.randrange(length) for _ in range(rng.randint(1, 4)))
        until = anchor + length + 10 * MS
        yield from active(c, anchor, hb, anchor + 1, until, publishes, client_phase=rng.uniform(0.1, 0.9))
        if rng.randrange(SHORT_RST_ONE_IN) == 0:
            self.connections["short-lived: ending in a client RST"] += 1
            yield c.rec(until, C2S, "rst")
        else:
            yield from close(c, until)

    def silent(self, t: int) -> Script:
        rng, hb = self.rng, self.args.silent_heartbeat
        period = hb * SECOND
        c = self.conn("silent client")
        anchor = yield from handshake(c, t, hb)
        quiet = anchor + rng.randrange(60 * SECOND, 300 * SECOND)
        phase = rng.uniform(0.1, 0.9)
        yield from active(c, anchor, hb, anchor + 1, quiet, [], client_phase=phase)
        # RabbitMQ looks at tune-ok + k T; the first look at or after the client's last byte sees it,
        # the next one is silent (at risk), the one after closes.
        seen = anchor + -(-(c.last_client_payload - anchor) // period) * period
        first_silent, closes = seen + period, seen + 2 * period
        recovers = rng.randrange(SILENT_RECOVERS_ONE_IN) == 0
        self.silent_clients[c.id] = (first_silent / SECOND, None if recovers else closes / SECOND)
        if recovers:
            self.connections["silent client: recovering"] += 1
            byte = first_silent + period // 4
            yield from active(c, anchor, hb, quiet, byte, [], client_phase=phase, client_sends=False)
            yield c.rec(byte, C2S, "hb")
            yield c.rec(byte + DELAYED_ACK, S2C, "ack")
            done = byte + 120 * SECOND
            yield from active(c, anchor, hb, byte + DELAYED_ACK + 1, done, [], client_phase=phase)
            yield from close(c, done)
        else:
            self.connections["silent client: closed by the broker's RST"] += 1
            yield from active(c, anchor, hb, quiet, closes, [], client_phase=phase, client_sends=False)
            yield c.rec(closes + 2 * MS, S2C, "rst")

    def arrivals(self, every: float, script: Callable[[int], Script], first: int) -> Script:
        t = START_US + first
        mean = int(every * SECOND)
        while t < self.end:
            yield t, script(t)
            t += self.rng.randrange(mean // 2, mean + mean // 2 + 1)

    def records(self) -> Iterator[tuple[int, bytearray]]:
        """Every record of the capture in time order (a heap of the running scripts)."""
        heap: list[tuple[int, int, object, Script]] = []
        n = 0
        scripts: list[Script] = [self.long_slot(START_US + i * 60 * SECOND // max(1, self.args.long))
                                 for i in range(self.args.long)]
        scripts.append(self.arrivals(self.args.short_every, self.short, 30 * SECOND))
        scripts.append(self.arrivals(self.args.silent_every, self.silent, 90 * SECOND))
        for script in scripts:
            first = next(script, None)
            if first is not None:
                n += 1
                heap.append((first[0], n, first[1], script))
        heapq.heapify(heap)
        end = self.end
        while heap:
            t, _, item, script = heap[0]
            if t >= end:  # the capture ends: this script's later records are not in it
                heapq.heappop(heap)
                continue
            n += 1
            following = next(script, None)
            if following is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (following[0], n, following[1], script))
            if type(item) is bytearray:
                yield t, item
            else:  # a new connection's script, from an arrivals script
                started = cast(Script, item)
                first = next(started, None)
                if first is not None:
                    n += 1
                    heapq.heappush(heap, (first[0], n, first[1], started))


# ---- the run -------------------------------------------------------------------------------------


def vm_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, MB."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def wait_polling(proc: subprocess.Popen, every: float = 0.01) -> tuple[resource.struct_rusage, dict[str, float]]:
    """Wait for `proc`, reading its VmRSS and VmHWM every `every` s: (wait4's rusage, the last read)."""
    last: dict[str, float] = {}
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage, last
        last = vm_status(proc.pid) or last
        time.sleep(every)


class EventReader(threading.Thread):
    """Reads the watch's JSON Lines: counts events by kind and verdicts; samples the watch's RSS
    each time the events reach the next capture hour."""

    def __init__(self, proc: subprocess.Popen, sample_every: float, started: float) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.kinds: Counter[str] = Counter()
        self.verdicts: Counter[str] = Counter()  # teardown and still-open
        self.samples: list[dict[str, float]] = []
        self.step = sample_every * 3600
        self.next_mark = START_US / SECOND + self.step
        self.started = started
        self.lines = 0
        self.latest = 0.0
        self.risks: dict[str, list[dict]] = {}  # at-risk and recovered events by connection
        self.final: dict[str, str] = {}  # connection -> verdict of its teardown or still-open event

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines += 1
            event = json.loads(line)
            kind = event["event"]
            self.kinds[kind] += 1
            if kind in ("teardown", "still-open"):
                self.verdicts[f"{kind}: {event.get('verdict')}"] += 1
                self.final[event["connection"]] = event.get("verdict")
            elif kind in ("at-risk", "recovered"):
                self.risks.setdefault(event["connection"], []).append(event)
            t = event["time"]
            if kind != "still-open" and t > self.latest:
                self.latest = t
            while self.latest >= self.next_mark:
                self.sample(self.next_mark)
                self.next_mark += self.step

    def sample(self, mark: float) -> None:
        status = vm_status(self.proc.pid)
        k = self.kinds
        self.samples.append({"hour": round((mark - START_US / SECOND) / 3600, 3),
                             "wall": round(time.perf_counter() - self.started, 1),
                             "rss_mb": round(status.get("VmRSS", 0.0), 1),
                             "hwm_mb": round(status.get("VmHWM", 0.0), 1),
                             "open": k["connection-opened"] - k["teardown"],
                             "events": self.lines})


def check_silent(soak: Soak, reader: EventReader) -> dict:
    """The warnings against what the stream did: each silent client's at-risk event at RabbitMQ's
    first silent look, its predicted close at the look the RST followed (2 ms later), a recovered
    event for those that sent a byte; and no at-risk event on any other connection."""
    at_risk_ms: list[float] = []
    close_ms: list[float] = []
    missing, recovered = [], 0
    for cid, (first_silent, closes) in soak.silent_clients.items():
        events = reader.risks.get(cid, [])
        risk = next((e for e in events if e["event"] == "at-risk" and e["closer"] == "broker"), None)
        if risk is None:
            missing.append(cid)
            continue
        at_risk_ms.append((risk["time"] - first_silent) * 1000)
        if closes is not None:
            close_ms.append((risk["predicted_close"] - closes) * 1000)
        elif any(e["event"] == "recovered" for e in events):
            recovered += 1
    false_alarms = [cid for cid in reader.risks if cid not in soak.silent_clients]
    span = lambda xs: [round(min(xs), 3), round(max(xs), 3)] if xs else None  # noqa: E731
    return {"silent_clients": len(soak.silent_clients),
            "broker_rst": sum(1 for _, c in soak.silent_clients.values() if c is not None),
            "at_risk": len(at_risk_ms), "no_at_risk": missing[:10], "no_at_risk_count": len(missing),
            "at_risk_minus_first_silent_look_ms": span(at_risk_ms),
            "predicted_minus_grid_close_ms": span(close_ms), "recovered": recovered,
            "at_risk_elsewhere": false_alarms[:10], "at_risk_elsewhere_count": len(false_alarms)}


def run_watch(args: argparse.Namespace) -> dict:
    argv = [AMQP_HB, "watch", "-r", "-", "--format", "jsonl"]
    started = time.perf_counter()
    # Started before the generator exists (scapy, templates, the heap): the child's peak RSS from
    # wait4 counts its pages from before exec too, which would then be this process's.
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    soak = Soak(args)
    reader = EventReader(proc, args.sample_every, started)
    reader.start()
    errors: list[bytes] = []
    err_reader = threading.Thread(target=lambda: errors.extend(proc.stderr or ()), daemon=True)
    err_reader.start()
    assert proc.stdin is not None
    packets, written = write_stream(soak, proc.stdin)
    generated = time.perf_counter() - started
    proc.stdin.close()
    usage, final = wait_polling(proc)  # the end of input: through finish()
    wall = time.perf_counter() - started
    reader.join()
    err_reader.join()
    return {"silent_clients": check_silent(soak, reader), "final": reader.final,
            "argv": " ".join(argv[1:]), "exit": proc.returncode, "packets": packets, "bytes": written,
            "capture_hours": args.hours, "connections": dict(soak.connections),
            "connections_total": soak.numbered, "events": dict(reader.kinds), "verdicts": dict(reader.verdicts),
            "wall_s": round(wall, 1), "generator_done_s": round(generated, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "samples": reader.samples,
            "final_rss_mb": round(final.get("VmRSS", 0.0), 1), "final_hwm_mb": round(final.get("VmHWM", 0.0), 1),
            "stderr": b"".join(errors).decode(errors="replace").strip()}


def write_stream(soak: Soak, out: IO[bytes], flush_bytes: int = 1 << 18) -> tuple[int, int]:
    """Write the capture to `out` (a pipe) as it is made; (packets, bytes)."""
    header = soak.templates.synth.pcap_header(soak.templates.synth.LINKTYPE_ETHERNET)
    out.write(header)
    written, packets = len(header), 0
    pending: list[bytearray] = []
    size = 0
    for _t, record in soak.records():
        pending.append(record)
        size += len(record)
        packets += 1
        if size >= flush_bytes:
            out.write(b"".join(pending))
            written += size
            pending, size = [], 0
    if pending:
        out.write(b"".join(pending))
        written += size
    return packets, written


def run_analyze(args: argparse.Namespace) -> dict:
    """The same stream (same seed) through `amqp-hb analyze FILE --format json`: its verdicts.

    analyze reads a file, not a pipe (its progress asks the file for its position: on a pipe,
    `analyze /dev/stdin` of more than a read chunk stops with "Illegal seek"), so the stream goes to
    a temporary file in benchmarks/data/ (outside git), removed afterwards."""
    soak = Soak(args)
    os.makedirs(os.path.join(HERE, "data"), exist_ok=True)
    path = os.path.join(HERE, "data", f"watch_soak.{os.getpid()}.pcap")
    out = os.path.join(args.scratch, "watch_soak_analyze.json")
    try:
        with open(path, "wb") as f:
            write_stream(soak, f)
        argv = [AMQP_HB, "analyze", path, "--format", "json", "--quiet"]
        started = time.perf_counter()
        with open(out, "wb") as sink:
            proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.PIPE)
            _, hwm = wait_polling(proc)  # VmHWM, not wait4: this process's pages before exec count there
        wall = time.perf_counter() - started
        errors = proc.stderr.read() if proc.stderr is not None else b""
    finally:
        if os.path.exists(path):
            os.unlink(path)
    with open(out, "rb") as f:
        doc = json.load(f)
    verdicts: Counter[str] = Counter(c.get("verdict") for c in doc.get("connections", ()))
    return {"final": {c["id"]: c.get("verdict") for c in doc.get("connections", ())},
            "argv": " ".join(argv[1:]), "exit": proc.returncode, "wall_s": round(wall, 1),
            "peak_rss_mb": round(hwm.get("VmHWM", 0.0), 1), "verdicts": dict(verdicts),
            "stderr": errors.decode(errors="replace").strip()}


def report(result: dict, out=sys.stdout) -> None:
    p = out.write
    p(f"capture: {result['capture_hours']:g} h, {result['packets']:,} packets, {result['bytes'] / 1e6:,.0f} MB, "
      f"{result['connections_total']:,} connections\n")
    for kind, count in sorted(result["connections"].items()):
        p(f"  {kind:42s} {count:>8,}\n")
    p(f"watch: exit {result['exit']}, wall {result['wall_s']} s (generator done at {result['generator_done_s']} s), "
      f"peak RSS {result['peak_rss_mb']} MB (wait4; VmHWM {result['final_hwm_mb']} MB and VmRSS "
      f"{result['final_rss_mb']} MB last seen after the end of input)\n")
    p("events:\n")
    for kind, count in sorted(result["events"].items()):
        p(f"  {kind:28s} {count:>8,}\n")
    p("verdicts (teardown / still-open events):\n")
    for verdict, count in sorted(result["verdicts"].items()):
        p(f"  {verdict:50s} {count:>8,}\n")
    p("\n| capture hour | wall s | RSS MB | peak MB | open connections | events so far |\n")
    p("|-------------:|-------:|-------:|--------:|-----------------:|--------------:|\n")
    for s in result["samples"]:
        p(f"| {s['hour']:12g} | {s['wall']:6.1f} | {s['rss_mb']:6.1f} | {s['hwm_mb']:7.1f} | {s['open']:16,} | "
          f"{s['events']:13,} |\n")
    samples = result["samples"]
    if len(samples) >= 4:
        base = [s["rss_mb"] for s in samples if 2 <= s["hour"] <= 3] or [samples[1]["rss_mb"]]
        tail = [s["rss_mb"] for s in samples[-3:]]
        p(f"\nRSS at hours 2-3: {min(base):.1f}-{max(base):.1f} MB; last three samples: "
          f"{min(tail):.1f}-{max(tail):.1f} MB; growth {max(tail) - max(base):+.1f} MB\n")
    silent = result["silent_clients"]
    p(f"\nsilent clients: {silent['silent_clients']} ({silent['broker_rst']} closed by the broker's RST); "
      f"at-risk events {silent['at_risk']} (none: {silent['no_at_risk_count']} {silent['no_at_risk']}), "
      f"at-risk time - RabbitMQ's first silent look {silent['at_risk_minus_first_silent_look_ms']} ms, "
      f"predicted close - the look the RST followed (2 ms later) {silent['predicted_minus_grid_close_ms']} ms, "
      f"recovered {silent['recovered']} of {silent['silent_clients'] - silent['broker_rst']}; "
      f"at-risk on other connections: {silent['at_risk_elsewhere_count']} {silent['at_risk_elsewhere']}\n")
    if result["stderr"]:
        p(f"watch stderr: {result['stderr'][:2000]}\n")
    analyze = result.get("analyze")
    if analyze:
        p(f"\nanalyze of the same stream: exit {analyze['exit']}, wall {analyze['wall_s']} s, "
          f"peak RSS {analyze['peak_rss_mb']} MB\n")
        watch_verdicts: Counter[str] = Counter()
        for key, count in result["verdicts"].items():
            watch_verdicts[key.split(": ", 1)[1]] += count
        for verdict in sorted(set(watch_verdicts) | set(analyze["verdicts"])):
            theirs_count = analyze["verdicts"].get(verdict, 0)
            p(f"  {verdict:40s} watch {watch_verdicts[verdict]:>8,}  analyze {theirs_count:>8,}\n")
        theirs = analyze["final"]
        differ = [cid for cid in set(theirs) | set(result["final"]) if theirs.get(cid) != result["final"].get(cid)]
        p(f"  per connection: {len(theirs):,} in analyze, {len(result['final']):,} in watch, "
          f"{len(differ)} with another verdict or missing {sorted(differ)[:5]}\n")
        analyze["differ"] = len(differ)
        if analyze["stderr"]:
            p(f"analyze stderr: {analyze['stderr'][:2000]}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=24.0, help="capture time (default 24)")
    ap.add_argument("--long", type=int, default=100, help="long-lived connections open at once (default 100)")
    ap.add_argument("--long-heartbeat", type=int, default=60, help="their heartbeat, s (default 60)")
    ap.add_argument("--short-every", type=float, default=3.0, help="a short-lived connection every S s (default 3)")
    ap.add_argument("--silent-every", type=float, default=600.0,
                    help="a client that goes silent every S s (default 600)")
    ap.add_argument("--silent-heartbeat", type=int, default=10, help="their heartbeat, s (default 10)")
    ap.add_argument("--sample-every", type=float, default=1.0, help="RSS sample every H capture hours (default 1)")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--analyze", action="store_true", help="also analyze the same stream and compare verdicts")
    ap.add_argument("--scratch", default="/tmp", help="where --analyze puts analyze's JSON output (default /tmp)")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    ap.add_argument("--pcap-out", metavar="FILE", help="only write the capture to FILE (- for stdout) and stop")
    args = ap.parse_args(argv)

    if args.pcap_out:
        soak = Soak(args)
        started = time.perf_counter()
        if args.pcap_out == "-":
            packets, written = write_stream(soak, sys.stdout.buffer)
        else:
            with open(args.pcap_out, "wb") as f:
                packets, written = write_stream(soak, f)
        sys.stderr.write(f"{packets:,} packets, {written / 1e6:,.1f} MB, {soak.numbered:,} connections "
                         f"{dict(soak.connections)} in {time.perf_counter() - started:.1f} s\n")
        return 0
    result = run_watch(args)
    if args.analyze:
        result["analyze"] = run_analyze(args)
    report(result)
    if args.json:
        result.pop("final")
        result.get("analyze", {}).pop("final", None)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
