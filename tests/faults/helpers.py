"""Shared by the fault-injection tests: run `edge-zo` in a real subprocess and check that it
ended cleanly (exit code, one line on stderr naming the place, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from edge_zo.checkpoint import load_latest

ENV = {**os.environ, "TQDM_DISABLE": "1"}  # no progress bars: stderr holds only what we say
# said once beside a result (edge_zo/notices.py), and a run's opening lines (edge_zo/run_summary.py)
NOTICES = ("edge-zo: note:", "edge-zo: warning:", "run: ")


def cli(*args, timeout: float = 180, **popen) -> subprocess.CompletedProcess:
    """`edge-zo ARGS...` in a subprocess; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, "-m", "edge_zo.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=ENV, **popen)


def start(*args, **popen) -> subprocess.Popen:
    """`edge-zo ARGS...` started in the background, stderr piped."""
    return subprocess.Popen([sys.executable, "-m", "edge_zo.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, **popen)


def assert_clean(result, code: int, *names) -> str:
    """Exit `code`, no traceback, and the one line that matters holding each of `names`:
    on failure exactly one `error:` line and nothing else but notes and warnings; on success
    no error line, and the line returned is the first that holds every name."""
    err = result.stderr if isinstance(result.stderr, str) else result.stderr.read()
    assert result.returncode == code, (result.returncode, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error:" in line]
    assert len(errors) == (1 if code else 0), err
    if code:
        others = [line for line in lines if line not in errors and not line.startswith(NOTICES)]
        assert not others, err
    hits = [line for line in (errors or lines) if all(str(name) in line for name in names)]
    assert hits or not (names or errors), (names, err)
    return hits[0] if hits else ""


def temp_files(folder: Path) -> list[Path]:
    """Leftovers of half-done writes: *.tmp files, hidden .partial- folders, checkpoints
    without their completion marker."""
    paths = Path(folder).rglob("*")
    return [p for p in paths if p.name.endswith(".tmp") or ".partial-" in p.name
            or (p.suffix == ".npz" and not p.with_suffix(".done").is_file())]


def weights(run: Path) -> dict[str, np.ndarray]:
    """The newest complete checkpoint's arrays (weights and optimizer state)."""
    return load_latest(Path(run) / "checkpoints").arrays


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert np.array_equal(wa[name], wb[name]), name


def dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def file_size_limit(nbytes: int):
    """preexec_fn: `ulimit -f` in the child; a write past it fails with EFBIG (Python ignores
    SIGXFSZ, so the process is not killed)."""
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))


def wait_for_steps(run: Path, steps: int, proc, timeout: float = 120) -> None:
    """Until the run's journal holds `steps` lines (the process must still be running)."""
    import time

    journal, deadline = Path(run) / "journal.jsonl", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if journal.is_file() and journal.read_bytes().count(b"\n") >= steps:
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.005)
    raise AssertionError(f"{journal}: fewer than {steps} steps after {timeout} s")


def edge_zo(*args, timeout: int = 120, cwd=None) -> subprocess.CompletedProcess:
    """`edge-zo ARGS...` as a user runs it, from `cwd`, in a child process."""
    return cli(*args, timeout=timeout, cwd=cwd)


def notes(result: subprocess.CompletedProcess, text: str) -> list[str]:
    """The stderr lines of one kind of notice (`edge-zo: note:` / `edge-zo: warning:`)."""
    return [line for line in result.stderr.splitlines() if line.startswith("edge-zo: ") and text in line]


def records(run: Path, kind: str = "notice") -> list[dict]:
    lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]
