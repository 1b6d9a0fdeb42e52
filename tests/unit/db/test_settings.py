"""Settings: environment parsing, URL normalisation, timer bounds."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from db.settings import MAX_TIMER_SECONDS, Settings, normalize_database_url


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
    ],
)
def test_database_url_is_normalised_to_psycopg3(given: str, expected: str) -> None:
    assert normalize_database_url(given) == expected
    assert Settings(database_url=given).database_url == expected


def test_settings_come_from_jobline_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBLINE_DATABASE_URL", "postgresql://x@y/z")
    monkeypatch.setenv("JOBLINE_QUEUE_NAME", "other")
    monkeypatch.setenv("JOBLINE_JOB_MODULES", "pkg.a, pkg.b,")
    monkeypatch.setenv("JOBLINE_MAX_ATTEMPTS", "7")

    settings = Settings()

    assert settings.database_url == "postgresql+psycopg://x@y/z"
    assert settings.queue_name == "other"
    assert settings.job_modules == ["pkg.a", "pkg.b"]
    assert settings.max_attempts == 7


def test_defaults_keep_every_timer_under_the_consumer_timeout() -> None:
    settings = Settings()
    assert settings.database_url is None
    assert settings.broker_url is None
    assert settings.slice_seconds + settings.step_time_limit_seconds <= MAX_TIMER_SECONDS
    assert settings.retry_backoff_max_seconds <= MAX_TIMER_SECONDS
    assert settings.lease_seconds <= MAX_TIMER_SECONDS


@pytest.mark.parametrize(
    "overrides",
    [
        {"slice_seconds": 1200, "step_time_limit_seconds": 600},
        {"lease_seconds": 3600},
        {"retry_backoff_max_seconds": 7200},
        {"max_attempts": 0},
        {"queue_name": "has spaces"},
    ],
)
def test_out_of_bounds_settings_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**overrides)  # type: ignore[arg-type]
