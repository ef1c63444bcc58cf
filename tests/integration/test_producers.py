"""Real producers: librdkafka (confluent-kafka) with every codec, aiokafka, labels as platforms write them.

Upstream decisions and verdicts go through `modq ingest`, `modq scorer` and `modq api` as processes
on the real broker and PostgreSQL; every pair's counts must come out exact, garbage must be
dead-lettered (and counted) whatever batch it came in, and labels such as ``ip.trademark/counterfeit``
or ``V|01 %`` must survive every place modq uses them: the pair key, the alert's dedup key, URL
paths, Prometheus label values and CSV. The scorer and the notifier read compressed batches too.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import orjson
import pytest

from services.contracts.alerts import dedup_key
from services.contracts.batches import WireDecision, WireVerdict, encode_batch, partition_for
from tests.support import factories
from tests.support.kafkautil import librdkafka_produce, produce
from tests.support.observability import promtool
from tests.support.pipeline_util import AS_OF, Mismatch, api_ready, make_key
from tests.support.processes import Service, eventually, free_port
from tests.support.receivers import Recorder

pytestmark = pytest.mark.integration

CODECS = ("gzip", "snappy", "lz4", "zstd")
LABELS = ("counterfeit_goods", "ip.trademark/counterfeit", "Hassrede (DE) §130", "100% real|fake")
DRIFT = ("ip.trademark/counterfeit", "V|01 %")


class Truth:
    """Upstream records with the counts they must produce, per (policy_label, vendor_id)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.counts: dict[tuple[str, str], dict[str, int]] = {}
        self.garbage = 0
        self.n = 0

    def pair(
        self, label: str, vendor: str, count: int, error_every: int, t0: float
    ) -> list[tuple[str, bytes | None, bytes]]:
        out: list[tuple[str, bytes | None, bytes]] = []
        c = self.counts.setdefault((label, vendor), {"decisions": 0, "verdicts": 0, "errors": 0})
        for i in range(count):
            self.n += 1
            did = f"p{self.n}"
            error = i % error_every == 0
            d = factories.decision(
                did, policy_label=label, vendor_id=vendor, market="DE", event_time=factories.ts(t0 + i)
            )
            v = factories.verdict(did, error=error, event_time=factories.ts(t0 + i + 30))
            out += [
                (self.env["MODQ_TOPIC_DECISIONS"], did.encode(), orjson.dumps(d)),
                (self.env["MODQ_TOPIC_VERDICTS"], did.encode(), orjson.dumps(v)),
            ]
            if i % 50 == 0:  # garbage in the same compressed batches as good records
                out.append((self.env["MODQ_TOPIC_DECISIONS"], b"bad", orjson.dumps({**d, "policy_label": " padded"})))
                out.append((self.env["MODQ_TOPIC_VERDICTS"], b"bad", b"\x00not json"))
                self.garbage += 2
            c["decisions"] += 1
            c["verdicts"] += 1
            c["errors"] += error
        return out


async def rates(client: httpx.AsyncClient, **params: str) -> dict[tuple[str, str], dict[str, int]]:
    resp = await client.get("/v1/rates", params={"window": "24h", "as_of": AS_OF, **params})
    resp.raise_for_status()
    return {
        (i["policy_label"], i["vendor_id"]): {k: i[k] for k in ("decisions", "verdicts", "errors")}
        for i in resp.json()["items"]
    }


def metric_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def listening_addresses(port: int) -> set[str]:
    """Local addresses listening on a TCP port, from /proc/net/tcp (hex, as the kernel writes them)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


async def test_every_codec_every_label_counted_exactly(
    service_env: dict[str, str], database_url: str, spawn: Callable[..., Service]
) -> None:
    api_port, ingest_port, hook_port = free_port(), free_port(), free_port()
    env = {
        **service_env,
        "MODQ_DATABASE_URL": database_url,
        "MODQ_PUBLIC_API_URL": f"http://127.0.0.1:{api_port}",
        "MODQ_INGEST_REQUIRE_KEY": "false",
        "MODQ_SCORER_WEB_HOST": "127.0.0.1",
        "MODQ_WEBHOOK_URL": f"http://127.0.0.1:{hook_port}/hook",
        "MODQ_NOTIFIER_PORT": str(free_port()),
    }
    hook = await Recorder(hook_port).start()
    spawn(["scorer"], env, "scorer")
    spawn(["ingest", "--port", str(ingest_port)], env, "ingest")
    spawn(["api", "--port", str(api_port)], env, "api")
    spawn(["notifier"], env, "notifier")
    bootstrap = env["MODQ_KAFKA_BOOTSTRAP_SERVERS"]
    truth = Truth(env)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as client:
            await eventually(lambda: api_ready(client), 60)
            # Each codec gets its own vendor, so a codec that is not read shows as a missing pair.
            for k, codec in enumerate(CODECS):
                records = [r for label in LABELS for r in truth.pair(label, f"rdkafka-{codec}", 120, 20, k * 600)]
                await librdkafka_produce(bootstrap, codec, records)
            await produce(bootstrap, [r for label in LABELS for r in truth.pair(label, "aiokafka", 120, 20, 3000)])
            # The drifting pair's baseline phase, then its drift (20% errors), through librdkafka and lz4.
            baseline = truth.pair(*DRIFT, 700, 33, 3600)
            drift = truth.pair(*DRIFT, 400, 5, 7200)
            await librdkafka_produce(bootstrap, "lz4", baseline + drift)
            # The scorer's own input, compressed: batches of wire events put on modq.events directly.
            wire: dict[int, list[Any]] = {}
            partitions = int(env["MODQ_PARTITIONS"])
            for i in range(300):
                did = f"w{i}"
                t_ms, wrong = int(factories.BASE.timestamp() * 1000) + i * 1000, i % 50 == 0  # 2%: no alert
                wire.setdefault(partition_for(did, partitions), []).extend(
                    [
                        WireDecision(f"e-{did}", did, t_ms, "wire/zstd", "V-wire", "DE", "", "", 0),
                        WireVerdict(f"v-{did}", did, t_ms + 1000, f"r-{did}", int(wrong), 3 * wrong, "", 1.0),
                    ]
                )
            topic = env["MODQ_TOPIC_EVENTS"]
            await librdkafka_produce(
                bootstrap, "zstd", [(topic, None, encode_batch(b)) for b in wire.values()], partitions=list(wire)
            )
            truth.counts[("wire/zstd", "V-wire")] = {"decisions": 300, "verdicts": 300, "errors": 6}

            async def exact() -> object:
                got = await rates(client)
                return True if got == truth.counts else Mismatch(got=got, want=truth.counts)

            await eventually(exact, 150)
            filtered = await rates(client, policy_label=DRIFT[0], vendor_id=DRIFT[1])
            assert filtered == {DRIFT: truth.counts[DRIFT]}

            # One alert, for the drifting pair, its labels kept as written and its dedup key unambiguous.
            async def firing() -> list[dict[str, Any]]:
                resp = await client.get("/v1/alerts", params={"status": "firing", "rule": "error_rate"})
                return list(resp.json()["items"])

            async def pair_firing() -> bool:  # (the label-wide alert can come first)
                return any(a["scope"] == "pair" for a in await firing())

            await eventually(pair_firing, 90)
            everything = await firing()
            alerts = [a for a in everything if a["scope"] == "pair"]
            assert [(a["policy_label"], a["vendor_id"]) for a in alerts] == [DRIFT]
            # (and its label across vendors, whose excess is this pair's: nothing else)
            assert {(a["policy_label"], a["vendor_id"]) for a in everything} <= {DRIFT, (DRIFT[0], "*")}
            alert = alerts[0]
            assert (
                alert["dedup_key"]
                == "error_rate|ip.trademark/counterfeit|V%7C01 %25"
                == dedup_key("error_rate", *DRIFT)
            )
            assert (await client.get(f"/v1/alerts/{alert['alert_id']}")).json()["policy_label"] == DRIFT[0]

            # The notifier told the webhook; it also reads compressed alert records (zstd, another client).
            other = factories.alert_event("a-compressed", "firing", vendor="V-zstd")
            compressed = [(env["MODQ_TOPIC_ALERTS"], other.dedup_key.encode(), msgspec.json.encode(other))]
            await librdkafka_produce(bootstrap, "zstd", compressed)

            # The pair's alert is paged, or its label's across vendors if the pair's is linked under it.
            paged = alert["parent_alert_id"] or alert["alert_id"]

            async def delivered() -> bool:
                return {p["alert_id"] for p in hook.got("/hook") if p["state"] == "firing"} >= {"a-compressed", paged}

            await eventually(delivered, 60)

            # A label with a "/" in a URL path: percent-encoded, it is one path segment.
            operator = {"Authorization": f"Bearer {make_key(env, 'pm', 'operator')}"}
            path = f"/v1/pairs/{quote(DRIFT[0], safe='')}/{quote(DRIFT[1], safe='')}/silence"
            silenced = await client.post(path, json={"until": "2099-01-01T00:00:00Z"}, headers=operator)
            assert silenced.status_code == 200, silenced.text
            assert (silenced.json()["policy_label"], silenced.json()["vendor_id"]) == DRIFT
            assert [(s["policy_label"], s["vendor_id"]) for s in (await client.get("/v1/silences")).json()] == [DRIFT]

            # CSV keeps them too.
            exported = (await client.get("/v1/alerts/export.csv")).text
            rows = list(csv.DictReader(io.StringIO(exported)))
            exported_alerts = {r["alert_id"]: (r["policy_label"], r["vendor_id"]) for r in rows}
            assert exported_alerts[alert["alert_id"]] == DRIFT

            # Prometheus label values: every service's /metrics passes promtool with these labels.
            scorer_port = int(env["MODQ_SCORER_WEB_PORT"])
            for target in (f"127.0.0.1:{scorer_port}", f"127.0.0.1:{api_port}", f"127.0.0.1:{ingest_port}"):
                text = (await client.get(f"http://{target}/metrics")).text
                checked = promtool("check", "metrics", stdin=text)
                assert checked.returncode == 0, (target, checked.stdout, checked.stderr)
            scorer_metrics = (await client.get(f"http://127.0.0.1:{scorer_port}/metrics")).text
            assert 'policy_label="ip.trademark/counterfeit",vendor_id="V|01 %"' in scorer_metrics
            ingest_metrics = (await client.get(f"http://127.0.0.1:{ingest_port}/metrics")).text
            assert metric_sum(ingest_metrics, "modq_ingest_deadletters_total") == truth.garbage
            assert metric_sum(ingest_metrics, "modq_consumer_unreadable_batches_total") == 0
            # The scorer's web server listens where MODQ_SCORER_WEB_HOST says, not on every interface.
            assert listening_addresses(scorer_port) == {"127.0.0.1"}

    finally:
        await hook.stop()
