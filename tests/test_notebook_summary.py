"""The notebook's Analysis shows what the reports show first (issue 18 §3): the same summary block
(render.html.summary_html) and the connections in the reports' order, problems first."""
from __future__ import annotations

import html
import re

import analyzer
from analyzer.render.summary import CaptureOverview, by_attention, needs_attention
from tests.merged_captures import merged_capture


def test_analysis_html_opens_with_the_summary_and_lists_problems_first(tmp_path):
    analysis = analyzer.load(merged_capture(tmp_path / "busy.pcap"), progress=False)
    page = analysis._repr_html_()
    overview = CaptureOverview.of(analysis.diagnoses)
    assert overview.headline() in page
    start_order = [d.timeline.info.id for d in analysis.diagnoses]
    shown = [html.unescape(cid) for cid in re.findall(r"<td style='text-align:left'><code>([^<]+)</code></td>", page)]
    assert shown == [d.timeline.info.id for d in by_attention(analysis.diagnoses)] != start_order
    problems = sum(map(needs_attention, analysis.diagnoses))
    assert 0 < problems < len(shown)
    assert {d.timeline.info.id for d in analysis.diagnoses if needs_attention(d)} == set(shown[:problems])
