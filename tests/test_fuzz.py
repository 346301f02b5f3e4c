"""Property tests of the whole pipeline on damaged real captures, through the CLI and the API.

Invariant (tests/mutations.py `check_outcome`): whatever the bytes, `amqp-hb frames/analyze` in
every format give results (status 0, warnings allowed) or exit status 2 with one line on stderr,
and `analyze_file` returns or raises CaptureFileError; never status 1 (an internal error), an
escaping exception, a hang (SIGALRM per example) or a large allocation (tracemalloc, sampled).
Each layer has its own fuzz tests (test_pcap, test_packets, test_tcp, test_framing,
test_arguments); this file damages real recordings end to end. Bounded to about a minute;
`make fuzz` runs the same contract for ten minutes under atheris.
"""
from __future__ import annotations

import os
import random
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import mutations, synth

SEEDS = mutations.seed_captures()
NAMES = sorted(SEEDS)
FAST = mutations.RUNS[:2]  # analyze --format json, frames --format jsonl: every layer, every renderer input

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory(prefix="amqp-hb-fuzz-") as d:
        yield os.path.join(d, "input.pcap")


def check(path: str, data: bytes, **kwargs) -> None:
    with open(path, "wb") as f:
        f.write(data)
    mutations.check_outcome(path, **kwargs)


COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def test_seeds_are_clean(scratch):
    """The unmutated seeds (real captures and their re-encodings) analyze without a warning."""
    for name, data in SEEDS.items():
        check(scratch, data)
        outcome = mutations.run_cli(["analyze", "--format", "json", scratch])
        assert outcome.status == 0 and outcome.stderr == "", (name, outcome.stderr)


@settings(max_examples=1200, **COMMON)
@given(st.sampled_from(NAMES), st.sampled_from(NAMES), st.randoms(use_true_random=False), st.integers(1, 4))
def test_mutated_real_captures_keep_the_outcome_contract(scratch, name, other, rng, steps):
    data = mutations.mutate(SEEDS[name], SEEDS[other], rng, steps)
    check(scratch, data, runs=mutations.RUNS)


@pytest.mark.parametrize("mutation", mutations.MUTATIONS, ids=lambda m: m.__name__)
@settings(max_examples=60, **COMMON)
@given(name=st.sampled_from(NAMES), other=st.sampled_from(NAMES), seed=st.integers(0, 2**32 - 1))
def test_each_kind_of_damage_keeps_the_outcome_contract(scratch, mutation, name, other, seed):
    rng = random.Random(seed)
    data = mutation(SEEDS[name], rng, SEEDS[other])
    check(scratch, data, runs=FAST)


@settings(max_examples=60, **COMMON)
@given(name=st.sampled_from(NAMES), seed=st.integers(0, 2**32 - 1),
       damage=st.sampled_from([mutations.huge_frame_size, mutations.corrupt_record_length, mutations.splice]))
def test_declared_sizes_never_become_allocations(scratch, name, seed, damage):
    """A 4 GiB frame or record length costs nothing: peak Python allocation stays small."""
    rng = random.Random(seed)
    data = SEEDS[name]
    for _ in range(3):
        data = damage(data, rng, SEEDS[NAMES[seed % len(NAMES)]])
    check(scratch, data, runs=FAST, measure_memory=True)


@settings(max_examples=500, **COMMON)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_as_a_capture(scratch, data):
    check(scratch, data, runs=FAST)


@settings(max_examples=500, **COMMON)
@given(st.sampled_from(["pcap<", "pcap>", "pcapng<", "pcapng>"]), st.binary(max_size=3000))
def test_arbitrary_bytes_after_a_valid_file_header(scratch, kind, tail):
    bo = kind[-1]
    if kind.startswith("pcapng"):
        header = synth.shb(byteorder=bo) + synth.idb(synth.LINKTYPE_ETHERNET, byteorder=bo)
    else:
        header = synth.pcap_header(synth.LINKTYPE_ETHERNET, byteorder=bo)
    check(scratch, header + tail, runs=FAST)


@settings(max_examples=400, **COMMON)
@given(st.sampled_from(NAMES), st.data())
def test_arbitrary_bytes_inside_real_packets(scratch, name, draw):
    """Random payloads in real record framing: reaches TCP, reassembly and the frame decoder
    (bit flips mostly stop at the record layer)."""
    header, records, endian = mutations.split_pcap(SEEDS[name]) if name.endswith(".pcap") and not name.endswith(
        "-be.pcap") else mutations.split_pcap(SEEDS["blocked-callback.pcap"])
    out = [header]
    for rec in records:
        if draw.draw(st.booleans()):
            frame = rec[mutations.RECORD_HEADER:]
            cut = draw.draw(st.integers(0, len(frame)))
            junk = draw.draw(st.binary(max_size=64))
            body = frame[:cut] + junk + frame[cut + len(junk):]
            rec = rec[:8] + len(body).to_bytes(4, "little" if endian == "<" else "big") * 2 + body
        out.append(rec)
    check(scratch, b"".join(out), runs=FAST)
