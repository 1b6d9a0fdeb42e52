"""Built-in job functions."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from actors.registry import JobFunction, Step, StepContext


class DefaultFnParams(BaseModel):
    """Params of ``default_fn``."""

    model_config = ConfigDict(extra="forbid")

    step_seconds: float = Field(
        10.0, ge=0, le=60, description="Pause before each step reports (the original's 10 s)."
    )


def _report(result: str) -> Step:
    def step(ctx: StepContext) -> str:
        assert isinstance(ctx.params, DefaultFnParams)
        ctx.sleep(ctx.params.step_seconds)
        return result

    step.__name__ = f"report_{result}"
    return step


default_fn = JobFunction(
    name="default_fn",
    steps=(_report("result1"), _report("result2"), _report("result3")),
    params=DefaultFnParams,
    description="The original design: three steps reporting result1..result3, then done.",
)
