"""What the input-fault tests share: a tiny bundle with ten review rows, and data writers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edge_zo.templates import TEMPLATES
from runtime.fixtures import build

from faults.helpers import edge_zo

REVIEW = TEMPLATES["review"]
ROWS = [("good film", "positive"), ("bad film", "negative")] * 5  # 10 rows


def make_tiny(root: Path) -> Path:
    build(root / "bundle", max_seq_len=16)
    jsonl(root / "train.jsonl", ROWS)
    return root


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    return path


def csv_file(path: Path, lines: list[str]) -> Path:
    path.write_text("text,label\n" + "".join(line + "\n" for line in lines))
    return path


def finetune(tiny: Path, out: Path, *extra, data=None):
    return edge_zo("finetune", "--bundle", tiny / "bundle", "--data", data or tiny / "train.jsonl",
                   "--out", out, "steps=1", "batch_size=2", "eval_every=0", *extra)


def copy_bundle(tiny: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny / "bundle", tmp_path / "bundle"))
