"""Every notebook in notebooks/ runs top to bottom on the shipped captures, without a cell error.

Executed with nbclient in a fresh kernel whose working directory is notebooks/ (as when a user
opens them in Jupyter). The kernel is "python3": jupyter_client replaces a kernelspec's bare
`python` with the interpreter running the tests, so it is this venv's Python; a first injected
cell checks that. A missing capture fails the notebook (load_scenario raises), it is never skipped.
Notebooks are stored without outputs: the test checks that too.
"""
from __future__ import annotations

import pathlib
import sys

import nbformat
import pytest
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 120  # seconds per cell
# The captures every notebook reads (scenario names under captures/).
NEEDED = ["blocked-callback", "long-heartbeat", "heartbeat-disabled", "threaded-worker", "process-data-events",
          "publisher-idle", "broker-paused", "consumer-timeout", "proxy"]


def test_the_three_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["01-why-the-rst-comes-late.ipynb", "02-analyze-your-own-capture.ipynb",
                                           "03-broker-vs-client-timeouts.ipynb"]


def test_the_captures_they_need_are_shipped():
    missing = [name for name in NEEDED if not (REPO / "captures" / f"{name}.pcap").exists()]
    assert not missing, f"captures/ lacks {missing}: record them with tools/record_captures.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip the outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_without_errors(path, monkeypatch):
    monkeypatch.delenv("AMQP_HB_CAPTURE", raising=False)
    monkeypatch.delenv("AMQP_HB_PORTS", raising=False)
    monkeypatch.setenv("AMQP_HB_CAPTURES", str(REPO / "captures"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    check = nbformat.v4.new_code_cell(f"import sys\nassert sys.prefix == {sys.prefix!r}, sys.executable")
    nb.cells.insert(0, check)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no plot was displayed"
    assert any("text/html" in o.get("data", {}) for o in outputs), "no HTML summary was displayed"
