"""Request dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from actors.registry import JobRegistry
from api.events import JobEvents
from api.publisher import Publisher
from api.writer import JobWriter
from db.settings import Settings


@dataclass(frozen=True)
class Services:
    """What the routes use; built in the app's lifespan."""

    settings: Settings
    registry: JobRegistry
    engine: AsyncEngine
    writer: JobWriter
    publisher: Publisher
    events: JobEvents


async def get_services(request: Request) -> Services:
    """The services of the running app (async: a sync dependency would cost a thread hop)."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
