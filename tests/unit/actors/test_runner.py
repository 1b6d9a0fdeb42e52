"""Pure pieces of the runner: backoff and error text."""

from __future__ import annotations

import pytest

from actors.runner import MAX_ERROR_LENGTH, describe, retry_delay


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 10, 50])
def test_retry_delay_grows_exponentially_within_its_cap(attempt: int) -> None:
    ceiling = min(30.0, 1.0 * 2 ** (attempt - 1))
    for _ in range(50):
        delay = retry_delay(attempt=attempt, base_seconds=1.0, max_seconds=30.0)
        assert ceiling / 2 <= delay <= ceiling


def test_describe_names_the_error_and_is_bounded() -> None:
    assert describe(ValueError("bad")) == "ValueError: bad"
    assert len(describe(RuntimeError("x" * 10_000))) == MAX_ERROR_LENGTH
