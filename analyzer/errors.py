"""The project's exception hierarchy; the CLI turns each into one line and an exit status.

Errors say whose fault it was (h11's LocalProtocolError/RemoteProtocolError are the model):
the capture file is unusable, the user asked for something impossible, or the machine lacks
something (a tool, a privilege, a broker). Damage *inside* an otherwise readable capture is
never an exception: it becomes a warning or an event. Every command's exit status is an
ExitStatus (httpie/status.py is the model); it lives here, at the bottom, so that every command
(analyzer.cli's and analyzer.lab's) can return one.
"""
import enum


class ExitStatus(enum.IntEnum):
    OK = 0
    INTERNAL_ERROR = 1  # a bug: please report it with --traceback
    BAD_INPUT = 2  # unusable file or arguments, missing tool or privilege (AmqpHbError)
    EVENT_NOT_SEEN = 3  # watch --exit-on EVENT: the input ended (or was stopped) before EVENT came
    INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


class AmqpHbError(Exception):
    """Base class of every error this package raises on purpose."""


class CaptureFileError(AmqpHbError):
    """The input is not a readable pcap/pcapng file (wrong magic, empty, header cut)."""


class UsageError(AmqpHbError):
    """The user asked for something that cannot be done (bad argument, unknown connection id)."""


class EnvironmentProblem(AmqpHbError):
    """Something the machine must provide is missing: a tool, a privilege, a reachable broker."""
