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
    from services.scorer.app import faust_credentials

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
