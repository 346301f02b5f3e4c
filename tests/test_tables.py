"""analyzer.load's tables, built by column (analyzer/tables.py), against the tables load built before
issue 19 — one Python tuple per event, then pandas.DataFrame(rows) — kept here as the reference, on
every shipped capture and on hostile inputs; then `tables=`, laziness and the progress bar.

What changed, by design (README "Explore in Jupyter"): the dtypes are analyzer.tables.DTYPES
whatever the rows (text columns are categoricals; an empty table no longer has object columns);
the values are the same, row for row.
"""
from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands
from pamqp import frame as pamqp_frame

from analyzer.amqp.arguments import ArgumentDecodeError, decode_method_arguments, decode_method_arguments_columns
from analyzer.api import analyze_file, frame_record, read_keylog
from analyzer.errors import UsageError
from analyzer.notebook import load
from analyzer.records import ACK, C2S, PSH, S2C, DecodeError, Frame, Gap, SegmentEvent, TlsRecord
from analyzer.tables import DTYPES, KEY_ARGUMENTS, TABLES, flags_text, is_ack_only, is_ack_only_columns
from tests import mutations, synth
from tests.conftest import CAPTURES
from tests.test_engine import busy_conversation
from tests.test_entry_points import RunCounter
from tests.test_hostile_inputs import _secret_capture, snapped

SHIPPED = sorted(CAPTURES.glob("*.pcap*"))


# ---- the reference: the row-built tables of analyzer/notebook.py before issue 19 -----------------------


class RowCollector:
    """analyze_file's observer as load had it: one row tuple per event (runs expanded to events)."""

    def __init__(self, connection: str | None) -> None:
        self.connection = connection
        self.rows: dict[str, list[tuple]] = {name: [] for name in TABLES}

    def __call__(self, event) -> None:
        cid = event.connection.id
        if self.connection is not None and cid != self.connection:
            return
        kind = type(event)
        if kind is SegmentEvent:
            self.rows["segments"].append((event.timestamp, cid, event.direction, event.packet, flags_text(event.flags),
                                          event.seq, event.ack, event.payload_len,
                                          is_ack_only(event.flags, event.payload_len), event.retransmission,
                                          event.missing))
        elif kind is Frame:
            r = frame_record(event, 0.0)
            args = r.args or {}
            self.rows["frames"].append((r.epoch, cid, r.direction, r.channel, r.type, r.method, r.size, r.packet,
                                        r.offset, *(args.get(name) for name in KEY_ARGUMENTS), r.args))
        elif kind is Gap:
            self.rows["gaps"].append((event.timestamp, cid, event.direction, event.packet, event.offset,
                                      event.missing, event.reason))
        elif kind is DecodeError:
            self.rows["decode_errors"].append((event.timestamp, cid, event.direction, event.packet, event.offset,
                                               event.reason, event.skipped))
        elif kind is TlsRecord:
            self.rows["tls_records"].append((event.timestamp, cid, event.direction, event.packet,
                                             event.content_type, event.length, event.plaintext_len, event.what,
                                             event.guess, event.decrypted))


NULLABLE_INTS = {"heartbeat", "reply_code", "delivery_tag", "channel"}


def row_built(path, *, ports=(5672, 5671), connection=None, tls_keylog=None) -> dict[str, pd.DataFrame]:
    collector = RowCollector(connection)
    keys = read_keylog(tls_keylog) if tls_keylog is not None else None
    result = analyze_file(path, ports=ports, connection=connection, observer=collector, tls_keys=keys)
    t0 = result.summary.start_epoch or 0.0
    tables = {}
    for name, columns in TABLES.items():
        df = pd.DataFrame(collector.rows[name], columns=list(columns[1:]))
        df.insert(0, "t", df["epoch"] - t0 if len(df) else pd.Series(dtype="float64"))
        for column in NULLABLE_INTS & set(df.columns):
            df[column] = df[column].astype("Int64")
        tables[name] = df
    return tables


def _plain(value):
    """A cell as a Python value, every kind of missing (None, NaN, pd.NA) as None."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def assert_same_tables(analysis, reference: dict[str, pd.DataFrame]) -> None:
    for name, columns in TABLES.items():
        got, expected = analysis.table(name), reference[name]
        assert list(got.columns) == list(columns), name
        assert {c: str(t) for c, t in got.dtypes.items()} == DTYPES[name], name
        assert len(got) == len(expected), name
        for column in columns:
            got_values = [_plain(v) for v in got[column].astype(object)]
            expected_values = [_plain(v) for v in expected[column].astype(object)]
            assert got_values == expected_values, (name, column)


def scenario_arguments(path) -> dict:
    """The ports and key log a shipped capture's metadata names (as load_scenario reads them)."""
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    ports = tuple(sorted({int(p) for p in (meta.get("ports") or {}).values()})) or (5672, 5671)
    keylog = (meta.get("tls") or {}).get("keylog")
    return {"ports": ports, "tls_keylog": CAPTURES / keylog if keylog else None}


@pytest.fixture(params=["as-shipped", "every-run"])
def runs(request, monkeypatch):
    """As shipped, the small captures go packet by packet; with read blocks of a few records and
    every stretch of ordinary packets, however short, a run, they reach the collector as columns."""
    if request.param == "every-run":
        monkeypatch.setattr("analyzer.sources.pcap.CHUNK_SIZE", 600)
        monkeypatch.setattr("analyzer.engine.engine.MIN_RUN", 1)
    return request.param


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_capture(path, runs):
    kwargs = scenario_arguments(path)
    assert_same_tables(load(path, progress=False, **kwargs), row_built(path, **kwargs))
    counter = RunCounter()
    analyze_file(path, observer=counter, ports=kwargs["ports"])
    if runs == "every-run" and not any(k in path.name for k in ("tls", "ipv6")):
        assert counter.runs > 0  # the columns path was taken (runs are IPv4 plaintext only)


def test_one_connection(runs):
    path = CAPTURES / "proxy.pcap"
    ids = load(path, tables=()).connections["id"].tolist()
    assert len(ids) == 3
    for cid in ids:
        one = load(path, connection=cid, progress=False)
        assert_same_tables(one, row_built(path, connection=cid))
        assert list(one.frames["connection"].cat.categories) == [cid]


def deliveries_capture(count: int = 400) -> bytes:
    """A consumer's connection: deliveries with distinct delivery tags (each payload its own), a
    few per segment, acked; publishes alternating between two routing keys (a few distinct payloads)."""
    from pamqp import body, header

    steps = [*synth.handshake_steps(10), (0.01, C2S, PSH | ACK, synth.method_frame(commands.Channel.Open(), 1)),
             (0.011, S2C, PSH | ACK, synth.method_frame(commands.Channel.OpenOk(), 1))]
    content = pamqp_frame.marshal(header.ContentHeader(0, 8, commands.Basic.Properties()), 1) + \
        pamqp_frame.marshal(body.ContentBody(b"x" * 8), 1)
    t, tag = 0.02, 1
    while tag <= count:
        batch = b""
        for _ in range(3):
            batch += pamqp_frame.marshal(commands.Basic.Deliver(consumer_tag="ctag", delivery_tag=tag,
                                                                exchange="", routing_key="q"), 1) + content
            tag += 1
        publish = pamqp_frame.marshal(commands.Basic.Publish(exchange="", routing_key=f"q{tag % 2}"), 1) + content
        steps += [(t, S2C, PSH | ACK, batch),
                  (t + 0.0002, C2S, PSH | ACK, pamqp_frame.marshal(commands.Basic.Ack(delivery_tag=tag - 1), 1)
                   + publish)]
        t += 0.001
    return synth.pcap_bytes(synth.scripted_conversation(steps).packets())


def _hostile_inputs() -> dict[str, bytes]:
    """Damaged captures, each kind of tests/test_hostile_inputs.py and tests/mutations.py, seeded."""
    blocked = (CAPTURES / "blocked-callback.pcap").read_bytes()
    proxy = (CAPTURES / "proxy.pcap").read_bytes()
    busy = synth.pcap_bytes(busy_conversation().packets())
    cases = {"busy": busy, "deliveries": deliveries_capture(), "secrets": _secret_capture(), "snapped-60": snapped(blocked, 60),
             "snapped-96": snapped(proxy, 96), "cut-in-half": blocked[: len(blocked) // 2],
             "pcapng": mutations.to_pcapng(proxy)}
    for mutation in mutations.MUTATIONS:
        for seed in range(2):
            for source_name, source in (("blocked", blocked), ("busy", busy)):
                rng = random.Random(f"{mutation.__name__}-{seed}")
                cases[f"{mutation.__name__}-{source_name}-{seed}"] = mutation(source, rng, proxy)
    return cases


HOSTILE = _hostile_inputs()


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_inputs(tmp_path, name, runs):
    path = tmp_path / f"{name}.pcap"
    path.write_bytes(HOSTILE[name])
    try:
        reference = row_built(path)
    except UsageError as exc:  # unusable input: load says the same
        with pytest.raises(UsageError, match=str(exc)[:40].replace("(", r"\(").replace(")", r"\)")):
            load(path, progress=False)
        return
    assert_same_tables(load(path, progress=False), reference)


def test_each_way_of_coding_arguments_is_taken(tmp_path, monkeypatch):
    """In the deliveries capture's runs: one repeated payload (content headers), every payload its
    own (deliveries, acks), and a few distinct ones (publishes to two queues)."""
    from analyzer import tables

    monkeypatch.setattr("analyzer.sources.pcap.CHUNK_SIZE", 8000)  # blocks of some 40 packets, each a run
    monkeypatch.setattr("analyzer.engine.engine.MIN_RUN", 1)
    taken = []
    for way in ("shared", "rows"):
        original = getattr(tables._Arguments, way)
        monkeypatch.setattr(tables._Arguments, way, lambda self, t, i, p, _o=original, _w=way:
                            (taken.append((_w, len(p))), _o(self, t, i, p))[1])
    path = tmp_path / "deliveries.pcap"
    path.write_bytes(HOSTILE["deliveries"])
    frames = load(path, progress=False).frames
    assert ("rows", 1) not in taken and any(way == "rows" and n > 10 for way, n in taken)
    assert ("shared", 1) in taken and ("shared", 2) in taken  # one repeated payload; two publishes
    deliver = frames[frames["method"] == "basic.deliver"]
    assert deliver["delivery_tag"].tolist() == list(range(1, len(deliver) + 1))
    assert set(frames.loc[frames["method"] == "basic.publish", "routing_key"]) == {"q0", "q1"}


def test_the_hostile_inputs_reach_every_table(tmp_path):
    """The cases above are not all clean: together they have gaps, decode errors, bad arguments,
    frames taken from runs, and a redacted secret."""
    rows = {name: 0 for name in TABLES}
    errors = redacted = 0
    for name, data in HOSTILE.items():
        path = tmp_path / f"{name}.pcap"
        path.write_bytes(data)
        try:
            a = load(path, progress=False)
        except UsageError:
            continue
        for table in TABLES:
            rows[table] += len(a.table(table))
        args = [x for x in a.frames["args"] if x]
        errors += sum("error" in x for x in args)
        redacted += sum("<redacted>" in json.dumps(x) for x in args)
    assert rows["frames"] and rows["segments"] and rows["gaps"] and rows["decode_errors"], rows
    assert redacted >= 2 and errors, (redacted, errors)


# ---- tables=, laziness, progress ----------------------------------------------------------------------------


def test_tables_leaves_out_what_is_not_asked_for():
    path = CAPTURES / "blocked-callback.pcap"
    full = load(path, progress=False)
    frames_only = load(path, tables=("frames",), progress=False)
    pd.testing.assert_frame_equal(frames_only.frames, full.frames)
    for name in ("segments", "gaps", "decode_errors", "tls_records"):
        with pytest.raises(UsageError, match=f"the {name} table was not loaded"):
            frames_only.table(name)
    with pytest.raises(UsageError, match="the segments table was not loaded"):
        frames_only.connection(0).plot()  # the plot draws the segments' bare ACKs
    nothing = load(path, tables=(), progress=False)
    assert nothing.result.connections == full.result.connections == analyze_file(path).connections
    pd.testing.assert_frame_equal(nothing.connections, full.connections)
    pd.testing.assert_frame_equal(nothing.findings, full.findings)
    assert "frames not loaded" in repr(nothing) and "frames not loaded" in nothing._repr_html_()
    assert f"{len(full.frames)} frames" in repr(full)
    with pytest.raises(UsageError, match="no table named packets"):
        load(path, tables=("frames", "packets"))


def test_tables_are_built_on_first_access_and_pandas_only_then():
    code = f"""
import sys, analyzer
a = analyzer.load({str(CAPTURES / "proxy.pcap")!r}, progress=False)
print('pandas' in sys.modules, sorted(a.tables.built), a.tables.rows('frames'), a.tables.rows('segments'))
n = len(a.frames)
print('pandas' in sys.modules, sorted(a.tables.built), n, sorted(a.tables.collector.chunks))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    before, after = out
    frames = load(CAPTURES / "proxy.pcap", progress=False).frames
    segments = load(CAPTURES / "proxy.pcap", progress=False).segments
    assert before == f"False [] {len(frames)} {len(segments)}"
    # Built once: the raw chunks are let go, the DataFrame kept.
    assert after == f"True ['frames'] {len(frames)} ['decode_errors', 'gaps', 'segments', 'tls_records']"


def test_the_args_dicts_are_made_when_first_read(tmp_path):
    path = tmp_path / "deliveries.pcap"
    path.write_bytes(HOSTILE["deliveries"])
    frames = load(path, progress=False).frames
    decoded = frames["args"].array._values
    assert decoded.values is None  # the table exists, its key columns are filled, no dict is made yet
    assert frames["delivery_tag"].notna().sum() > 300
    deliver = frames[frames["method"] == "basic.deliver"].reset_index(drop=True)
    assert deliver["args"].iloc[0] == {"consumer_tag": "ctag", "delivery_tag": 1, "redelivered": False,
                                       "exchange": "", "routing_key": "q"}
    assert decoded.values is not None and decoded.arguments is None  # made once, for every row; payloads gone
    assert frames["args"].isna().tolist() == (frames["type"].isin(["body", "heartbeat"])).tolist()
    assert [a["delivery_tag"] for a in deliver["args"]] == deliver["delivery_tag"].tolist()
    assert frames["args"].map(lambda a: a is not None and "delivery_tag" in a).sum() == \
        frames["delivery_tag"].notna().sum()


def test_shared_vocabularies_make_the_tables_comparable():
    a = load(CAPTURES / "proxy.pcap", progress=False)
    assert list(a.frames["connection"].cat.categories) == list(a.segments["connection"].cat.categories)
    assert list(a.frames["direction"].cat.categories) == ["c2s", "s2c"]
    view = a.connection(1)
    assert set(view.frames["connection"]) == set(view.segments["connection"]) == {view.id}


def test_the_progress_bar_shows_after_its_delay_and_not_with_progress_false(monkeypatch, capsys):
    pytest.importorskip("tqdm")
    monkeypatch.setattr("analyzer.engine.files.PROGRESS_EVERY", 1)
    monkeypatch.setattr("analyzer.sources.pcap.CHUNK_SIZE", 600)  # many blocks: many progress calls
    path = CAPTURES / "proxy.pcap"
    size = path.stat().st_size
    monkeypatch.setattr("analyzer.notebook.PROGRESS_AFTER", 3600.0)
    load(path)
    assert "loading" not in capsys.readouterr().err  # a short load shows nothing
    monkeypatch.setattr("analyzer.notebook.PROGRESS_AFTER", 0.0)
    load(path, progress=False)
    assert "loading" not in capsys.readouterr().err
    load(path)
    err = capsys.readouterr().err
    assert "loading" in err and "100%" in err and f"{size / 1e3:.1f}k" in err.replace(" ", "")


# ---- the column twins ---------------------------------------------------------------------------------------


@given(st.lists(st.integers(0, 0xFF), max_size=40), st.integers(0, 3))
def test_is_ack_only_columns(flags, payload):
    lengths = [(f * 7 + payload) % 3 for f in flags]
    got = is_ack_only_columns(np.array(flags, dtype=np.int64), np.array(lengths, dtype=np.int64))
    assert got.tolist() == [is_ack_only(f, n) for f, n in zip(flags, lengths, strict=True)]


BASIC = [commands.Basic.Publish(exchange="ex", routing_key="rk", mandatory=True),
         commands.Basic.Deliver(consumer_tag="ctag", delivery_tag=7, redelivered=True, exchange="", routing_key="q"),
         commands.Basic.Ack(delivery_tag=2**63 - 1, multiple=True), commands.Basic.Nack(delivery_tag=3, requeue=False),
         commands.Basic.GetOk(delivery_tag=9, exchange="e", routing_key="r", message_count=4),
         commands.Basic.Qos(prefetch_size=1, prefetch_count=2), commands.Basic.Reject(delivery_tag=1),
         commands.Basic.Return(reply_code=312, reply_text="NO_ROUTE", exchange="x", routing_key="y"),
         commands.Basic.RecoverOk(), commands.Basic.Consume(queue="q", consumer_tag="c")]


def _payload(command) -> bytes:
    return pamqp_frame.marshal(command, 1)[7:-1]


def _one(class_id: int, method_id: int, payload: bytes):
    try:
        return decode_method_arguments(class_id, method_id, payload)
    except ArgumentDecodeError:
        return None


@given(st.lists(st.tuples(st.sampled_from(range(len(BASIC))), st.integers(0, 70), st.binary(max_size=3),
                          st.sampled_from(["keep", "cut", "extend", "flip"])), min_size=1, max_size=12),
       st.sampled_from(range(len(BASIC))))
def test_decode_method_arguments_columns(edits, kind):
    """Equal to decode_method_arguments wherever it answers; None only where the scalar form must
    say why (an error), or for a method it leaves to the scalar form (a table argument)."""
    command = BASIC[kind]
    class_id, method_id = command.index >> 16, command.index & 0xFFFF
    payloads = []
    for which, at, extra, edit in edits:
        payload = _payload(BASIC[which] if edit == "keep" else command)
        if edit == "cut":
            payload = payload[: at % (len(payload) + 1)]
        elif edit == "extend":
            payload += extra
        elif edit == "flip" and payload:
            flipped = bytearray(payload)
            flipped[at % len(payload)] ^= 0xFF
            payload = bytes(flipped)
        payloads.append(payload)
    columns, decoded = decode_method_arguments_columns(class_id, method_id, b"".join(payloads),
                                                       [len(p) for p in payloads])
    has_table = isinstance(command, commands.Basic.Consume)  # its `arguments` is a field table
    for k, payload in enumerate(payloads):
        expected = _one(class_id, method_id, payload)
        if decoded[k]:
            assert {name: values[k] for name, values in columns.items()} == expected
        else:
            assert expected is None or has_table


def test_the_column_walk_answers_for_the_busy_methods():
    payloads = [_payload(c) for c in BASIC[:3]]
    for command, payload in zip(BASIC[:3], payloads, strict=True):
        class_id, method_id = command.index >> 16, command.index & 0xFFFF
        columns, decoded = decode_method_arguments_columns(class_id, method_id, payload + payload[:-1],
                                                           [len(payload), len(payload) - 1])
        assert decoded == [True, False]
        assert {name: values[0] for name, values in columns.items()} == decode_method_arguments(class_id, method_id,
                                                                                              payload)
