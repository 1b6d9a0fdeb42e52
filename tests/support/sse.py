"""A small Server-Sent Events reader for the tests (httpx streaming)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Event:
    """One SSE event."""

    event: str
    data: Any
    id: str | None


def read_events(response: httpx.Response) -> Iterator[Event]:
    """Parse events from a streaming response until the server closes it."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in fields:
                yield Event(
                    event=fields.get("event", "message"),
                    data=json.loads(fields["data"]),
                    id=fields.get("id"),
                )
            fields = {}
        elif line.startswith(":"):
            continue  # keep-alive comment
        else:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
