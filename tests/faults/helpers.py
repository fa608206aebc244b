"""Fault tests' shared steps: run `edge-zo` in a child process and check it ended cleanly.

"Cleanly" (issue 15): the documented exit code, exactly one error line on stderr naming
the place, and no traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def edge_zo(*args, timeout: int = 120, cwd=None) -> subprocess.CompletedProcess:
    """`edge-zo ARGS...` as a user runs it, in a child process."""
    return subprocess.run([sys.executable, "-m", "edge_zo.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def assert_clean(result: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """Exit `code`, no traceback, one `error:` line holding every word; returns that line."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, (result.returncode, result.stderr)
    errors = [line for line in result.stderr.splitlines() if ": error:" in line]
    assert len(errors) == (1 if code else 0), result.stderr
    for word in words:
        assert word in (errors[0] if code else result.stderr), (word, result.stderr)
    return errors[0] if code else ""


def notes(result: subprocess.CompletedProcess, text: str) -> list[str]:
    """The stderr lines of one kind of notice (`edge-zo: note:` / `edge-zo: warning:`)."""
    return [line for line in result.stderr.splitlines() if line.startswith("edge-zo: ") and text in line]


def records(run: Path, kind: str = "notice") -> list[dict]:
    lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]
