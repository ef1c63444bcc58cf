"""The console for program managers and QA leads: server-rendered pages under ``/ui``.

Pages read through the API's own queries and act through its own actions (the same records, topics
and history as the JSON API); forms are plain HTML posts with a CSRF token; charts are SVG drawn
here. Reading needs no JavaScript; the overview refreshes its live part with a little of modq's own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.deps import EngineDep, PublisherDep, SettingsDep, path_label
from services.api.queries import aware, bucket_sums, load_alert, utc
from services.api.routes import alerts as alert_routes
from services.api.routes import findings as finding_routes
from services.api.routes import pairs as pair_routes
from services.api.routes import reviews as review_routes
from services.api.routes.rates import compute_rates
from services.api.schemas import RebaselineRequest, SilenceRequest
from services.api.ui.charts import Point, rate_chart
from services.api.ui.session import COOKIE, SESSION_S, Session, Sessions
from services.common.auth import authenticate
from services.common.config import ApiSettings
from services.common.db import alerts, api_keys, rate_buckets
from services.domain.rates import WINDOWS_MS, Counts, RateSummary, wilson_interval

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters["pct"] = lambda v, digits=1: "-" if v is None else f"{v * 100:.{digits}f}%"


def _when(t: datetime | str | None) -> str:
    """A time as people read it (JSON rows carry ISO strings, database rows datetimes)."""
    if t is None or t == "":
        return "-"
    moment = datetime.fromisoformat(t.replace("Z", "+00:00")) if isinstance(t, str) else t
    return f"{utc(moment):%Y-%m-%d %H:%M} UTC"


templates.env.filters["when"] = _when
templates.env.filters["seg"] = lambda v: quote(str(v), safe="")
router = APIRouter(prefix="/ui", include_in_schema=False)

OVERVIEW_TTL_S = 5.0
MARKETS_TTL_S = 300.0
WINDOWS = ("1h", "24h", "7d")


def sessions(request: Request) -> Sessions:
    found: Sessions = request.app.state.sessions
    return found


def session_of(request: Request) -> Session | None:
    return sessions(request).read(request.cookies.get(COOKIE))


def viewer(request: Request, settings: SettingsDep) -> Session | None:
    """The signed-in person, if any; a page needs one when reads need a key."""
    who = session_of(request)
    if who is None and settings.api_read_requires_key:
        raise HTTPException(303, headers={"Location": f"/ui/signin?next={quote(str(request.url.path))}"})
    return who


Viewer = Annotated[Session | None, Depends(viewer)]


async def operator(request: Request, engine: EngineDep, csrf: Annotated[str, Form()] = "") -> Session:
    """A signed-in operator whose form carries the session's CSRF token, and whose key still stands."""
    who = session_of(request)
    if who is None:
        raise HTTPException(401, "sign in first")
    if not sessions(request).csrf_ok(who, csrf):
        raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page and try again")
    if not who.may("operator"):
        raise HTTPException(403, f"role {who.role} may not do this; needs operator")
    async with engine.connect() as conn:
        revoked = (
            await conn.execute(select(api_keys.c.revoked_at).where(api_keys.c.key_id == who.key_id))
        ).one_or_none()
    if revoked is None or revoked[0] is not None:
        raise HTTPException(401, "this key was revoked: sign in again")
    return who


Operator = Annotated[Session, Depends(operator)]


def page(request: Request, name: str, who: Session | None, **context: Any) -> HTMLResponse:
    csrf = sessions(request).csrf(who) if who is not None else ""
    return templates.TemplateResponse(
        request, name, {"who": who, "csrf": csrf, "can_act": who is not None and who.may("operator"), **context}
    )


# -- the overview ----------------------------------------------------------------------------


@dataclass
class Cell:
    policy_label: str
    vendor_id: str
    verdicts: int
    rate: float | None
    ci_low: float
    ci_high: float
    baseline: float
    level: str  # ok | watch | high | none
    sign: str  # the level in a glyph (never colour alone)


@dataclass
class Overview:
    window: str
    market: str | None
    as_of: datetime | None
    computed: datetime
    open_alerts: list[dict[str, Any]]
    labels: list[str]
    vendors: list[str]
    cells: dict[tuple[str, str], Cell]
    markets: list[str] = field(default_factory=list)
    live_html: Markup = field(default_factory=Markup)  # the live part rendered once per computation (it names nobody)


def level_of(rate: float | None, n: int, baseline: float) -> tuple[str, str]:
    """How far above its baseline a cell is, by the rate's z-score: ok, watch (2+), high (4+)."""
    if rate is None or n == 0:
        return "none", ""
    se = (baseline * (1 - baseline) / n) ** 0.5
    z = (rate - baseline) / se if se > 0 else 0.0
    if z >= 4:
        return "high", "\u25b2\u25b2"
    if z >= 2:
        return "watch", "\u25b2"
    return "ok", ""


async def _baselines(engine: AsyncEngine) -> dict[tuple[str, str], float]:
    """Each pair's baseline as its newest error-rate alert states it (learned, operator's or SLA)."""
    a = alerts.c
    stmt = (
        select(a.policy_label, a.vendor_id, a.baseline_rate)
        .where(a.scope == "pair", a.rule == "error_rate")
        .order_by(a.started_at.desc(), a.alert_id.desc())
        .limit(5_000)
    )
    out: dict[tuple[str, str], float] = {}
    async with engine.connect() as conn:
        for label, vendor, rate in (await conn.execute(stmt)).all():
            out.setdefault((label, vendor), float(rate))
    return out


async def _open_alerts(engine: AsyncEngine) -> list[dict[str, Any]]:
    a = alerts.c
    rows: list[dict[str, Any]] = []
    async with engine.connect() as conn:
        for status in ("firing", "acknowledged"):
            stmt = select(alerts).where(a.status == status).order_by(a.started_at.desc(), a.alert_id.desc()).limit(50)
            rows += [aware(r) for r in (await conn.execute(stmt)).mappings().all()]
    return rows


async def markets_seen(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return sorted(m for (m,) in (await conn.execute(select(rate_buckets.c.market).distinct().limit(200))).all())


async def build_overview(
    engine: AsyncEngine, settings: ApiSettings, window: str, market: str | None, markets: list[str]
) -> Overview:
    """The windows end at the newest minute counted: now on a live system; on a backfill or a replay
    of history, where the data stand (the page says which)."""
    async with engine.connect() as conn:
        newest = utc((await conn.execute(select(func.max(rate_buckets.c.bucket_start)))).scalar())
    end = newest + timedelta(minutes=1) if newest is not None else None
    rates = await compute_rates(engine, None, None, market, window, False, end)  # type: ignore[arg-type]
    baselines = await _baselines(engine)
    cells: dict[tuple[str, str], Cell] = {}
    for item in rates.items:
        base = baselines.get((item.policy_label, item.vendor_id), settings.baseline_error_rate)
        level, sign = level_of(item.error_rate, item.verdicts, base)
        cells[(item.policy_label, item.vendor_id)] = Cell(
            item.policy_label,
            item.vendor_id,
            item.verdicts,
            item.error_rate,
            item.ci_low,
            item.ci_high,
            base,
            level,
            sign,
        )
    return Overview(
        window=window,
        market=market,
        as_of=newest,
        computed=datetime.now(tz=UTC),
        open_alerts=await _open_alerts(engine),
        labels=sorted({k[0] for k in cells}),
        vendors=sorted({k[1] for k in cells}),
        cells=cells,
        markets=markets,
    )


class OverviewCache:
    """One overview per (window, market), recomputed at most every ``OVERVIEW_TTL_S`` and by one task
    at a time, shared by every page load and live refresh: while it recomputes, the previous answer
    is served (its "as of" says how old), so a room of open consoles costs the database one query
    and the server one render of the grid. The market filter's choices (a scan of the buckets) are
    refreshed every ``MARKETS_TTL_S``."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str | None], _Entry] = {}
        self.markets: list[str] = []
        self.markets_until = 0.0

    async def get(self, engine: AsyncEngine, settings: ApiSettings, window: str, market: str | None) -> Overview:
        key = (window, market)
        entry = self.entries.get(key)
        if entry is None:
            if len(self.entries) > 100:
                self.entries.clear()
            entry = self.entries[key] = _Entry()
        now = time.monotonic()
        if now >= entry.fresh_until and entry.refreshing is None:
            entry.fresh_until = now + OVERVIEW_TTL_S
            entry.refreshing = asyncio.create_task(entry.refresh(self.compute(engine, settings, window, market)))
            entry.refreshing.add_done_callback(lambda t: t.cancelled() or t.exception())
        if entry.answer is not None:
            return entry.answer
        assert entry.refreshing is not None
        return await asyncio.shield(entry.refreshing)  # the first answer: everybody waits for the one

    async def compute(self, engine: AsyncEngine, settings: ApiSettings, window: str, market: str | None) -> Overview:
        if time.monotonic() >= self.markets_until:
            self.markets = await markets_seen(engine)
            self.markets_until = time.monotonic() + MARKETS_TTL_S
        answer = await build_overview(engine, settings, window, market, self.markets)
        answer.live_html = Markup(templates.get_template("overview_live.html").render(o=answer))
        return answer


@dataclass
class _Entry:
    fresh_until: float = 0.0
    answer: Overview | None = None
    refreshing: asyncio.Task[Overview] | None = None

    async def refresh(self, computation: Coroutine[Any, Any, Overview]) -> Overview:
        try:
            self.answer = await computation
            return self.answer
        except BaseException:
            self.fresh_until = 0.0  # the next request tries again
            raise
        finally:
            self.refreshing = None


def _window(value: str | None) -> str:
    return value if value in WINDOWS else "24h"


@router.get("", response_class=HTMLResponse)
async def overview(
    request: Request, engine: EngineDep, settings: SettingsDep, who: Viewer, window: str = "24h", market: str = ""
) -> HTMLResponse:
    data = await request.app.state.overview.get(engine, settings, _window(window), market or None)
    return page(request, "overview.html", who, o=data, windows=WINDOWS)


@router.get("/fragments/overview", response_class=HTMLResponse)
async def overview_fragment(
    request: Request, engine: EngineDep, settings: SettingsDep, who: Viewer, window: str = "24h", market: str = ""
) -> HTMLResponse:
    """The overview's live part (alerts and grid), for the page's refresh without a reload."""
    data: Overview = await request.app.state.overview.get(engine, settings, _window(window), market or None)
    return HTMLResponse(data.live_html)


# -- a pair ----------------------------------------------------------------------------------


async def _series(
    engine: AsyncEngine, label: str, vendor: str, start: datetime, end: datetime, step: timedelta
) -> list[Point]:
    b = rate_buckets.c
    stmt = (
        select(b.bucket_start, func.sum(b.verdicts), func.sum(b.errors))
        .where(b.policy_label == label, b.vendor_id == vendor, b.bucket_start >= start, b.bucket_start < end)
        .group_by(b.bucket_start)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    sums: dict[datetime, list[int]] = {}
    base, width = start.timestamp(), step.total_seconds()
    for t, n, e in rows:
        at = utc(t)
        assert at is not None
        slot = datetime.fromtimestamp(base + (at.timestamp() - base) // width * width, tz=UTC)
        s = sums.setdefault(slot, [0, 0])
        s[0] += int(n or 0)
        s[1] += int(e or 0)
    slots, t = [], start
    while t < end:
        n, e = sums.get(t, [0, 0])
        slots.append(Point(t, n, e))
        t += step
    return slots


@router.get("/pairs/{policy_label}/{vendor_id}", response_class=HTMLResponse)
async def pair_page(
    request: Request,
    policy_label: str,
    vendor_id: str,
    engine: EngineDep,
    settings: SettingsDep,
    who: Viewer,
    window: str = "24h",
) -> HTMLResponse:
    label, vendor = path_label(policy_label), path_label(vendor_id)
    window = _window(window)
    end = datetime.now(tz=UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    async with engine.connect() as conn:
        newest = (
            await conn.execute(
                select(func.max(rate_buckets.c.bucket_start)).where(
                    rate_buckets.c.policy_label == label, rate_buckets.c.vendor_id == vendor
                )
            )
        ).scalar()
    newest_at = utc(newest)
    if newest_at is not None:  # a pair's data may be history (a backfill): the window ends at its newest minute
        end = min(end, newest_at + timedelta(minutes=1))
    span = timedelta(milliseconds=WINDOWS_MS[window])
    start = end - span
    step = {"1h": timedelta(minutes=2), "24h": timedelta(hours=1), "7d": timedelta(hours=6)}[window]
    points = await _series(engine, label, vendor, start, end, step)
    a = alerts.c
    async with engine.connect() as conn:
        pair_alerts = [
            aware(r)
            for r in (
                await conn.execute(
                    select(alerts)
                    .where(a.policy_label == label, a.vendor_id == vendor)
                    .order_by(a.started_at.desc())
                    .limit(50)
                )
            )
            .mappings()
            .all()
        ]
    baseline = next(
        (r["baseline_rate"] for r in pair_alerts if r["rule"] == "error_rate"), settings.baseline_error_rate
    )
    marks = [
        (r["started_at"], f"{r['rule']} alert ({r['status']})", f"/ui/alerts/{quote(r['alert_id'], safe='')}")
        for r in pair_alerts
    ]
    chart = rate_chart(points, baseline, marks, title=f"{label} / {vendor}: error rate", span=(start, end))
    by_market = await bucket_sums(engine, start, end, by_market=True, policy_label=label, vendor_id=vendor)
    totals = Counts()
    for _, c in by_market:
        totals.add(c)
    summary = RateSummary.from_counts(totals)
    overturn = wilson_interval(totals.overturned, totals.appeals) if totals.appeals else None
    markets = [(g["market"], RateSummary.from_counts(c)) for g, c in by_market]
    return page(
        request,
        "pair.html",
        who,
        label=label,
        vendor=vendor,
        window=window,
        windows=WINDOWS,
        chart=chart,
        baseline=baseline,
        summary=summary,
        markets=markets,
        overturn=overturn,
        appeals=totals.appeals,
        overturned=totals.overturned,
        pair_alerts=pair_alerts,
        start=start,
        end=end,
    )


# -- an alert's case -------------------------------------------------------------------------


@router.get("/alerts/{alert_id}", response_class=HTMLResponse)
async def alert_page(
    request: Request, alert_id: str, engine: EngineDep, settings: SettingsDep, who: Viewer
) -> HTMLResponse:
    item = await alert_routes.get_alert(alert_id, engine, settings)
    found = orjson.loads((await finding_routes.findings(alert_id, engine, limit=25, cursor=None, format="json")).body)
    sample = orjson.loads(
        (await finding_routes.rereview(alert_id, engine, size=50, limit=25, cursor=None, format="json")).body
    )
    history = (await alert_routes.alert_history_of(alert_id, engine)).items
    parent = None
    if item.parent_alert_id:
        parent = aware(await load_alert(engine, item.parent_alert_id))
    return page(
        request,
        "alert.html",
        who,
        a=item,
        findings=found["items"],
        findings_more=found.get("next_cursor") is not None,
        rereview=sample["items"],
        history=history,
        parent=parent,
        default_until=(datetime.now(tz=UTC) + timedelta(hours=4)).strftime("%Y-%m-%dT%H:%M"),
    )


def _back(to: str) -> RedirectResponse:
    return RedirectResponse(to, status_code=303)


ALERT_FORMS = {"ack": "acknowledged", "resolve": "resolved", "comment": "commented"}
"""The case page's forms on an alert, by the last part of their path, and the action each records."""


@router.post("/alerts/{alert_id}/{verb}")
async def alert_form(
    alert_id: str,
    verb: str,
    engine: EngineDep,
    settings: SettingsDep,
    publisher: PublisherDep,
    who: Operator,
    comment: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Acknowledge, resolve or comment on an alert from its case page (the API's own action)."""
    kind = ALERT_FORMS.get(verb)
    if kind is None:
        raise HTTPException(404, "no such action")
    if kind == "commented" and not comment.strip():
        raise HTTPException(400, "a comment needs some text")
    await alert_routes.act_on_alert(
        engine, settings, publisher, alert_id=alert_id, kind=kind, who=who.principal, by=None, comment=comment or None
    )
    return _back(f"/ui/alerts/{quote(alert_id, safe='')}")


@router.post("/pairs/{policy_label}/{vendor_id}/silence")
async def silence_form(
    policy_label: str,
    vendor_id: str,
    engine: EngineDep,
    publisher: PublisherDep,
    who: Operator,
    until: Annotated[str, Form()],
    comment: Annotated[str, Form()] = "",
    back: Annotated[str, Form()] = "",
) -> Response:
    try:
        moment = datetime.fromisoformat(until)
    except ValueError:
        raise HTTPException(400, "until: a date and time, e.g. 2026-12-04T18:00") from None
    body = SilenceRequest(until=moment if moment.tzinfo else moment.replace(tzinfo=UTC), comment=comment or None)
    pair = (path_label(policy_label), path_label(vendor_id))
    await pair_routes.silence(pair, body, engine, publisher, who.principal)
    return _back(back if back.startswith("/ui/") else f"/ui/pairs/{policy_label}/{vendor_id}")


@router.post("/pairs/{policy_label}/{vendor_id}/rebaseline")
async def rebaseline_form(
    policy_label: str,
    vendor_id: str,
    engine: EngineDep,
    settings: SettingsDep,
    publisher: PublisherDep,
    who: Operator,
    rate: Annotated[str, Form()] = "",
    back: Annotated[str, Form()] = "",
) -> Response:
    try:
        value = float(rate) / 100 if rate.strip() else None
    except ValueError:
        raise HTTPException(400, "rate: a percentage, e.g. 3.5, or empty to learn it again") from None
    pair = (path_label(policy_label), path_label(vendor_id))
    await pair_routes.rebaseline(
        pair, RebaselineRequest(rule="error_rate", rate=value), engine, settings, publisher, who.principal
    )
    return _back(back if back.startswith("/ui/") else f"/ui/pairs/{policy_label}/{vendor_id}")


# -- the measuring stick and the DSA report ---------------------------------------------------


@router.get("/quality", response_class=HTMLResponse)
async def quality_page(request: Request, engine: EngineDep, who: Viewer, window: str = "7d") -> HTMLResponse:
    window = window if window in review_routes.QA_WINDOWS else "7d"
    agreement = await review_routes.get_agreement(engine, None, None, window, None)  # type: ignore[arg-type]
    reviewers = await review_routes.get_reviewers(engine, None, None, window, None)  # type: ignore[arg-type]
    return page(request, "quality.html", who, agreement=agreement, reviewers=reviewers, window=window)


@router.get("/transparency", response_class=HTMLResponse)
async def transparency_page(request: Request, who: Viewer) -> HTMLResponse:
    today = datetime.now(tz=UTC).date()
    half = today.replace(month=1 if today.month <= 6 else 7, day=1)
    return page(request, "transparency.html", who, start=half, end=today + timedelta(days=1))


# -- signing in and out ----------------------------------------------------------------------


@router.get("/signin", response_class=HTMLResponse)
async def signin_page(request: Request, next: str = "/ui") -> HTMLResponse:
    return page(request, "signin.html", session_of(request), next=next if next.startswith("/ui") else "/ui", error=None)


@router.post("/signin")
async def signin(
    request: Request, engine: EngineDep, key: Annotated[str, Form()], next: Annotated[str, Form()] = "/ui"
) -> Response:
    found = await authenticate(engine, key.strip())
    if found is None or found.role == "publisher":
        refused = page(request, "signin.html", None, next=next, error="That key is not valid for the console.")
        refused.status_code = 401
        return refused
    response = _back(next if next.startswith("/ui") else "/ui")
    response.set_cookie(
        COOKIE,
        sessions(request).issue(found),
        max_age=SESSION_S,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/ui",
    )
    return response


@router.post("/signout")
async def signout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    who = session_of(request)
    if who is not None and not sessions(request).csrf_ok(who, csrf):
        raise HTTPException(403, "the form's CSRF token is missing or wrong")
    response = _back("/ui")
    response.delete_cookie(COOKIE, path="/ui")
    return response
