"""Loud fallbacks: whatever edge-zo does instead of what was asked is said, once.

A skipped data row, a CUDA session that runs on the CPU, the memory guard lowering the
probe slots, integer labels read as the bundle's labels (issue 20): each changes a run
without stopping it, so a user who reads only the result would not know (issue 15). `announce` prints one line on stderr and, inside a run, writes
one record to RUN/metrics.jsonl (kind "notice", with the step it happened before).
"""

from __future__ import annotations

import sys


def announce(message: str, metrics=None, **record) -> None:
    """One line on the terminal; with `metrics` (a MetricsLog) also a "notice" record."""
    from tqdm import tqdm

    # tqdm.write: a line said while the progress bar is drawn goes above it, not into it
    tqdm.write(f"edge-zo: note: {message}", file=sys.stderr)
    if metrics is not None:
        metrics.write({"kind": "notice", **record, "message": message})


def skipped_rows(dataset, role: str, run_dir=None, metrics=None, step: int = 0) -> None:
    """Count a data file's skipped rows (skip_bad); in a run, also list every one of them
    in RUN/skipped_rows.txt and record the count in metrics, once per file (a resumed run
    says it on the terminal again, but adds no second record). CSV records over several
    lines are said too: a quote left open and closed rows later reads as one of them."""
    if dataset.multiline:
        spans = dataset.multiline
        announce(f"{len(spans)} rows of the {role} data {dataset.path} run over several lines (quoted line "
                 f"breaks: {', '.join(spans[:5])}{', ...' if len(spans) > 5 else ''}); if a quote was left open "
                 "there, close it", metrics if step == 0 else None, what="multiline_rows",
                 step=step, role=role, file=str(dataset.path), rows=len(spans))
    if not dataset.skipped:
        return
    count, total = len(dataset.skipped), len(dataset.skipped) + len(dataset.examples)
    numbers = [line.split(":")[0].removeprefix("line ") for line in dataset.skipped]
    where = f"lines {', '.join(numbers[:10])}{', ...' if count > 10 else ''}"
    if run_dir is not None:
        path = run_dir / SKIPPED_NAME
        where = f"every line and its reason in {path}"
        if not _append_once(path, dataset.skipped_report(role)):
            metrics = None  # recorded by the run's first start
    announce(f"skip_bad: skipped {count} of {total} rows of the {role} data {dataset.path} ({where}; "
             f"the first, {dataset.skipped[0]})", metrics, what="skipped_rows", step=step, role=role,
             file=str(dataset.path), skipped=count, rows=total)


def integer_labels(dataset, label_words: list[str], said: set | None = None) -> None:
    """Rows labelled 0..N-1 (the Hugging Face convention) read as the bundle's labels in
    order: said once a command (`said` holds what was said), naming the mapping."""
    if not dataset.integer_labels:
        return
    words = [w.strip() for w in label_words]
    message = (f"labels 0..{len(words) - 1} read as the bundle's labels [{', '.join(words)}] (label i = the "
               "bundle's label word i; name a template to read them otherwise)")
    if said is None or message not in said:
        announce(message)
    if said is not None:
        said.add(message)


def _append_once(path, report: str) -> bool:
    """Add `report` to the file unless it is there already; whether it was added."""
    from edge_zo.checkpoint import atomic_write

    previous = path.read_text(encoding="utf-8") if path.is_file() else ""
    if report in previous:
        return False
    atomic_write(path, (previous + report).encode("utf-8"))
    return True


SKIPPED_NAME = "skipped_rows.txt"
