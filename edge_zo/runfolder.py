"""A run folder is owned by one process at a time, and a new run starts in a clean one.

`edge-zo finetune` (a new run and `--resume`) takes an exclusive OS lock (`flock`) on
`RUN/.lock` before it reads or writes anything else in the folder, and writes its pid into
that file. The kernel drops the lock when the process ends, however it ends (kill -9
included), so a stale lock never blocks a later run; a second process is refused at once
with the holder's pid (exit code EXIT_BUSY). Holding the lock, the run's stale `*.tmp`
files (writes cut short by a kill) are removed.

A new run refuses an `--out` that already holds run files (config.json: a run to resume;
journal.jsonl, metrics.jsonl, checkpoints/ or best/ without it: files from elsewhere or a
partial leftover) rather than appending to them, and a refused job removes the folder if
it created it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from edge_zo.errors import BusyError, UserError, disk_error
from edge_zo.leftovers import remove_temp_files

LOCK_NAME = ".lock"
CONFIG_NAME = "config.json"
RUN_FILES = ("journal.jsonl", "metrics.jsonl", "checkpoints", "best")


def _unwritable(err: OSError, path: Path) -> UserError:
    """A folder the run cannot write to: a disk fault (exit EXIT_DISK) or another OSError."""
    step = "make it writable, or choose (or copy the run to) a writable folder"
    return disk_error(err, str(path), step) or UserError(f"{path}: {err.strerror}; {step}")


class RunFolder:
    """The lock on one run folder; `release()` (or the process's end) lets it go."""

    def __init__(self, path: Path, created: Path | None, fd: int):
        self.path, self.created, self._fd = path, created, fd  # created: the topmost new folder

    @classmethod
    def claim_new(cls, path: Path) -> "RunFolder":
        """Lock `path` for a new run: created if missing, refused if it holds run files."""
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {path} is a file, not a folder; choose a folder path for the run")
        created = next((p for p in reversed([path, *path.parents]) if not p.exists()), None)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UserError(f"--out {path}: a parent of it is a file; choose another --out") from None
        except OSError as err:
            raise _unwritable(err, path) from None
        folder = cls._lock(path, created)
        try:
            folder._refuse_old_files()
        except BaseException:
            folder.abandon()
            raise
        return folder

    @classmethod
    def claim_existing(cls, path: Path) -> "RunFolder":
        """Lock an existing run folder for `--resume`."""
        if not path.is_dir():
            what = "it is a file" if path.exists() else "it does not exist"
            raise UserError(f"{path / CONFIG_NAME}: missing; is {path} a run folder made by `edge-zo finetune`? "
                            f"({what}; pass the --out folder of the run to continue)")
        return cls._lock(path, created=None)

    @classmethod
    def _lock(cls, path: Path, created: Path | None) -> "RunFolder":
        lock = path / LOCK_NAME
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            if created:
                shutil.rmtree(created, ignore_errors=True)
            raise _unwritable(err, lock) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise BusyError(f"{path} is in use by another edge-zo process (pid {holder}); wait for it "
                            f"to end or stop it, or choose another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        remove_temp_files(path)
        return cls(path, created, fd)

    def _refuse_old_files(self) -> None:
        if (self.path / CONFIG_NAME).exists():
            raise UserError(f"{self.path} already holds a run; continue it with --resume {self.path} "
                            "or choose another --out")
        found = [name for name in RUN_FILES if (self.path / name).exists()]
        if found:
            raise UserError(f"{self.path} holds {', '.join(found)} but no {CONFIG_NAME}: files from another "
                            "run or a leftover, which a new run must not append to; choose an empty --out "
                            "(or remove them)")

    def started(self) -> bool:
        """Whether the run recorded its config (from then on it is resumable)."""
        return (self.path / CONFIG_NAME).exists()

    def abandon(self) -> None:
        """A refused or failed job that never started the run leaves nothing: the folders
        it created are removed, and in a folder it found, its lock file."""
        if not self.started():
            if self.created:
                shutil.rmtree(self.created, ignore_errors=True)
            else:
                (self.path / LOCK_NAME).unlink(missing_ok=True)
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
