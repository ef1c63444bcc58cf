"""The routers' dependencies: the engine, the settings, who is calling and may they, the pair in
a path, and the publisher of alert actions."""

from __future__ import annotations

import logging
from typing import Annotated, Any
from urllib.parse import unquote

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import Depends, HTTPException, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.auth import Principal, Role, authenticate, key_from_headers
from services.common.config import ApiSettings
from services.common.kafka import make_producer
from services.contracts.actions import AlertAction, encode_action
from services.contracts.pairs import pair_key

log = logging.getLogger("modq.api")


def get_engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]


async def principal(request: Request) -> Principal | None:
    """The caller, from its API key; None without a key (a bad key is refused)."""
    key = key_from_headers(request.headers)
    if not key:
        return None
    who = await authenticate(request.app.state.engine, key)
    if who is None:
        raise HTTPException(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    return who


def require(role: Role) -> Any:
    """A dependency that lets through a caller whose key has ``role`` (or a higher one)."""

    async def check(who: Principal | None = Depends(principal)) -> Principal:
        if who is None:
            raise HTTPException(401, f"an API key with role {role} is required", headers={"WWW-Authenticate": "Bearer"})
        if not who.may(role):
            raise HTTPException(403, f"role {who.role} may not do this; needs {role}")
        return who

    return check


async def reader(settings: SettingsDep, who: Principal | None = Depends(principal)) -> None:
    """Reads are open unless ``MODQ_API_READ_REQUIRES_KEY``; then they need a viewer's key."""
    if settings.api_read_requires_key and who is None:
        raise HTTPException(401, "an API key with role viewer is required", headers={"WWW-Authenticate": "Bearer"})


Operator = Annotated[Principal, Depends(require("operator"))]


def path_label(value: str) -> str:
    """A label from a path segment rebuilt by ``middleware.EncodedSlashes``.

    >>> path_label("ip.trademark%2Fcounterfeit"), path_label("100%25"), path_label("SCAMS")
    ('ip.trademark/counterfeit', '100%', 'SCAMS')
    """
    return unquote(value)


def pair_path(policy_label: str, vendor_id: str) -> tuple[str, str]:
    """The (policy_label, vendor_id) of a ``/pairs/{policy_label}/{vendor_id}/...`` path."""
    return path_label(policy_label), path_label(vendor_id)


PairDep = Annotated[tuple[str, str], Depends(pair_path)]


class Publisher:
    """Alert actions onto their topic, and re-baseline requests onto the pair topic. The producer
    starts on first use: the API serves reads without Kafka."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = make_producer(self.settings)
            await producer.start()
            self._producer = producer
        return self._producer

    async def action(self, action: AlertAction) -> None:
        """Put the action on the actions topic (the log) before the database (the view) changes."""
        key = action.alert_id.encode() if action.alert_id else pair_key(action.policy_label, action.vendor_id)
        await self.send(self.settings.topic_alert_actions, encode_action(action), key, action.action_id)

    async def send(self, topic: str, value: bytes, key: bytes, action_id: str | None = None) -> None:
        """One record, acknowledged by the broker; a 503 when Kafka cannot take it."""
        try:
            producer = await self._started()
            await (await producer.send(topic, value, key=key))
        except KafkaError:
            log.warning("could not publish to %s", topic, extra={"action_id": action_id})
            raise HTTPException(503, "Kafka unavailable, retry later") from None

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()


def get_publisher(request: Request) -> Publisher:
    publisher: Publisher = request.app.state.publisher
    return publisher


PublisherDep = Annotated[Publisher, Depends(get_publisher)]
