"""Checkpoints and the step journal: a job killed at any moment resumes bit for bit.

DESIGN.md section 6. A checkpoint is one `.npz` file of named arrays plus JSON metadata.
It is written to a temporary file, fsynced, renamed into place, and only then marked
complete by a small `.done` file that holds its SHA-256; the previous checkpoint is removed
only after the new one is whole. Loading takes the newest checkpoint whose marker exists and
whose hash matches, so a half-written or corrupted file falls back to the one before.
A write that fails (disk full, size limit) removes its temporary and unmarked files.

Between checkpoints the journal records each step's key and scalar results (a few bytes a
step, fsynced), so a resumed run replays the steps after the checkpoint without forward
passes and continues from exactly where the killed one stopped. A torn last line (the kill
landed mid-write) is ignored: that step never completed.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_zo.errors import UserError, naming

KEEP = 2  # checkpoints kept on disk: the newest and the one it replaced


@dataclass(frozen=True)
class Checkpoint:
    step: int
    arrays: dict[str, np.ndarray]
    meta: dict
    path: Path


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a kill leaves either the old or the new file;
    a failed write (disk full, size limit) removes its temporary file and leaves the old."""
    tmp = path.with_name(path.name + ".tmp")
    with _removed_on_failure(tmp), open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextmanager
def _removed_on_failure(*paths: Path):
    """On any failure remove `paths`; an OSError without a file name gets the first one's."""
    try:
        yield
    except BaseException as err:
        for path in paths:
            path.unlink(missing_ok=True)
        if isinstance(err, OSError) and not err.filename:
            raise OSError(err.errno, err.strerror, str(paths[0])) from None
        raise


def _fsync_dir(folder: Path) -> None:
    # The rename itself must reach the disk, or a power cut can undo it.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save(folder: str | Path, step: int, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Write checkpoint `step` atomically, then drop all but the newest `KEEP`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ckpt-{step:09d}.npz"
    tmp = path.with_name(path.name + ".tmp")
    # A failed write leaves no .tmp and no unmarked file that could push a good one out.
    with _removed_on_failure(tmp, path):
        with open(tmp, "wb") as f:
            # np.savez of a dict keeps names and dtypes exactly; no pickles, so loading is safe.
            np.savez(f, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
        atomic_write(path.with_suffix(".done"), _sha256(path).encode())
    for old in sorted(folder.glob("ckpt-*.npz"))[:-KEEP]:
        old.with_suffix(".done").unlink(missing_ok=True)  # unmark first: never a marked stub
        old.unlink(missing_ok=True)
    return path


def drop_after(folder: str | Path, step: int) -> None:
    """Remove the checkpoints of steps after `step` (a stretch to be redone), marker first."""
    for path in Path(folder).glob("ckpt-*.npz"):
        if int(path.stem.split("-")[1]) > step:
            path.with_suffix(".done").unlink(missing_ok=True)
            path.unlink(missing_ok=True)


def latest_step(folder: str | Path) -> int | None:
    """The step of the newest checkpoint marked complete (not re-hashed), or None."""
    marked = [p for p in Path(folder).glob("ckpt-*.npz") if p.with_suffix(".done").is_file()]
    return int(max(marked).stem.split("-")[1]) if marked else None


def load_latest(folder: str | Path) -> Checkpoint | None:
    """The newest complete, intact checkpoint, or None when there is none."""
    for path in sorted(Path(folder).glob("ckpt-*.npz"), reverse=True):
        marker = path.with_suffix(".done")
        if not marker.is_file() or marker.read_text().strip() != _sha256(path):
            continue  # half-written (no marker yet) or damaged since: use the one before
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile):
            continue
        meta = json.loads(arrays.pop("__meta__").tobytes())
        return Checkpoint(int(path.stem.split("-")[1]), arrays, meta, path)
    return None


def _is_entry(record) -> bool:
    return (isinstance(record, dict) and isinstance(record.get("step"), int)
            and isinstance(record.get("losses"), list))


class Journal:
    """Append-only JSONL of completed steps; each line is fsynced before the step counts."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd = None  # unbuffered: a failed write leaves nothing queued to fail again at exit

    def append(self, record: dict) -> None:
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with naming(self.path):
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            while data:  # a short write (a signal, a nearly full disk) goes on where it stopped
                data = data[os.write(self._fd, data):]
            os.fsync(self._fd)

    def read(self, after_step: int = -1) -> list[dict]:
        """Records with step > after_step, in order; a torn final line is dropped."""
        if not self.path.is_file():
            return []
        lines = self.path.read_text(encoding="utf-8").split("\n")
        records = []
        for number, line in enumerate(lines, 1):
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number >= len(lines) - 1:  # the last line: the kill landed mid-write
                    break
                record = None
            if not _is_entry(record):
                raise UserError(f"{self.path}, line {number}: damaged journal entry (or one added from "
                                "elsewhere); the run cannot be replayed past it: remove that line and the "
                                "ones after it, then resume (those steps are redone)")
            if record["step"] > after_step:
                records.append(record)
        return records

    def truncate_after(self, step: int) -> None:
        """Drop records after `step` and any torn tail, so appends continue cleanly."""
        kept = [json.dumps(r, separators=(",", ":")) + "\n" for r in self.read() if r["step"] <= step]
        self.close()
        atomic_write(self.path, "".join(kept).encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
