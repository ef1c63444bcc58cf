"""Settings: environment variables, secrets from files, and their order."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.config import NotifierSettings


def test_secrets_can_come_from_files_and_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pd"
    secret.write_text("R0UT1NG\n")
    monkeypatch.setenv("MODQ_PAGERDUTY_ROUTING_KEY_FILE", str(secret))
    db = tmp_path / "db"
    db.write_text("postgresql+asyncpg://modq:s3cret@db/modq")
    monkeypatch.setenv("MODQ_DATABASE_URL_FILE", str(db))
    settings = NotifierSettings()
    assert settings.pagerduty_routing_key == "R0UT1NG"
    assert settings.database_url == "postgresql+asyncpg://modq:s3cret@db/modq"
    monkeypatch.setenv("MODQ_PAGERDUTY_ROUTING_KEY", "FROM-ENV")
    assert NotifierSettings().pagerduty_routing_key == "FROM-ENV"


def test_a_bad_database_url_is_refused_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODQ_DATABASE_URL", "postgresql://no-async-driver/db")
    with pytest.raises(ValueError, match="postgresql\\+asyncpg"):
        NotifierSettings()


def test_the_scorer_takes_the_same_kafka_security_settings() -> None:
    from services.common.config import ScorerSettings
    from services.common.kafka import faust_credentials

    assert faust_credentials(ScorerSettings()) is None
    sasl = faust_credentials(
        ScorerSettings(
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism="SCRAM-SHA-512",
            kafka_sasl_username="modq",
            kafka_sasl_password="secret",
        )
    )
    assert (type(sasl).__name__, sasl.username, str(sasl.mechanism.value)) == (
        "SASLCredentials",
        "modq",
        "SCRAM-SHA-512",
    )
    assert sasl.ssl_context is not None  # SASL over TLS
    assert type(faust_credentials(ScorerSettings(kafka_security_protocol="SSL"))).__name__ == "SSLCredentials"


def _readme_settings() -> dict[str, str]:
    """Variable -> documented default, from the README's settings tables.

    A row may name several variables, ``MODQ_A`` / ``MODQ_B`` or ``MODQ_TOPIC_X`` / ``_Y`` (the
    prefix repeated), with as many defaults separated the same way.
    """
    import re

    rows: dict[str, str] = {}
    for line in (Path(__file__).parents[3] / "README.md").read_text().splitlines():
        if not line.startswith("| `MODQ_"):
            continue
        cells = [c.strip() for c in line.split("|")[1:-1]]
        names = re.findall(r"`(MODQ_[A-Z0-9_<>]+|_[A-Z0-9_]+)`", cells[0])
        defaults = [d.strip() for d in cells[1].split(" / ")]
        first = names[0]
        for i, name in enumerate(names):
            full = first.rsplit("_", 1)[0] + name if name.startswith("_") else name
            rows[full] = defaults[i] if len(defaults) == len(names) else cells[1]
    return rows


def _documented(value: object) -> set[str]:
    """How the README may write a default."""
    if value is None or value == "":
        return {"unset", "unset (off)", "empty"}
    if isinstance(value, bool):
        return {f"`{str(value).lower()}`"}
    if isinstance(value, float) and value.is_integer():
        return {f"`{value:g}`", f"`{value}`"}
    return {f"`{value}`"}


def test_every_setting_is_in_the_readme_with_its_default() -> None:
    from pydantic_settings import BaseSettings

    import services.common.config as config

    documented = _readme_settings()
    classes = [v for v in vars(config).values() if isinstance(v, type) and issubclass(v, BaseSettings)]
    classes = [c for c in classes if c is not BaseSettings]
    assert len(classes) >= 5
    missing, wrong = [], []
    special = {"MODQ_SCORER_DATA_DIR": "`./<app id>-data`"}  # computed from the app id when empty
    for cls in classes:
        for field, info in cls.model_fields.items():
            env = f"MODQ_{field.upper()}"
            if env not in documented:
                missing.append(env)
            elif documented[env] not in _documented(info.default) and documented[env] != special.get(env):
                wrong.append(f"{env}: README {documented[env]}, code {info.default!r}")
    assert not missing, f"settings not in the README: {sorted(set(missing))}"
    assert not wrong, f"defaults that differ: {sorted(set(wrong))}"
