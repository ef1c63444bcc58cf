"""HTTP receivers: each turns a notice into one request and says whether a retry can help."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx
import orjson

from services.notifier.messages import Notice, alertmanager_alert, pagerduty_event, sign, slack_message, webhook_body


class DeliveryError(Exception):
    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class Receiver(Protocol):
    name: str

    async def deliver(self, notice: Notice) -> bool:
        """Deliver; False when this receiver has nothing to say about the notice. Raises DeliveryError."""
        ...


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def post(client: httpx.AsyncClient, url: str, content: bytes, headers: dict[str, str] | None = None) -> None:
    """POST; transport errors, 408, 429 and 5xx are retryable, other non-2xx answers are not."""
    try:
        resp = await client.post(url, content=content, headers={"content-type": "application/json", **(headers or {})})
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}", retryable=True) from exc
    if resp.is_success:
        return
    retryable = resp.status_code in (408, 429) or resp.status_code >= 500
    raise DeliveryError(f"HTTP {resp.status_code}: {resp.text[:200]}", retryable=retryable)


class AlertmanagerReceiver:
    """Alertmanager API v2: firing alerts carry an endsAt a few resend periods ahead and are re-sent."""

    name = "alertmanager"

    def __init__(self, client: httpx.AsyncClient, base_url: str, api_url: str, resend_s: float) -> None:
        self.client, self.url, self.api_url, self.resend_s = (
            client,
            base_url.rstrip("/") + "/api/v2/alerts",
            api_url,
            resend_s,
        )

    def render(self, notice: Notice, now: datetime) -> dict[str, Any] | None:
        if notice.state == "firing" and notice.alert is not None:
            ends = now + timedelta(seconds=4 * self.resend_s)
            return alertmanager_alert(notice, self.api_url, notice.alert.started_at, _iso(ends))
        if notice.state == "resolved":
            starts = notice.alert.started_at if notice.alert else _iso(now)
            return alertmanager_alert(notice, self.api_url, starts, _iso(now))
        return None

    async def deliver(self, notice: Notice) -> bool:
        body = self.render(notice, datetime.now(tz=UTC))
        if body is None:
            return False
        await post(self.client, self.url, orjson.dumps([body]))
        return True

    async def resend(self, firing: list[Notice]) -> None:
        now = datetime.now(tz=UTC)
        bodies = [b for n in firing if (b := self.render(n, now)) is not None]
        if bodies:
            await post(self.client, self.url, orjson.dumps(bodies))


class PagerDutyReceiver:
    name = "pagerduty"

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        routing_key: str,
        api_url: str,
        by_scope: dict[str, str] | None = None,
    ) -> None:
        self.client, self.url, self.routing_key, self.api_url = client, url, routing_key, api_url
        self.by_scope = by_scope or {}  # scope -> routing key (label-wide to the policy team, ...)

    async def deliver(self, notice: Notice) -> bool:
        body = pagerduty_event(notice, self.by_scope.get(notice.scope, self.routing_key), self.api_url)
        if body is None:
            return False
        await post(self.client, self.url, orjson.dumps(body))
        return True


class SlackReceiver:
    name = "slack"

    def __init__(
        self, client: httpx.AsyncClient, url: str, api_url: str, by_scope: dict[str, str] | None = None
    ) -> None:
        self.client, self.url, self.api_url = client, url, api_url
        self.by_scope = by_scope or {}  # scope -> webhook URL

    async def deliver(self, notice: Notice) -> bool:
        body = slack_message(notice, self.api_url)
        if body is None:
            return False
        await post(self.client, self.by_scope.get(notice.scope, self.url), orjson.dumps(body))
        return True


class WebhookReceiver:
    """Every notice, signed: X-Modq-Signature = v1=HMAC-SHA256(secret, timestamp + "." + body)."""

    name = "webhook"

    def __init__(self, client: httpx.AsyncClient, url: str, secret: str | None, api_url: str) -> None:
        self.client, self.url, self.secret, self.api_url = client, url, secret, api_url

    async def deliver(self, notice: Notice) -> bool:
        body = webhook_body(notice, self.api_url)
        ts = str(int(time.time()))
        headers = {"x-modq-timestamp": ts, "x-modq-delivery": notice.key}
        if self.secret:
            headers["x-modq-signature"] = sign(self.secret, ts, body)
        await post(self.client, self.url, body, headers)
        return True
