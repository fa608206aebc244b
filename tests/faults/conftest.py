"""Fixtures of the fault-injection suite: a tiny bundle and data, a reference run, tmpfs."""

from __future__ import annotations

import json
import random
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from faults.helpers import cli
from runtime.fixtures import build

RUN_ARGS = ("steps=120", "checkpoint_every=30", "batch_size=8")


@pytest.fixture(scope="session")
def job(tmp_path_factory) -> Path:
    """A tiny torch-free bundle and 80 rows of review data."""
    root = tmp_path_factory.mktemp("faults")
    build(root / "bundle", max_seq_len=16)
    rng = random.Random(0)
    rows = []
    for _ in range(80):
        good = rng.random() < 0.5
        rows.append({"text": f"the movie was {'good' if good else 'bad'} {rng.choice(['it', 'plot', 'a'])}",
                     "label": "positive" if good else "negative"})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def new_run(job: Path, out: Path, *extra) -> list:
    """The arguments of a new run with the suite's config (RUN_ARGS)."""
    return ["finetune", "--bundle", job / "bundle", "--data", job / "train.jsonl", "--out", out, *RUN_ARGS, *extra]


@pytest.fixture(scope="session")
def reference(job) -> Path:
    """The run every interrupted-then-resumed run must end identical to."""
    run = job / "reference"
    result = cli(*new_run(job, run))
    assert result.returncode == 0, result.stderr
    return run


@contextmanager
def mounted_tmpfs(path: Path, size: str):
    """A small tmpfs at `path` (needs root and mount); skips the test where it cannot mount."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}): "
                    "a full disk and a read-only folder need one when running as root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)
