"""The original design, as a baseline: FastAPI BackgroundTasks and in-memory lists."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import BackgroundTasks, FastAPI, HTTPException
from pydantic import BaseModel

app = FastAPI()
messages: list[list[str]] = []
done = 0


class InferenceRequest(BaseModel):
    """The original request body."""

    deployment: str
    framework: str
    fn: str
    params: dict[str, Any] | None = None


async def default_fn(offset: int, step_seconds: float) -> None:
    """Three steps reporting result1..result3, then done."""
    global done
    for result in ("result1", "result2", "result3"):
        await asyncio.sleep(step_seconds)
        messages[offset].append(result)
    messages[offset].append("done")
    done += 1


@app.post("/schedule", status_code=202)
async def schedule(request: InferenceRequest, background: BackgroundTasks) -> dict[str, int]:
    """Append the job and run it in the background."""
    offset = len(messages)
    messages.append([])
    step_seconds = float((request.params or {}).get("step_seconds", 10))
    background.add_task(default_fn, offset, step_seconds)
    return {"offset": offset}


@app.get("/messages/{offset}")
async def read_messages(offset: int) -> list[str]:
    """The job's messages so far."""
    if not 0 <= offset < len(messages):
        raise HTTPException(404, "Offset not found")
    return messages[offset]


@app.get("/stats")
async def stats() -> dict[str, int]:
    """Jobs accepted and finished, for the benchmark."""
    return {"accepted": len(messages), "done": done}
