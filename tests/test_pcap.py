"""Tests of analyzer.sources.pcap: pcap and pcapng files → RawPacket records, streaming, damage → warnings.

Timestamp tolerance: the reader returns float epoch seconds. Near 1.7e9 s one ulp of a float is
2.4e-7 s, so sub-microsecond digits cannot survive; a correct reader is within an ulp or two of
the exact value (int→float and one division or addition each round once). We allow 2 ulps at
epoch scale — still far below 1 µs, so a wrong unit (µs read as ns, a wrong if_tsresol) fails by
orders of magnitude — and check nanosecond digits exactly on small timestamps, where a float has
them.
"""
from __future__ import annotations

import inspect
import io
import math
import re
import struct
import tracemalloc
from fractions import Fraction

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.errors import CaptureFileError
from analyzer.records import RawPacket
from analyzer.sources.pcap import open_capture
from tests import synth
from tests.synth import (
    EPB_TYPE,
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    RawBlock,
    exact,
    pcap_bytes,
    pcapng_block,
    pcapng_bytes,
)

T0 = 1700000000


def read(data: bytes):
    reader = open_capture(io.BytesIO(data))
    return reader, list(reader)


def assert_ts(actual: float, expected, ulps: int = 2) -> None:
    want = float(exact(expected))
    tol = ulps * math.ulp(want) if want else 1e-12
    assert abs(actual - want) <= tol, f"timestamp {actual!r} != {want!r} (tolerance {tol:g} s)"


def frames(n: int) -> list[bytes]:
    """n distinct packet bodies of varied lengths, some not a multiple of 4 (tests block padding)."""
    return [bytes([i % 256]) * (20 + 7 * i) for i in range(n)]


# ---- pcap ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("nanosecond", [False, True], ids=["usec", "nsec"])
def test_pcap_variants(byteorder, nanosecond):
    fracs = ["0.000001", "0.5", "0.999999"] if not nanosecond else ["0.000000001", "0.123456789", "0.999999999"]
    stamps = [f"{T0 + i}{f[1:]}" for i, f in enumerate(fracs)]
    bodies = frames(3)
    data = pcap_bytes([(ts, LINKTYPE_ETHERNET, b) for ts, b in zip(stamps, bodies, strict=False)],
                      byteorder=byteorder, nanosecond=nanosecond)
    reader, pkts = read(data)
    assert reader.format == "pcap"
    assert reader.warnings == []
    assert [p.index for p in pkts] == [1, 2, 3]
    assert [p.data for p in pkts] == bodies
    assert [p.orig_len for p in pkts] == [len(b) for b in bodies]
    assert all(isinstance(p, RawPacket) and p.linktype == LINKTYPE_ETHERNET for p in pkts)
    assert all(type(p.timestamp) is float and type(p.data) is bytes for p in pkts)
    for p, ts in zip(pkts, stamps, strict=False):
        assert_ts(p.timestamp, ts)


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_pcap_nanosecond_digits_kept_on_small_timestamps(byteorder):
    data = pcap_bytes([("1.123456789", LINKTYPE_RAW, b"x" * 20)], byteorder=byteorder, nanosecond=True)
    _, [p] = read(data)
    assert abs(p.timestamp - 1.123456789) < 1e-12
    assert p.linktype == LINKTYPE_RAW


def test_pcap_snapped_record_keeps_orig_len():
    data = pcap_bytes([(T0, LINKTYPE_ETHERNET, b"a" * 64, 1514)], snaplen=64)
    reader, [p] = read(data)
    assert (len(p.data), p.orig_len) == (64, 1514)
    assert reader.warnings == []


def test_pcap_header_only_is_zero_packets_without_error():
    reader, pkts = read(synth.pcap_header(LINKTYPE_ETHERNET))
    assert pkts == []
    assert reader.format == "pcap"
    assert reader.warnings == []


def test_pcap_truncated_mid_record_returns_packets_before_cut_and_names_offset():
    bodies = frames(3)
    full = pcap_bytes([(T0 + i, LINKTYPE_ETHERNET, b) for i, b in enumerate(bodies)])
    third_record_at = len(full) - (16 + len(bodies[2]))
    for cut in (third_record_at + 5, third_record_at + 16 + 3):  # in the record header, in the data
        reader, pkts = read(full[:cut])
        assert [p.data for p in pkts] == bodies[:2]
        assert_cut_warning(reader.warnings, record_start=third_record_at, file_len=cut)


def assert_cut_warning(warnings: list[str], *, record_start: int, file_len: int) -> None:
    """One warning says where the file was cut: 'cut at byte N' with N the offset of the
    incomplete record or the end of the file (either names the place honestly)."""
    offsets = [int(m.group(1)) for w in warnings for m in [re.search(r"cut at byte (\d+)", w)] if m]
    assert offsets, f"no 'cut at byte N' warning in {warnings!r}"
    assert offsets[0] in (record_start, file_len), warnings


def test_pcap_record_length_larger_than_file():
    bodies = frames(2)
    good = pcap_bytes([(T0, LINKTYPE_ETHERNET, bodies[0]), (T0 + 1, LINKTYPE_ETHERNET, bodies[1])])
    # a record header announcing 1000 bytes, followed by only 10
    bad = struct.pack("<IIII", T0 + 2, 0, 1000, 1000) + b"z" * 10
    reader, pkts = read(good + bad)
    assert [p.data for p in pkts] == bodies
    assert_cut_warning(reader.warnings, record_start=len(good), file_len=len(good + bad))


def test_pcap_huge_record_length_is_a_warning_not_a_huge_read():
    good = pcap_bytes([(T0, LINKTYPE_ETHERNET, b"a" * 60)], snaplen=65535)
    bad = struct.pack("<IIII", T0 + 1, 0, 0x7FFFFFF0, 0x7FFFFFF0) + b"z" * 100
    tracemalloc.start()
    try:
        reader, pkts = read(good + bad)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [p.data for p in pkts] == [b"a" * 60]
    assert reader.warnings
    assert peak < 50 * 2**20  # never tries to allocate the announced 2 GiB


def test_pcap_record_longer_than_snaplen_is_warned():
    data = pcap_bytes([(T0, LINKTYPE_ETHERNET, b"a" * 60), (T0 + 1, LINKTYPE_ETHERNET, b"b" * 200)], snaplen=100)
    reader, pkts = read(data)
    assert pkts[0].data == b"a" * 60
    assert any("snaplen" in w.lower() or "snap length" in w.lower() for w in reader.warnings), reader.warnings


# ---- not a capture / empty / header cut ----------------------------------------------------------


def test_not_a_capture():
    with pytest.raises(CaptureFileError, match=r"(?i)not a (pcap|pcapng|capture)|magic|format"):
        open_capture(io.BytesIO(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n" * 4))


def test_empty_file():
    with pytest.raises(CaptureFileError, match=r"(?i)empty|0 bytes|no data"):
        open_capture(io.BytesIO(b""))


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_header_cut_short(fmt):
    header = synth.pcap_header(LINKTYPE_ETHERNET) if fmt == "pcap" else synth.shb()
    with pytest.raises(CaptureFileError, match=r"(?i)header|short|cut|truncat"):
        open_capture(io.BytesIO(header[:10]))


# ---- pcapng --------------------------------------------------------------------------------------


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_pcapng_epb_both_byte_orders(byteorder):
    bodies = frames(3)
    stamps = [f"{T0}.000001", f"{T0 + 1}.5", f"{T0 + 2}.999999"]
    data = pcapng_bytes([{"interfaces": [(LINKTYPE_ETHERNET, None)],
                          "packets": [(0, ts, b) for ts, b in zip(stamps, bodies, strict=False)]}], byteorder=byteorder)
    reader, pkts = read(data)
    assert reader.format == "pcapng"
    assert reader.warnings == []
    assert [p.index for p in pkts] == [1, 2, 3]
    assert [p.data for p in pkts] == bodies
    assert [p.linktype for p in pkts] == [LINKTYPE_ETHERNET] * 3
    assert all(type(p.timestamp) is float and type(p.data) is bytes for p in pkts)
    for p, ts in zip(pkts, stamps, strict=False):
        assert_ts(p.timestamp, ts)


def test_pcapng_epb_orig_len():
    data = pcapng_bytes([{"interfaces": [(LINKTYPE_ETHERNET, None)],
                          "packets": [(0, T0, b"a" * 61, "epb", 1500)]}])
    _, [p] = read(data)
    assert (p.data, p.orig_len) == (b"a" * 61, 1500)


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_pcapng_simple_packet_block(byteorder):
    """An SPB has no timestamp: it takes the previous packet's (0 when it comes first), and the
    link type of interface 0; its padding is not packet data."""
    data = pcapng_bytes([{"interfaces": [(LINKTYPE_RAW, None)],
                          "packets": [(0, None, b"first", "spb"),
                                      (0, f"{T0}.25", b"epb-packet", "epb"),
                                      (0, None, b"after", "spb")]}], byteorder=byteorder)
    reader, pkts = read(data)
    assert [p.data for p in pkts] == [b"first", b"epb-packet", b"after"]
    assert [p.linktype for p in pkts] == [LINKTYPE_RAW] * 3
    assert pkts[0].timestamp == 0
    assert_ts(pkts[2].timestamp, f"{T0}.25")
    assert [p.orig_len for p in pkts] == [5, 10, 5]
    assert reader.warnings == []


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_pcapng_obsolete_packet_block(byteorder):
    data = pcapng_bytes([{"interfaces": [(LINKTYPE_ETHERNET, None), (LINKTYPE_RAW, 9)],
                          "packets": [(0, f"{T0}.000002", b"abc", "pb"),
                                      (1, f"{T0}.000000003", b"defgh", "pb")]}], byteorder=byteorder)
    _reader, pkts = read(data)
    assert [(p.index, p.linktype, p.data) for p in pkts] == [(1, LINKTYPE_ETHERNET, b"abc"), (2, LINKTYPE_RAW, b"defgh")]
    assert_ts(pkts[0].timestamp, f"{T0}.000002")
    assert_ts(pkts[1].timestamp, f"{T0}.000000003")


def test_pcapng_unknown_blocks_skipped():
    unknown = [RawBlock(pcapng_block(0x0BAD, b"whatever" * 3)),  # unknown type
               RawBlock(pcapng_block(0x00000005, b"\x00" * 20)),  # Interface Statistics Block
               RawBlock(pcapng_block(0x00000004, b"\x01\x00\x04\x00" + b"\x7f\x00\x00\x01" + b"lo\x00\x00" + b"\x00" * 4))]  # NRB
    data = pcapng_bytes([{"interfaces": [(LINKTYPE_ETHERNET, None)],
                          "packets": [(0, T0, b"one"), *unknown, (0, T0 + 1, b"two")]}])
    _reader, pkts = read(data)
    assert [(p.index, p.data) for p in pkts] == [(1, b"one"), (2, b"two")]


def test_pcapng_two_interfaces_with_own_linktype_and_resolution():
    """dpkt applies interface 0's link type and resolution to every packet; we must not."""
    two_pow = 0x80 | 20  # 2^-20 s units
    stamps = [f"{T0}.123456", f"{T0}.123456789", T0 + Fraction(3, 1024), "1.000000007"]
    data = pcapng_bytes([{"interfaces": [(LINKTYPE_ETHERNET, None), (LINKTYPE_LINUX_SLL2, 9), (LINKTYPE_RAW, two_pow)],
                          "packets": [(0, stamps[0], b"e0"), (1, stamps[1], b"s1"),
                                      (2, stamps[2], b"r2"), (1, stamps[3], b"s3")]}])
    _reader, pkts = read(data)
    assert [(p.linktype, p.data) for p in pkts] == [
        (LINKTYPE_ETHERNET, b"e0"), (LINKTYPE_LINUX_SLL2, b"s1"), (LINKTYPE_RAW, b"r2"), (LINKTYPE_LINUX_SLL2, b"s3")]
    for p, ts in zip(pkts, stamps, strict=False):
        assert_ts(p.timestamp, ts)
    assert abs(pkts[3].timestamp - 1.000000007) < 1e-12


def test_pcapng_two_sections_reset_interfaces_and_byte_order():
    data = pcapng_bytes([
        {"interfaces": [(LINKTYPE_ETHERNET, None)], "packets": [(0, T0, b"s1p1"), (0, T0 + 1, b"s1p2")]},
        {"byteorder": ">", "interfaces": [(LINKTYPE_RAW, 9)], "packets": [(0, f"{T0 + 2}.000000005", b"s2p1")]},
    ])
    reader, pkts = read(data)
    assert [(p.index, p.linktype, p.data) for p in pkts] == [
        (1, LINKTYPE_ETHERNET, b"s1p1"), (2, LINKTYPE_ETHERNET, b"s1p2"), (3, LINKTYPE_RAW, b"s2p1")]
    assert_ts(pkts[2].timestamp, f"{T0 + 2}.000000005")
    assert reader.warnings == []


def test_pcapng_section_header_only():
    reader, pkts = read(synth.shb())
    assert pkts == [] and reader.format == "pcapng" and reader.warnings == []


@pytest.mark.parametrize("bad_length", [0, 8, 13, 2**31])
def test_pcapng_bad_block_length_stops_with_warning(bad_length):
    good = pcapng_bytes([{"interfaces": [(LINKTYPE_ETHERNET, None)], "packets": [(0, T0, b"kept")]}])
    bad = pcapng_block(EPB_TYPE, b"\x00" * 40, total_length=bad_length)
    after = synth.epb(0, T0 * 10**6, b"never reached")
    reader, pkts = read(good + bad + after)
    assert [p.data for p in pkts] == [b"kept"]
    assert reader.warnings, "a bad block length must be reported"


def test_pcapng_truncated_mid_block():
    data = pcapng_bytes([{"interfaces": [(LINKTYPE_ETHERNET, None)],
                          "packets": [(0, T0, b"one" * 10), (0, T0 + 1, b"two" * 10)]}])
    last_block_len = 12 + 20 + 32  # EPB header+trailer, fixed fields, 30 bytes padded to 32
    reader, pkts = read(data[:-7])
    assert [p.data for p in pkts] == [b"one" * 10]
    assert_cut_warning(reader.warnings, record_start=len(data) - last_block_len, file_len=len(data) - 7)


def test_pcapng_packet_for_undeclared_interface_is_not_an_exception():
    data = pcapng_bytes([{"interfaces": [(LINKTYPE_ETHERNET, None)], "packets": [(0, T0, b"ok")]}])
    data += synth.epb(5, T0 * 10**6, b"no such interface")
    reader, pkts = read(data)
    assert pkts[0].data == b"ok"
    assert reader.warnings


# ---- fuzz: damage never escapes as an exception --------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["pcap<", "pcap>", "pcapng<", "pcapng>"]), st.binary(max_size=300))
def test_garbage_after_a_valid_header_never_raises(kind, tail):
    """Invariant: after a readable header, any bytes become packets or warnings; an exception
    during iteration is a bug."""
    bo = kind[-1]
    if kind.startswith("pcapng"):
        header = synth.shb(byteorder=bo) + synth.idb(LINKTYPE_ETHERNET, byteorder=bo)
    else:
        header = synth.pcap_header(LINKTYPE_ETHERNET, byteorder=bo)
    reader = open_capture(io.BytesIO(header + tail))
    for p in reader:
        assert isinstance(p, RawPacket)
        assert len(p.data) <= len(tail)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_open_or_capture_file_error(data):
    try:
        reader = open_capture(io.BytesIO(data))
    except CaptureFileError:
        return
    list(reader)


# ---- streaming -----------------------------------------------------------------------------------


def test_reading_is_streaming(tmp_path):
    """A 200k-packet file (~15 MB) is read packet by packet: the reader returns an iterator
    (not a list), reading the first packet does not read the file, and the peak of Python
    allocations while iterating stays far below the file size."""
    path = tmp_path / "big.pcap"
    body = bytes(range(60))
    n = 200_000
    with open(path, "wb") as f:
        synth.write_pcap(f, ((Fraction(T0 * 1000 + i, 1000), LINKTYPE_ETHERNET, body) for i in range(n)))
    size = path.stat().st_size
    assert size > 14 * 2**20

    with open(path, "rb") as f:
        reader = open_capture(f)
        it = iter(reader)
        assert not isinstance(it, (list, tuple))
        assert inspect.isgenerator(it) or hasattr(it, "__next__")
        first = next(it)
        assert first.index == 1
        assert f.tell() < size // 4, "reading one packet consumed most of the file"

    with open(path, "rb") as f:
        tracemalloc.start()
        try:
            count = 0
            last = None
            for p in open_capture(f):
                count += 1
                last = p
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert count == n and last.index == n
    # One read buffer (1 MiB plus the record it cut) and its columns: bounded, whatever the file size.
    assert peak < 6 * 2**20, f"peak {peak} bytes for a {size}-byte file"


# ---- differential: dpkt's pcap reader ------------------------------------------------------------


@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("nanosecond", [False, True], ids=["usec", "nsec"])
def test_agrees_with_dpkt_pcap_reader(byteorder, nanosecond):
    conv = synth.amqp_conversation()
    unit = "000000001" if nanosecond else "000001"
    packets = [(f"{T0 + i}.{unit}", lt, d) for i, (_, lt, d) in enumerate(conv.packets())]
    data = pcap_bytes(packets, byteorder=byteorder, nanosecond=nanosecond)
    ours = list(open_capture(io.BytesIO(data)))
    theirs = list(dpkt.pcap.Reader(io.BytesIO(data)))
    assert len(ours) == len(theirs) == len(packets)
    for p, (ts, buf) in zip(ours, theirs, strict=False):
        assert p.data == bytes(buf)
        assert abs(p.timestamp - float(ts)) <= 2 * math.ulp(float(ts))
