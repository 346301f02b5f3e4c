"""Many captures at scale: each unit of work analyzed on a Dask worker, its tables written there as
Parquet parts, the results handed back to the caller in the order the units were given.

Strategy: a unit is the list of files of one capture (one file, or the files of a rotated series,
which `analyze_unit` reads as one capture as the local engine does). The worker that
analyzes a unit also writes its rows of each dataset (connections, findings, optionally frames) as
one Parquet part file, so the tables never travel back; what comes back is the FileAnalysis the
caller renders (`amqp-hb analyze` reuses its renderers, so its text, JSON and CSV are the local
engine's bytes). Results are taken as they complete and handed over in unit order; at most `ahead`
units are in flight, so the results waiting for an earlier unit are bounded too. The columns are
the CSV output's (render/analysis_json.py: CSV_COLUMNS, connection_row) and the frames listing's
(render/frames.py: frame_fields), with one fixed Arrow schema per table so that every part of a
dataset reads as one table in pandas, DuckDB or Polars. dask.distributed and pyarrow come with the
`archive` extra and are imported only here, when a unit runs or a cluster is used.
"""
from __future__ import annotations

import json
import os
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from analyzer.api import FileAnalysis, FrameRecord, analyze_file, read_frames
from analyzer.errors import CaptureFileError, UsageError
from analyzer.render.analysis_json import CSV_COLUMNS, TIME_DIGITS, connection_row
from analyzer.render.frames import frame_fields
from analyzer.render.summary import needs_attention
from analyzer.sources.series import Series
from analyzer.timeline import timeline_order

if TYPE_CHECKING:
    from distributed import Client

    from analyzer.diagnosis.diagnose import Diagnosis
    from analyzer.tls.keylog import KeyLog

# The datasets under --output-dir, one directory each, one part file per unit in each.
CONNECTIONS, FINDINGS, FRAMES = "connections", "findings", "frames"
FINDING_COLUMNS = ["file", "connection", "t", "kind", "channel", "detail"]
# The frames listing's columns, `file` first (frame_fields is their one home).
FRAME_COLUMNS = list(frame_fields(FrameRecord(0.0, 0.0, "", "", 0, "", None, 0, 0, 0, None), ""))

# Arrow types of the columns that are not strings (every other column is a nullable string). Fixed
# rather than inferred per part: a part whose column is all null would otherwise get Arrow's null
# type and no longer read as one table with the others. Nullable integers stay integers (pandas reads
# them as Int64 with dtype_backend="numpy_nullable"); heartbeat_effective is a float (an inferred
# heartbeat can be 2.5 s).
_INT, _FLOAT, _BOOL = "int64", "float64", "bool"
CONNECTION_TYPES = {
    "client_port": _INT, "server_port": _INT, "start": _FLOAT, "end": _FLOAT, "handshake_seen": _BOOL,
    "heartbeat_server_proposed": _INT, "heartbeat_client_requested": _INT, "heartbeat_effective": _FLOAT,
    "last_client_byte": _FLOAT, "last_server_byte": _FLOAT, "close_time": _FLOAT, "close_reply_code": _INT,
    "close_inferred": _BOOL, "silence": _FLOAT, "prediction_window_start": _FLOAT,
    "prediction_window_end": _FLOAT, "prediction_predicted": _FLOAT, "prediction_error": _FLOAT,
}
FINDING_TYPES = {"t": _FLOAT, "channel": _INT}
FRAME_TYPES = {"t": _FLOAT, "epoch": _FLOAT, "channel": _INT, "size": _INT, "packet": _INT}

FRAMES_PER_ROW_GROUP = 65_536  # frames held by a worker before they are written: bounded memory per file


@dataclass(frozen=True)
class UnitOptions:
    """How every unit is analyzed and what its worker writes (sent to each worker with each unit)."""

    ports: tuple[int, ...]
    show_secrets: bool = False
    tls_keys: KeyLog | None = None
    output_dir: str | None = None  # absolute: the workers' working directories may differ
    frames: bool = False  # also the frames dataset (a second pass over the file)
    problems: bool = False  # the datasets keep the connections that need attention only, as --problems


@dataclass
class UnitResult:
    """What comes back from a worker: the unit's files, its FileAnalysis (connections in the engine's
    order, as analyze_file returns them) or the CaptureFileError saying why there is none, and the
    rows each dataset's part received."""

    paths: list[str]
    outcome: FileAnalysis | CaptureFileError
    rows: dict[str, int] = field(default_factory=dict)


def analyze_unit(paths: list[str], options: UnitOptions, part: int) -> UnitResult:
    """Analyze one unit of work and write its Parquet parts (`part` numbers them: part-00042.parquet).

    A unit is the files of one capture: one file, or the files of a rotated series in time order
    (read as one capture, named by its first file, as `analyze` names it). A CaptureFileError (a
    damaged or missing file) is returned, not raised: the other units go on and the caller reports
    it by name. Runs on a Dask worker, or anywhere."""
    path = paths[0] if len(paths) == 1 else Series(paths)
    try:
        analysis = analyze_file(path, ports=options.ports, show_secrets=options.show_secrets,
                                tls_keys=options.tls_keys)
    except CaptureFileError as exc:
        return UnitResult(paths, exc)
    result = UnitResult(paths, analysis)
    if options.output_dir is not None:
        diagnoses = sorted(analysis.connections, key=lambda d: timeline_order(d.timeline))
        if options.problems:
            diagnoses = [d for d in diagnoses if needs_attention(d)]
        result.rows[CONNECTIONS] = _write_part(options.output_dir, CONNECTIONS, part, _connection_schema(),
                                               [[connection_row(path, d) for d in diagnoses]])
        result.rows[FINDINGS] = _write_part(options.output_dir, FINDINGS, part, _finding_schema(),
                                            [_finding_rows(path, diagnoses)])
        if options.frames:
            result.rows[FRAMES] = _write_part(options.output_dir, FRAMES, part, _frame_schema(),
                                              _frame_row_groups(path, options))
    return result


def _finding_rows(path: str, diagnoses: Iterable[Diagnosis]) -> list[dict[str, Any]]:
    """One row per finding, times rounded as analyze's JSON rounds them."""
    return [{"file": path, "connection": d.timeline.info.id, "t": round(f.time, TIME_DIGITS), "kind": f.kind,
             "channel": f.channel, "detail": f.detail} for d in diagnoses for f in d.findings]


def _frame_row_groups(path: str, options: UnitOptions) -> Iterator[list[dict[str, Any]]]:
    """The frames listing's rows (`frames --format csv`: frame_fields, with `args` as JSON text or
    null), FRAMES_PER_ROW_GROUP at a time: a busy capture's millions of frames are never held."""
    rows: list[dict[str, Any]] = []
    for frame in read_frames(path, ports=options.ports, show_secrets=options.show_secrets, all_arguments=False,
                             tls_keys=options.tls_keys):
        row = frame_fields(frame, path)
        row["args"] = json.dumps(row["args"], ensure_ascii=False) if row["args"] else None
        rows.append(row)
        if len(rows) == FRAMES_PER_ROW_GROUP:
            yield rows
            rows = []
    yield rows


def part_path(output_dir: str, table: str, part: int) -> str:
    return os.path.join(output_dir, table, f"part-{part:05d}.parquet")


def _write_part(output_dir: str, table: str, part: int, schema: Any, row_groups: Iterable[list[dict[str, Any]]],
                ) -> int:
    """Write the rows as one Parquet file, under a dot name first (dataset readers skip those) and
    renamed when complete: a worker that dies mid-file leaves no part a reader would take."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    final = part_path(output_dir, table, part)
    partial = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.partial")
    count = 0
    try:
        with pq.ParquetWriter(partial, schema) as writer:
            for rows in row_groups:
                if rows or not count:  # an empty unit still gets its (empty) part, with the schema
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                count += len(rows)
        os.replace(partial, final)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    return count


def _schema(columns: Sequence[str], types: dict[str, str]) -> Any:
    import pyarrow as pa

    return pa.schema([(name, pa.type_for_alias(types.get(name, "string"))) for name in columns])


def _connection_schema() -> Any:
    return _schema(CSV_COLUMNS, CONNECTION_TYPES)


def _finding_schema() -> Any:
    return _schema(FINDING_COLUMNS, FINDING_TYPES)


def _frame_schema() -> Any:
    return _schema(FRAME_COLUMNS, FRAME_TYPES)


def prepare_output_dir(output_dir: str, frames: bool) -> str:
    """Create DIR/connections/, DIR/findings/ (and DIR/frames/) and return DIR as an absolute path.
    A table directory that already holds part files is refused: two runs' parts would read as one
    dataset, duplicates and all."""
    output_dir = os.path.abspath(output_dir)
    for table in (CONNECTIONS, FINDINGS, *((FRAMES,) if frames else ())):
        directory = os.path.join(output_dir, table)
        try:
            os.makedirs(directory, exist_ok=True)
            held = [name for name in os.listdir(directory) if name.endswith(".parquet")]
        except OSError as exc:
            raise UsageError(f"{directory}: cannot write there ({exc.strerror})") from None
        if held:
            raise UsageError(f"{directory}: already holds {len(held)} Parquet part file(s) from an earlier run; "
                             "give an empty or new --output-dir")
    return output_dir


def distributed_results(client: Client, units: Sequence[list[str]], options: UnitOptions, *, ahead: int,
                        ) -> Generator[UnitResult, None, None]:
    """analyze_unit of each unit on `client`'s workers, the results in the order of `units`.

    At most `ahead` units are submitted and not yet handed over: a unit that completes before an
    earlier one waits in memory, so `ahead` bounds what is held here. A worker's exception (a bug,
    not a CaptureFileError) is raised here, from the result it spoiled. Stopping the iteration
    early (an error downstream, Ctrl-C) cancels the units still running."""
    from distributed import as_completed

    pending: dict[object, tuple[int, Any]] = {}  # future key -> (unit index, future): submitted, not yet back
    waiting: dict[int, UnitResult] = {}  # back before an earlier unit
    handed = 0

    def submit(index: int) -> Any:
        future = client.submit(analyze_unit, units[index], options, index, pure=False)
        pending[future.key] = (index, future)
        return future

    # with_results: the client's loop fetches each result as soon as its unit completes, while this
    # thread renders the one before (future.result() would be one round trip after another). The
    # loop is given: without it, as_completed looks for a default client, and ours is not one.
    completed = as_completed([submit(index) for index in range(min(ahead, len(units)))], loop=client.loop,
                             with_results=True)
    try:
        for future, result in completed:
            index, _ = pending.pop(future.key)
            waiting[index] = result
            future.release()  # the worker may forget it: the result is here now
            while handed in waiting:
                yield waiting.pop(handed)
                handed += 1
                if handed + ahead - 1 < len(units):
                    completed.add(submit(handed + ahead - 1))
    finally:
        client.cancel([future for _, future in pending.values()])


def workers_ahead(client: Client) -> int:
    """How many units to keep in flight: two per worker thread, one running and one queued behind
    it, so a worker never waits on this process between units."""
    return 2 * max(1, sum(client.nthreads().values()))


__all__ = ["CONNECTIONS", "CONNECTION_TYPES", "FINDINGS", "FINDING_COLUMNS", "FINDING_TYPES", "FRAMES",
           "FRAME_COLUMNS", "FRAME_TYPES", "UnitOptions", "UnitResult", "analyze_unit", "distributed_results",
           "part_path", "prepare_output_dir", "workers_ahead"]
