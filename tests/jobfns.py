"""Job functions the tests register through ``JOBLINE_JOB_MODULES=tests.jobfns``."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from actors.registry import JobFunction, Step, StepContext


class TraceParams(BaseModel):
    """Where steps leave a trace, and how they misbehave."""

    model_config = ConfigDict(extra="forbid")

    trace_dir: str
    fail_step: int = 0  # this step raises while attempt < fail_until_attempt
    fail_until_attempt: int = 0
    sleep_seconds: float = 0.0


def _traced(name: str) -> Step:
    def step(ctx: StepContext) -> str:
        params = ctx.params
        assert isinstance(params, TraceParams)
        # One line per execution: the tests count how often each step really ran.
        with Path(params.trace_dir, f"job-{ctx.job_id}.log").open("a") as trace:
            trace.write(f"{name} attempt={ctx.attempt} pid={os.getpid()}\n")
        if ctx.step == params.fail_step and ctx.attempt < params.fail_until_attempt:
            raise RuntimeError(f"{name} fails on attempt {ctx.attempt}")
        ctx.sleep(params.sleep_seconds)
        return name

    step.__name__ = name
    return step


traced_fn = JobFunction(
    name="traced_fn",
    steps=(_traced("fetch"), _traced("compute"), _traced("store")),
    params=TraceParams,
    description="Three traced steps that can fail on purpose.",
)


def _raise(ctx: StepContext) -> str:
    raise ValueError("this job always fails")


always_fails = JobFunction(name="always_fails", steps=(_raise,), description="Raises every time.")


def _kill_worker(ctx: StepContext) -> str:
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"


kills_worker = JobFunction(
    name="kills_worker", steps=(_kill_worker,), description="SIGKILLs its worker process."
)
