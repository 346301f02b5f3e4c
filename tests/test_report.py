"""`amqp-hb report` (issue 18): one self-contained HTML file, checked the way people will use it.

- parsed strictly by html5lib (the WHATWG parsing algorithm; any parse error fails) and every id
  unique (the inlined plots' ids are prefixed per plot);
- opened in a real headless Chromium (Debian's `chromium`, installed by `make test`) over the
  DevTools protocol (tests/headless_chromium.py): the page makes no request but for itself (a
  canary page shows a request is seen, even one its CSP blocks), logs no CSP violation, its DOM
  after its script ran holds the summary, the sortable table (sorted by a click) and the plots,
  and its screenshot is not blank;
- 1,000 connections stay a few MB and open quickly;
- passwords, message bodies and key material appear only with --show-secrets (key material never).
"""
from __future__ import annotations

import html.parser
import io
import re
import sys
import time
from pathlib import Path

import pytest

from analyzer.cli import ExitStatus, main
from analyzer.render.html import MAX_PLOTS
from tests.headless_chromium import CHROMIUM, visit
from tests.merged_captures import merged_capture, thousand_connections

pytest.importorskip("jinja2")
pytest.importorskip("matplotlib")
html5lib = pytest.importorskip("html5lib")

CAPTURES = Path(__file__).resolve().parent.parent / "captures"
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is missing (apt-get install chromium; "
                                                                "`make test` installs it)")


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def report(tmp_path: Path, *files: str, extra: tuple[str, ...] = ()) -> str:
    out = tmp_path / "report.html"
    status, stdout, err = run("report", *files, "-o", str(out), *extra)
    assert status == ExitStatus.OK, err
    assert stdout.startswith(f"{out}: ")
    return out.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def busy(tmp_path_factory) -> str:
    return str(merged_capture(tmp_path_factory.mktemp("busy") / "busy.pcap"))


@pytest.fixture(scope="module")
def busy_report(busy, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "busy.html"
    status, _, err = run("report", busy, "-o", str(path))
    assert status == ExitStatus.OK, err
    return path


# ---- the HTML itself ------------------------------------------------------------------------------


class _Attributes(html.parser.HTMLParser):
    """Every start tag's attributes (SVG's xlink:href included), for the id and URL checks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.attributes: list[tuple[str, str, str]] = []  # (tag, name, value)
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.attributes.extend((tag, name, value or "") for name, value in attrs)
        self.tags.append((tag, {name: value or "" for name, value in attrs}))


def _parsed(text: str) -> _Attributes:
    parser = _Attributes()
    parser.feed(text)
    parser.close()
    return parser


def _attributes(text: str) -> list[tuple[str, str, str]]:
    return _parsed(text).attributes


def test_the_page_parses_strictly_and_its_ids_are_unique(busy_report):
    text = busy_report.read_text(encoding="utf-8")
    html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(text)  # raises on any parse error
    ids = [value for _, name, value in _attributes(text) if name == "id"]
    assert len(ids) > 100 and len(ids) == len(set(ids)), [i for i in set(ids) if ids.count(i) > 1][:5]


def test_strict_parsing_and_the_id_check_catch_what_they_are_for():
    with pytest.raises(html5lib.html5parser.ParseError):
        html5lib.HTMLParser(strict=True).parse("<!DOCTYPE html><html><body><p><div></span></body></html>")
    ids = [v for _, n, v in _attributes('<svg><g id="a"/></svg><svg><g id="a"/></svg>') if n == "id"]
    assert len(ids) != len(set(ids))


def test_the_page_refers_to_nothing_outside_itself(busy_report):
    text = busy_report.read_text(encoding="utf-8")
    for tag, name, value in _attributes(text):
        if name in ("src", "href", "xlink:href", "action", "srcset", "poster", "data"):
            assert value.startswith("#"), (tag, name, value)
    assert "url(" not in re.sub(r"url\(#[^)]*\)", "", text)  # only in-page references (SVG clip paths)
    assert "@import" not in text
    (policy,) = [attrs["content"] for tag, attrs in _parsed(text).tags
                 if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy"]
    assert policy.startswith("default-src 'none'; ")
    assert "'unsafe-inline'" not in policy.split("script-src")[1]  # the script is allowed by its hash


def test_summary_table_and_plots_are_in_the_page(busy_report, busy):
    text = busy_report.read_text(encoding="utf-8")
    _, csv_text, _ = run("analyze", busy, "--format", "csv")
    ids = [line.split(",")[1] for line in csv_text.splitlines()[1:]]
    assert "8 of 19 connections need attention: 3 closed by the broker for missed client heartbeats" in text
    table = text.split('<table class="sortable connections" id="connections-0">')[1].split("</table>")[0]
    assert table.count("<tr class=") == 19 and all(cid.replace(">", "&gt;") in table for cid in ids)
    # each row's # is its --connection position: the CSV's (start) order
    pairs = re.findall(r'<td class="num">(\d+)</td>\s*<td class="id">(?:<a href="#[^"]*">)?([^<]*)<', table)
    assert len(pairs) == 19 and all(ids[int(pos)] == cid.replace("&gt;", ">") for pos, cid in pairs)
    assert text.count('<figure class="plot"><svg') == 8 and text.count('<section class="connection"') == 8
    assert "Ethernet (1)" in text and "amqp-hb 0.1.0" in text and "2026-01-01T00:00:19.560Z" in text
    assert "frames and FIN/RST segments around the end" in text and "TCP RST" in text


def test_the_summary_fragment_for_the_notebook_is_the_reports_summary(busy, busy_report):
    from analyzer.api import analyze_file
    from analyzer.render.html import summary_html
    from analyzer.render.summary import CaptureOverview

    analysis = analyze_file(busy)
    fragment = summary_html(analysis.summary, CaptureOverview.of(analysis.connections))
    html5lib.HTMLParser(strict=True).parseFragment(fragment)
    assert fragment.startswith('<div class="amqphb"><style>') and "8 of 19 connections need attention" in fragment
    inner = fragment.split('<div class="summary" id="amqphb-summary">')[1]
    page = busy_report.read_text(encoding="utf-8").split('<div class="summary" id="summary-0">')[1]
    assert inner.split("</div>")[0] == page.split("</div>")[0]  # the same block as the report's


# ---- in a real browser ----------------------------------------------------------------------------


@needs_chromium
def test_the_browser_reports_a_request_the_page_makes_even_when_its_csp_blocks_it(tmp_path):
    """The canary: what the next tests count as "no request" would see one."""
    page = tmp_path / "canary.html"
    page.write_text('<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
                    'content="default-src \'none\'"></head><body><img src="http://report-canary.invalid/x.png">'
                    "</body></html>")
    seen = visit(page, tmp_path / "profile")
    assert seen.requests == [page.as_uri(), "http://report-canary.invalid/x.png"]
    assert any("Content Security Policy" in line for line in seen.log), seen.log


SORT_BY_START = """(() => {
  const table = document.getElementById("connections-0");
  const heading = Array.from(table.tHead.rows[0].cells).find(th => th.textContent.startsWith("start"));
  const column = () => Array.from(table.tBodies[0].rows).map(row => parseFloat(row.cells[heading.cellIndex].textContent));
  heading.click();
  const up = column();
  heading.click();
  return [up, column(), heading.getAttribute("aria-sort")];
})()"""


@needs_chromium
def test_chromium_renders_the_report_with_no_request_and_a_working_table(busy_report, tmp_path):
    seen = visit(busy_report, tmp_path / "profile", scripts=(SORT_BY_START,))
    assert seen.requests == [busy_report.resolve().as_uri()]  # the page itself, nothing else
    assert seen.log == [] and seen.console_errors == []  # no CSP violation (the script's hash is right)
    assert "8 of 19 connections need attention" in seen.dom  # the summary
    assert '<table class="sortable connections" id="connections-0" data-sortable="ready">' in seen.dom
    assert len(re.findall(r'<tr class="(problem|fine)">', seen.dom)) == 19
    assert len(re.findall(r'<figure class="plot"><svg', seen.dom)) == 8
    up, down, direction = seen.evaluated[0]
    assert up == sorted(up) and down == sorted(up, reverse=True) and direction == "descending" and len(up) == 19
    shot = tmp_path / "report.png"
    shot.write_bytes(seen.screenshot)
    _assert_not_blank(shot)


PRINT_LAYOUT = """(() => {
  const wide = Array.from(document.querySelectorAll("table, figure, p")).filter(e => e.scrollWidth > 720 + 1);
  const sections = Array.from(document.querySelectorAll("section.connection"));
  return [wide.map(e => e.tagName + "." + e.className), sections.map(s => getComputedStyle(s).breakBefore)];
})()"""


@needs_chromium
def test_printed_the_page_fits_a4_and_starts_each_problem_connection_on_a_new_page(busy_report, tmp_path):
    """A4 at 96 dpi is 794 px wide, about 720 px inside the printer's margins."""
    seen = visit(busy_report, tmp_path / "profile", width=720, height=1000, media="print", scripts=(PRINT_LAYOUT,))
    too_wide, breaks = seen.evaluated[0]
    assert too_wide == [] and breaks == ["page"] * 8
    assert seen.requests == [busy_report.resolve().as_uri()]


def _assert_not_blank(png: Path) -> None:
    """Text, badges and plot marks: many pixels that are not background, in many colours, the
    heartbeat red of the plots (render.plot.COLOURS) among them, in every band down the page."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    height, width, _ = pixels.shape
    assert (width, height) == (1280, 2400)
    ink = pixels.sum(axis=2) < 3 * 235
    assert ink.mean() > 0.03, f"{ink.sum()} ink pixels of {ink.size}"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200
    heartbeat_red = np.array([0xD6, 0x27, 0x28])
    assert (np.abs(pixels - heartbeat_red).max(axis=2) < 12).sum() > 50
    band = height // 6
    for top in range(0, height - band + 1, band):
        assert ink[top:top + band].mean() > 0.005, f"blank band at y={top}"


def test_the_blank_check_fails_on_a_blank_page(tmp_path):
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.new("RGB", (1280, 2400), "white").save(blank)
    with pytest.raises(AssertionError, match="ink pixels"):
        _assert_not_blank(blank)


@needs_chromium
def test_a_thousand_connections_stay_a_few_mb_and_open_quickly(tmp_path):
    capture = str(thousand_connections(tmp_path / "k.pcap"))
    started = time.monotonic()
    text = report(tmp_path, capture)
    built = time.monotonic() - started
    size = len(text.encode("utf-8"))
    assert size < 3_000_000, f"{size} bytes"
    assert text.count('<figure class="plot"><svg') == MAX_PLOTS  # 40 problems: the first MAX_PLOTS drawn
    assert f"Plots for the first {MAX_PLOTS} problem connections of the report; 15 here are shown without one" in text
    assert text.count('<section class="connection"') == 40
    html5lib.HTMLParser(strict=True).parse(text)
    started = time.monotonic()
    seen = visit(tmp_path / "report.html", tmp_path / "profile", scripts=(SORT_BY_START,))
    opened = time.monotonic() - started
    assert seen.requests == [(tmp_path / "report.html").resolve().as_uri()] and seen.log == []
    assert len(re.findall(r'<tr class="(problem|fine)">', seen.dom)) == 1000
    up, down, _ = seen.evaluated[0]
    assert up == sorted(up) and down == sorted(up, reverse=True) and len(up) == 1000
    assert opened < 30, f"chromium took {opened:.1f} s"  # a few seconds here, most of it Chromium's start
    print(f"\n1,000 connections: {size / 1e6:.2f} MB, built in {built:.1f} s, opened, sorted twice and "
          f"captured in {opened:.1f} s")


# ---- secrets ---------------------------------------------------------------------------------------


def test_passwords_and_bodies_only_with_show_secrets_and_key_material_never(tmp_path):
    from tests.test_hostile_inputs import SECRETS, _leaks, _secret_capture

    secrets = tmp_path / "secrets.pcap"
    secrets.write_bytes(_secret_capture())
    text = report(tmp_path, str(secrets))
    assert _leaks(text) == [] and "password &lt;redacted&gt;" in text
    shown = report(tmp_path, str(secrets), extra=("--show-secrets",))
    assert SECRETS[0] in shown and SECRETS[1] in shown  # the start-ok passwords, asked for
    body = "message 1 of 1"  # the test message every scenario publishes
    assert body not in report(tmp_path, str(CAPTURES / "blocked-callback.pcap"))
    keys_path = CAPTURES / "tls12-blocked-callback.keys"
    key_material = {line.split()[-1].lower() for line in keys_path.read_text().splitlines() if line and line[0] != "#"}
    for extra in ((), ("--show-secrets",)):
        text = report(tmp_path, str(CAPTURES / "tls12-blocked-callback.pcap"),
                      extra=("--tls-keylog", str(keys_path), *extra)).lower()
        assert "missed-client-heartbeats" in text and not any(k in text for k in key_material)


def test_without_the_report_extra_the_command_says_which(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "jinja2", None)  # as if not installed: importing it raises ImportError
    status, out, err = run("report", str(CAPTURES / "idle.pcap"), "-o", str(tmp_path / "r.html"))
    assert status == ExitStatus.BAD_INPUT and out == "" and err.count("\n") == 1
    assert "report needs the `report` extra (jinja2 is missing): pip install 'amqp-hb[report]'" in err
    assert not (tmp_path / "r.html").exists()


def test_bad_output_and_files_are_one_line(tmp_path):
    status, _, err = run("report", str(CAPTURES / "idle.pcap"), "-o", str(tmp_path / "r.txt"))
    assert status == ExitStatus.BAD_INPUT and "must end in .html" in err and err.count("\n") == 1
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture at all")
    status, out, err = run("report", str(bad), str(CAPTURES / "idle.pcap"), "-o", str(tmp_path / "r.html"))
    assert out.startswith(f"{tmp_path / 'r.html'}: 1 connection, ")
    assert status == ExitStatus.BAD_INPUT and err.startswith(f"amqp-hb: {bad}: ") and err.count("\n") == 1
    assert (tmp_path / "r.html").exists() and "idle.pcap" in (tmp_path / "r.html").read_text(encoding="utf-8")
