"""A cheap fingerprint of a bundle's model, recorded in a run so its weights never meet another.

A run's checkpoints hold weights for the model of the bundle it was started on. If that
folder later holds another model (re-exported with --force from another checkpoint, or
copied over), loading them would fail with a shape error, or worse, succeed on a model of
the same shape. `finetune` records this fingerprint in config.json; `--resume`,
`eval --run` and `deploy` compare it first.

It covers what the run's weights depend on: the task, graph, rank, labels, the source
model's identity, each trained matrix's name, shape, layout and dtype, the tokenizer, and
three 64 KiB samples (start, middle, end) of each matrix's base weight bytes, so two
models of one architecture differ. Milliseconds on a multi-GB bundle. What does not
change the model does not count: exporter versions, or the inference graph a re-export
with a newer edge-zo adds; a re-export of the same model matches.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from edge_zo.bundle import TOKENIZER_NAME, read_manifest

SAMPLE = 1 << 16


def fingerprint(bundle_dir: str | Path) -> str:
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    model = {key: getattr(manifest, key) for key in ("task", "graph", "rank", "label_words", "label_token_ids",
                                                      "pad_token_id", "source")}
    model["matrices"] = [[m.name, list(m.shape), m.layout, m.dtype, m.dense] for m in manifest.matrices]
    digest = hashlib.sha256(json.dumps(model, sort_keys=True, default=str).encode())
    digest.update((bundle_dir / TOKENIZER_NAME).read_bytes())
    for matrix in manifest.matrices:
        _sample_weights(digest, bundle_dir, matrix.weight_data)
    return digest.hexdigest()[:16]


def _sample_weights(digest, bundle_dir: Path, where: dict) -> None:
    if not where or not (bundle_dir / where["location"]).is_file():
        return
    start, length = int(where["offset"]), int(where["length"])
    with open(bundle_dir / where["location"], "rb") as f:
        for offset in sorted({0, max(0, length // 2 - SAMPLE // 2), max(0, length - SAMPLE)}):
            f.seek(start + offset)
            digest.update(f.read(min(SAMPLE, length - offset)))
