"""The smoke report in a real browser (headless Chromium, installed on demand): the verdict
block on the first screen, no table wider than the 1,200 px viewport, every figure loaded."""

from __future__ import annotations

import pytest

from dstcore import DstError
from dstcore.report.browser import HEIGHT, WIDTH, ensure_chromium, measure, problems, screenshot


@pytest.fixture(scope="module")
def chromium() -> str:
    try:
        return ensure_chromium()
    except DstError as err:
        pytest.skip(f"headless Chromium is not available here: {err}")


def test_the_smoke_report_reads_at_a_glance(smoke, chromium, tmp_path):
    results, _ = smoke
    html = results / "report/report.html"
    layout = measure(html, chromium)
    assert layout["viewport"]["width"] == WIDTH
    assert problems(layout) == []
    assert 0 < layout["verdicts"]["top"] < layout["verdicts"]["bottom"] <= \
        layout["viewport"]["height"]
    ids = {t["id"] for t in layout["tables"]}
    assert {"frontier-pivot", "frontier", "paper-vs-reproduced", "activation-sparsity",
            "dual-structures", "dual-sparse", "latency", "latency-b1-t1"} <= ids
    figures = sorted((results / "figures").glob("*.png"))
    assert len(layout["images"]) == len(figures) > 0
    assert all(im["natural_width"] > 300 for im in layout["images"])
    png = screenshot(html, tmp_path / "first_screen.png", chromium)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_the_check_finds_what_a_reader_would_hit(chromium, tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        '<html><body><div style="height:2000px">title</div><div id="verdicts">late</div>'
        '<table id="wide"><tr><td style="min-width:3000px">x</td></tr></table>'
        '<img src="missing.png"></body></html>')
    found = problems(measure(page, chromium, width=WIDTH, height=HEIGHT))
    assert len(found) == 4, found
    assert found[0].startswith("the verdict block ends at")
    assert found[1].startswith("the page is")
    assert found[2].startswith("table wide is")
    assert found[3] == "figure 1 did not load"
