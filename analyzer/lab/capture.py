"""Live capture (edge: I/O): record TCP traffic on one interface to a pcap file while other code runs.

Strategy: one context manager, three backends. tcpdump and dumpcap (preferred when installed: they
keep up with high packet rates and report kernel drops) run as child processes in their own
session; __enter__ returns only once they announce they are capturing ("listening on" /
"File:" on stderr), and __exit__ waits a short settle delay so the last packets reach the
file, interrupts them (SIGINT, as Ctrl-C would) and parses their exit statistics. scapy's
AsyncSniffer is the pure-Python fallback; it writes each packet through a synced PcapWriter. Every
backend writes incrementally, so a crash leaves a readable file. The file is classic pcap
(microsecond timestamps) whatever the backend, so tools that only read pcap can open it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from analyzer.errors import EnvironmentProblem, UsageError
from analyzer.lab import netns as namespaces
from analyzer.lab.broker import LAB_EXTRA_HINT, die_with_parent
from analyzer.sources.pcap import PCAP_MAGICS

if TYPE_CHECKING:  # scapy is imported only when its backend runs (importing it takes about a second)
    from scapy.packet import Packet
    from scapy.sendrecv import AsyncSniffer
    from scapy.utils import PcapWriter

BACKENDS = ("tcpdump", "dumpcap", "scapy")
# How long a tool may take to open the interface before we give up (a cold libpcap start is ~50 ms).
START_TIMEOUT = 10.0
# Delay before stopping so packets still in the kernel ring reach the file. tcpdump runs in
# --immediate-mode (measured: on disk within milliseconds); dumpcap (4.0) has no immediate mode and
# was measured writing up to ~0.6 s late, so it gets a longer settle. SIGINT makes both flush.
SETTLE = 0.5
SETTLE_DUMPCAP = 1.0
STOP_TIMEOUT = 10.0
READY_POLL = 0.05  # how often start() checks that the tool has not died while it waits for "ready"
# After the tool exits its stderr reader sees end of file at once; these only bound a stuck pipe.
READER_JOIN_ON_ERROR = 1.0
READER_JOIN = 2.0
SNAPLEN = 65550  # loopback MTU 65536 + Ethernet header: whole packets on lo and on GSO-sized frames
RING_KIB = 32768  # kernel ring for tcpdump (-B, KiB) and dumpcap (-B, MiB): see _command
CAP_NET_RAW = 13  # linux/capability.h
ARPHRD_LOOPBACK = "772"  # linux/if_arp.h, as /sys/class/net/IFACE/type spells it
LINKTYPE_ETHERNET = 1  # tcpdump.org link-layer header types
PCAP_FILE_HEADER = 24  # magic, version, thiszone, sigfigs, snaplen, network (pcap file format)
PCAP_RECORD_HEADER = 16  # ts_sec, ts_frac, incl_len, orig_len
DEFAULT_PORTS = (5672,)  # IANA amqp
PRIVILEGE_HINT = "capturing needs root or CAP_NET_RAW (try sudo, or setcap cap_net_raw+eip on the tool)"


@dataclass
class CaptureStats:
    """What a finished capture reports; `dropped` is None when the backend cannot tell."""

    backend: str
    path: str
    interface: str
    filter: str
    packets: int = 0
    dropped: int | None = None
    received: int | None = None  # packets the kernel filter passed (tcpdump/dumpcap)

    def as_dict(self) -> dict[str, object]:
        return {"backend": self.backend, "file": os.path.basename(self.path), "interface": self.interface,
                "filter": self.filter, "packets": self.packets, "dropped": self.dropped,
                "received": self.received}


def has_capture_privilege() -> bool:
    if os.geteuid() == 0:
        return True
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_RAW & 1)
    return False


def available_backends() -> list[str]:
    found = [name for name in ("tcpdump", "dumpcap") if shutil.which(name)]
    with contextlib.suppress(ImportError):
        import scapy  # noqa: F401  (presence check only; importing scapy.all is slow)
        found.append("scapy")
    return found


def choose_backend(name: str = "auto") -> str:
    """The backend to use: `name` if installed, or for "auto" the first of tcpdump, dumpcap, scapy."""
    found = available_backends()
    if name == "auto":
        if not found:
            raise EnvironmentProblem(f"no capture tool: run `apt-get install tcpdump`, or for scapy {LAB_EXTRA_HINT}")
        return found[0]
    if name not in BACKENDS:
        raise UsageError(f"unknown capture backend {name!r}; choose one of {', '.join(BACKENDS)} or auto")
    if name not in found:
        if name == "scapy":
            raise EnvironmentProblem(f"capture backend scapy needs the `lab` extra (scapy is missing): "
                                     f"{LAB_EXTRA_HINT}")
        raise EnvironmentProblem(f"capture backend {name} is not installed: run "
                                 f"`apt-get install {'tshark' if name == 'dumpcap' else name}`")
    return name


def is_loopback(iface: str) -> bool:
    """ARPHRD_LOOPBACK per sysfs."""
    with contextlib.suppress(OSError), open(f"/sys/class/net/{iface}/type") as f:
        return f.read().strip() == ARPHRD_LOOPBACK
    return iface == "lo"


def bpf_filter(ports: Iterable[int] | None) -> str:
    wanted = sorted({int(p) for p in ports or ()})
    if not wanted:
        return "tcp"
    return "tcp and (" + " or ".join(f"port {p}" for p in wanted) + ")"


def count_pcap_records(path: str) -> int:
    """Records in a classic pcap file, counted from the headers (a cut last record is not counted)."""
    n = 0
    with open(path, "rb") as f:
        head = f.read(PCAP_FILE_HEADER)
        if len(head) < PCAP_FILE_HEADER:
            return 0
        endian = PCAP_MAGICS.get(head[:4], (">", False))[0]
        rec = struct.Struct(endian + "IIII")  # ts_sec, ts_frac, incl_len, orig_len (pcap file format)
        size = os.fstat(f.fileno()).st_size
        pos = PCAP_FILE_HEADER
        while pos + PCAP_RECORD_HEADER <= size:
            f.seek(pos)
            incl = rec.unpack(f.read(PCAP_RECORD_HEADER))[2]
            if pos + PCAP_RECORD_HEADER + incl > size:
                break
            n += 1
            pos += PCAP_RECORD_HEADER + incl
    return n


STREAM = "-"  # LiveCapture's path for a pcap stream read from `cap.stream` instead of a file


class LiveCapture:
    """`with LiveCapture("out.pcap", iface="lo", ports=[5672]) as cap: ...` then `cap.stats`.

    netns: capture on `iface` inside that network namespace (tcpdump or dumpcap under `ip netns exec`).
    With path STREAM ("-") the packets are not written to a file but streamed, as pcap, to
    `cap.stream`: an unbuffered binary file whose `read(n)` returns what has arrived (`amqp-hb watch
    -i`); it ends when the capture stops or its tool dies (`cap.exit_problem()` then says why).
    """

    def __init__(self, path: str, *, iface: str = "lo", ports: Iterable[int] | None = DEFAULT_PORTS,
                 backend: str = "auto", settle: float | None = None, netns: str | None = None) -> None:
        self.streaming = path == STREAM
        self.path = path if self.streaming else os.path.abspath(path)
        self.stream: IO[bytes] | None = None
        self.iface = iface
        self.netns = netns
        self.ports = {int(p) for p in ports or ()}
        self.filter = bpf_filter(ports)
        self.backend = choose_backend(backend)
        if netns is not None and self.backend == "scapy":
            raise UsageError("capturing inside a network namespace needs tcpdump or dumpcap, not scapy")
        self.settle = settle if settle is not None else (SETTLE_DUMPCAP if self.backend == "dumpcap" else SETTLE)
        self.stats = CaptureStats(self.backend, self.path, iface, self.filter)
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: list[str] = []
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        self._sniffer: AsyncSniffer | None = None
        self._writer: PcapWriter | None = None
        self._count = 0
        self.started = False

    # ---- context manager -----------------------------------------------------------------------

    def __enter__(self) -> LiveCapture:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        if not has_capture_privilege():
            raise EnvironmentProblem(PRIVILEGE_HINT)
        if not self.streaming:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        try:
            if self.backend == "scapy":
                self._start_scapy()
            else:
                self._start_tool()
        except BaseException:
            self.stop(settle=False)
            raise
        self.started = True

    def stop(self, settle: bool = True) -> CaptureStats:
        """Flush and stop; safe to call twice and after a failed start."""
        if settle and self.started and self.settle:
            time.sleep(self.settle)
        self.started = False
        if self._proc is not None:
            self._stop_tool()
        if self._sniffer is not None:
            self._stop_scapy()
        return self.stats

    # ---- tcpdump / dumpcap ---------------------------------------------------------------------

    def _command(self) -> list[str]:
        if self.backend == "tcpdump":
            # -U: write each packet as it arrives; --immediate-mode: no libpcap buffering delay;
            # -Z root: keep root (Debian's tcpdump would drop to user tcpdump, who may not write here).
            # Ring size: immediate mode makes libpcap use TPACKET_V2, one ring slot per snaplen, so the
            # default 2 MiB ring with -s 0 (256 KiB slots) holds about 8 packets: measured, a 30 ms
            # stall of tcpdump under load dropped 50 of 66 packets. 64 KiB slots (loopback's MTU is
            # 65536) in a 32 MiB ring hold about 500.
            extra = ["-Z", "root"] if os.geteuid() == 0 else []
            return ["tcpdump", "-i", self.iface, "-U", "--immediate-mode", "-n", "-s", str(SNAPLEN),
                    "-B", str(RING_KIB), *extra, "-w", self.path, self.filter]  # -w -: standard output
        # -P: classic pcap, not pcapng; -q would hide the "Packets captured" summary we parse.
        return ["dumpcap", "-i", self.iface, "-P", "-s", str(SNAPLEN), "-B", str(RING_KIB // 1024),
                "-f", self.filter, "-w", self.path]

    def _start_tool(self) -> None:
        ready = "listening on" if self.backend == "tcpdump" else "File:"  # dumpcap: printed once the file is open
        # bufsize=0: the stream's read(n) returns what the pipe holds rather than waiting for n bytes.
        self._proc = subprocess.Popen([*namespaces.exec_prefix(self.netns), *self._command()],
                                      stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE if self.streaming else subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, start_new_session=True, bufsize=0,
                                      preexec_fn=die_with_parent)
        self.stream = self._proc.stdout
        self._reader = threading.Thread(target=self._read_stderr, args=(ready,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready.wait(READY_POLL):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._reader.join(READER_JOIN_ON_ERROR)
                raise self._tool_error()

    def _read_stderr(self, ready: str) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for raw in self._proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self._stderr.append(line)
            if ready in line:
                self._ready.set()

    def _tool_error(self) -> EnvironmentProblem:
        text = " ".join(self._stderr)
        if re.search(r"permission|not permitted|privilege", text, re.I):
            return EnvironmentProblem(PRIVILEGE_HINT)
        lines = [ln for ln in self._stderr if ln.strip() and "dangerous" not in ln]
        detail = lines[-1] if lines else "no output"
        return EnvironmentProblem(f"{self.backend} could not capture on {self.iface}: {detail}")

    def _stop_tool(self) -> None:
        proc = self._proc
        assert proc is not None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)  # both tools write their statistics on SIGINT
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._reader is not None:
            self._reader.join(READER_JOIN)
        self._proc = None
        self._parse_stats("\n".join(self._stderr))
        if not self.streaming and os.path.exists(self.path):
            recorded = count_pcap_records(self.path)
            if not self.stats.packets or recorded < self.stats.packets:
                self.stats.packets = recorded  # what is really in the file

    def request_stats(self) -> None:
        """Ask tcpdump for its counts so far (SIGUSR1 on Linux: it prints them on stderr and goes on);
        `poll_stats()` reads them. dumpcap and scapy have no such request."""
        if self._proc is not None and self.backend == "tcpdump" and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGUSR1)

    def poll_stats(self) -> CaptureStats:
        """The counts the tool has printed so far (tcpdump after `request_stats`, every tool at exit)."""
        self._parse_stats("\n".join(self._stderr))
        return self.stats

    def exit_problem(self) -> str | None:
        """Why the tool ended on its own (died, or lost its interface); None while it runs or
        after a `stop()`."""
        proc = self._proc
        if proc is None or proc.poll() is None:
            return None
        lines = [ln for ln in self._stderr if ln.strip() and "listening on" not in ln and "packets" not in ln]
        detail = f": {lines[-1]}" if lines else ""
        if proc.returncode < 0:
            return f"{self.backend} was killed by {signal.Signals(-proc.returncode).name}{detail}"
        return f"{self.backend} exited with status {proc.returncode}{detail}"

    def _parse_stats(self, text: str) -> None:
        if self.backend == "tcpdump":
            # "12 packets captured" / "12 packets received by filter" / "0 packets dropped by kernel"
            for key, attr in (("captured", "packets"), ("received by filter", "received"),
                              ("dropped by kernel", "dropped")):
                counts = re.findall(rf"(\d+) packets? {key}", text)  # the latest (SIGUSR1 prints them again)
                if counts:
                    setattr(self.stats, attr, int(counts[-1]))
        else:
            # "Packets captured: 12" and "Packets received/dropped on interface 'lo': 12/0 (...)"
            m = re.search(r"Packets captured: (\d+)", text)
            if m:
                self.stats.packets = int(m.group(1))
            m = re.search(r"received/dropped on interface .*?: (\d+)/(\d+)", text)
            if m:
                self.stats.received, self.stats.dropped = int(m.group(1)), int(m.group(2))

    # ---- scapy -----------------------------------------------------------------------------------

    def _start_scapy(self) -> None:
        try:
            from scapy.sendrecv import AsyncSniffer
            from scapy.utils import PcapWriter
        except ImportError as exc:
            raise EnvironmentProblem(f"capture backend scapy needs the `lab` extra ({exc.name} is missing): "
                                     f"{LAB_EXTRA_HINT}") from None
        # sync: flush after every packet; Ethernet (what Linux gives for lo too) so that an empty
        # capture still gets a valid header.
        if self.streaming:
            read_end, write_end = os.pipe()
            self.stream = os.fdopen(read_end, "rb", buffering=0)
            self._writer = PcapWriter(os.fdopen(write_end, "wb"), sync=True, linktype=LINKTYPE_ETHERNET)
        else:
            self._writer = PcapWriter(self.path, sync=True, linktype=LINKTYPE_ETHERNET)
        started = threading.Event()
        kwargs: dict[str, Any] = {}  # AsyncSniffer passes its keyword arguments on to sniff(**kwargs)
        if is_loopback(self.iface):
            # Linux hands a packet socket each loopback packet twice (outgoing and incoming); libpcap
            # drops the outgoing copy on loopback devices, and so does scapy's L2Socket (not L2listen).
            from scapy.config import conf
            kwargs["L2socket"] = conf.L2socket
        # scapy warns about every frame it cannot classify; those are not ours to report.
        logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
        sniffer = self._sniffer = AsyncSniffer(iface=self.iface, filter=self.filter, store=False, prn=self._write,
                                               lfilter=self._wanted, started_callback=started.set, **kwargs)
        try:
            sniffer.start()
        except PermissionError as exc:
            raise EnvironmentProblem(PRIVILEGE_HINT) from exc
        if not started.wait(START_TIMEOUT):
            err = getattr(sniffer, "exception", None)
            raise EnvironmentProblem(f"scapy could not capture on {self.iface}: {err or 'timed out'}")

    def _wanted(self, pkt: Packet) -> bool:
        """Re-check the filter in Python: packets that arrive before the BPF filter is attached pass."""
        from scapy.layers.inet import TCP

        if TCP not in pkt:
            return False
        return not self.ports or pkt[TCP].sport in self.ports or pkt[TCP].dport in self.ports

    def _write(self, pkt: Packet) -> None:
        assert self._writer is not None
        self._writer.write(pkt)
        self._count += 1

    def _stop_scapy(self) -> None:
        sniffer, self._sniffer = self._sniffer, None
        with contextlib.suppress(Exception):  # scapy raises if the thread already died
            if sniffer is not None and sniffer.running:
                sniffer.stop()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        elif not self.streaming and not os.path.exists(self.path):
            open(self.path, "wb").close()
        self.stats.packets = self._count
        self.stats.dropped = None  # AsyncSniffer does not read the socket's drop counter


def run_capture(path: str, iface: str, ports: Iterable[int] | None, duration: float | None, backend: str = "auto",
                stop: threading.Event | None = None) -> CaptureStats:
    """Capture until `duration` seconds pass or `stop` is set (the CLI's Ctrl-C/SIGTERM)."""
    stop = stop or threading.Event()
    with LiveCapture(path, iface=iface, ports=ports, backend=backend, settle=0) as cap:
        stop.wait(duration)
    return cap.stats
