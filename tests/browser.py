"""Real Chromium for tests: Debian's binary driven by playwright (never downloaded)."""

from __future__ import annotations

import io
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from PIL import Image
from playwright.async_api import Browser, async_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    assert shutil.which(CHROMIUM), "Chromium missing: make test installs Debian's chromium"
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


def screenshot_rgb(png: bytes) -> Image.Image:
    """A screenshot's pixels as RGB, for tests that check what was drawn. Chromium writes
    RGB or RGBA PNGs of an opaque page; dropping alpha keeps each pixel's colour."""
    with Image.open(io.BytesIO(png)) as image:
        return image.convert("RGB")
