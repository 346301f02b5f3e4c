"""Network namespaces for the fault scenarios (edge: the kernel's network stack): a client, a middle
and a broker namespace joined by two veth pairs, the faults the middle one can apply, and a cleanup
that leaves nothing behind.

Strategy: `Topology` is a context manager. It creates three namespaces named
`amqphb-<pid>-<tag>-client`, `-mid` and `-broker` (pid: the creating process), and two veth pairs
created directly inside them (`ip link add ... netns A type veth peer ... netns B`: no device ever
appears in the root namespace). Addresses exist only inside
(10.213.1.0/30 client side, 10.213.2.0/30 broker side); the middle namespace routes between them
(ip_forward=1), or hosts a TCP forwarder. The middle hop is what makes two captures of one connection
meaningful: tcpdump in the client namespace records what left the client, tcpdump in the broker
namespace what reached the broker, and a fault applied in between is seen by one and not the other
(a drop on an endpoint's own veth is not: tc egress runs before the capture tap, ingress after it).

Faults, each using only what the kernel has (see `kernel_features`, measured on this machine:
no netem, no matchall classifier, no gact action; u32, mirred, clsact and nftables present):
- a partition: blackhole routes in the middle namespace for both endpoints' addresses. The router
  discards every forwarded packet silently (RTN_BLACKHOLE: no ICMP), both ways, in one `ip -batch`.
- flow state dropped by a stateful firewall: nftables in the middle namespace (forward hook), with
  the namespace's conntrack established timeout set to N seconds and nf_conntrack_tcp_loose=0, so
  the first packet of an idle flow after N s is `ct state invalid` and rejected with a TCP RST sent
  by the middle namespace's own stack (TTL 64, where the peer's forwarded packets arrive with 63).
- random loss: nftables `numgen random` drop in the forward hook (netem is absent here).

Cleanup (`close`, also after a partial setup): every process still inside one of our namespaces is
killed by pid (`ip netns pids`; only processes we started can be there), every TCP socket left in
them is destroyed (`ss -K`: an orphaned socket retransmitting into a partition would otherwise keep
the namespace and its veths alive in the kernel after `ip netns del`), then the namespaces are
deleted, which removes their veths, routes, nftables tables and sysctls. A new Topology first
sweeps the lab namespaces whose creating process is dead (a SIGKILLed run cannot clean up).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import json
import os
import platform
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

from analyzer.errors import EnvironmentProblem

PREFIX = "amqphb-"  # every namespace the lab creates starts with this
NETNS_DIR = "/run/netns"  # where `ip netns add` mounts a namespace
CLONE_NEWNET = 0x40000000  # linux/sched.h
COMMAND_TIMEOUT = 30
KILL_WAIT = 5.0
# The address plan, inside the namespaces only: two /30 links, the middle namespace routes between them.
CLIENT_ADDRESS, MID_CLIENT_ADDRESS = "10.213.1.1", "10.213.1.2"
MID_BROKER_ADDRESS, BROKER_ADDRESS = "10.213.2.1", "10.213.2.2"
PREFIX_LENGTH = 30
# Interface names inside the namespaces (each name says where its link leads).
CLIENT_IFACE, MID_CLIENT_IFACE, MID_BROKER_IFACE, BROKER_IFACE = "veth-mid", "veth-client", "veth-broker", "veth-mid"
NFT_TABLE = "amqphb"
ROOT_HINT = ("the network fault scenarios build network namespaces (ip netns, veth, nftables): "
             "run them as root")
NFT_HINT = "nftables is missing: run `apt-get install nftables`"

T = TypeVar("T")


def ensure_root() -> None:
    if os.geteuid() != 0:
        raise EnvironmentProblem(ROOT_HINT)
    if shutil.which("ip") is None:
        raise EnvironmentProblem("iproute2 is missing: run `apt-get install iproute2`")


def run(command: list[str], netns: str | None = None, stdin: str | None = None, check: bool = True) -> str:
    """Run an iproute2/nft/sysctl command (inside `netns` when given); its stdout, or EnvironmentProblem."""
    full = exec_prefix(netns) + command
    res = subprocess.run(full, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    if check and res.returncode != 0:
        detail = (res.stderr or res.stdout).strip().splitlines()
        raise EnvironmentProblem(f"`{' '.join(full)}` failed: {detail[-1] if detail else res.returncode}")
    return res.stdout


def exec_prefix(netns: str | None) -> list[str]:
    """The command prefix that runs a program inside `netns` ([] for the current namespace)."""
    return ["ip", "netns", "exec", netns] if netns else []


def call_in(netns: str | None, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """fn(*args, **kwargs) run by a thread that first joined `netns`: its sockets are created there.

    setns(2) moves only the calling thread, so the process's other threads stay where they were;
    the helper thread ends with the call. netns None: a plain call.
    """
    if netns is None:
        return fn(*args, **kwargs)
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            fd = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 (handed to the caller's thread, re-raised there)
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"in-{netns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def our_namespaces() -> list[str]:
    """Namespaces of the lab (`amqphb-` prefix) that `ip netns list` shows."""
    with contextlib.suppress(OSError):
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(PREFIX))
    return []


def _new_token() -> str:
    return f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}"


def sweep_stale() -> list[str]:
    """Delete the lab namespaces whose creating process is gone (a run that was SIGKILLed could not
    clean up); returns their names. Namespaces of live processes, other runs included, are left alone."""
    stale = []
    for ns in our_namespaces():
        pid = ns[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            stale.append(ns)
            Topology.remove(ns)
    return stale


def our_root_links() -> list[str]:
    """Interfaces in the root namespace named like the lab's (there should never be any)."""
    names = {CLIENT_IFACE, MID_CLIENT_IFACE, MID_BROKER_IFACE, BROKER_IFACE}
    with contextlib.suppress(OSError):
        return sorted(n for n in os.listdir("/sys/class/net") if n in names or n.startswith(PREFIX))
    return []


def processes_in(inodes: set[int]) -> list[int]:
    """Pids of live processes whose network namespace has one of these nsfs inodes."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes and _alive(int(entry)):
                    found.append(int(entry))
    return found


def kernel_features() -> dict[str, object]:
    """What this kernel offers for making faults, tried in a scratch namespace (deleted afterwards).

    netem (qdisc), matchall (classifier), gact (tc action drop), u32 + mirred (classifier and
    redirect action), clsact (qdisc), nftables (the nft tool and the kernel's netdev ingress hook,
    numgen and conntrack), conntrack_per_netns (its timeouts settable inside a namespace).
    """
    ensure_root()
    scratch = f"{_new_token()}-probe"
    found: dict[str, object] = {"release": platform.release()}

    def works(*commands: list[str], stdin: str | None = None) -> bool:
        return all(subprocess.run(exec_prefix(scratch) + c, input=stdin, capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT, check=False).returncode == 0 for c in commands)

    try:
        run(["ip", "netns", "add", scratch])
        run(["ip", "link", "add", "probe-a", "type", "veth", "peer", "name", "probe-b"], scratch)
        found["netem"] = works(["tc", "qdisc", "add", "dev", "probe-a", "root", "netem", "loss", "1%"])
        found["clsact"] = works(["tc", "qdisc", "add", "dev", "probe-b", "clsact"])
        found["matchall"] = works(["tc", "filter", "add", "dev", "probe-b", "egress", "matchall",
                                   "action", "mirred", "egress", "redirect", "dev", "probe-a"])
        found["gact"] = works(["tc", "filter", "add", "dev", "probe-b", "egress", "protocol", "all", "u32",
                               "match", "u32", "0", "0", "action", "drop"])
        found["u32_mirred"] = works(["tc", "filter", "add", "dev", "probe-b", "egress", "protocol", "all", "u32",
                                     "match", "u32", "0", "0", "action", "mirred", "egress", "redirect",
                                     "dev", "probe-a"])
        ingress = (f"table netdev {NFT_TABLE} {{\n chain ingress {{\n  type filter hook ingress device probe-a "
                   "priority 0; policy accept;\n  numgen random mod 100 < 1 drop\n }\n}\n")
        found["nftables"] = shutil.which("nft") is not None and works(
            ["nft", "-f", "-"], stdin=ingress + forward_table(["ct state invalid reject with tcp reset"]))
        found["conntrack_per_netns"] = works(["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_tcp_timeout_"
                                              "established=4"])
    finally:
        subprocess.run(["ip", "netns", "del", scratch], capture_output=True, timeout=COMMAND_TIMEOUT, check=False)
    return found


def forward_table(rules: list[str]) -> str:
    """An nftables ruleset: table inet amqphb with a forward-hook chain (policy accept) holding `rules`.

    One rule a line: nft 1.0.6 refuses a `;` right before a closing brace."""
    body = "".join(f"  {rule}\n" for rule in rules)
    return (f"table inet {NFT_TABLE} {{\n chain forward {{\n  type filter hook forward priority filter; "
            f"policy accept;\n{body} }}\n}}\n")


@dataclass(frozen=True)
class Side:
    """One endpoint namespace as the metadata records it."""

    namespace: str
    interface: str
    address: str

    def as_dict(self) -> dict[str, str]:
        return {"namespace": self.namespace, "interface": self.interface, "address": self.address}


class Topology:
    """client ns --veth-- mid ns --veth-- broker ns, for the lifetime of a `with` block.

    `client`, `broker`: Side (namespace, interface, address); `mid`: the middle namespace's name.
    `cut()` partitions the path silently both ways, `restore()` heals it; `nft(ruleset)` and
    `sysctl()` configure the middle namespace.
    """

    def __init__(self) -> None:
        ensure_root()
        sweep_stale()
        base = _new_token()
        self.client = Side(f"{base}-client", CLIENT_IFACE, CLIENT_ADDRESS)
        self.mid = f"{base}-mid"
        self.broker = Side(f"{base}-broker", BROKER_IFACE, BROKER_ADDRESS)
        self.namespaces = [self.client.namespace, self.mid, self.broker.namespace]
        self.created: list[str] = []
        self.inodes: dict[str, int] = {}  # namespace -> its nsfs inode (what /proc/PID/ns/net links to)
        self.cut_routes = False

    def __enter__(self) -> Topology:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def build(self) -> None:
        for ns in self.namespaces:
            run(["ip", "netns", "add", ns])
            self.created.append(ns)
            self.inodes[ns] = os.stat(os.path.join(NETNS_DIR, ns)).st_ino
            run(["ip", "link", "set", "lo", "up"], ns)
            # IPv4 only: no router solicitations or DAD on the veths, nothing but the test's traffic.
            run(["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
                ns)
        c, b = self.client, self.broker
        links = (((c.namespace, c.interface, c.address), (self.mid, MID_CLIENT_IFACE, MID_CLIENT_ADDRESS)),
                 ((self.mid, MID_BROKER_IFACE, MID_BROKER_ADDRESS), (b.namespace, b.interface, b.address)))
        for (ns_a, if_a, addr_a), (ns_b, if_b, addr_b) in links:
            run(["ip", "link", "add", "name", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns", ns_b])
            for ns, iface, addr in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
                run(["ip", "addr", "add", f"{addr}/{PREFIX_LENGTH}", "dev", iface], ns)
                run(["ip", "link", "set", iface, "up"], ns)
        # A route to the other side's link only, no default route: anything else (a DNS lookup the node
        # tries) fails at once with ENETUNREACH instead of waiting for a timeout behind the router.
        # (Measured: with a default route via the router, the node's stop waited 5 s for a DNS timeout.)
        run(["ip", "route", "add", _network(BROKER_ADDRESS), "via", MID_CLIENT_ADDRESS], self.client.namespace)
        run(["ip", "route", "add", _network(CLIENT_ADDRESS), "via", MID_BROKER_ADDRESS], self.broker.namespace)
        run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], self.mid)

    def as_dict(self) -> dict[str, object]:
        return {
            "topology": "client namespace -- veth -- middle namespace -- veth -- broker namespace",
            "namespaces": {"client": self.client.namespace, "mid": self.mid, "broker": self.broker.namespace},
            "interfaces": {"client": CLIENT_IFACE, "mid_client_side": MID_CLIENT_IFACE,
                           "mid_broker_side": MID_BROKER_IFACE, "broker": BROKER_IFACE},
            "addresses": {"client": CLIENT_ADDRESS, "mid_client_side": MID_CLIENT_ADDRESS,
                          "mid_broker_side": MID_BROKER_ADDRESS, "broker": BROKER_ADDRESS,
                          "prefix_length": PREFIX_LENGTH},
            "clock": "one host clock: both captures' timestamps are comparable (offset 0)",
            "namespace_inodes": dict(self.inodes),
        }

    # ---- faults ------------------------------------------------------------------------------------

    def cut(self) -> tuple[float, float]:
        """Partition: blackhole routes to both endpoints in the middle namespace, in one `ip -batch`.

        Returns (requested, done): epoch seconds before the command and after it returned; a packet
        forwarded after `done` is dropped, one before `requested` was not."""
        batch = f"route add blackhole {CLIENT_ADDRESS}/32\nroute add blackhole {BROKER_ADDRESS}/32\n"
        requested = time.time()
        run(["ip", "-n", self.mid, "-batch", "-"], stdin=batch)  # -n: no `ip netns exec` (8 ms) in the window
        done = time.time()
        self.cut_routes = True
        return requested, done

    def restore(self) -> float:
        batch = f"route del blackhole {CLIENT_ADDRESS}/32\nroute del blackhole {BROKER_ADDRESS}/32\n"
        run(["ip", "-n", self.mid, "-batch", "-"], stdin=batch)
        self.cut_routes = False
        return time.time()

    def nft(self, ruleset: str) -> None:
        """Load an nftables ruleset into the middle namespace (`nft -f -`)."""
        if shutil.which("nft") is None:
            raise EnvironmentProblem(NFT_HINT)
        run(["nft", "-f", "-"], self.mid, stdin=ruleset)

    def nft_counters(self) -> dict[str, int]:
        """Packets counted by each commented rule of the middle namespace's nftables (comment -> packets)."""
        listing = json.loads(run(["nft", "-j", "list", "ruleset"], self.mid, check=False) or "{}")
        counters: dict[str, int] = {}
        for item in listing.get("nftables", []):
            rule = item.get("rule")
            if not rule or "comment" not in rule:
                continue
            for expr in rule.get("expr", []):
                if isinstance(expr, dict) and "counter" in expr:
                    counters[rule["comment"]] = int(expr["counter"].get("packets", 0))
        return counters

    def sysctl(self, netns: str, settings: Mapping[str, object]) -> None:
        """`sysctl -w key=value ...` inside `netns` (per-namespace keys: net.ipv4.*, net.netfilter.*)."""
        run(["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items())], netns)

    def sockets(self, netns: str, port: int) -> str:
        """`ss -tnoeia` inside `netns` for TCP port `port`: each socket's state, timers, queues, retransmits."""
        return run(["ss", "-tnoeia", f"( sport = :{port} or dport = :{port} )"], netns, check=False).strip()

    # ---- cleanup -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill what runs inside, destroy leftover sockets, delete the namespaces; tolerates partial state."""
        for ns in reversed(self.created):
            self.remove(ns)
        self.created = []

    @classmethod
    def remove(cls, ns: str) -> None:
        """Kill the processes inside `ns`, destroy its TCP sockets (an orphan retransmitting into a cut
        path would keep the namespace alive in the kernel), delete it; tolerates a half-made one."""
        cls._kill_inside(ns)
        subprocess.run([*exec_prefix(ns), "ss", "-K", "-t", "-a"], capture_output=True,
                       timeout=COMMAND_TIMEOUT, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=COMMAND_TIMEOUT, check=False)

    @staticmethod
    def _kill_inside(ns: str) -> None:
        res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                             timeout=COMMAND_TIMEOUT, check=False)
        pids = [int(p) for p in res.stdout.split() if p.isdigit() and int(p) != os.getpid()]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + KILL_WAIT
            while pids and time.monotonic() < deadline:
                pids = [p for p in pids if _alive(p)]
                if pids:
                    time.sleep(0.05)
            if not pids:
                return


def _network(address: str) -> str:
    return str(ipaddress.ip_interface(f"{address}/{PREFIX_LENGTH}").network)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    return False
