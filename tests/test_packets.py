"""Tests of analyzer.net.packets: link, IP and TCP headers → Segment, and the counting of the rest.

Fuzz invariant (checked with hypothesis below): any bytes under any link type give a Segment or
None with exactly one summary counter raised; an exception is a bug.
"""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Ether

from analyzer.net import packets
from analyzer.net.packets import PacketDecoder
from analyzer.records import ACK, PSH, SYN, CaptureSummary, RawPacket, Segment
from tests import synth
from tests.synth import ethernet, loop, null, sll, sll2, tcp_packet, wrap

TS = 1700000000.25
V4 = ("192.0.2.10", "198.51.100.20")
V6 = ("2001:db8::10", "2001:db8::5672")
PAYLOAD = b"\x08\x00\x00\x00\x00\x00\x00\xce" * 3


def decode(linktype: int, data: bytes, *, index: int = 7, orig_len: int | None = None):
    summary = CaptureSummary()
    seg = PacketDecoder(summary).decode(
        RawPacket(index, TS, linktype, data, len(data) if orig_len is None else orig_len))
    return seg, summary


def counters(summary: CaptureSummary) -> dict:
    return {"ip_fragments": summary.ip_fragments, "non_tcp": summary.non_tcp,
            "malformed": summary.malformed, "unsupported": sum(summary.unsupported_linktypes.values())}


NONE = {"ip_fragments": 0, "non_tcp": 0, "malformed": 0, "unsupported": 0}


def only(name: str) -> dict:
    return NONE | {name: 1}


def ip_for(family: int, payload: bytes = PAYLOAD, **kw) -> bytes:
    src, dst = V4 if family == 4 else V6
    return tcp_packet(src, dst, 52018, 5672, 123456789, 987654321, PSH | ACK, payload, window=5000, **kw)


def _patch(ip: bytes, pos: int, value: bytes) -> bytes:
    return ip[:pos] + value + ip[pos + len(value):]


def assert_segment(seg, family: int, payload: bytes = PAYLOAD, payload_len: int | None = None):
    src, dst = V4 if family == 4 else V6
    assert isinstance(seg, Segment)
    assert seg.index == 7 and seg.timestamp == TS
    assert seg.src == ipaddress.ip_address(src).packed
    assert seg.dst == ipaddress.ip_address(dst).packed
    assert (seg.sport, seg.dport) == (52018, 5672)
    assert (seg.seq, seg.ack, seg.flags, seg.window) == (123456789, 987654321, PSH | ACK, 5000)
    assert seg.payload == payload
    assert seg.payload_len == (len(payload) if payload_len is None else payload_len)


# ---- every link type gives the same segment ------------------------------------------------------

LINKS = [
    # (id, linktype, families, wrapper keyword arguments)
    ("ethernet", synth.LINKTYPE_ETHERNET, (4, 6), {}),
    ("ethernet-8021q", synth.LINKTYPE_ETHERNET, (4, 6), {"vlans": [100]}),
    ("ethernet-qinq", synth.LINKTYPE_ETHERNET, (4, 6), {"vlans": [100, 200]}),
    ("sll", synth.LINKTYPE_LINUX_SLL, (4, 6), {}),
    ("sll2", synth.LINKTYPE_LINUX_SLL2, (4, 6), {}),
    ("null-le", synth.LINKTYPE_NULL, (4, 6), {"byteorder": "<"}),
    ("null-be", synth.LINKTYPE_NULL, (4, 6), {"byteorder": ">"}),
    *[(f"null-le-af{af}", synth.LINKTYPE_NULL, (6,), {"byteorder": "<", "af": af}) for af in synth.AF_INET6_VALUES],
    *[(f"null-be-af{af}", synth.LINKTYPE_NULL, (6,), {"byteorder": ">", "af": af}) for af in synth.AF_INET6_VALUES],
    ("loop", synth.LINKTYPE_LOOP, (4, 6), {}),
    *[(f"loop-af{af}", synth.LINKTYPE_LOOP, (6,), {"af": af}) for af in synth.AF_INET6_VALUES],
    ("raw-101", synth.LINKTYPE_RAW, (4, 6), {}),
    ("raw-12", synth.LINKTYPE_RAW_12, (4, 6), {}),
    ("raw-14", synth.LINKTYPE_RAW_14, (4, 6), {}),
    ("ipv4-228", synth.LINKTYPE_IPV4, (4,), {}),
    ("ipv6-229", synth.LINKTYPE_IPV6, (6,), {}),
]
CASES = [pytest.param(lt, fam, kw, id=f"{name}-v{fam}") for name, lt, fams, kw in LINKS for fam in fams]


@pytest.mark.parametrize("linktype,family,kwargs", CASES)
def test_each_link_type_gives_the_same_segment(linktype, family, kwargs):
    seg, summary = decode(linktype, wrap(linktype, ip_for(family), **kwargs))
    assert_segment(seg, family)
    assert counters(summary) == NONE


def test_linktype_constants():
    assert (packets.LINKTYPE_ETHERNET, packets.LINKTYPE_NULL, packets.LINKTYPE_LOOP, packets.LINKTYPE_RAW,
            packets.LINKTYPE_RAW_12, packets.LINKTYPE_RAW_14, packets.LINKTYPE_IPV4, packets.LINKTYPE_IPV6,
            packets.LINKTYPE_LINUX_SLL, packets.LINKTYPE_LINUX_SLL2) == (1, 0, 108, 101, 12, 14, 228, 229, 113, 276)


def test_scapy_agrees_with_synth_ethernet_and_vlans():
    """Cross-check the hand-built Ethernet/VLAN header against scapy's dissector."""
    frame = ethernet(ip_for(4), vlans=[100, 200])
    e = Ether(frame)
    assert e.type == 0x88A8 and e.payload.vlan == 100 and e.payload.payload.vlan == 200
    assert bytes(e[IP]) == ip_for(4)


def test_unsupported_link_type_counted():
    seg, summary = decode(127, b"\x00" * 80)  # 802.11 radiotap
    assert seg is None
    assert summary.unsupported_linktypes == {127: 1}
    assert counters(summary) == only("unsupported")


def test_syn_without_payload():
    ip = tcp_packet(*V4, 52018, 5672, 1000, 0, SYN)
    seg, _ = decode(synth.LINKTYPE_RAW, ip)
    assert (seg.flags, seg.seq, seg.ack, seg.payload, seg.payload_len) == (SYN, 1000, 0, b"", 0)


# ---- IP options and extension headers ------------------------------------------------------------


def test_ipv4_options():
    record_route = bytes([7, 11, 4]) + b"\x00" * 8  # RFC 791 record route, room for 2 addresses
    ip = ip_for(4, ip_options=record_route)
    assert ip[0] & 0x0F > 5
    seg, _summary = decode(synth.LINKTYPE_ETHERNET, ethernet(ip))
    assert_segment(seg, 4)


@pytest.mark.parametrize("exts", [
    [IPv6ExtHdrHopByHop()],
    [IPv6ExtHdrDestOpt()],
    [IPv6ExtHdrRouting(addresses=["2001:db8::1", "2001:db8::2"])],
    [IPv6ExtHdrHopByHop(), IPv6ExtHdrRouting(addresses=["2001:db8::1"]), IPv6ExtHdrDestOpt()],
], ids=["hop-by-hop", "dest-opts", "routing", "all-three"])
def test_ipv6_extension_headers(exts):
    seg, _summary = decode(synth.LINKTYPE_ETHERNET, ethernet(ip_for(6, ipv6_ext=exts)))
    assert_segment(seg, 6)


# ---- fragments -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ip_flags,frag", [("MF", 0), ("MF", 100), (0, 100)], ids=["first", "middle", "last"])
def test_ipv4_fragments_counted_not_decoded(ip_flags, frag):
    seg, summary = decode(synth.LINKTYPE_ETHERNET, ethernet(ip_for(4, ip_flags=ip_flags, frag=frag)))
    assert seg is None
    assert counters(summary) == only("ip_fragments")


def test_ipv4_dont_fragment_is_not_a_fragment():
    seg, _summary = decode(synth.LINKTYPE_ETHERNET, ethernet(ip_for(4, ip_flags="DF")))
    assert_segment(seg, 4)


@pytest.mark.parametrize("exts", [[IPv6ExtHdrFragment(m=1)], [IPv6ExtHdrHopByHop(), IPv6ExtHdrFragment(offset=10)]],
                         ids=["fragment", "hop-by-hop+fragment"])
def test_ipv6_fragment_header_counted(exts):
    seg, summary = decode(synth.LINKTYPE_ETHERNET, ethernet(ip_for(6, ipv6_ext=exts)))
    assert seg is None
    assert counters(summary) == only("ip_fragments")


# ---- snapped packets and padding -----------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("kept", [0, 5])
def test_snapped_packet_payload_shorter_than_payload_len(family, kept):
    payload = bytes(range(200))
    frame = ethernet(ip_for(family, payload))
    headers = len(frame) - len(payload)
    seg, _summary = decode(synth.LINKTYPE_ETHERNET, frame[: headers + kept], orig_len=len(frame))
    assert_segment(seg, family, payload=payload[:kept], payload_len=200)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("payload", [b"", b"\xce\x01"])
def test_ethernet_padding_is_not_payload(family, payload):
    ip = ip_for(family, payload)
    frame = ethernet(ip, pad_to=len(ip) + 14 + 12)  # padding after the IP packet
    assert len(frame) > len(ip) + 14
    seg, _summary = decode(synth.LINKTYPE_ETHERNET, frame)
    assert_segment(seg, family, payload=payload)


def test_ethernet_minimum_frame_padding():
    ip = ip_for(4, b"")
    frame = ethernet(ip, pad_to=60)
    assert len(frame) == 60 and len(ip) == 40
    seg, _ = decode(synth.LINKTYPE_ETHERNET, frame)
    assert (seg.payload, seg.payload_len) == (b"", 0)


def test_ipv4_total_length_zero_uses_captured_length():
    """Linux captures of TCP segmentation offload show IPv4 total length 0; the capture's own
    length is the only length left."""
    ip = _patch(ip_for(4), 2, b"\x00\x00")
    seg, _summary = decode(synth.LINKTYPE_RAW, ip)
    assert_segment(seg, 4)


# ---- not TCP -------------------------------------------------------------------------------------


@pytest.mark.parametrize("frame", [
    pytest.param(bytes(Ether() / IP(src=V4[0], dst=V4[1]) / UDP(sport=53, dport=53) / b"dns"), id="udp-v4"),
    pytest.param(bytes(Ether() / IPv6(src=V6[0], dst=V6[1]) / UDP(sport=5353, dport=5353) / b"x"), id="udp-v6"),
    pytest.param(bytes(Ether() / IP(src=V4[0], dst=V4[1]) / ICMP()), id="icmp"),
    pytest.param(bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=V4[1])), id="arp"),
    pytest.param(ethernet(bytes(ARP(pdst=V4[1])), vlans=[10], ethertype=synth.ETHERTYPE_ARP), id="arp-vlan"),
])
def test_non_tcp_counted(frame):
    seg, summary = decode(synth.LINKTYPE_ETHERNET, frame)
    assert seg is None
    assert counters(summary) == only("non_tcp")


def test_non_tcp_on_sll_and_null():
    udp = bytes(IP(src=V4[0], dst=V4[1]) / UDP() / b"x")
    for lt, frame in [(synth.LINKTYPE_LINUX_SLL, sll(udp)), (synth.LINKTYPE_LINUX_SLL2, sll2(udp)),
                      (synth.LINKTYPE_NULL, null(udp)), (synth.LINKTYPE_LOOP, loop(udp))]:
        seg, summary = decode(lt, frame)
        assert seg is None and counters(summary) == only("non_tcp"), lt


# ---- malformed -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("cut", [1, 10, 19, 39])
def test_cut_ip_header_counted_malformed(family, cut):
    ip = ip_for(family)
    seg, summary = decode(synth.LINKTYPE_ETHERNET, ethernet(ip)[: 14 + cut], orig_len=14 + len(ip))
    assert seg is None
    assert counters(summary) == only("malformed")


@pytest.mark.parametrize("family", [4, 6])
def test_cut_tcp_header_counted_malformed(family):
    ip = ip_for(family)
    ip_header = 20 if family == 4 else 40
    seg, summary = decode(synth.LINKTYPE_RAW, ip[: ip_header + 10], orig_len=len(ip))
    assert seg is None
    assert counters(summary) == only("malformed")


@pytest.mark.parametrize("linktype,frame", [
    (synth.LINKTYPE_ETHERNET, b"\x00" * 13),
    (synth.LINKTYPE_LINUX_SLL, b"\x00" * 15),
    (synth.LINKTYPE_LINUX_SLL2, b"\x00"),
    (synth.LINKTYPE_NULL, b"\x02\x00"),
    (synth.LINKTYPE_LOOP, b""),
    (synth.LINKTYPE_RAW, b""),
], ids=["ethernet", "sll", "sll2", "null", "loop", "raw"])
def test_cut_link_header_counted_malformed(linktype, frame):
    seg, summary = decode(linktype, frame)
    assert seg is None
    assert counters(summary) == only("malformed")


@pytest.mark.parametrize("ip", [
    pytest.param(_patch(ip_for(4), 0, b"\x44"), id="ipv4-ihl-4"),
    pytest.param(_patch(ip_for(4), 2, b"\x00\x10"), id="ipv4-total-length-below-header"),
    pytest.param(_patch(ip_for(4), 2, b"\x00\x1e"), id="ipv4-total-length-inside-tcp-header"),
    pytest.param(_patch(ip_for(4), 20 + 12, b"\x40"), id="tcp-data-offset-4"),
    pytest.param(_patch(ip_for(4), 20 + 12, b"\xf0"), id="tcp-data-offset-beyond-packet"),
    pytest.param(_patch(ip_for(4), 0, b"\x55"), id="ip-version-5"),
    pytest.param(_patch(ip_for(6), 40 + 12, b"\x30"), id="ipv6-tcp-data-offset-3"),
])
def test_inconsistent_headers_counted_malformed(ip):
    seg, summary = decode(synth.LINKTYPE_RAW, ip)
    assert seg is None
    assert counters(summary) == only("malformed")


# ---- the AMQP conversation renders and decodes back ----------------------------------------------


@pytest.mark.parametrize("linktype", [synth.LINKTYPE_ETHERNET, synth.LINKTYPE_LINUX_SLL2, synth.LINKTYPE_NULL])
def test_conversation_round_trip(linktype):
    conv = synth.amqp_conversation()
    summary = CaptureSummary()
    dec = PacketDecoder(summary)
    for i, (seg, (ts, lt, frame)) in enumerate(zip(conv.segments, conv.packets(linktype), strict=False), 1):
        out = dec.decode(RawPacket(i, ts, lt, frame, len(frame)))
        assert (out.seq, out.ack, out.flags, out.payload) == (seg.seq, seg.ack, seg.flags, seg.payload)
        (src, sport), _ = conv.endpoints(seg.direction)
        assert (out.src, out.sport) == (ipaddress.ip_address(src).packed, sport)
    assert counters(summary) == NONE


# ---- fuzz ----------------------------------------------------------------------------------------

FUZZ_LINKTYPES = [0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 127]


def _check_never_raises(linktype: int, data: bytes, orig_extra: int) -> None:
    summary = CaptureSummary()
    seg = PacketDecoder(summary).decode(RawPacket(1, 0.0, linktype, data, len(data) + orig_extra))
    raised = sum(counters(summary).values())
    if seg is None:
        assert raised == 1, counters(summary)
    else:
        assert raised == 0
        assert len(seg.src) in (4, 16) and len(seg.dst) == len(seg.src)
        assert len(seg.payload) <= seg.payload_len
        assert seg.payload in data


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(FUZZ_LINKTYPES), st.binary(max_size=120), st.integers(0, 3000))
def test_arbitrary_bytes_never_raise(linktype, data, orig_extra):
    _check_never_raises(linktype, data, orig_extra)


@st.composite
def mutated_packets(draw):
    """Valid frames with a few bytes changed or cut: reaches the IP/TCP code far more often than
    random bytes do."""
    linktype, family, kwargs = draw(st.sampled_from([c.values for c in CASES]))
    frame = bytearray(wrap(linktype, ip_for(family, draw(st.binary(max_size=40))), **kwargs))
    for _ in range(draw(st.integers(1, 4))):
        frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
    return linktype, bytes(frame[: draw(st.integers(0, len(frame)))])


@settings(max_examples=500, deadline=None)
@given(mutated_packets(), st.integers(0, 100))
def test_mutated_packets_never_raise(case, orig_extra):
    linktype, data = case
    _check_never_raises(linktype, data, orig_extra)
