"""The memory guard: fewer probe slots near the budget (same losses), a checkpoint and exit 75
at it, and a resume with a bigger budget that ends exactly where an unstopped run does."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_zo.checkpoint import load_latest
from edge_zo.memory.guard import EXIT_CODE, Budget, MemoryBudgetExceeded, MemoryGuard
from edge_zo.runtime import Runtime
from runtime.conftest import random_probes, random_sketch
from runtime.fixtures import build

from . import jobs


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    tiny = build(tmp_path_factory.mktemp("guard"), task="causal-lm", probe_slots=4)
    rt = Runtime(tiny.path, probe_slots=4)
    batch = tiny.batch(batch_size=3, seq=8)
    rt.set_batch(batch["input_ids"], batch["attention_mask"], loss_mask=batch["loss_mask"])
    rt.set_sketch(0, random_sketch(rt.shapes, rt.manifest.rank, 0))
    return rt


def test_near_the_budget_slots_halve_once_per_new_peak_then_it_stops(runtime):
    samples = iter([50.0, 91.0, 91.0, 95.0, 99.0, 100.0])
    guard = MemoryGuard(Budget(100), runtime, "RUN", sample=lambda: next(samples))
    slots = []
    for step in range(5):
        guard.check(step)
        slots.append(runtime.probe_slots)
    assert slots == [4, 2, 2, 1, 1]  # 91% halves; the same peak does not; a new one does; 1 is the floor
    with pytest.raises(MemoryBudgetExceeded) as err:
        guard.check(5)
    assert err.value.exit_code == EXIT_CODE == 75
    message = str(err.value)
    assert "budget 100 MiB" in message and "peak 100 MiB" in message
    assert "--resume RUN --memory-budget" in message and "batch_size" in message


def test_fewer_slots_per_call_give_the_same_losses(runtime):
    probes = random_probes(runtime.shapes, runtime.manifest.rank, 7, seed=1)
    runtime.set_probe_slots(4)
    four = runtime.losses(probes)
    runtime.set_probe_slots(1)
    one = runtime.losses(probes)
    np.testing.assert_allclose(one, four, rtol=1e-6)


def test_without_a_budget_it_only_tracks_the_peak(runtime):
    runtime.set_probe_slots(4)
    guard = MemoryGuard(None, runtime)
    guard.check(0)
    assert guard.peak > 20 and runtime.probe_slots == 4  # real VmHWM: python + onnxruntime


@pytest.mark.slow
def test_a_job_over_its_budget_checkpoints_stops_75_and_resumes_exactly(model, tmp_path):
    folder = model("lm")
    def args(out, *options):
        return ["finetune", *jobs.job_args(folder, out, 4, 16, 4, options, ["checkpoint_every=100"])]

    whole, peak = jobs.run(args(tmp_path / "whole"), tmp_path / "p")
    assert whole.returncode == 0, whole.stderr[-2000:]
    # start-up and the first evaluation fit (about 0.6 of the whole job's peak, now that the
    # plot no longer adds to it), the first training step (4 probe slots) does not
    budget = int(peak * 0.7)
    run = tmp_path / "stopped"
    stopped, _ = jobs.run(args(run, "--memory-budget", str(budget), "--no-plan"), tmp_path / "p")
    assert stopped.returncode == EXIT_CODE, stopped.stderr[-2000:]
    line = stopped.stderr.strip().splitlines()[-1]
    assert line.startswith("edge-zo finetune: error: memory budget") and f"{budget} MiB" in line
    assert f"--resume {run}" in line
    ckpt = load_latest(run / "checkpoints")
    assert ckpt is not None and 1 <= ckpt.step < 4
    assert "memory_budget" not in json.loads((run / "config.json").read_text())  # not part of the run

    resumed, _ = jobs.run(["finetune", "--resume", str(run), "--memory-budget", "100000", "--no-plan"],
                          tmp_path / "p")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    done, reference = load_latest(run / "checkpoints"), load_latest(tmp_path / "whole" / "checkpoints")
    assert done.step == reference.step == 4
    for name, array in reference.arrays.items():
        np.testing.assert_array_equal(done.arrays[name], array, err_msg=name)
