"""The options every subcommand shares, and how a per-file error becomes one line naming its file.

Here rather than in analyzer.cli so that analyzer.cli.plot (which analyzer.cli imports) uses the
same input-file arguments, number checks and --connection help as frames and analyze.
"""
from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

from analyzer.errors import AmqpHbError, EnvironmentProblem, UsageError

PORT_RANGE = (1, 65535)  # TCP ports (RFC 793's 16-bit field; 0 is reserved and never on the wire)

# The one --connection rule (analyzer.api.find_connection), as the help of every command that takes it.
CONNECTION_HELP = ("only this connection: its id CLIENT_IP:PORT->SERVER_IP:PORT (quote it: the shell reads -> as "
                   "a redirection), a part of the id only one connection has (a client port, CLIENT_IP:PORT), "
                   "or its position in analyze's list (0 = first; a number no connection has as a port)")
CONNECTION_EXAMPLES = ("--connection '127.0.0.1:55934->127.0.0.1:5672', --connection 55934 (the client port), "
                       "--connection 0 (the first connection)")


class CommandParser(argparse.ArgumentParser):
    """The parser of `amqp-hb` and of each subcommand (subparsers inherit the class).

    Argument errors are one line (the README's exit-status promise: "one line on stderr saying
    what is wrong"), and every subcommand accepts the global options after its name too.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # SUPPRESS: when a subcommand is not given --traceback, it leaves the top level's value alone.
        self.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                          help="show the Python traceback on errors")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _InputFiles(argparse.Action):
    """FILE arguments and `-r FILE` (tshark's and tcpdump's habit) into one list, in command-line order."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        given = [values] if isinstance(values, str) else list(values or ())
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or ()), *given])


def input_files(p: argparse.ArgumentParser, help: str, *, most: int | None = None) -> None:
    """FILE ... and -r FILE, into `args.files`; at least one and at most `most` (check_input_files)."""
    p.add_argument("files", nargs="*", action=_InputFiles, metavar="FILE", help=help)
    p.add_argument("-r", dest="files", action=_InputFiles, metavar="FILE",
                   help="read FILE (as tshark -r and tcpdump -r do; the same as giving FILE)")
    p.set_defaults(files=None, command_parser=p, most_files=most)


def check_input_files(args: argparse.Namespace) -> None:
    """The argparse error (status 2, one line) for no input file, or more than the command takes."""
    parser: argparse.ArgumentParser = args.command_parser
    if not args.files:
        parser.error("the following arguments are required: FILE (or -r FILE)")
    if args.most_files is not None and len(args.files) > args.most_files:
        most = args.most_files
        parser.error(f"at most {most} capture file{'s' if most != 1 else ''}, got {len(args.files)}: "
                     f"{' '.join(args.files)}")


def int_in_range(low: int, high: int | None = None, what: str = "") -> Callable[[str], int]:
    """An argparse type: an integer from `low` to `high` (at least `low` when high is None); `what`
    opens the error's bound ("must be a TCP port, from 1 to 65535, got 99999")."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {what}{bounds}, got {value}")
        return value

    return parse


port_number = int_in_range(*PORT_RANGE, what="a TCP port, ")


def format_choice(choices: Sequence[str], aliases: dict[str, str], refused: dict[str, str]) -> Callable[[str], str]:
    """An argparse type for --format: `aliases` maps another name onto one of `choices`; a name in
    `refused` is an error explaining why (argparse checks the other unknown names against choices)."""

    def parse(text: str) -> str:
        name = aliases.get(text, text)
        if name in refused:
            raise argparse.ArgumentTypeError(f"{refused[name]}; choose from {', '.join(choices)}")
        return name

    return parse


def file_error(path: str, error: AmqpHbError) -> str:
    """`error` as one line starting with the file it is about: the one place a per-file error (a
    CaptureFileError from any stage, a --connection that matches nothing) is given its file name.
    Messages that already start with it (api.open_file's) are left as they are."""
    text = str(error)
    return text if text.startswith(f"{path}: ") else f"{path}: {text}"


def output_file(path: str, extensions: Sequence[str], what: str) -> None:
    """The UsageError for an output file (`plot -o`, `report -o`) whose extension is not one of
    `extensions` (`what` names them: ".png or .svg") or whose directory does not exist."""
    if os.path.splitext(path)[1].lower() not in extensions:
        raise UsageError(f"{path}: the output must end in {what}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"{path}: no such directory {directory}")


def require_extra(command: str, extra: str, modules: Sequence[str]) -> None:
    """Import `modules` (matplotlib set to its Agg backend: no display needed), or raise the one-line
    EnvironmentProblem naming the extra and both install commands (README: Install)."""
    try:
        for name in modules:
            module = importlib.import_module(name)
            if name == "matplotlib":
                module.use("Agg")
    except ImportError as exc:
        raise EnvironmentProblem(f"{command} needs the `{extra}` extra ({exc.name} is missing): pip install "
                                 f"'amqp-hb[{extra}]' (with pipx: pipx inject amqp-hb {' '.join(modules)})") from None


def ignore_sigint() -> None:
    """Pool workers: Ctrl-C reaches the whole process group; the parent alone answers it (status 130,
    one line) and stops the workers, so a worker never prints a KeyboardInterrupt traceback."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


__all__ = ["CONNECTION_EXAMPLES", "CONNECTION_HELP", "CommandParser", "check_input_files", "file_error",
           "format_choice", "ignore_sigint", "input_files", "int_in_range", "output_file", "port_number",
           "require_extra"]


def series_options(p: argparse.ArgumentParser) -> None:
    """--series / --separate: how files that continue each other (rotated captures) are read."""
    how = p.add_mutually_exclusive_group()
    how.add_argument("--series", action="store_true",
                     help="read the files as one capture, in time order, even with pauses between them (each "
                          "pause is a capture gap); default: files that continue each other (same link type and "
                          "snap length, each starting within 10 s of the previous one's last packet, as tcpdump -G/-C "
                          "and dumpcap -b leave them) are read as one, the others one by one")
    how.add_argument("--separate", action="store_true", help="analyze every file on its own")


def group_input_files(args: argparse.Namespace, stderr: TextIO) -> None:
    """Replace args.files with what is analyzed: each file, or a series (sources.series.Series, a str
    naming its first file) for files that continue each other; one note a series or near miss."""
    from collections import Counter

    from analyzer.errors import CaptureFileError
    from analyzer.sources.series import Series, group_series, rotation_name, series_facts

    if args.separate or len(args.files) < 2:
        return
    # Reading a file's facts is a pass over it: only for files that may continue another one.
    names = Counter(rotation_name(path) for path in args.files)
    facts = []
    for path in args.files:
        if not os.path.isfile(path):
            continue  # a pipe (/dev/stdin, <(tcpdump ...)) is read once, by the analysis: on its own
        if not args.series and names[rotation_name(path)] < 2:
            continue  # no other file of its rotation: read once, by the analysis
        try:
            facts.append(series_facts(path))
        except CaptureFileError:
            continue  # analyzed (and reported by name) on its own
    empty = [f.path for f in facts if f.first is None]
    if empty and len(empty) < len(facts):  # (a ring buffer's files after the traffic stopped, say)
        stderr.write(f"amqp-hb: note: no packets in {', '.join(empty)}: nothing to analyze there\n")
        facts = [f for f in facts if f.first is not None]
        args.files = [path for path in args.files if path not in empty]
    grouping = group_series(facts, force=args.series)
    unit_of: dict[str, str] = {}  # path -> the unit it is read in (itself, or its Series)
    for unit in grouping.units:
        paths = [f.path for f in unit]
        named = Series(paths) if len(paths) > 1 else paths[0]
        unit_of.update((path, named) for path in paths)
        if len(paths) > 1:
            stderr.write(f"amqp-hb: note: {len(paths)} files read as one capture, a rotated series in time "
                         f"order: {', '.join(paths)} (--separate to analyze them one by one)\n")
    for note in grouping.notes:
        stderr.write(f"amqp-hb: note: {note}\n")
    units: list[str] = []
    for path in args.files:  # each unit where its first file is on the command line
        named = unit_of.get(path, path)
        if not (isinstance(named, Series) and any(named is u for u in units)):  # (a file given twice: twice)
            units.append(named)
    args.files = units
