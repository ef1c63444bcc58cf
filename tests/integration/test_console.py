"""The console in a real browser (Debian's chromium-headless-shell driven by playwright), over real parts:
after a drift through the broker and PostgreSQL, the overview shows the alert and the grid; the pair
page draws the chart with its interval; an operator signs in, acknowledges and comments through the
forms, and the page's history and ``GET /v1/alerts/{id}/history`` show it; a viewer sees no actions
and a forged post is refused. Screenshots of each page are written beside the test's logs.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.support.kafkautil import produce
from tests.support.pipeline_util import DRIFT, STABLE, Traffic, alerts, api_ready, make_key, matches
from tests.support.processes import Service, eventually, free_port

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium-headless-shell"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="apt-get install chromium-headless-shell")
async def test_overview_pair_and_case_pages_with_sign_in_actions_and_refusals(
    service_env: dict[str, str], database_url: str, spawn: Callable[..., Service], tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    api_port = free_port()
    base = f"http://127.0.0.1:{api_port}"
    env = {**service_env, "MODQ_DATABASE_URL": database_url, "MODQ_PUBLIC_API_URL": base}
    spawn(["scorer"], env, "scorer")
    spawn(["ingest", "--port", str(free_port())], env, "ingest")
    spawn(["api", "--port", str(api_port)], env, "api")
    spawn(["notifier", "--port", str(free_port())], env, "notifier")
    traffic, bootstrap = Traffic(env), env["MODQ_KAFKA_BOOTSTRAP_SERVERS"]
    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with httpx.AsyncClient(base_url=base, timeout=20) as client:
        await eventually(lambda: api_ready(client), 60)
        operator_key, viewer_key = make_key(env, "oncall-pm", "operator"), make_key(env, "qa-lead", "viewer")
        await produce(bootstrap, traffic.phase(DRIFT, 700, 33, 0) + traffic.phase(STABLE, 700, 33, 0))
        await eventually(lambda: matches(client, traffic), 120)
        await produce(bootstrap, traffic.phase(DRIFT, 400, 5, 3600) + traffic.phase(STABLE, 400, 33, 3600))
        (alert,) = await eventually(lambda: alerts(client, status="firing", rule="error_rate"), 90)
        case = f"/ui/alerts/{alert['alert_id']}"
        pair = f"/ui/pairs/{quote(DRIFT[0], safe='')}/{quote(DRIFT[1], safe='')}"

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                # The overview: the firing alert first, the grid with the drifting pair marked.
                page = await browser.new_page(viewport={"width": 1280, "height": 900})
                await page.goto(base + "/ui?window=7d")
                opened = page.locator("#open-alerts a", has_text=f"{DRIFT[0]} / {DRIFT[1]}")
                assert await opened.count() >= 1  # (its other rules may fire too)
                assert await page.locator(f'#open-alerts a[href="{case}"]').count() == 1
                grid = page.locator("#grid")
                assert await grid.locator("th[scope=row]").all_inner_texts() == sorted([DRIFT[0], STABLE[0]])
                marked = grid.locator(f'a[href^="{pair}"]')
                assert "\u25b2" in await marked.inner_text()  # above its baseline, said by a glyph too
                await page.screenshot(path=str(shots / "overview.png"), full_page=True)
                # The live part refreshes in place.
                fragment = await client.get("/ui/fragments/overview", params={"window": "7d"})
                assert fragment.status_code == 200 and "open-alerts" in fragment.text

                # The pair: the chart with its interval band, the baseline and the alert marked.
                await page.goto(base + pair + "?window=1h")
                chart = page.locator("#chart svg")
                assert await chart.locator("polygon.band").count() == 1
                assert await chart.locator("polyline.rate").count() == 1
                assert await chart.locator("line.baseline").count() == 1
                assert await chart.locator("line.alert-mark").count() >= 1
                await page.screenshot(path=str(shots / "pair.png"), full_page=True)

                # Not signed in: the case page reads, and offers no actions.
                await page.goto(base + case)
                assert await page.locator("#attribution").count() == 1 and await page.locator("#actions").count() == 0

                # An operator signs in and acts through the forms.
                await page.goto(base + f"/ui/signin?next={quote(case, safe='')}")
                await page.fill("input[name=key]", operator_key)
                await page.click("button[type=submit]")
                await page.wait_for_url(base + case)
                cookie = next(c for c in await page.context.cookies() if c["name"] == "modq_session")
                assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
                await page.fill("#actions form[action$='/ack'] input[name=comment]", "looking at it")
                await page.click("#actions form[action$='/ack'] button")
                await page.wait_for_url(base + case)
                assert (await page.locator("#status").inner_text()).lower() == "acknowledged"
                await page.fill("#actions textarea[name=comment]", "vendor V01 notified, QA sample doubled")
                await page.click("#actions form[action$='/comment'] button")
                await page.wait_for_url(base + case)
                history = await page.locator("#history").inner_text()
                assert "acknowledged by oncall-pm" in history and "vendor V01 notified" in history
                await page.screenshot(path=str(shots / "case-operator.png"), full_page=True)
                api_history = (await client.get(f"/v1/alerts/{alert['alert_id']}/history")).json()["items"]
                assert {(h["action"], h["actor"]) for h in api_history} >= {
                    ("acknowledged", "oncall-pm"),
                    ("commented", "oncall-pm"),
                }

                # A viewer sees no action, and a post without the session's CSRF token is refused.
                viewer = await browser.new_page(viewport={"width": 390, "height": 844})  # a phone's width
                await viewer.goto(base + f"/ui/signin?next={quote(case, safe='')}")
                await viewer.fill("input[name=key]", viewer_key)
                await viewer.click("button[type=submit]")
                await viewer.wait_for_url(base + case)
                assert await viewer.locator("#actions").count() == 0
                await viewer.screenshot(path=str(shots / "case-viewer-phone.png"), full_page=True)
                viewer_csrf = await viewer.locator("header input[name=csrf]").get_attribute("value")
                sessions = {
                    "viewer": next(c for c in await viewer.context.cookies() if c["name"] == "modq_session")["value"],
                    "operator": cookie["value"],
                }
            finally:
                await browser.close()

        async with httpx.AsyncClient(base_url=base, timeout=20) as forged:
            # A form posted from elsewhere carries no valid token: refused, nothing recorded.
            for who, token in (("operator", ""), ("operator", "0" * 64), ("viewer", "")):
                resp = await forged.post(
                    f"{case}/comment",
                    data={"comment": "forged", "csrf": token},
                    cookies={"modq_session": sessions[who]},
                    follow_redirects=False,
                )
                assert resp.status_code == 403, (who, resp.status_code, resp.text)
            # The viewer's own page's token is right, but a viewer may not act.
            resp = await forged.post(
                f"{case}/comment",
                data={"comment": "forged", "csrf": viewer_csrf or ""},
                cookies={"modq_session": sessions["viewer"]},
                follow_redirects=False,
            )
            assert resp.status_code == 403 and "needs operator" in resp.text
            resp = await forged.post(f"{case}/resolve", data={"csrf": "x"}, follow_redirects=False)
            assert resp.status_code == 401  # no session at all
        after = (await client.get(f"/v1/alerts/{alert['alert_id']}/history")).json()["items"]
        assert not [h for h in after if h.get("comment") == "forged"]
        assert (await client.get(f"/v1/alerts/{alert['alert_id']}")).json()["status"] == "acknowledged"
    assert sorted(p.name for p in shots.iterdir()) == [
        "case-operator.png",
        "case-viewer-phone.png",
        "overview.png",
        "pair.png",
    ]
