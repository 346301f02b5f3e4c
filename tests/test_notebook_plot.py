"""The notebook's plot API behaves like pandas' (issue 16 §5): `conn.plot(ax=ax)` draws into the
caller's Axes and returns it, so pyplot shows the caller's figure, once; `conn.plot()` returns a
Figure of its own that Jupyter shows once, as the cell's result."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import nbformat
from nbclient import NotebookClient

import analyzer
from tests.conftest import CAPTURES

CAPTURE = str(CAPTURES / "blocked-callback.pcap")


def test_plot_into_the_callers_axes_returns_them():
    connection = analyzer.load(CAPTURE).connection(0)
    fig, ax = plt.subplots()
    try:
        assert connection.plot(ax=ax) is ax
        assert plt.fignum_exists(fig.number) and ax.get_children()
        own = connection.plot()
        assert own not in [plt.figure(n) for n in plt.get_fignums()]  # not pyplot's: never shown twice
    finally:
        plt.close("all")


def test_jupyter_shows_each_plot_once():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(f"import analyzer, matplotlib.pyplot as plt\nc = analyzer.load({CAPTURE!r}).connection(0)"),
        nbformat.v4.new_code_cell("fig, ax = plt.subplots(figsize=(8, 3))\nc.plot(ax=ax)"),
        nbformat.v4.new_code_cell("c.plot()"),
        nbformat.v4.new_code_cell("c.plot(ax=plt.gca())\nplt.show()"),
    ]
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    images = [sum("image/png" in output.get("data", {}) for output in cell.outputs) for cell in nb.cells]
    assert images == [0, 1, 1, 1]
