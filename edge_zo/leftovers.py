"""Leftovers of killed processes: hidden `.NAME.partial-PID` staging folders and `*.tmp` files.

`export` and `deploy` stage their output in a hidden sibling `.NAME.partial-PID` and rename
it into place when it is whole; a process killed in between (kill -9, power cut) leaves the
staging folder behind, often a full model. The next run of the same command for the same
output removes those whose process is gone. Atomic file writes (checkpoints, config.json,
the journal's rewrite) go through `NAME.tmp`; a failed write removes its own, and a run
folder's stale ones are removed once the run's lock is held (edge_zo/runfolder.py).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

_PARTIAL = re.compile(r"\.(?P<name>.+)\.partial-(?P<pid>\d+)$")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 checks without sending anything)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def staging_path(out: Path) -> Path:
    """This process's hidden staging folder for `out`."""
    return out.parent / f".{out.name}.partial-{os.getpid()}"


def remove_stale_partials(out: Path) -> list[Path]:
    """Remove `.OUT.partial-PID` beside `out` left by processes that no longer run (and
    this process's own, from an earlier call); returns what was removed."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for path in out.parent.glob(f".{out.name}.partial-*"):
        match = _PARTIAL.match(path.name)
        if not match or match["name"] != out.name:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or not pid_alive(pid):
            _remove(path)
            removed.append(path)
    return removed


def remove_temp_files(folder: Path) -> list[Path]:
    """Remove `*.tmp` files in `folder` and its subfolders: only call this while holding
    the folder's lock, when no other process can be writing them."""
    removed = []
    if folder.is_dir():
        for path in folder.rglob("*.tmp"):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
