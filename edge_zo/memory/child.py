"""The calibration child: `python -m edge_zo.memory.child SPEC_JSON`, run by
edge_zo/memory/plan.py (`calibrate`) once per calibration shape, each in its own process
so that no onnxruntime arena serves two shapes. It opens the bundle as a job does, runs
what a job runs at the shape (edge_zo/memory/plan.py's docstring says why) and prints its
memory readings (MiB) as one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edge_zo.memory.plan import Shape


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

    import edge_zo.loop  # noqa: F401  everything a finetune job imports
    import numpy as np

    from edge_zo.data import load_tokenizer
    from edge_zo.events import writer_class
    from edge_zo.metrics import plot
    from edge_zo.runtime import Runtime

    bundle, shape = spec["bundle"], Shape(**spec["shape"])
    P, B, T = shape.probe_slots, shape.batch, shape.seq_len
    tokenizer = load_tokenizer(bundle)
    writer_class()  # a job loads tensorboardX where it is installed (edge_zo/events.py)
    libraries = _status()["VmRSS"]
    reset_peak()
    rt = Runtime(bundle, provider=spec["provider"], threads=spec["threads"] or None, probe_slots=P)
    loaded = _status()
    ids = np.random.default_rng(0).integers(0, tokenizer.get_vocab_size(), (B, T), dtype=np.int64)
    rt.set_batch(ids, np.ones_like(ids), labels=np.zeros(B, np.int64), loss_mask=np.ones((B, T), np.float32))
    before = _job_passes(rt, spec)
    after = _status()
    reset_peak()
    with tempfile.TemporaryDirectory() as tmp:  # the job's last act: the metrics plot
        if spec["plot"]:
            plot([{"kind": "train", "step": i, "loss": 1.0, "forward_passes": i, "train_s": i}
                  for i in range(50)], Path(tmp) / "metrics.png")
    return {"P": P, "B": B, "T": T, "libraries": libraries, "model": loaded["VmRSS"] - libraries,
            "load_peak": loaded["VmHWM"] - libraries, "activations": after["VmHWM"] - before,
            "plot": _status()["VmHWM"] - after["VmRSS"]}


def _job_passes(rt, spec: dict) -> float:
    """What a job does at one shape, in its order: an evaluation (P = 1, scores), two
    optimizer steps (probes in calls of P slots, a fold), an evaluation. Returns the RSS
    just before. Why not one forward: with onnxruntime's memory patterns on, the second
    run of a shape allocates its recorded pattern as one block beside the blocks the first
    run left in the arena, so a job's activations are up to twice one forward's.
    """
    from edge_zo.optim import optimizer_for
    from edge_zo.rng import Key
    from edge_zo.runconfig import RunConfig

    config = RunConfig(bundle=spec["bundle"], data="(calibration)", preset=spec["preset"],
                       optimizer=spec["optimizer"]).optimizer_config(rt.manifest.rank)
    opt, root = optimizer_for(config), Key.root(0)
    state = opt.init(rt.shapes, config, root.child("init"))
    reset_peak()
    rss = _status()["VmRSS"]
    rt.scores()
    for t in range(2):
        state, _ = opt.step(state, rt, root.child("step", t))
    rt.scores()
    return rss


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
