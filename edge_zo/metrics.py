"""Metrics of a run: JSONL records and a two-clock timer (the plot: edge_zo/plot.py).

Every record is one JSON line in `RUN/metrics.jsonl` (kind "train" or "eval"), carrying the
step, forward passes so far and the training clock. The JSONL is the source of truth; a
`mirror` (edge_zo/events.py: TensorBoard event files) gets every record written and is
rewritten whenever the log is cut back to a step. The training clock excludes evaluation
(DESIGN.md section 7: budgets are compared in forward passes and in wall-clock time
excluding evaluation), so the timer keeps the two apart.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from edge_zo.checkpoint import atomic_write
from edge_zo.errors import naming
from edge_zo.plot import plot  # noqa: F401  (defined here before edge_zo/plot.py: callers import it from here)


class Clock:
    """Wall time split into training and evaluation; `train_s` is what budgets compare."""

    def __init__(self, train_s: float = 0.0, eval_s: float = 0.0):
        self.train_s, self.eval_s = train_s, eval_s
        self._mark = time.perf_counter()

    def tick(self) -> None:
        """Charge the time since the last mark to training."""
        now = time.perf_counter()
        self.train_s += now - self._mark
        self._mark = now

    @contextmanager
    def evaluating(self):
        self.tick()
        try:
            yield
        finally:
            now = time.perf_counter()
            self.eval_s += now - self._mark
            self._mark = now


class MetricsLog:
    """Append-only JSONL; on resume, records past the resumed step are dropped first.

    A line that is not a record of ours (torn by a kill, or added from elsewhere) is
    skipped with one warning, and dropped when the log is next rewritten.
    """

    def __init__(self, path: str | Path, mirror=None):
        self.path = Path(path)
        self._warned = False
        self.mirror = mirror  # write(record), rewrite(records), close(): edge_zo/events.Events

    def write(self, record: dict) -> None:
        with naming(self.path), open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, separators=(",", ":")) + "\n")
        if self.mirror is not None:
            self.mirror.write(record)

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        records, skipped = [], []
        text = self.path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            record = _parse(line)
            if record is None:
                skipped.append(number)
            else:
                records.append(record)
        if skipped and not self._warned:
            self._warned = True
            print(f"edge-zo: warning: {self.path}: skipped {len(skipped)} line(s) that are not metrics records "
                  f"(line {', '.join(map(str, skipped[:5]))}{' ...' if len(skipped) > 5 else ''})",
                  file=sys.stderr)
        return records

    def truncate_after(self, step: int, ends: bool = False) -> None:
        """Drop the records after `step`; with `ends` also the end's records at it (verdict,
        early_stop: the run goes on past that step)."""
        kept = [r for r in self.read() if r.get("step", 0) <= step  # step-less records: run-wide
                and not (ends and r.get("step") == step and r["kind"] in ENDS)]
        atomic_write(self.path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in kept).encode())
        if self.mirror is not None:  # never a step twice in TensorBoard: the events follow the JSONL
            self.mirror.rewrite(kept)


ENDS = ("verdict", "early_stop")  # the records a run's end writes (edge_zo/verdict.py)


def _parse(line: str) -> dict | None:
    """A metrics record, or None for a torn or foreign line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    ok = isinstance(record, dict) and isinstance(record.get("kind"), str) \
        and isinstance(record.get("step", 0), int)
    return record if ok else None
