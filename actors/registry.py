"""Job functions: named sequences of steps, each producing one message."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from actors.errors import RegistryError, StepInterrupted


class AnyParams(BaseModel):
    """Params of a job function that declares no schema: any JSON object."""

    model_config = ConfigDict(extra="allow")


@dataclass(frozen=True)
class StepContext:
    """What a step sees: its job, its attempt, its validated params."""

    job_id: int
    attempt: int
    step: int
    params: BaseModel
    interrupted: threading.Event = field(repr=False)

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``; raise ``StepInterrupted`` at once if the job is cancelled or
        the worker stops (the step is then not recorded)."""
        if self.interrupted.wait(seconds):
            raise StepInterrupted(f"job {self.job_id} step {self.step} interrupted")


Step = Callable[[StepContext], str]


@dataclass(frozen=True)
class JobFunction:
    """A job a client can schedule by ``name``: ``steps`` run in order, each once."""

    name: str
    steps: Sequence[Step]
    params: type[BaseModel] = AnyParams
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise RegistryError(f"job function name {self.name!r} is not an identifier")
        if not self.steps:
            raise RegistryError(f"job function {self.name!r} has no steps")

    def parse_params(self, raw: Mapping[str, Any]) -> BaseModel:
        """Validate ``raw`` against the params model; raises ``pydantic.ValidationError``."""
        return self.params.model_validate(raw)


class JobRegistry:
    """The job functions one process knows, by name."""

    def __init__(self, functions: Iterable[JobFunction] = ()) -> None:
        self._functions: dict[str, JobFunction] = {}
        for function in functions:
            self.add(function)

    def add(self, function: JobFunction) -> None:
        """Register ``function``; a second function with the same name is an error."""
        existing = self._functions.get(function.name)
        if existing is not None and existing is not function:
            raise RegistryError(f"two job functions are named {function.name!r}")
        self._functions[function.name] = function

    def get(self, name: str) -> JobFunction | None:
        """Return the function called ``name``, or None."""
        return self._functions.get(name)

    @property
    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._functions)


def load_registry(modules: Sequence[str]) -> JobRegistry:
    """Build a registry of the built-in functions plus every JobFunction in ``modules``."""
    registry = JobRegistry()
    for module_name in ["actors.builtin", *modules]:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise RegistryError(f"cannot import job module {module_name!r}: {error}") from error
        for value in vars(module).values():
            if isinstance(value, JobFunction):
                registry.add(value)
    return registry


__all__ = [
    "AnyParams",
    "JobFunction",
    "JobRegistry",
    "Step",
    "StepContext",
    "StepInterrupted",
    "load_registry",
]
