"""The supervisor's Reports section in real Chromium draws what the reports say.

Not a golden image (fonts differ between machines): the test decodes the screenshot
of each chart and counts the pixels of each bar colour, which must match the bar
lengths the report's numbers give (bars are drawn at whole pixels, to one scale);
the tables must show the API's numbers; the CSV links must download the same rows.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import chromium, screenshot_rgb
from conftest import EngineClient
from playwright.async_api import Page, expect
from test_reports import _engine, drive

from engine.core.settings import Settings

pytestmark = pytest.mark.browser

# app.css: the funnel's stage colours, the conversions' treated bar, segment line s0.
COLOURS = {
    "fired": (0x0B, 0x3D, 0x5C),
    "claimed": (0x2F, 0x7F, 0xB5),
    "connected": (0x2E, 0x9E, 0x5B),
    "converted": (0xE0, 0x8A, 0x1E),
}
TREATED = (0x0B, 0x3D, 0x5C)
HOLDOUT = (0x9A, 0xA5, 0xB1)
TRACK_PX, FUNNEL_BAR_PX, CONVERSION_BAR_PX = 260, 8, 10  # reports.js


def _pixels(png: bytes) -> np.ndarray[Any, Any]:
    """The screenshot's RGB pixels, height x width x 3."""
    return np.asarray(screenshot_rgb(png), dtype=np.int16)


async def _count(png: bytes, colour: tuple[int, int, int], tolerance: int = 0) -> int:
    """Pixels within `tolerance` of `colour` in each channel (decoded off the loop)."""
    pixels = await asyncio.to_thread(_pixels, png)
    near = np.abs(pixels - np.array(colour, dtype=np.int16)).max(axis=2) <= tolerance
    return int(near.sum())


def _bar_px(value: float, scale: float, height: int) -> int:
    """What reports.js draws: Math.round(value / scale * track) wide, `height` high."""
    return int(value / scale * TRACK_PX + 0.5) * height


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:.1f}%"


async def _sign_in(page: Page, engine: EngineClient) -> None:
    await page.goto(f"{engine.url}/dashboard")
    await page.fill("input[name=user]", engine.credentials["agent_user"])
    await page.fill("input[name=password]", engine.credentials["agent_password"])
    await page.press("input[name=password]", "Enter")
    await expect(page.locator("#connection")).to_have_text("Live")


async def _cells(page: Page, table: str, name: str) -> list[str]:
    row = page.locator(f"{table} tbody tr[data-name='{name}']")
    return [t.strip() for t in await row.locator("td").all_text_contents()]


async def test_the_reports_section_draws_and_tabulates_what_the_reports_say(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine = await _engine(make_engine, settings, tmp_path)
    await drive(engine)
    api = engine.api_headers
    _, funnel = await engine.get_json("/v1/reports/funnel", headers=api)
    _, conv = await engine.get_json("/v1/reports/conversions?by=campaign", headers=api)
    _, sizes = await engine.get_json("/v1/reports/segments", headers=api)
    assert funnel["rows"] and conv["rows"] and sizes["segments"]

    async with chromium() as browser:
        context = await browser.new_context(
            viewport={"width": 1400, "height": 2400}, device_scale_factor=1
        )
        page = await context.new_page()
        refused: list[str] = []
        page.on(
            "console",
            lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None,
        )
        await _sign_in(page, engine)
        section = page.locator("#reports-section")
        await expect(section).to_be_visible()
        await expect(section).to_have_attribute("data-loaded", "1")
        assert not await page.locator("#reports-status").text_content()

        # The funnel table: the API's numbers, row by row, and the total.
        for r in [*funnel["rows"], funnel["total"]]:
            assert await _cells(page, "#report-funnel", r["name"]) == [
                r["name"],
                str(r["fired"]),
                str(r["due"]),
                str(r["claimed"]),
                str(r["claimed_in_sla"]),
                _pct(r["sla_attainment"]),
                str(r["connected"]),
                str(r["converted"]),
            ]
        # The funnel chart: each stage's bars cover what the numbers say, to one scale.
        shot = await page.locator("#report-funnel-chart").screenshot()
        (tmp_path / "funnel.png").write_bytes(shot)
        scale = max(r["fired"] for r in funnel["rows"])
        for stage, colour in COLOURS.items():
            want = sum(_bar_px(r[stage], scale, FUNNEL_BAR_PX) for r in funnel["rows"])
            got = await _count(shot, colour)
            assert want > 0 and abs(got - want) <= 0.02 * want, (stage, got, want)

        # Conversions by campaign: the table and the treated bars.
        for r in conv["rows"]:
            cells = await _cells(page, "#report-conversions", r["name"])
            assert cells[:4] == [
                r["name"],
                str(r["treated"]["decisions"]),
                str(r["treated"]["conversions"]),
                _pct(r["treated"]["rate"]),
            ]
        shot = await page.locator("#report-conversions-chart").screenshot()
        (tmp_path / "conversions.png").write_bytes(shot)
        top = max(max(r["treated"]["rate"] or 0, r["holdout"]["rate"] or 0) for r in conv["rows"])
        want = sum(_bar_px(r["treated"]["rate"] or 0, top, CONVERSION_BAR_PX) for r in conv["rows"])
        got = await _count(shot, TREATED)
        assert want > 0 and abs(got - want) <= 0.02 * want, (got, want)
        assert await _count(shot, HOLDOUT) == 0  # no holdout in these rules: no holdout bars

        # Segment sizes: a line drawn in the first series' colour, a legend entry each.
        shot = await page.locator("#report-segments-chart").screenshot()
        (tmp_path / "segments.png").write_bytes(shot)
        assert await _count(shot, TREATED, tolerance=30) > 50
        legend = await page.locator("#report-segments-legend li").all_text_contents()
        assert legend == sorted(sizes["segments"])

        # The CSV links download the rows the page shows.
        href = await page.locator("#report-funnel-csv").get_attribute("href")
        assert href is not None and "format=csv" in href
        r = await page.request.get(f"{engine.url}{href}")
        assert r.status == 200 and r.headers["content-type"].startswith("text/csv")
        lines = (await r.text()).split("\r\n")
        assert lines[0].startswith("rule,fired,due,claimed")
        assert len([x for x in lines[1:] if x]) == len(funnel["rows"]) + 1

        await section.screenshot(path=str(tmp_path / "reports.png"))

        # A range without triggers: empty rows, a zero total, no bars.
        await page.fill("#reports-form input[name=from]", "2020-01-01")
        await page.fill("#reports-form input[name=to]", "2020-01-31")
        await page.click("#reports-form button[type=submit]")
        await expect(page.locator("#report-funnel tbody tr")).to_have_count(1)  # the total
        assert (await _cells(page, "#report-funnel", "total"))[1] == "0"
        shot = await page.locator("#report-funnel-chart").screenshot()
        assert [await _count(shot, c) for c in COLOURS.values()] == [0, 0, 0, 0]
    assert refused == []
