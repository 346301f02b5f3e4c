"""Throwaway RabbitMQ node control (edge: processes): start one, wait for AMQP, pause it, always stop it.

Strategy: `LocalBroker` runs the installed `rabbitmq-server` (the versioned script under
/usr/lib/rabbitmq/bin, not Debian's /usr/sbin wrapper, which would `su rabbitmq` and write to
/var/log) with every path in a private temp dir: its own node name, free AMQP and distribution
ports, config files, no plugins, and HOME (for the Erlang cookie). It also starts its *own* epmd
on a free port (ERL_EPMD_PORT) in the foreground, so stopping the node never touches an epmd that
other Erlang programs on the machine share, and nothing of ours outlives the node. The node's
shell wrapper, epmd and the Erlang VM run in a new session; stop() signals that process group
(SIGTERM, then SIGKILL after a grace period), and PR_SET_PDEATHSIG makes them die with us even if
we are SIGKILLed. `ExternalBroker` wraps `--broker amqp://...` and cannot be paused or
reconfigured. The broker version comes from Connection.Start's server properties.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType

from analyzer.errors import EnvironmentProblem, UsageError
from analyzer.lab import certs, netns

# A rabbitmq.conf value or an Erlang term for the `rabbit` application, as written into the files.
SettingValue = int | str
Settings = dict[str, SettingValue]
# What set_runtime returns: the previous values, None where the key was unset.
PreviousSettings = dict[str, SettingValue | None]

# The versioned start script; Debian's /usr/sbin/rabbitmq-server re-executes it as user rabbitmq.
SERVER_SCRIPTS = ("/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/lib/rabbitmq/sbin/rabbitmq-server")
CTL_SCRIPTS = ("/usr/lib/rabbitmq/bin/rabbitmqctl", "/usr/lib/rabbitmq/sbin/rabbitmqctl")
INSTALL_HINT = "rabbitmq-server is not installed: run `apt-get install rabbitmq-server` (Debian/Ubuntu)"
# pika, amqp, aio-pika and scapy come with the `lab` extra; the install line a lab command prints when one is missing.
LAB_EXTRA_HINT = "pip install 'amqp-hb[lab]' (with pipx: pipx inject amqp-hb pika amqp aio-pika scapy)"
DEFAULT_AMQP_PORT = 5672  # IANA amqp; preferred so recorded captures look like real ones
DEFAULT_AMQPS_PORT = 5671  # IANA amqps; preferred for the TLS listener, as 5672 is for plaintext
# What the TLS listener accepts (rabbitmq.conf ssl_options.versions) and how it treats client certificates.
TLS_LISTENER_VERSIONS = ("tlsv1.3", "tlsv1.2")
TLS_VERIFY = "verify_none"  # the clients present no certificate; they verify the broker's
# A cold 3.10 node with no plugins boots in about 4 s on 2 cores; 90 s covers a loaded CI machine.
STARTUP_TIMEOUT = 90.0
# rabbit's graceful shutdown takes about 1 s with no connections; after this we SIGKILL.
STOP_GRACE = 15.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# How long one readiness probe may take, and the pause between probes while the node boots.
PROBE_TIMEOUT = 2.0
PROBE_INTERVAL = 0.25
# After SIGKILL the group is gone within milliseconds; this bounds the wait for the wrapper's status.
KILL_WAIT = 5.0
# rabbitmqctl eval starts an Erlang VM of its own: a few seconds, a minute on a loaded machine.
CTL_TIMEOUT = 60
# The last log line quoted in an error message is cut to this many characters.
LOG_TAIL_CHARS = 300
CTL_ERROR_CHARS = 200


def die_with_parent() -> None:
    """preexec_fn: ask the kernel to SIGTERM the child when we die (Linux only, best effort)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """`preferred` when nothing listens on it, else a port the kernel picks."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise EnvironmentProblem("no free TCP port on loopback")


def find_server_script() -> str:
    for path in SERVER_SCRIPTS:
        if os.access(path, os.X_OK):
            return path
    raise EnvironmentProblem(INSTALL_HINT)


@dataclass
class BrokerInfo:
    """What the metadata records about the broker a run used."""

    url: str
    host: str
    port: int
    managed: bool  # True when we started (and will stop) the node
    node: str | None = None
    product: str = ""
    version: str = ""
    platform: str = ""  # e.g. "Erlang/OTP 25.2.3"
    settings: Settings = field(default_factory=dict)  # rabbitmq.conf keys and runtime overrides
    amqps_port: int | None = None  # the TLS listener's port, None without one

    def as_dict(self) -> dict[str, object]:
        info: dict[str, object] = {
            "url": redact_url(self.url), "host": self.host, "amqp_port": self.port, "managed": self.managed,
            "node": self.node, "product": self.product, "version": self.version,
            "platform": self.platform, "settings": dict(self.settings)}
        if self.amqps_port is not None:
            info["amqps_port"] = self.amqps_port
            info["tls_listener"] = {"versions": list(TLS_LISTENER_VERSIONS), "verify": TLS_VERIFY,
                                    "certificate": "ECDSA P-256 for " + " ".join(certs.SERVER_HOSTS) +
                                                   ", signed by a test CA generated at node start (not kept)"}
        return info


def redact_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def probe(url: str, timeout: float = 5.0) -> dict[str, str]:
    """Open and close one AMQP connection; return the broker's server properties (str values)."""
    try:
        import pika  # the client comes with the `lab` extra, for the scenarios only
    except ImportError:
        raise EnvironmentProblem(f"the scenarios need the `lab` extra (pika is missing): {LAB_EXTRA_HINT}") from None

    params = pika.URLParameters(url)
    params.socket_timeout = timeout
    params.blocked_connection_timeout = timeout
    params.connection_attempts = 1
    conn = pika.BlockingConnection(params)
    try:
        props: dict[str, object] = conn._impl.server_properties or {}  # pika keeps Connection.Start's table here
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    return {k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else v)
            for k, v in props.items() if isinstance(v, (str, bytes))}


class ExternalBroker:
    """A broker someone else runs: probed for its version, never started, stopped or paused."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise UsageError(f"--broker must look like amqp://user:pass@host:port/vhost, got {redact_url(url)!r}")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or (DEFAULT_AMQPS_PORT if parts.scheme == "amqps" else DEFAULT_AMQP_PORT)
        self.info = BrokerInfo(url=url, host=self.host, port=self.port, managed=False)
        # No TLS runs against someone else's broker (the runner refuses them): no listener we know of.
        self.amqps_port: int | None = None
        self.ca_file: str | None = None

    def __enter__(self) -> ExternalBroker:
        try:
            props = probe(self.url)
        except Exception as exc:  # pika raises many unrelated types for "cannot connect"
            reason = str(exc) or "nothing accepted an AMQP connection there"
            raise EnvironmentProblem(f"cannot reach broker {redact_url(self.url)}: {reason}; check the host, port, "
                                     "vhost and credentials, or omit --broker to start a throwaway local node") from exc
        self.info.product, self.info.version = props.get("product", ""), props.get("version", "")
        self.info.platform = props.get("platform", "")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        pass

    @property
    def pausable(self) -> bool:
        return False

    def pause(self) -> None:
        raise UsageError("pausing needs a broker node started by amqp-hb (run without --broker)")

    resume = pause

    def set_runtime(self, settings: Mapping[str, SettingValue | None]) -> PreviousSettings:
        raise UsageError("changing broker settings needs a node started by amqp-hb (run without --broker)")


class LocalBroker:
    """A private RabbitMQ node for the lifetime of a `with` block.

    conf: rabbitmq.conf keys (e.g. {"consumer_timeout": 5000}); advanced: Erlang terms for the
    `rabbit` application (e.g. {"channel_tick_interval": 1000}), written to advanced.config.
    tls: also a TLS (AMQPS) listener on amqps_port (default 5671 when free), with a server
    certificate from a test CA generated into the node's temp dir (certs.make_pki): `amqps_url`,
    `ca_file`; TLS 1.2 and 1.3, no client certificate asked for.
    host: the address the listeners bind (loopback by default; then also [::1] where IPv6 works).
    netns: run the node, its epmd and rabbitmqctl inside this network namespace (`ip netns exec`),
    listening on `host` only (an address inside it); readiness probes connect from inside too.
    """

    def __init__(self, conf: Settings | None = None, advanced: Settings | None = None, *,
                 amqp_port: int | None = None, startup_timeout: float = STARTUP_TIMEOUT,
                 keep_dir: bool = False, tls: bool = False, amqps_port: int | None = None,
                 host: str = "127.0.0.1", netns: str | None = None) -> None:
        self.script = find_server_script()
        self.conf = dict(conf or {})
        self.advanced = dict(advanced or {})
        self.requested_port = amqp_port
        self.tls = tls
        self.requested_amqps_port = amqps_port
        self.amqps_port: int | None = None
        self.tls_files: certs.TlsFiles | None = None
        self.startup_timeout = startup_timeout
        self.keep_dir = keep_dir
        self.node = f"amqphb-{os.getpid()}-{int(time.time() * 1000) % 100000}@localhost"
        self.host = host
        self.netns = netns
        self.port = 0
        self.dir: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None
        self._env: dict[str, str] = {}
        self.epmd_port = 0
        self.paused = False
        self.info = BrokerInfo(url="", host=self.host, port=0, managed=True, node=self.node)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/%2F"

    @property
    def amqps_url(self) -> str:
        if self.amqps_port is None:
            raise UsageError("this broker node has no TLS listener (LocalBroker(tls=True) starts one)")
        return f"amqps://guest:guest@{self.host}:{self.amqps_port}/%2F"

    @property
    def ca_file(self) -> str | None:
        """The test CA's certificate (PEM) that signed the TLS listener's; None without TLS."""
        return self.tls_files.ca_cert if self.tls_files else None

    @property
    def pausable(self) -> bool:
        return True

    @property
    def log_file(self) -> str:
        return os.path.join(self.dir or "", "log", "node.log")

    # ---- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> LocalBroker:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="amqphb-broker-")
        ns = self.netns
        self.port = netns.call_in(ns, free_port, self.requested_port or DEFAULT_AMQP_PORT, self.host)
        if self.tls:
            self.amqps_port = netns.call_in(ns, free_port, self.requested_amqps_port or DEFAULT_AMQPS_PORT,
                                            self.host)
            self.tls_files = certs.make_pki(os.path.join(self.dir, "tls"))
        dist_port = netns.call_in(ns, free_port)
        self.epmd_port = netns.call_in(ns, free_port)
        inside = netns.exec_prefix(ns)
        env = self._write_files(dist_port)
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        if not os.access(epmd, os.X_OK):
            raise EnvironmentProblem("epmd (Erlang) is missing: run `apt-get install rabbitmq-server`")
        self.epmd = subprocess.Popen([*inside, epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=die_with_parent)
        with open(os.path.join(self.dir, "startup.log"), "wb") as out:  # the child keeps its own copy
            self.proc = subprocess.Popen([*inside, self.script], env=env, cwd=self.dir, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=die_with_parent)
        self._wait_ready()

    def _write_files(self, dist_port: int) -> dict[str, str]:
        d = self.dir
        assert d is not None
        for sub in ("mnesia", "log", "home"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        with open(os.path.join(d, "rabbitmq.conf"), "w") as f:
            f.write("loopback_users = none\n")  # guest over 127.0.0.1 is allowed anyway
            # Loopback only, both families: scenarios may reach the node over [::1] (--ipv6).
            f.write(f"listeners.tcp.1 = {self.host}:{self.port}\n")
            if self._also_ipv6_loopback():
                f.write(f"listeners.tcp.2 = ::1:{self.port}\n")
            f.write(self._tls_conf())
            for key, value in self.conf.items():
                f.write(f"{key} = {value}\n")
        terms = ", ".join(f"{{{k}, {v}}}" for k, v in self.advanced.items())
        with open(os.path.join(d, "advanced.config"), "w") as f:
            f.write(f"[{{rabbit, [{terms}]}}].\n")
        with open(os.path.join(d, "enabled_plugins"), "w") as f:
            f.write("[].\n")  # no management plugin: boots in seconds
        open(os.path.join(d, "rabbitmq-env.conf"), "w").close()  # ignore /etc/rabbitmq/rabbitmq-env.conf
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": os.path.join(d, "home"),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_CONF_ENV_FILE": os.path.join(d, "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_MNESIA_BASE": os.path.join(d, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(d, "log"),
            "RABBITMQ_LOGS": os.path.join(d, "log", "node.log"),
            "RABBITMQ_CONFIG_FILE": os.path.join(d, "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(d, "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(d, "enabled_plugins"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        })
        self._env = env
        return env

    def _also_ipv6_loopback(self) -> bool:
        """A second listener on [::1]: for the loopback node only (scenarios' --ipv6), where IPv6 works."""
        return self.netns is None and self.host == "127.0.0.1" and ipv6_loopback_available()

    def _tls_conf(self) -> str:
        """rabbitmq.conf lines of the TLS listener (same addresses as the plaintext one), or ""."""
        files = self.tls_files
        if files is None:
            return ""
        lines = [f"listeners.ssl.1 = {self.host}:{self.amqps_port}"]
        if self._also_ipv6_loopback():
            lines.append(f"listeners.ssl.2 = ::1:{self.amqps_port}")
        lines += [f"ssl_options.cacertfile = {files.ca_cert}", f"ssl_options.certfile = {files.server_cert}",
                  f"ssl_options.keyfile = {files.server_key}", f"ssl_options.verify = {TLS_VERIFY}",
                  "ssl_options.fail_if_no_peer_cert = false",
                  *(f"ssl_options.versions.{i} = {v}" for i, v in enumerate(TLS_LISTENER_VERSIONS, 1))]
        return "".join(line + "\n" for line in lines)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise EnvironmentProblem(f"rabbitmq-server exited with status {self.proc.returncode} "
                                         f"during startup: {self._log_tail()}")
            try:
                props = netns.call_in(self.netns, probe, self.url, timeout=PROBE_TIMEOUT)
                if self.tls_files is not None and self.amqps_port is not None:
                    # Listeners come up one by one: ready once the TLS one completes a handshake too.
                    netns.call_in(self.netns, certs.handshake, self.host, self.amqps_port, self.tls_files.ca_cert,
                                  timeout=PROBE_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 (not listening yet: any pika/socket/ssl error means "retry")
                last = exc
                time.sleep(PROBE_INTERVAL)
                continue
            self.info = BrokerInfo(url=self.url, host=self.host, port=self.port, managed=True, node=self.node,
                                   product=props.get("product", ""), version=props.get("version", ""),
                                   platform=props.get("platform", ""),
                                   settings={**self.conf, **self.advanced}, amqps_port=self.amqps_port)
            return
        what = "AMQP and TLS" if self.tls else "AMQP"
        raise EnvironmentProblem(f"RabbitMQ node did not accept {what} within {self.startup_timeout:.0f} s "
                                 f"({type(last).__name__}): {self._log_tail()}")

    def _log_tail(self) -> str:
        for name in ("startup.log", os.path.join("log", "node.log")):
            with contextlib.suppress(OSError), open(os.path.join(self.dir or "", name), "rb") as f:
                lines = [ln for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
                if lines:
                    return lines[-1].strip()[:LOG_TAIL_CHARS]
        return "no log output"

    def stop(self) -> None:
        """Stop the node, its helpers and our epmd; idempotent and safe after a failed start."""
        if self.proc is not None:
            if self.paused:
                self.resume()
            if self.proc.poll() is None:
                _signal_group(self.proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(STOP_GRACE)
            # The shell wrapper may be gone while beam.smp still shuts down: kill what is left of the group.
            _signal_group(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(KILL_WAIT)
            self.proc = None
        if self.epmd is not None:
            with contextlib.suppress(ProcessLookupError):
                self.epmd.kill()
            self.epmd.wait()
            self.epmd = None
        if self.dir and not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---- control -------------------------------------------------------------------------------

    def beam_pids(self) -> list[int]:
        """The Erlang VM process(es) of this node (children in our process group named beam.smp)."""
        if self.proc is None:
            return []
        return [pid for pid, comm in _group_members(self.proc.pid) if comm.startswith("beam")]

    def pause(self) -> None:
        """Freeze the Erlang VM (SIGSTOP): the kernel keeps ACKing, the broker sends and reads nothing."""
        pids = self.beam_pids()
        if not pids:
            raise EnvironmentProblem("cannot pause: no beam.smp process found for the node")
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        for pid in self.beam_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.paused = False

    def set_runtime(self, settings: Mapping[str, SettingValue | None]) -> PreviousSettings:
        """Set `rabbit` application env keys on the running node (new channels pick them up).

        Returns the previous values (None when unset) so the caller can restore them.
        """
        ctl = next((p for p in CTL_SCRIPTS if os.access(p, os.X_OK)), None)
        if ctl is None:
            raise EnvironmentProblem(INSTALL_HINT)
        previous: PreviousSettings = {}
        for key, value in settings.items():
            old = self._ctl(ctl, f"application:get_env(rabbit, {key}).")
            value_text = old.removeprefix("{ok,").removesuffix("}")
            previous[key] = (None if old in ("undefined", "") else
                             int(value_text) if value_text.isdigit() else value_text)
            if value is None:
                self._ctl(ctl, f"application:unset_env(rabbit, {key}).")
            else:
                self._ctl(ctl, f"application:set_env(rabbit, {key}, {value}).")
        self.info.settings.update({k: v for k, v in settings.items() if v is not None})
        return previous

    def restore_runtime(self, previous: PreviousSettings) -> None:
        """Undo set_runtime: put back the values it returned and the settings the node started with."""
        self.set_runtime(previous)
        base = {**self.conf, **self.advanced}
        for key in previous:
            if key in base:
                self.info.settings[key] = base[key]
            else:
                self.info.settings.pop(key, None)

    def _ctl(self, ctl: str, expr: str) -> str:
        res = subprocess.run([*netns.exec_prefix(self.netns), ctl, "-n", self.node, "-q", "eval", expr],
                             env=self._env, cwd=self.dir, capture_output=True, text=True, timeout=CTL_TIMEOUT)
        if res.returncode != 0:
            detail = (res.stderr or res.stdout).strip()[:CTL_ERROR_CHARS]
            raise EnvironmentProblem(f"rabbitmqctl eval failed: {detail}")
        return res.stdout.strip()


def _group_members(pgid: int) -> list[tuple[int, str]]:
    members: list[tuple[int, str]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:  # fields after comm: state, ppid, pgrp, ...
            members.append((int(entry), comm))
    return members


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def open_broker(url: str | None = None, conf: Settings | None = None,
                advanced: Settings | None = None, tls: bool = False) -> ExternalBroker | LocalBroker:
    """The broker for a run: `url` when given (an existing broker), else a fresh local node
    (with a TLS listener when `tls`)."""
    if url:
        return ExternalBroker(url)
    return LocalBroker(conf=conf, advanced=advanced, tls=tls)
