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
from actors.runtime import Lease, WorkerRuntime
from db import queries
from db.errors import LeaseLost, translate_errors
from db.models import JobState

logger = logging.getLogger(__name__)

DONE_MESSAGE = "done"
CANCELLED_MESSAGE = "cancelled"
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
        with translate_errors(), self.runtime.autocommit.connect() as conn:
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
        with self.runtime.holding(owner, cancel_requested=claimed.cancel_requested) as lease:
            try:
                self._run_steps(claimed, function=function, params=params, lease=lease)
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
        self,
        claimed: queries.ClaimedJob,
        *,
        function: JobFunction,
        params: BaseModel,
        lease: Lease,
    ) -> None:
        total = len(function.steps)
        if lease.cancel_requested:
            self._cancel(claimed.id, lease)
            return
        if claimed.steps_done == total:  # every step recorded; only `done` is missing
            self._record(claimed.id, lease, [(None, DONE_MESSAGE)], JobState.SUCCEEDED)
            return
        started = time.monotonic()
        for index in range(claimed.steps_done, total):
            if self.runtime.stopping.is_set() or (
                time.monotonic() - started > self.runtime.settings.slice_seconds
            ):
                self._hand_off(claimed.id, lease)
                return
            step_number = index + 1
            context = StepContext(
                job_id=claimed.id,
                attempt=claimed.attempts,
                step=step_number,
                params=params,
                interrupted=lease.interrupted,
            )
            try:
                body = function.steps[index](context)
                if not isinstance(body, str):
                    raise TypeError(f"step {step_number} returned {type(body).__name__}, not str")
                if "\x00" in body:
                    raise ValueError(f"step {step_number} returned text containing NUL")
            except StepInterrupted:
                if lease.cancel_requested:
                    self._cancel(claimed.id, lease)
                else:
                    self._hand_off(claimed.id, lease)
                return
            except (Exception, TimeLimitExceeded) as error:
                logger.warning(
                    "job %s step %s failed: %s", claimed.id, step_number, describe(error)
                )
                self._retry_later(claimed, lease, error)
                return
            if step_number == total:
                # The last step and `done` commit together: one transaction fewer per job.
                self._record(
                    claimed.id,
                    lease,
                    [(step_number, body), (None, DONE_MESSAGE)],
                    JobState.SUCCEEDED,
                )
                return
            if self._record(claimed.id, lease, [(step_number, body)]):
                lease.cancel_requested = True
            if lease.cancel_requested:
                self._cancel(claimed.id, lease)
                return

    def _record(
        self,
        job_id: int,
        lease: Lease,
        entries: list[tuple[int | None, str]],
        final_state: JobState | None = None,
    ) -> bool:
        """Record ``entries`` (step, body) at once; True if a cancel was requested."""
        with translate_errors(), self.runtime.autocommit.connect() as conn:
            cancel_requested = queries.record_messages(
                conn,
                job_id=job_id,
                owner=lease.owner,
                entries=entries,
                final_state=final_state,
                lease_seconds=self.runtime.settings.lease_seconds,
            )
        if cancel_requested is None:
            raise LeaseLost(f"job {job_id}: lease {lease.owner} lost before {entries[0][1]!r}")
        return cancel_requested

    def _cancel(self, job_id: int, lease: Lease) -> None:
        self._record(job_id, lease, [(None, CANCELLED_MESSAGE)], JobState.CANCELLED)

    def _retry_later(self, claimed: queries.ClaimedJob, lease: Lease, error: BaseException) -> None:
        settings = self.runtime.settings
        delay = retry_delay(
            attempt=claimed.attempts,
            base_seconds=settings.retry_backoff_seconds,
            max_seconds=settings.retry_backoff_max_seconds,
        )
        with translate_errors(), self.runtime.autocommit.connect() as conn:
            released = queries.release_for_retry(
                conn,
                job_id=claimed.id,
                owner=lease.owner,
                error=f"attempt {claimed.attempts}: {describe(error)}",
                delay_seconds=delay,
            )
        if released is not None and released.state is JobState.QUEUED:
            self._publish(claimed.id, released.delay_seconds)

    def _hand_off(self, job_id: int, lease: Lease) -> None:
        with translate_errors(), self.runtime.autocommit.connect() as conn:
            handed_off = queries.hand_off_job(conn, job_id=job_id, owner=lease.owner)
        if handed_off:
            self._publish(job_id, 0)

    def _publish(self, job_id: int, delay_seconds: float) -> None:
        if self.publish(job_id, delay_seconds):
            with translate_errors(), self.runtime.autocommit.connect() as conn:
                queries.mark_published(conn, job_ids=[job_id])
