"""``jobline worker``: runs Dramatiq's worker processes and replaces them if they die."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from types import FrameType

logger = logging.getLogger(__name__)

# Dramatiq's CLI exit codes that a restart cannot fix.
RET_IMPORT = 2
RESTART_DELAY_SECONDS = 1.0


def dramatiq_command(*, processes: int, threads: int) -> list[str]:
    """The Dramatiq CLI invocation for jobline's actors."""
    return [
        sys.executable,
        "-m",
        "dramatiq",
        "actors.worker",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
    ]


def supervise(*, processes: int, threads: int) -> int:
    """Run the workers until SIGINT/SIGTERM; restart them whenever they exit on their own.

    Dramatiq stops its whole process group when one worker process dies (a
    SIGKILL, an OOM kill); this loop starts a fresh group, whose sweeper then
    requeues the killed job once its lease expires.
    """
    child: subprocess.Popen[bytes] | None = None
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        child = subprocess.Popen(dramatiq_command(processes=processes, threads=threads))
        code = child.wait()
        if stopping:
            return code
        if code == RET_IMPORT:
            logger.error("workers could not start (exit %s); not restarting", code)
            return code
        logger.warning("workers exited with code %s; restarting", code)
        time.sleep(RESTART_DELAY_SECONDS)
