"""Running one delivery of a job: claim it, run its next steps, record each one."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from dramatiq.middleware import TimeLimitExceeded
from pydantic import BaseModel, ValidationError

from actors.errors import StepInterrupted
from actors.registry import JobFunction, StepContext
from actors.runtime import WorkerRuntime
from db import queries
from db.errors import LeaseLost, translate_errors
from db.models import JobState

logger = logging.getLogger(__name__)

DONE_MESSAGE = "done"
MAX_ERROR_LENGTH = 2000

# Publishes run_job(job_id) after a delay; returns True once the broker confirmed.
Publish = Callable[[int, float], bool]


def retry_delay(*, attempt: int, base_seconds: float, max_seconds: float) -> float:
    """Exponential backoff with full jitter on the upper half: base * 2^(attempt-1)."""
    ceiling = min(max_seconds, base_seconds * 2 ** max(0, attempt - 1))
    return float(ceiling / 2 + random.uniform(0, ceiling / 2))


def describe(error: BaseException) -> str:
    """One line naming the error, short enough to store."""
    text = f"{type(error).__name__}: {error}".strip()
    return text[:MAX_ERROR_LENGTH]


class JobRunner:
    """Runs deliveries of ``run_job``; one instance per worker process."""

    def __init__(self, runtime: WorkerRuntime, publish: Publish) -> None:
        self.runtime = runtime
        self.publish = publish

    def run(self, job_id: int) -> None:
        """Claim ``job_id`` and run its remaining steps; a duplicate delivery does nothing."""
        owner = self.runtime.new_lease_owner()
        with translate_errors(), self.runtime.engine.begin() as conn:
            claimed = queries.claim_job(
                conn, job_id=job_id, owner=owner, lease_seconds=self.runtime.settings.lease_seconds
            )
            if claimed is None:
                logger.debug("job %s not claimable (done, running elsewhere or unknown)", job_id)
                return
            prepared = self._prepare(claimed)
            if isinstance(prepared, str):
                queries.fail_job(conn, job_id=job_id, owner=owner, error=prepared)
                return
        function, params = prepared
        with self.runtime.holding(owner):
            try:
                self._run_steps(claimed, function=function, params=params, owner=owner)
            except LeaseLost as error:
                # Another worker owns the job now (our lease expired); it carries on.
                logger.warning("%s; leaving the job to its new owner", error)

    def _prepare(self, claimed: queries.ClaimedJob) -> tuple[JobFunction, BaseModel] | str:
        """The job's function and params, or why the job cannot run at all."""
        function = self.runtime.registry.get(claimed.fn)
        if function is None:
            return f"no job function named {claimed.fn!r} on this worker"
        try:
            return function, function.parse_params(claimed.params)
        except ValidationError as error:
            return f"params no longer valid for {claimed.fn}: {error}"[:MAX_ERROR_LENGTH]

    def _run_steps(
        self, claimed: queries.ClaimedJob, *, function: JobFunction, params: BaseModel, owner: str
    ) -> None:
        total = len(function.steps)
        if claimed.message_count == total:  # every step recorded; only `done` is missing
            self._record(
                claimed.id, owner, first_seq=total + 1, bodies=[DONE_MESSAGE], completes=True
            )
            return
        started = time.monotonic()
        for index in range(claimed.message_count, total):
            if self.runtime.stopping.is_set() or (
                time.monotonic() - started > self.runtime.settings.slice_seconds
            ):
                self._hand_off(claimed.id, owner)
                return
            step_number = index + 1
            context = StepContext(
                job_id=claimed.id,
                attempt=claimed.attempts,
                step=step_number,
                params=params,
                stopping=self.runtime.stopping,
            )
            try:
                body = function.steps[index](context)
                if not isinstance(body, str):
                    raise TypeError(f"step {step_number} returned {type(body).__name__}, not str")
                if "\x00" in body:
                    raise ValueError(f"step {step_number} returned text containing NUL")
            except StepInterrupted:
                self._hand_off(claimed.id, owner)
                return
            except (Exception, TimeLimitExceeded) as error:
                logger.warning(
                    "job %s step %s failed: %s", claimed.id, step_number, describe(error)
                )
                self._retry_later(claimed, owner, error)
                return
            last = step_number == total
            # The last step and `done` commit together: one transaction fewer per job.
            self._record(
                claimed.id,
                owner,
                first_seq=step_number,
                bodies=[body, DONE_MESSAGE] if last else [body],
                completes=last,
            )

    def _record(
        self, job_id: int, owner: str, *, first_seq: int, bodies: list[str], completes: bool
    ) -> None:
        last_seq = first_seq + len(bodies) - 1
        with translate_errors(), self.runtime.engine.begin() as conn:
            for seq, body in enumerate(bodies, start=first_seq):
                if not queries.record_step(
                    conn,
                    job_id=job_id,
                    owner=owner,
                    seq=seq,
                    body=body,
                    final=completes and seq == last_seq,
                    lease_seconds=self.runtime.settings.lease_seconds,
                ):
                    raise LeaseLost(f"job {job_id}: lease {owner} lost before step {seq}")

    def _retry_later(self, claimed: queries.ClaimedJob, owner: str, error: BaseException) -> None:
        settings = self.runtime.settings
        delay = retry_delay(
            attempt=claimed.attempts,
            base_seconds=settings.retry_backoff_seconds,
            max_seconds=settings.retry_backoff_max_seconds,
        )
        with translate_errors(), self.runtime.engine.begin() as conn:
            released = queries.release_for_retry(
                conn,
                job_id=claimed.id,
                owner=owner,
                error=f"attempt {claimed.attempts}: {describe(error)}",
                delay_seconds=delay,
            )
        if released is not None and released.state is JobState.QUEUED:
            self._publish(claimed.id, released.delay_seconds)

    def _hand_off(self, job_id: int, owner: str) -> None:
        with translate_errors(), self.runtime.engine.begin() as conn:
            handed_off = queries.hand_off_job(conn, job_id=job_id, owner=owner)
        if handed_off:
            self._publish(job_id, 0)

    def _publish(self, job_id: int, delay_seconds: float) -> None:
        if self.publish(job_id, delay_seconds):
            with translate_errors(), self.runtime.engine.begin() as conn:
                queries.mark_published(conn, job_ids=[job_id])
