"""The one exception type the CLI turns into a clean message, and every exit code.

docs/exit-codes.md lists the codes below with what the user does next; keep the two in step.
"""

from __future__ import annotations

import errno
import signal
from contextlib import contextmanager
from typing import Callable

# ---- exit codes: the only place they are defined (docs/exit-codes.md) ----------------------
EXIT_OK = 0
EXIT_DOES_NOT_FIT = 1   # `plan`: the job does not fit its budget
EXIT_BAD_INPUT = 2      # an option, a value, a file, a folder: the message says the fix
EXIT_DIVERGED = 3       # finetune: the loss or the update stopped being finite
EXIT_BUSY = 73          # another process holds the run folder (its pid is in the message)
EXIT_DISK = 74          # EX_IOERR: a write failed (disk full, file size limit, read-only)
EXIT_MEMORY = 75        # EX_TEMPFAIL: the memory guard stopped the job at its budget
EXIT_SIGINT = 130       # 128 + SIGINT: Ctrl-C; finetune wrote a checkpoint first
EXIT_SIGTERM = 143      # 128 + SIGTERM: docker stop, systemd; finetune wrote a checkpoint first


class UserError(Exception):
    """Bad input from the user: a path, an option, a file. The message says the fix.

    `exit_code` lets a command report distinct failures (e.g. the memory guard's stop).
    """

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.exit_code = exit_code


# ---- the errors, each with its exit code: every UserError subclass lives here ---------------

class ConfigError(UserError):
    """A run or optimizer config that cannot run; the message says the fix."""


class DataError(UserError):
    """A data file that cannot be used; the message names the file and line."""


class BundleError(UserError):
    """A bundle that cannot be used; the message names the file and what is wrong."""


class DivergedError(UserError):
    """The loss or the update stopped being finite: stop the run instead of writing NaN."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=EXIT_DIVERGED)


class BusyError(UserError):
    """Another process holds the run folder; the message names its pid."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=EXIT_BUSY)


class MemoryBudgetExceeded(UserError):
    """The job's peak reached its budget; a checkpoint was written before this propagates."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=EXIT_MEMORY)


class Stopped(UserError):
    """The run stopped on a signal (SIGINT or SIGTERM), after writing a checkpoint when it could."""

    def __init__(self, signum: int, message: str):
        super().__init__(message, exit_code=EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT)
        self.signum = signum


class FleetError(UserError):
    """A fleet cannot go on: no device answered, or the folder belongs to another fleet."""


class DiskError(UserError):
    """A write the job needs failed: the message names the file, the cause and the next step."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=EXIT_DISK)


# errno -> what it means to a user; other OSErrors are not disk faults and propagate.
DISK_FAULTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file size limit was reached (ulimit -f)",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EIO: "an I/O error (the disk may be failing)",
}


def disk_error(err: OSError, place: str, next_step: str | Callable[[], str]) -> DiskError | None:
    """A DiskError for a write fault, naming the file (or `place`) and the next step; else None.
    `next_step` may be a function, asked only when the fault happens."""
    cause = DISK_FAULTS.get(err.errno)
    if cause is None:
        return None
    where = err.filename or place
    step = next_step() if callable(next_step) else next_step
    return DiskError(f"cannot write {where}: {cause}; {step}")


@contextmanager
def naming(path):
    """An OSError inside the block without a file name (a failed write()) gets `path`'s."""
    try:
        yield
    except OSError as err:
        if err.filename:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from None


@contextmanager
def writes_to(place: str, next_step: str | Callable[[], str]):
    """Turn a disk fault inside the block into one DiskError line; other errors pass through."""
    try:
        yield
    except OSError as err:
        clean = disk_error(err, place, next_step)
        if clean is None:
            raise
        raise clean from None
