"""`analyze --engine dask`: many captures on the workers of a Dask cluster, and the Parquet datasets
they write (`--output-dir`).

Registered by analyzer.cli on the analyze command and run from its `_analyses`, which renders what
comes back exactly as it renders the local process pool's results. The cluster is a LocalCluster of
--jobs N worker processes (threads would share one GIL: the analysis is pure Python) started and
closed here, or an existing one (`--scheduler`). dask.distributed and pyarrow come with the
`archive` extra: without them the command says so in one line (exit 2), and the rest of the CLI
still works.
"""
from __future__ import annotations

import argparse
import contextlib
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING

from analyzer.cli.options import require_extra
from analyzer.errors import CaptureFileError, EnvironmentProblem, UsageError

if TYPE_CHECKING:
    from distributed import Client

    from analyzer.api import FileAnalysis
    from analyzer.archive import UnitOptions
    from analyzer.tls.keylog import KeyLog

    Outcomes = Generator[tuple[str, FileAnalysis | CaptureFileError], None, None]

ENGINES = ("local", "dask")
LOCAL_CLUSTER_WORKERS = 2  # --engine dask without --jobs: the machine's two cores (README: Performance)
# Dask's client retries a refused connection until this timeout: a scheduler that is up answers in
# milliseconds, and a mistyped address should not leave the command hanging for dask's default 30 s.
SCHEDULER_TIMEOUT = "5s"


def register(analyze: argparse.ArgumentParser) -> None:
    """--engine, --scheduler, --output-dir and --frames on the analyze command."""
    analyze.add_argument("--engine", choices=ENGINES, default="local",
                         help="where the files are analyzed: local (this machine: one process, or --jobs N) or "
                              "dask (the workers of a Dask cluster: a LocalCluster of --jobs N worker processes, "
                              f"default {LOCAL_CLUSTER_WORKERS}, or the --scheduler's) (default: %(default)s)")
    analyze.add_argument("--scheduler", metavar="ADDRESS",
                         help="with --engine dask: an existing cluster's scheduler (tcp://HOST:8786); its workers "
                              "need amqp-hb installed and must open the files (and --output-dir) at the same paths")
    analyze.add_argument("--output-dir", metavar="DIR",
                         help="with --engine dask: also write the Parquet datasets DIR/connections/ (the CSV "
                              "columns) and DIR/findings/, one part file per capture, written by the worker that "
                              "analyzed it")
    analyze.add_argument("--frames", action="store_true",
                         help="with --output-dir: also DIR/frames/, every AMQP frame (frames --format csv's "
                              "columns; a second pass over each file)")


def distributed_outcomes(args: argparse.Namespace, ports: tuple[int, ...], tls_keys: KeyLog | None,
                         ) -> Outcomes | None:
    """(path, FileAnalysis or CaptureFileError) in argument order, from the Dask workers; None for
    the local engine. The options are checked here, before any file is read or any cluster started."""
    if args.engine != "dask":
        for option, given in (("--scheduler", args.scheduler), ("--output-dir", args.output_dir),
                              ("--frames", args.frames)):
            if given:
                raise UsageError(f"{option} goes with --engine dask")
        return None
    if args.frames and args.output_dir is None:
        raise UsageError("--frames writes the frames dataset: give --output-dir DIR too")
    if args.scheduler is not None and args.jobs is not None:
        raise UsageError("--jobs N sets the workers of the LocalCluster --engine dask starts; the --scheduler's "
                         "cluster has its own")
    if args.output_dir is not None and args.connection is not None:
        raise UsageError("--output-dir writes whole captures: select a connection when reading the datasets "
                         "(the connections' `id`, the findings' and frames' `connection`)")
    require_extra("analyze --engine dask", "archive", ("distributed", *(("pyarrow",) if args.output_dir else ())))
    from analyzer.archive import UnitOptions, prepare_output_dir

    output_dir = prepare_output_dir(args.output_dir, args.frames) if args.output_dir is not None else None
    options = UnitOptions(ports, show_secrets=args.show_secrets, tls_keys=tls_keys, output_dir=output_dir,
                          frames=args.frames, problems=args.problems)
    return _outcomes(args, options)


def _outcomes(args: argparse.Namespace, options: UnitOptions) -> Outcomes:
    from analyzer.archive import distributed_results, workers_ahead
    from analyzer.sources.series import Series

    with _client(args.scheduler, args.jobs or LOCAL_CLUSTER_WORKERS) as client:
        # A unit per capture: a file, or a rotated series' files (cli.options.group_input_files).
        units = [list(path.paths) if isinstance(path, Series) else [path] for path in args.files]
        results = distributed_results(client, units, options, ahead=workers_ahead(client))
        with contextlib.closing(results):  # stopped early: the units still running are cancelled
            for path, result in zip(args.files, results, strict=True):  # (the path as the renderers know it)
                yield path, result.outcome


@contextlib.contextmanager
def _client(scheduler: str | None, workers: int) -> Iterator[Client]:
    """A client of the --scheduler's cluster, or of a LocalCluster of `workers` processes started
    for this command; either closed on the way out (the LocalCluster's processes stopped)."""
    import logging

    from distributed import Client, LocalCluster

    if scheduler is None:
        # No dashboard, and the scheduler's HTTP endpoints (which it serves even without one) on a
        # free loopback port: its default, 8787, is another cluster's on a shared machine (and dask
        # warns). Logs: what matters reaches the command as an exception from a result (a worker's
        # error, a worker lost); the rest, such as a busy worker missing heartbeats while the cluster
        # is closed after a Ctrl-C, would be tracebacks on the user's terminal.
        with _workers_ignore_sigint():
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                   scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                                   silence_logs=logging.CRITICAL)
        with cluster, Client(cluster, set_as_default=False) as client:
            yield client
        return
    from distributed.comm.addressing import get_address_host_port

    try:  # (before Client: one made from a malformed address hangs 10 s in its __del__, then prints a traceback)
        get_address_host_port(scheduler)
    except ValueError as exc:
        raise UsageError(f"--scheduler {scheduler}: not a Dask scheduler address ({exc}); e.g. tcp://HOST:8786") \
            from None
    try:
        client = Client(scheduler, timeout=SCHEDULER_TIMEOUT, set_as_default=False)
    except OSError as exc:  # refused, unreachable, or no answer in SCHEDULER_TIMEOUT
        raise EnvironmentProblem(f"no Dask scheduler reachable at {scheduler} ({exc})") from None
    with client:
        yield client


@contextlib.contextmanager
def _workers_ignore_sigint() -> Iterator[None]:
    """SIGINT ignored while the LocalCluster starts its worker processes, which inherit that (an
    ignored signal stays ignored across exec, and Python then installs no KeyboardInterrupt handler):
    a Ctrl-C reaches the whole process group, and it is this process's alone to answer (one line,
    status 130, the cluster closed), never a worker's traceback; as ignore_sigint does for --jobs.
    The cost: a Ctrl-C in the second or so the cluster takes to start is not seen."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # (only the main thread may set handlers)
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


__all__ = ["ENGINES", "LOCAL_CLUSTER_WORKERS", "SCHEDULER_TIMEOUT", "distributed_outcomes", "register"]
