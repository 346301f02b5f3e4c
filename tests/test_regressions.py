"""Inputs the fuzzers (tests/test_fuzz.py, `make fuzz`) found, each rebuilt from a real capture,
with the contract it broke. One test per finding; the docstring says where and how it was found."""
from __future__ import annotations

import io
import pathlib
import struct
import tracemalloc

import pytest

from analyzer.api import analyze_file
from analyzer.sources.pcap import MAX_RECORD_SIZE, open_capture
from tests import synth
from tests.mutations import RECORD_HEADER, split_pcap, to_pcapng

CAPTURES = pathlib.Path(__file__).resolve().parent.parent / "captures"


def peak_allocation(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_declared_record_length_is_not_a_read_size(tmp_path):
    """`make fuzz` (atheris, finding 1): a 3 KB pcap whose 7th record declares 64 MiB (just under
    MAX_RECORD_SIZE) made the reader ask the file for 64 MiB at once, and read(n) allocates n up
    front: 67 MB for a 3 KB file. Fixed in pcap._Chunks.fill: reads go CHUNK_SIZE at a time."""
    header, records, endian = split_pcap((CAPTURES / "blocked-callback.pcap").read_bytes())
    last = bytearray(records[6])
    struct.pack_into(endian + "I", last, 8, MAX_RECORD_SIZE)
    data = header + b"".join(records[:6]) + bytes(last)
    path = tmp_path / "declares-64mib.pcap"
    path.write_bytes(data)

    def read():
        with open(path, "rb") as f:
            reader = open_capture(f)
            assert len(list(reader)) == 6
            assert reader.warnings == [f"capture file cut at byte {len(data)}: packet 7 declares {MAX_RECORD_SIZE} "
                                       f"bytes but only {len(last) - RECORD_HEADER} remain"]

    assert peak_allocation(read) < 4 << 20
    assert peak_allocation(lambda: analyze_file(path)) < 4 << 20


def test_declared_pcapng_block_length_is_not_a_read_size(tmp_path):
    """The same mechanism in the pcapng reader: a block declaring 64 MiB in a small file."""
    pcapng = to_pcapng((CAPTURES / "blocked-callback.pcap").read_bytes())
    pos = 0
    while pos < 2000:  # whole blocks, about 2 KB of them
        pos += struct.unpack_from("<I", pcapng, pos + 4)[0]
    data = pcapng[:pos]
    block = synth.pcapng_block(6, b"\x00" * 20)
    data += struct.pack("<II", 6, MAX_RECORD_SIZE) + block[8:]

    path = tmp_path / "declares-64mib.pcapng"
    path.write_bytes(data)

    def read():
        with open(path, "rb") as f:  # a real file: BytesIO.read(n) does not allocate n up front
            reader = open_capture(f)
            list(reader)
        assert any(f"declares {MAX_RECORD_SIZE} bytes" in w for w in reader.warnings)

    assert peak_allocation(read) < 4 << 20


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_reading_in_small_pieces_gives_the_same_packets(chunk, monkeypatch):
    """fill() now joins pieces: the packets must not depend on how the file is read."""
    import analyzer.sources.pcap as pcap

    data = (CAPTURES / "proxy.pcap").read_bytes()
    reference = [(p.index, p.timestamp, p.data) for p in open_capture(io.BytesIO(data))]
    monkeypatch.setattr(pcap, "CHUNK_SIZE", chunk)
    assert [(p.index, p.timestamp, p.data) for p in open_capture(io.BytesIO(data))] == reference
    cut = data[:-5]
    reader = open_capture(io.BytesIO(cut))
    assert [(p.index, p.timestamp, p.data) for p in reader] == reference[:-1]
    assert reader.warnings and f"cut at byte {len(cut)}" in reader.warnings[0]
