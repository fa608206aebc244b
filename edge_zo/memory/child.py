"""The calibration child: `python -m edge_zo.memory.child SPEC_JSON`, run by
edge_zo/memory/calibration.py once per calibration shape, each in its own process so that
no onnxruntime arena serves two shapes. It opens the bundle as a job does and runs what a
job runs at the shape through the loop's own functions (edge_zo/loop.py: `step` with the
job's optimizer and values, `evaluate_batches` as a dev evaluation scores), then prints its
memory readings (MiB) as one JSON line. It is the one module of edge_zo/memory that imports
the loop, and only as the child process's entry.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edge_zo.memory.model import Shape


def _status() -> dict[str, float]:
    """VmRSS and VmHWM (peak) of this process, MiB. ru_maxrss would carry the parent's
    peak across fork + exec; VmHWM starts fresh and can be reset (clear_refs)."""
    with open("/proc/self/status") as f:
        return {line.split(":")[0]: int(line.split()[1]) / 1024 for line in f
                if line.startswith(("VmRSS", "VmHWM"))}


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _child(spec: dict) -> dict:
    import tempfile

    from edge_zo import loop  # everything a finetune job imports, and its step
    from edge_zo.data import load_tokenizer
    from edge_zo.events import writer_class
    from edge_zo.metrics import plot
    from edge_zo.runtime import Runtime

    bundle, shape = spec["bundle"], Shape(**spec["shape"])
    tokenizer = load_tokenizer(bundle)
    writer_class()  # a job loads tensorboardX where it is installed (edge_zo/events.py)
    libraries = _status()["VmRSS"]
    reset_peak()
    rt = Runtime(bundle, provider=spec["provider"], threads=spec["threads"] or None, probe_slots=shape.probe_slots)
    loaded = _status()
    before, stepped = _job_passes(loop, rt, _batch(shape, spec["choices"], tokenizer.get_vocab_size()), spec)
    after = _status()
    reset_peak()
    with tempfile.TemporaryDirectory() as tmp:  # the job's last act: the metrics plot
        if spec["plot"]:
            plot([{"kind": "train", "step": i, "loss": 1.0, "forward_passes": i, "train_s": i}
                  for i in range(50)], Path(tmp) / "metrics.png")
    return {"P": shape.probe_slots, "B": shape.batch, "T": shape.seq_len, "optimizer": stepped,
            "libraries": libraries, "model": loaded["VmRSS"] - libraries,
            "load_peak": loaded["VmHWM"] - libraries, "activations": after["VmHWM"] - before,
            "plot": _status()["VmHWM"] - after["VmRSS"]}


def _batch(shape: Shape, choices: int, vocab: int):
    """A batch of the job's shape: every row T tokens of random ids; a multiple-choice job's
    rows grouped into examples of `choices` candidates, as the job's batches are."""
    import numpy as np

    from edge_zo.data import Batch, ChoiceLayout

    B, T = shape.batch, shape.seq_len
    ids = np.random.default_rng(0).integers(0, vocab, (B, T), dtype=np.int64)
    examples = B // choices
    layout = ChoiceLayout((choices,) * examples, np.zeros(examples, np.int64)) if choices > 1 else None
    return Batch(ids, np.ones_like(ids), np.zeros(B, np.int64), np.ones((B, T), np.float32), layout)


def _job_passes(loop, rt, batch, spec: dict) -> tuple[float, str]:
    """What a job does at one shape, in its order, through the loop's functions: an
    evaluation, two optimizer steps of the job's optimizer (probes in calls of P slots, a
    fold), an evaluation. Returns the RSS just before, and the optimizer that stepped."""
    from edge_zo.optim import build_config, optimizer_for
    from edge_zo.rng import Key

    config = build_config(spec["preset"], spec["optimizer"])  # the run's resolved values, as they were
    opt, root = optimizer_for(config), Key.root(0)
    state = opt.init(rt.shapes, config, root.child("init"))
    reset_peak()
    rss = _status()["VmRSS"]
    loop.evaluate_batches(rt, state, [batch])
    # a text job on a bundle with a logit bias also fetches token_probs [P, V] from each run
    text = rt.manifest.logit_bias is not None and batch.choice is None
    for t in range(2):
        state, _ = loop.step(opt, state, rt, batch, root.child("step", t), token_probs=text)
    rt.collect_token_probs(False)  # as LogitBias.gradient leaves it
    loop.evaluate_batches(rt, state, [batch])
    return rss, config.name


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
