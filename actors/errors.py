"""Errors raised by the actors package."""

from __future__ import annotations


class JoblineActorError(Exception):
    """Base class of every error the actors package raises."""


class RegistryError(JoblineActorError):
    """A job module could not be loaded or defines a job function twice."""


class StepInterrupted(JoblineActorError):
    """The worker is shutting down; the step stops and runs again elsewhere."""
