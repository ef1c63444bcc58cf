"""Notices and their renderings: keys that make delivery once per state change, payload contents."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from services.contracts.actions import decode_action, encode_action, new_action
from services.notifier.messages import (
    alertmanager_alert,
    describe,
    notice_of_action,
    notice_of_alert,
    pagerduty_event,
    sign,
    slack_message,
    verify,
    webhook_body,
)
from services.notifier.receivers import AlertmanagerReceiver
from tests.support.factories import alert_event

API = "http://modq.example"


def test_a_manual_resolve_and_the_detectors_resolve_share_one_key() -> None:
    detector = notice_of_alert(alert_event("a-1", "resolved"))
    person = notice_of_action(
        new_action(action="resolved", alert_id="a-1", policy_label="L", vendor_id="V", actor="pm")
    )
    assert detector.key == person.key == "a-1:resolved"
    assert notice_of_alert(alert_event("a-1", "firing")).key == "a-1:firing"
    comment = new_action(action="commented", alert_id="a-1", policy_label="L", vendor_id="V", actor="pm", comment="x")
    assert notice_of_action(comment).key == comment.action_id  # every comment is news of its own


def test_the_description_says_what_moved_by_how_much_on_how_many_since_when() -> None:
    text = describe(notice_of_alert(alert_event("a-1", "firing")))
    assert text == (
        "SCAMS_AND_FRAUD / V01: error rate 9.0% (95% CI 6.0%-13.0%) against a baseline of 3.0% "
        "(+6.0 pp, x3.0) on 420 verdicts since 2026-11-24T09:40:00Z"
    )


def test_pagerduty_events_use_the_alert_id_as_a_stable_dedup_key() -> None:
    firing = pagerduty_event(notice_of_alert(alert_event("a-1", "firing")), "RK", API)
    assert firing is not None and firing["event_action"] == "trigger" and firing["dedup_key"] == "a-1"
    assert firing["payload"]["custom_details"]["verdicts"] == 420
    assert firing["links"][0]["href"] == API + "/ui/alerts/a-1"  # the console's case page first
    assert {link["href"] for link in firing["links"]} >= {API + "/v1/alerts/a-1"}
    ack = new_action(action="acknowledged", alert_id="a-1", policy_label="L", vendor_id="V", actor="pm")
    assert pagerduty_event(notice_of_action(ack), "RK", API) == {
        "routing_key": "RK",
        "event_action": "acknowledge",
        "dedup_key": "a-1",
    }
    silence = new_action(action="silenced", policy_label="L", vendor_id="V", actor="pm", until="2030-01-01T00:00:00Z")
    assert pagerduty_event(notice_of_action(silence), "RK", API) is None


def test_alertmanager_alerts_end_in_the_future_while_firing_and_now_on_resolve() -> None:
    am = AlertmanagerReceiver(None, "http://am:9093", API, resend_s=60)  # type: ignore[arg-type]
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    firing = am.render(notice_of_alert(alert_event("a-1", "firing")), now)
    resolved = am.render(notice_of_alert(alert_event("a-1", "resolved")), now)
    assert firing is not None and resolved is not None
    assert firing["endsAt"] == "2026-11-24T12:04:00Z" and resolved["endsAt"] == "2026-11-24T12:00:00Z"
    assert firing["labels"] == resolved["labels"]  # the same alert to Alertmanager
    assert firing["labels"]["alertname"] == "ModqQualityDrift" and firing["startsAt"] == "2026-11-24T10:00:00Z"
    assert alertmanager_alert(notice_of_alert(alert_event("a-1", "firing")), API, "s", "e")["generatorURL"] == (
        f"{API}/ui/alerts/a-1"
    )


def test_slack_keeps_history_only_actions_out_of_the_channel() -> None:
    comment = new_action(action="commented", alert_id="a-1", policy_label="L", vendor_id="V", actor="pm", comment="x")
    assert slack_message(notice_of_action(comment), API) is None
    msg = slack_message(notice_of_alert(alert_event("a-1", "firing")), API)
    assert msg is not None and "FIRING" in msg["text"] and "verdicts since" in msg["text"]


def test_webhook_signatures_verify_and_detect_tampering() -> None:
    body = webhook_body(notice_of_alert(alert_event("a-1", "firing")), API)
    sig = sign("secret", "1700000000", body)
    assert verify("secret", "1700000000", body, sig)
    assert not verify("secret", "1700000001", body, sig)
    assert not verify("other", "1700000000", body, sig)
    assert not verify("secret", "1700000000", body.replace(b"a-1", b"a-2"), sig)
    assert orjson.loads(body)["alert"]["verdicts"] == 420


def test_actions_round_trip_through_their_wire_format() -> None:
    action = new_action(action="silenced", policy_label="L", vendor_id="V", actor="pm", until="2030-01-01T00:00:00Z")
    assert decode_action(encode_action(action)) == action


def test_a_wider_alert_says_who_owns_it_where_the_excess_is_and_what_it_hurt() -> None:
    import dataclasses

    from msgspec import structs

    from services.common.evidence import Evidence

    wide = structs.replace(alert_event("a-9", "firing"), vendor_id="*", scope="policy_label", baseline_source="learned")
    evidence = Evidence(
        attribution=[{"dimension": "market", "value": "DE", "share": 0.82}],
        impact={"decisions": 8400, "estimated_wrong": 1240},
        words="82% of the excess is in market DE, 71% in queue_id Q7; ~1,240 of 8,400 decisions since onset wrong",
        since=datetime(2026, 11, 24, 9, 40, tzinfo=UTC),
    )
    notice = dataclasses.replace(notice_of_alert(wide), evidence=evidence)
    text = describe(notice)
    assert text.startswith("SCAMS_AND_FRAUD across every vendor: error rate 9.0%")
    assert text.endswith(
        "; 82% of the excess is in market DE, 71% in queue_id Q7; ~1,240 of 8,400 decisions since onset wrong"
    )
    am = alertmanager_alert(notice, API, "2026-11-24T10:00:00Z", "2026-11-24T10:04:00Z")
    assert am["labels"]["scope"] == "policy_label"
    assert orjson.loads(am["annotations"]["attribution"])[0]["value"] == "DE"
    assert am["annotations"]["findings_url"] == f"{API}/v1/alerts/a-9/findings"
    pd = pagerduty_event(notice, "RK", API)
    assert pd is not None and pd["payload"]["custom_details"]["impact"]["estimated_wrong"] == 1240
    assert orjson.loads(webhook_body(notice, API))["scope"] == "policy_label"
    # A pair alert linked under it links back to it.
    linked = notice_of_alert(structs.replace(alert_event("a-10", "firing"), parent_alert_id="a-9"))
    assert alertmanager_alert(linked, API, "x", "y")["annotations"]["parent_url"] == f"{API}/v1/alerts/a-9"
