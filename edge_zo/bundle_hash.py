"""A cheap fingerprint of a bundle, recorded in a run so its weights never meet another model.

A run's checkpoints hold weights for the bundle it was started on. If that folder later
holds another model (re-exported with --force, or copied over), loading them would fail
with a shape error, or worse, succeed on a model of the same shape. `finetune` records
this fingerprint in config.json; `--resume`, `eval --run` and `deploy` compare it first.

It hashes the manifest and tokenizer in full, and each other file's name, size and three
64 KiB samples (start, middle, end): milliseconds on a multi-GB bundle, and two exports of
different weights differ in the samples. A re-export of the same model matches.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from edge_zo.bundle import MANIFEST_NAME, TOKENIZER_NAME

SAMPLE = 1 << 16


def fingerprint(bundle_dir: str | Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(bundle_dir).iterdir() if p.is_file() and not p.name.startswith(".")):
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as f:
            if path.name in (MANIFEST_NAME, TOKENIZER_NAME):
                digest.update(f.read())
                continue
            for offset in sorted({0, max(0, size // 2 - SAMPLE // 2), max(0, size - SAMPLE)}):
                f.seek(offset)
                digest.update(f.read(SAMPLE))
    return digest.hexdigest()[:16]
