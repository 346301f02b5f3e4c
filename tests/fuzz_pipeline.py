"""`make fuzz`: a long coverage-guided fuzz run of the whole pipeline, seeded from captures/.

    .venv/bin/python -m tests.fuzz_pipeline                 # 10 minutes (FUZZ_SECONDS or --seconds)
    .venv/bin/python -m tests.fuzz_pipeline --seconds 3600 --workdir /tmp/amqp-hb-fuzz
    .venv/bin/python -m tests.fuzz_pipeline --replay FILE   # rerun one saved input, with its traceback

Engine: atheris (libFuzzer for Python, coverage of the analyzer package) when it is installed
(`pip install atheris`), else hypothesis with the same mutations for the same time budget.
atheris' corpus starts with the real captures, their pcapng and big-endian re-encodings
(tests/mutations.py); half of the mutations are libFuzzer's byte-level ones, half ours (packets
dropped, duplicated, reordered, snapped; record lengths corrupted; a frame size of 4 GiB; two
captures spliced).

Each input is checked against the outcome contract (tests/mutations.py `check_outcome`): results,
results with warnings, or exit status 2 with one line on stderr; never status 1, an escaping
exception, more than TIME_LIMIT seconds, or a large allocation. A violation does not stop the run:
the input is saved once per distinct failure under WORKDIR/findings/ and the run goes on; the
summary at the end lists them. Each one then becomes a regression test (tests/test_regressions.py).
"""
from __future__ import annotations

import argparse
import atexit
import hashlib
import os
import random
import sys
import tempfile
import time
import traceback

DEFAULT_SECONDS = 600
FULL_CHECK_EVERY = 10  # every n-th input also goes through the text/CSV renderers
MEMORY_CHECK_EVERY = 50  # tracemalloc slows a run about 3x: sample it
MAX_LEN = 1 << 16  # the shipped captures are 4-12 KB; splices double that


class Campaign:
    """Runs inputs through the contract, counts them, keeps one input per distinct failure."""

    def __init__(self, workdir: str) -> None:
        from tests import mutations

        self.mutations = mutations
        self.workdir = workdir
        self.findings_dir = os.path.join(workdir, "findings")
        os.makedirs(self.findings_dir, exist_ok=True)
        self.input_path = os.path.join(workdir, f"input-{os.getpid()}.pcap")
        self.execs = 0
        self.findings: dict[str, str] = {}
        self.started = time.monotonic()
        self.seeds = mutations.seed_captures()
        self.seed_list = list(self.seeds.values())

    def run_one(self, data: bytes) -> None:
        self.execs += 1
        with open(self.input_path, "wb") as f:
            f.write(data)
        runs = self.mutations.RUNS if self.execs % FULL_CHECK_EVERY == 0 else self.mutations.RUNS[:2]
        try:
            self.mutations.check_outcome(self.input_path, runs=runs,
                                         measure_memory=self.execs % MEMORY_CHECK_EVERY == 0)
        except (Exception, self.mutations.Hang) as exc:  # noqa: BLE001 (a fuzzer records whatever escapes)
            self._record(data, exc)
        if self.execs % 2000 == 0:
            self.write_summary()

    def write_summary(self) -> None:
        """libFuzzer ends the process with exit(): keep WORKDIR/summary.txt current instead of
        relying on atexit."""
        with open(os.path.join(self.workdir, "summary.txt"), "w") as f:
            f.write(self.summary() + "\n")

    def _record(self, data: bytes, exc: BaseException) -> None:
        text = str(exc).splitlines()[0] if str(exc) else ""
        # One finding per failure kind and place: the exception type and the innermost analyzer frame.
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/analyzer/" in f.filename]
        where = f"{frames[-1].filename.rsplit('/analyzer/', 1)[1]}:{frames[-1].lineno}" if frames else ""
        signature = f"{type(exc).__name__} {where} {text.split(' (rerun')[0][:160]}"
        if signature in self.findings:
            return
        name = hashlib.sha1(data).hexdigest()[:12] + ".pcap"
        with open(os.path.join(self.findings_dir, name), "wb") as f:
            f.write(data)
        self.findings[signature] = name
        print(f"\nFINDING {len(self.findings)}: {signature}\n  input saved as {self.findings_dir}/{name}",
              file=sys.stderr, flush=True)
        self.write_summary()

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        lines = [f"fuzz_pipeline: {self.execs} executions in {elapsed:.0f} s "
                 f"({self.execs / max(elapsed, 1e-9):.0f}/s), {len(self.findings)} distinct findings"]
        lines += [f"  {name}: {signature}" for signature, name in self.findings.items()]
        return "\n".join(lines)


def run_atheris(campaign: Campaign, seconds: int, corpus_dir: str) -> None:
    import atheris

    for name, data in campaign.seeds.items():
        with open(os.path.join(corpus_dir, name), "wb") as f:
            f.write(data)

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.5:
            return atheris.Mutate(data, max_size)
        other = rng.choice(campaign.seed_list)
        return campaign.mutations.mutate(data, other, rng, rng.randint(1, 3))[:max_size]

    def crossover(data1: bytes, data2: bytes, max_out: int, seed: int) -> bytes:
        rng = random.Random(seed)
        return campaign.mutations.splice(data1, rng, data2)[:max_out]

    # -timeout=0: the per-input bound is our own SIGALRM (mutations.time_limit), which records
    # the hang and goes on; libFuzzer's would end the run.
    argv = [sys.argv[0], corpus_dir, f"-max_total_time={seconds}", f"-max_len={MAX_LEN}", "-timeout=0",
            "-rss_limit_mb=2048", "-print_final_stats=1"]
    atheris.Setup(argv, campaign.run_one, custom_mutator=mutator, custom_crossover=crossover)
    atheris.Fuzz()  # exits the process when the time is up; the atexit hook prints the summary


def run_hypothesis(campaign: Campaign, seconds: int) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    names = sorted(campaign.seeds)
    deadline = time.monotonic() + seconds

    # Rounds of a few seconds each, until the budget is spent (an example after the deadline is a no-op).
    @settings(max_examples=500, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(names), st.sampled_from(names), st.randoms(use_true_random=True),
           st.integers(min_value=1, max_value=4))
    def one(name, other, rng, steps):
        if time.monotonic() > deadline:
            return
        campaign.run_one(campaign.mutations.mutate(campaign.seeds[name], campaign.seeds[other], rng, steps))

    while time.monotonic() < deadline:
        one()


def replay(path: str) -> int:
    from tests.mutations import check_outcome

    check_outcome(path, measure_memory=True)
    print(f"{path}: the outcome contract holds")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", DEFAULT_SECONDS)))
    parser.add_argument("--workdir", default=os.environ.get("FUZZ_WORKDIR")
                        or os.path.join(tempfile.gettempdir(), "amqp-hb-fuzz"))
    parser.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    parser.add_argument("--replay", metavar="FILE", help="check one saved input and show its traceback")
    args = parser.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    engine = args.engine
    if engine == "auto":
        try:
            import atheris
            engine = "atheris"
        except ImportError:
            engine = "hypothesis"
    corpus_dir = os.path.join(args.workdir, "corpus")
    os.makedirs(corpus_dir, exist_ok=True)
    if engine == "atheris":
        import atheris

        with atheris.instrument_imports(include=["analyzer"]):
            import analyzer.api
            import analyzer.cli
            import analyzer.render.analysis_json
            import analyzer.render.text  # noqa: F401
    campaign = Campaign(args.workdir)
    print(f"fuzz_pipeline: {engine}, {args.seconds} s, {len(campaign.seeds)} seeds, workdir {args.workdir}",
          file=sys.stderr, flush=True)
    atexit.register(lambda: (campaign.write_summary(), print(campaign.summary(), file=sys.stderr, flush=True)))
    if engine == "atheris":
        run_atheris(campaign, args.seconds, corpus_dir)
    else:
        run_hypothesis(campaign, args.seconds)
    return 1 if campaign.findings else 0


if __name__ == "__main__":
    sys.exit(main())
