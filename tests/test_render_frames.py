"""Renderers of big outputs, built without json.dumps per object and held equal to it:
`frames --format jsonl` writes exactly what json.dumps(frame_fields(record), ensure_ascii=False)
would, for single records and for FrameBatches (the fast path's runs); `frames` without --args
lists the same frames as with it, arguments aside; `analyze --format json` is the same document
whether its connections are indented or one per line."""
from __future__ import annotations

import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer import cli
from analyzer.api import FrameBatch, FrameRecord, read_frame_batches, read_frames
from analyzer.render.frames import JsonLines, frame_fields
from analyzer.tls.keylog import KeyLog
from tests.conftest import CAPTURES as CAPTURE_DIR

CAPTURES = sorted(CAPTURE_DIR.glob("*.pcap*"))


def reference_lines(path, file=None, **kwargs) -> str:
    return "".join(json.dumps(frame_fields(r, file), ensure_ascii=False) + "\n"
                   for r in read_frames(path, all_arguments=False, **kwargs))


def fast_lines(path, file=None, **kwargs) -> str:
    jsonl = JsonLines(file)
    return "".join(jsonl.batch(item) if isinstance(item, FrameBatch) else jsonl.line(item)
                   for item in read_frame_batches(path, all_arguments=False, **kwargs))


@pytest.fixture(params=["as-shipped", "tiny-blocks"])
def batched(request, monkeypatch):
    """As shipped, and with blocks of a few records and every run batched (so that the shipped
    captures, a few dozen packets each, have FrameBatches)."""
    if request.param == "tiny-blocks":
        monkeypatch.setattr("analyzer.sources.pcap.CHUNK_SIZE", 600)
        monkeypatch.setattr("analyzer.engine.engine.MIN_RUN", 1)
    return request.param


def keys_of(path):
    """A TLS capture's key log (its frames are listed only decrypted), else None."""
    keys = path.with_suffix(".keys")
    return KeyLog.parse(keys.read_bytes()) if keys.exists() else None


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_jsonl_equals_json_dumps_on_every_capture(path, batched) -> None:
    keys = keys_of(path)
    assert fast_lines(path, tls_keys=keys) == reference_lines(path, tls_keys=keys)
    assert fast_lines(path, file="x/ü.pcap", tls_keys=keys) == reference_lines(path, file="x/ü.pcap", tls_keys=keys)
    first = next(read_frames(path, tls_keys=keys), None)
    assert first is not None, f"{path.name}: no frames listed"
    connection = first.connection
    assert fast_lines(path, connection=connection, tls_keys=keys) == \
        reference_lines(path, connection=connection, tls_keys=keys)


def test_batches_are_used(monkeypatch) -> None:
    monkeypatch.setattr("analyzer.sources.pcap.CHUNK_SIZE", 600)
    monkeypatch.setattr("analyzer.engine.engine.MIN_RUN", 1)
    items = list(read_frame_batches(CAPTURE_DIR / "blocked-callback.pcap", all_arguments=False))
    assert any(isinstance(item, FrameBatch) for item in items)


@pytest.mark.parametrize("path", CAPTURES[:3], ids=lambda p: p.name)
def test_args_flag_only_adds_arguments(path) -> None:
    def listing(*flags):
        out = io.StringIO()
        assert cli.main(["frames", str(path), "--format", "jsonl", *flags], stdout=out, stderr=io.StringIO()) == 0
        return [json.loads(line) for line in out.getvalue().splitlines()]

    default, full = listing(), listing("--args")
    assert [{**d, "args": None} for d in default] == [{**f, "args": None} for f in full]
    for d, f in zip(default, full, strict=False):
        control = d["method"] is not None and d["method"].split(".")[0] in ("connection", "channel")
        assert d["args"] == (f["args"] if control else None)
    assert any(f["args"] and f["method"].startswith("basic.") for f in full)
    assert any(d["args"] and d["method"] == "connection.tune" for d in default)


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
_json = st.recursive(st.none() | st.booleans() | st.integers() | _text,
                     lambda children: st.lists(children, max_size=3) | st.dictionaries(_text, children, max_size=3),
                     max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(t=st.floats(0, 1e6), epoch=st.floats(0, 4e9), connection=_text, direction=_text, channel=st.integers(0, 65535),
       kind=_text, method=st.none() | _text, size=st.integers(0, 2**32 - 1), packet=st.integers(1, 2**40),
       args=st.none() | st.dictionaries(_text, _json, max_size=4), file=st.none() | _text)
def test_line_equals_json_dumps(t, epoch, connection, direction, channel, kind, method, size, packet, args, file) -> None:
    record = FrameRecord(t, epoch, connection, direction, channel, kind, method, size, packet, 0, args)
    assert JsonLines(file).line(record) == json.dumps(frame_fields(record, file), ensure_ascii=False) + "\n"


@pytest.mark.parametrize("indented", [100, 0], ids=["indented", "one-line-per-connection"])
def test_analysis_json_is_the_document_either_way(indented, monkeypatch) -> None:
    """Above INDENTED_CONNECTIONS connections each is written on one line; the JSON is the same."""
    from analyzer.api import analyze_file
    from analyzer.render import analysis_json

    monkeypatch.setattr(analysis_json, "INDENTED_CONNECTIONS", indented)
    for name in ("proxy.pcap", "idle.pcap"):
        analysis = analyze_file(CAPTURE_DIR / name)
        out = io.StringIO()
        analysis_json.write_analysis_document(analysis, out)
        text = out.getvalue()
        assert json.loads(text) == json.loads(json.dumps(analysis_json.analysis_document(analysis)))
        # One line per connection exactly when not indented (the head, with its summary, is indented either way).
        one_line = [line for line in text.splitlines() if line.startswith('    {"id": ')]
        assert text.endswith("}\n") and len(one_line) == (0 if indented else len(analysis.connections))
