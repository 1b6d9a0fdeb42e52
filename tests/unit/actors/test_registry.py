"""Job function registry: loading modules, names, params."""

from __future__ import annotations

import threading

import pytest
from pydantic import ValidationError

from actors.builtin import DefaultFnParams, default_fn
from actors.errors import RegistryError, StepInterrupted
from actors.registry import JobFunction, JobRegistry, StepContext, load_registry


def test_builtin_default_fn_is_always_registered() -> None:
    registry = load_registry([])
    assert registry.names == ["default_fn"]
    assert registry.get("default_fn") is default_fn
    assert len(default_fn.steps) == 3


def test_job_modules_add_their_functions() -> None:
    registry = load_registry(["tests.jobfns"])
    assert {"default_fn", "traced_fn", "always_fails", "kills_worker"} <= set(registry.names)


def test_unknown_job_module_is_a_clear_error() -> None:
    with pytest.raises(RegistryError, match="cannot import job module"):
        load_registry(["no.such.module"])


def test_two_functions_with_one_name_are_refused() -> None:
    twin = JobFunction(name="default_fn", steps=(lambda ctx: "x",))
    with pytest.raises(RegistryError, match="two job functions are named 'default_fn'"):
        JobRegistry([default_fn, twin])


@pytest.mark.parametrize(("name", "steps"), [("not a name", (lambda ctx: "x",)), ("ok", ())])
def test_malformed_job_functions_are_refused(name: str, steps: tuple[object, ...]) -> None:
    with pytest.raises(RegistryError):
        JobFunction(name=name, steps=steps)  # type: ignore[arg-type]


def test_default_fn_params_default_to_ten_seconds_and_are_bounded() -> None:
    assert default_fn.parse_params({}) == DefaultFnParams(step_seconds=10)
    for bad in ({"step_seconds": 61}, {"step_seconds": -0.1}, {"other": 1}):
        with pytest.raises(ValidationError):
            default_fn.parse_params(bad)


def test_default_fn_steps_report_result1_to_result3() -> None:
    params = default_fn.parse_params({"step_seconds": 0})
    stopping = threading.Event()
    results = [
        step(StepContext(job_id=1, attempt=1, step=n, params=params, interrupted=stopping))
        for n, step in enumerate(default_fn.steps, start=1)
    ]
    assert results == ["result1", "result2", "result3"]


def test_step_sleep_is_interrupted_by_shutdown() -> None:
    stopping = threading.Event()
    stopping.set()
    context = StepContext(
        job_id=1, attempt=1, step=1, params=default_fn.parse_params({}), interrupted=stopping
    )
    with pytest.raises(StepInterrupted):
        context.sleep(60)
