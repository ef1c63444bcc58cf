"""What receivers are told: notices built from alert events and actions, rendered per receiver.

Pure: no I/O and no clock (times come in as arguments). A notice is one state change of one
alert (fired, acknowledged, resolved) or one action on a pair (silenced, commented,
re-baselined); its ``key`` is what makes delivery once per state change: the scorer's
"resolved" and a person's manual resolve of the same alert share a key, so receivers hear it once.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import msgspec
import orjson

from services.common.evidence import Evidence
from services.contracts.actions import AlertAction
from services.contracts.alerts import RULE_ERROR_TYPES, AlertEvent

ALERTNAME = "ModqQualityDrift"
STATE_OF_ACTION = {"acknowledged": "acknowledged", "resolved": "resolved"}


@dataclass(frozen=True, slots=True)
class Notice:
    key: str
    state: str  # firing, acknowledged, resolved, silenced, commented, rebaselined
    alert_id: str | None
    rule: str | None
    policy_label: str
    vendor_id: str
    alert: AlertEvent | None = None
    action: AlertAction | None = None
    evidence: Evidence | None = None  # attribution and impact, added by the notifier before sending

    @property
    def scope(self) -> str:
        return self.alert.scope if self.alert is not None else "pair"

    @property
    def error_type(self) -> str:
        if self.alert is not None:
            return self.alert.error_type
        return RULE_ERROR_TYPES.get(self.rule or "", "ANY")


def notice_of_alert(event: AlertEvent) -> Notice:
    state = "resolved" if event.status == "resolved" else "firing"
    return Notice(
        key=f"{event.alert_id}:{state}",
        state=state,
        alert_id=event.alert_id,
        rule=event.rule,
        policy_label=event.policy_label,
        vendor_id=event.vendor_id,
        alert=event,
    )


def notice_of_action(action: AlertAction) -> Notice:
    state = STATE_OF_ACTION.get(action.action, action.action)
    key = f"{action.alert_id}:{state}" if state in ("acknowledged", "resolved") else action.action_id
    return Notice(
        key=key,
        state=state,
        alert_id=action.alert_id,
        rule=action.rule,
        policy_label=action.policy_label,
        vendor_id=action.vendor_id,
        action=action,
    )


def links(api_url: str, n: Notice) -> dict[str, str]:
    base = api_url.rstrip("/")
    if n.alert is not None and n.alert.reviewer_id is not None:
        out = {"reviewers": f"{base}/v1/reviewers"}
    else:
        out = {"rates": f"{base}/v1/rates?{urlencode({'policy_label': n.policy_label, 'vendor_id': n.vendor_id})}"}
    if n.alert_id:
        # The console's case page first: what a person opens (the JSON views beside it).
        out = {"page": f"{base}/ui/alerts/{quote(n.alert_id, safe='')}", **out}
        alert = f"{base}/v1/alerts/{quote(n.alert_id)}"
        out.update(alert=alert, findings=f"{alert}/findings", rereview=f"{alert}/rereview")
    if n.alert is not None and n.alert.parent_alert_id:
        out["parent"] = f"{base}/v1/alerts/{quote(n.alert.parent_alert_id)}"
    return out


def who(n: Notice) -> str:
    """The owner of the problem in words: a pair, a label across its vendors, a vendor across labels,
    or a QA reviewer."""
    if n.alert is not None and n.alert.reviewer_id is not None:
        return f"QA reviewer {n.alert.reviewer_id}"
    if n.scope == "policy_label":
        return f"{n.policy_label} across every vendor"
    if n.scope == "vendor":
        return f"{n.vendor_id} across every label"
    return f"{n.policy_label} / {n.vendor_id}"


def describe(n: Notice) -> str:
    """One line a person can act on: what moved, by how much, on how many verdicts, since when."""
    pair = who(n)
    a = n.alert
    if a is not None and n.state == "firing":
        what = {"ANY": "error rate", "DISAGREEMENT": "disagreement with the auditors and golden answers"}.get(
            a.error_type, f"{a.error_type.lower().replace('_', '-')} rate"
        )
        judged = "scored ratings" if a.reviewer_id is not None else "verdicts"
        ratio = f", x{a.observed_rate / a.baseline_rate:.1f}" if a.baseline_rate > 0 else ""
        held = (
            f", held to {a.baseline_source[9:].replace('_', ' ')} prior"
            if a.baseline_source.startswith("learning:")
            else ""
        )
        return (
            f"{pair}: {what} {a.observed_rate:.1%} (95% CI {a.ci_low:.1%}-{a.ci_high:.1%}) against a baseline of "
            f"{a.baseline_rate:.1%}{held} ({(a.observed_rate - a.baseline_rate) * 100:+.1f} pp{ratio}) "
            f"on {a.verdicts} {judged} since {a.onset_at}"
            + (f"; {n.evidence.words}" if n.evidence and n.evidence.words else "")
        )
    if a is not None and n.state == "resolved":
        return f"{pair}: {n.rule} back at baseline {a.baseline_rate:.1%} (resolved at {a.resolved_at})"
    act = n.action
    if act is None:
        return f"{pair}: {n.state}"
    tail = f": {act.comment}" if act.comment else ""
    if n.state == "silenced":
        return f"{pair}: notifications silenced until {act.until} by {act.actor}{tail}"
    if n.state == "rebaselined":
        return f"{pair}: re-baselined by {act.actor} ({act.detail})"
    return f"{pair}: {n.rule or 'alert'} {n.state} by {act.actor}{tail}"


def alertmanager_alert(n: Notice, api_url: str, starts_at: str, ends_at: str) -> dict[str, Any]:
    """One alert for Alertmanager's POST /api/v2/alerts (firing while ends_at is in the future)."""
    labels = {
        "alertname": ALERTNAME,
        "scope": n.scope,
        "rule": n.rule or "",
        "policy_label": n.policy_label,
        "vendor_id": n.vendor_id,
        "error_type": n.error_type,
        "alert_id": n.alert_id or "",
        "severity": "page",
    }
    if n.alert is not None and n.alert.reviewer_id is not None:
        labels["reviewer_id"] = n.alert.reviewer_id  # (route scope=reviewer to the QA lead)
    annotations = {"summary": describe(n), **{f"{k}_url": v for k, v in links(api_url, n).items()}}
    if n.alert is not None:
        annotations.update(
            observed_rate=f"{n.alert.observed_rate:.4f}",
            baseline_rate=f"{n.alert.baseline_rate:.4f}",
            baseline_source=n.alert.baseline_source,
            verdicts=str(n.alert.verdicts),
            onset_at=n.alert.onset_at,
        )
        if n.alert.parent_alert_id:
            annotations["parent_alert_id"] = n.alert.parent_alert_id
    if n.evidence is not None:
        annotations["attribution"] = orjson.dumps(n.evidence.attribution).decode()
        annotations["impact"] = orjson.dumps(n.evidence.impact).decode()
    return {
        "labels": labels,
        "annotations": annotations,
        "startsAt": starts_at,
        "endsAt": ends_at,
        "generatorURL": next(iter(links(api_url, n).values())),  # the case page, when there is an alert
    }


PAGERDUTY_ACTIONS = {"firing": "trigger", "acknowledged": "acknowledge", "resolved": "resolve"}


def pagerduty_event(n: Notice, routing_key: str, api_url: str) -> dict[str, Any] | None:
    """A PagerDuty Events API v2 event; dedup_key is the alert id, stable across the episode."""
    event_action = PAGERDUTY_ACTIONS.get(n.state)
    if event_action is None or not n.alert_id:
        return None
    body: dict[str, Any] = {"routing_key": routing_key, "event_action": event_action, "dedup_key": n.alert_id}
    if event_action == "trigger" and n.alert is not None:
        a = n.alert
        body["payload"] = {
            "summary": describe(n)[:1024],
            "source": "modq",
            "severity": "error",
            "timestamp": a.started_at,
            "component": n.vendor_id,
            "group": n.policy_label,
            "class": n.rule,
            "custom_details": {
                "error_type": a.error_type,
                "observed_rate": a.observed_rate,
                "ci_low": a.ci_low,
                "ci_high": a.ci_high,
                "baseline_rate": a.baseline_rate,
                "verdicts": a.verdicts,
                "errors": a.errors,
                "onset_at": a.onset_at,
                "scope": a.scope,
                "baseline_source": a.baseline_source,
                "attribution": n.evidence.attribution if n.evidence else None,
                "impact": n.evidence.impact if n.evidence else None,
            },
        }
        body["links"] = [{"href": href, "text": f"modq {name}"} for name, href in links(api_url, n).items()]
        body["client"] = "modq"
        body["client_url"] = next(iter(links(api_url, n).values()))
    return body


SLACK_EMOJI = {"firing": ":rotating_light:", "acknowledged": ":eyes:", "resolved": ":white_check_mark:"}


def slack_escape(text: str) -> str:
    """Text for Slack's mrkdwn, where ``&``, ``<`` and ``>`` are markup (labels may hold them).

    >>> slack_escape("Q&A <beta>")
    'Q&amp;A &lt;beta&gt;'
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(n: Notice, api_url: str) -> dict[str, Any] | None:
    if n.state == "rebaselined" or n.state == "commented":
        return None  # history, not news: kept out of the channel
    text = f"{SLACK_EMOJI.get(n.state, ':information_source:')} *{n.state.upper()}* {slack_escape(describe(n))}"
    link_text = " | ".join(f"<{href}|{name}>" for name, href in links(api_url, n).items())
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": link_text}]},
        ],
    }


def webhook_body(n: Notice, api_url: str) -> bytes:
    return orjson.dumps(
        {
            "delivery_key": n.key,
            "state": n.state,
            "alert_id": n.alert_id,
            "rule": n.rule,
            "policy_label": n.policy_label,
            "vendor_id": n.vendor_id,
            "error_type": n.error_type,
            "summary": describe(n),
            "links": links(api_url, n),
            "scope": n.scope,
            "alert": msgspec.to_builtins(n.alert) if n.alert else None,
            "attribution": n.evidence.attribution if n.evidence else None,
            "impact": n.evidence.impact if n.evidence else None,
            "action": msgspec.to_builtins(n.action) if n.action else None,
        }
    )


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Signature header value: v1=HMAC-SHA256(secret, "<timestamp>." + body), hex.

    >>> sign("s", "1700000000", b"{}")
    'v1=e9232c9945da8456c2dea6b39da7786c07b00bca7a64d5dd1283674713a7b72a'
    """
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), signature)
