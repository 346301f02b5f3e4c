"""The first hour on a fresh machine (issue 16), as CI's style does it: a clean clone, `make demo`.

`make demo` builds .venv with the core only (what `analyze` and `frames` import) and prints the
report: no build banners, no warnings. That core venv then runs `analyze` and `frames` on every
shipped capture, `watch -r` as an event stream, and the commands that need an extra say which one
in one line (exit 2) instead of a traceback.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import CAPTURES, REPO

pytestmark = pytest.mark.skipif(
    subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode != 0,
    reason="not a git checkout")


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A clean clone of the committed tree with `make demo` run in it: (path, its output)."""
    path = tmp_path_factory.mktemp("fresh") / "amqp-hb"
    subprocess.run(["git", "clone", "-q", str(REPO), str(path)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    demo = subprocess.run(["make", "-s", "demo"], cwd=path, capture_output=True, text=True, timeout=600, env=env)
    return path, demo


def run(clone_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(clone_path / ".venv" / "bin" / "amqp-hb"), *args], capture_output=True, text=True,
                          timeout=120)


def test_make_demo_prints_the_report_without_banners(clone):
    _, demo = clone
    assert demo.returncode == 0, demo.stderr
    assert "missed-client-heartbeats" in demo.stdout and "RabbitMQ" in demo.stdout
    # pip's remarks on this machine's own pip.conf (find-links folders that do not exist here) are
    # the machine's, not the project's; every other warning or notice is a banner the user would see.
    machine = "is ignored: it is neither a file nor a directory"
    noise = [line for line in demo.stderr.splitlines() if machine not in line
             and any(word in line.lower() for word in ("warning", "deprecat", "error", "notice"))]
    assert not noise, demo.stderr


def test_the_core_holds_no_extra(clone):
    path, _ = clone
    python = str(path / ".venv" / "bin" / "python")
    for module in ("matplotlib", "pandas", "pika", "scapy", "rich", "prometheus_client", "jinja2"):
        found = subprocess.run([python, "-c", f"import importlib.util as u; print(u.find_spec({module!r}))"],
                               capture_output=True, text=True, timeout=60).stdout.strip()
        assert found == "None", module


@pytest.mark.parametrize("capture", sorted(p.name for p in CAPTURES.glob("*.pcap")))
def test_core_analyzes_and_lists_every_shipped_capture(clone, capture):
    path, _ = clone
    keys = CAPTURES / capture.replace(".pcap", ".keys")  # TLS: decrypted in the core too (cryptography)
    keylog = ["--tls-keylog", str(keys)] if keys.exists() else []
    for command in (["analyze", *keylog], ["frames", *keylog], ["watch", *keylog, "-r"]):
        done = run(path, *command, str(CAPTURES / capture))
        assert done.returncode == 0, (command, done.stderr)
        assert done.stdout and "Traceback" not in done.stderr


@pytest.mark.parametrize("command, extra", [
    (["plot", "CAPTURE", "-o", "OUT.png"], "plot"),
    (["report", "CAPTURE", "-o", "OUT.html"], "report"),
    (["watch", "-r", "CAPTURE", "--format", "table"], "watch"),
    (["scenario", "run", "blocked-callback"], "lab"),
    (["analyze", "CAPTURE", "--engine", "dask"], "archive"),
])
def test_a_command_without_its_extra_names_it_in_one_line(clone, tmp_path, command, extra):
    path, _ = clone
    args = [str(CAPTURES / "blocked-callback.pcap") if a == "CAPTURE" else str(tmp_path / a) if a.startswith("OUT")
            else a for a in command]
    done = run(path, *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("amqp-hb: "), done.stderr
    assert f"amqp-hb[{extra}]" in lines[0] and "pipx" in lines[0], lines[0]
