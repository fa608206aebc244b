"""Real finetune jobs for the memory tests: two tiny bundles, long-text data, measured peaks.

The bundles come from tests/runtime/fixtures.py, scaled up so that activations and
weights are tens of MiB (well above the allocator's rounding) while a step stays fast:
  lm   causal-lm, per-token hidden states repeated per probe slot (P·B·T activations)
  cls  classification over a mean-pooled sequence: activations B·T, independent of P
Every example is longer than the bundle's max_seq_len, so each batch has exactly T tokens.
A job runs the real `edge-zo finetune` in a child process; its peak RSS is the child's own
VmHWM, read when it exits (ru_maxrss would carry this test process's peak across exec).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from runtime.fixtures import WORDS, build

REPO = Path(__file__).resolve().parents[2]
MODELS = {  # name -> fixtures.build options
    "lm": dict(task="causal-lm", hidden=256, ffn=1024, out_dim=256, max_seq_len=128, probe_slots=4),
    "cls": dict(task="classification", hidden=1024, ffn=4096, out_dim=1024, max_seq_len=128, probe_slots=4),
}

# Runs `edge-zo` and writes the process's own peak RSS (MiB) to $PEAK_FILE at exit.
WRAPPER = """
import os, sys
from edge_zo.cli import main
try:
    code = main(sys.argv[1:])
finally:
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
    open(os.environ["PEAK_FILE"], "w").write(str(int(hwm.split()[1]) / 1024))
sys.exit(code)
"""


def make_model(root: Path, name: str) -> Path:
    """A bundle and train/dev data for model `name` under root/name."""
    folder = root / name
    build(folder / "bundle", **MODELS[name])
    rng = random.Random(name)
    for split, n in (("train", 48), ("dev", 32)):
        rows = [{"text": " ".join(rng.choice(WORDS) for _ in range(200)),
                 "label": rng.choice(["positive", "negative"])} for _ in range(n)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def job_args(folder: Path, out: Path, probe_slots: int, batch: int, steps: int = 2, options=(),
             overrides=()) -> list[str]:
    """`edge-zo finetune` arguments: options first, key=value overrides last (argparse)."""
    return ["--bundle", str(folder / "bundle"), "--data", str(folder / "train.jsonl"),
            "--eval-data", str(folder / "dev.jsonl"), "--out", str(out), "--steps", str(steps),
            "--batch-size", str(batch), *options, f"probe_slots={probe_slots}", f"eval_examples={batch}",
            "eval_every=0", *overrides]


def run(args: list[str], peak_file: Path, timeout: int = 120) -> tuple[subprocess.CompletedProcess, float]:
    """(the finished `edge-zo` child, its peak RSS in MiB)."""
    env = {**os.environ, "PEAK_FILE": str(peak_file)}
    result = subprocess.run([sys.executable, "-c", WRAPPER, *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=timeout)
    return result, float(peak_file.read_text())
