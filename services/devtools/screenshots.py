"""Screenshots of the console for the README: the overview, a pair, and an alert's case page, at a
desktop width and a phone's, in a real browser (Debian's chromium-headless-shell through playwright).

Run against a console with data, e.g. while ``modq dev`` runs (a few minutes in, so alerts exist):

    python -m services.devtools.screenshots --api http://127.0.0.1:8000 --out docs/img
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import httpx

CHROMIUM = "/usr/bin/chromium-headless-shell"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


async def shoot(api: str, out: Path, executable: str = CHROMIUM) -> list[Path]:
    from playwright.async_api import async_playwright

    async with httpx.AsyncClient(base_url=api, timeout=10) as client:
        alerts = (await client.get("/v1/alerts", params={"status": "firing"})).json()["items"]
    pair = next((a for a in alerts if a["scope"] == "pair"), alerts[0] if alerts else None)
    pages = {"overview": "/ui"}
    if pair is not None:
        pages["alert"] = f"/ui/alerts/{pair['alert_id']}"
        if pair["scope"] == "pair":
            from urllib.parse import quote

            pages["pair"] = f"/ui/pairs/{quote(pair['policy_label'], safe='')}/{quote(pair['vendor_id'], safe='')}"
    written = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, args=BROWSER_ARGS)
        try:
            for width, suffix in ((1280, ""), (390, "-phone")):
                page = await browser.new_page(viewport={"width": width, "height": 900})
                for name, path in pages.items():
                    await page.goto(api.rstrip("/") + path)
                    target = out / f"console-{name}{suffix}.png"
                    await page.screenshot(path=str(target), full_page=name != "overview" or suffix == "")
                    written.append(target)
                await page.close()
        finally:
            await browser.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--api", default="http://127.0.0.1:8000")
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument("--chromium", default=CHROMIUM)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(shoot(args.api, args.out, args.chromium)):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
