"""`edge-zo finetune` end to end on a tiny real bundle: learning, eval, kill -9 and resume."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from edge_zo.checkpoint import load_latest
from runtime.fixtures import build

POS, NEG = "good great fine".split(), "bad terrible awful".split()
FILL = "the a movie film was is plot actor it very".split()


def reviews(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        positive = rng.random() < 0.5
        words = [rng.choice(FILL) for _ in range(rng.randint(2, 6))] + [rng.choice(POS if positive else NEG)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "positive" if positive else "negative"})
    return rows


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("job")
    build(root / "bundle", max_seq_len=16)
    for name, n, seed in (("train", 200, 0), ("dev", 60, 1)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reviews(n, seed)))
    return root


def finetune(job, out, *extra, check=True) -> subprocess.CompletedProcess:
    args = ["--resume", str(out)] if extra == ("--resume",) else [
        "--bundle", str(job / "bundle"), "--data", str(job / "train.jsonl"),
        "--eval-data", str(job / "dev.jsonl"), "--out", str(out), *extra]
    result = subprocess.run([sys.executable, "-m", "edge_zo.cli", "finetune", *args],
                            capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def final_state(run) -> dict[str, np.ndarray]:
    return load_latest(run / "checkpoints").arrays


def test_zo_mopi_learns_the_tiny_task(job, tmp_path):
    result = finetune(job, tmp_path / "run", "--steps", "150", "eval_every=50")
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in line]
    assert [e["step"] for e in evals] == [0, 50, 100, 150]
    # A random tiny model starts near chance; 150 steps must lift dev accuracy clearly.
    assert evals[-1]["eval_acc"] >= evals[0]["eval_acc"] + 0.15
    assert evals[-1]["eval_ce"] < evals[0]["eval_ce"]  # the held-out loss the graph trains on, too
    assert json.loads(result.stdout)["eval_acc"] == evals[-1]["eval_acc"]
    assert (tmp_path / "run" / "metrics.png").stat().st_size > 10_000
    assert load_latest(tmp_path / "run" / "best") is not None
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    verdict = records[-1]
    best = max(evals, key=lambda e: e["eval_acc"])
    assert verdict["kind"] == "verdict" and verdict["improved"] and verdict["best"] == best["eval_acc"]
    assert verdict["message"] in result.stderr  # said once, on the terminal


def test_a_job_that_does_not_help_says_so(job, tmp_path):
    """η = 0: the weights never move, so the dev score cannot improve on step 0's."""
    result = finetune(job, tmp_path / "run", "--steps", "4", "eval_every=2", "optimizer.eta=0")
    verdict = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert verdict["kind"] == "verdict" and not verdict["improved"] and verdict["best_step"] == 0
    assert "did not improve" in result.stderr and "--only-if-better" in result.stderr
    assert load_latest(tmp_path / "run" / "best").meta["step"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["zo-mopi", "mezo", "loren"])  # low-rank, noise, dense updates
def test_sigkill_at_random_moments_then_resume_is_bit_exact(job, tmp_path, preset):
    steps = ["--steps", "300", "--optimizer", preset, "eval_every=40", "checkpoint_every=35"]
    began = time.perf_counter()
    finetune(job, tmp_path / "whole", *steps)
    whole_s = time.perf_counter() - began  # kills are timed relative to this
    run = tmp_path / "killed"
    rng = random.Random(preset)
    start = [sys.executable, "-m", "edge_zo.cli", "finetune", "--bundle", str(job / "bundle"),
             "--data", str(job / "train.jsonl"), "--eval-data", str(job / "dev.jsonl"), "--out", str(run), *steps]
    resume = [sys.executable, "-m", "edge_zo.cli", "finetune", "--resume", str(run)]
    kills, hurry = 0, 1.0
    while True:
        # Killed before the run recorded its config, it is started again, as a user would.
        cmd = resume if (run / "config.json").exists() else start
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills == 4:  # enough kills: let it finish, however slow the machine is
            proc.wait()
            break
        # Relative to the uninterrupted run's time, so that on a fast or a loaded machine
        # the kill lands after start-up (a fraction of it) and before the end.
        time.sleep(rng.uniform(0.3, 0.8) * whole_s * hurry)
        if proc.poll() is not None:
            if kills == 0 and hurry > 0.05:  # the machine sped up since the timing run:
                shutil.rmtree(run)  # start over and kill sooner
                hurry /= 2
                continue
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
    assert proc.returncode == 0, proc.stderr.read()
    assert kills >= 1
    whole, resumed = final_state(tmp_path / "whole"), final_state(run)
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert np.array_equal(whole[name], resumed[name]), name
    steps_run = [json.loads(l)["step"] for l in (run / "journal.jsonl").read_text().splitlines()]
    assert steps_run == list(range(300))  # every step exactly once in the journal


def test_resume_of_a_finished_run_changes_nothing(job, tmp_path):
    finetune(job, tmp_path / "run", "--steps", "20")
    before = final_state(tmp_path / "run")
    finetune(job, tmp_path / "run", "--resume")
    after = final_state(tmp_path / "run")
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_a_run_started_under_another_noise_stream_is_not_resumed(job, tmp_path):
    finetune(job, tmp_path / "run", "--steps", "4")
    config = tmp_path / "run" / "config.json"
    values = json.loads(config.read_text())
    assert values.pop("noise_stream") == 2
    config.write_text(json.dumps(values))  # what a run started before the block streams holds
    result = finetune(job, tmp_path / "run", "--resume", check=False)
    assert result.returncode == 2 and "draws noise stream 1" in result.stderr
    evaluated = subprocess.run([sys.executable, "-m", "edge_zo.cli", "eval", "--run", str(tmp_path / "run"),
                                "--data", str(job / "dev.jsonl")], capture_output=True, text=True, timeout=120)
    assert evaluated.returncode == 0, evaluated.stderr  # its weights are still usable


def test_a_run_opens_with_what_it_trains_and_where(job, tmp_path):
    """The start lines and record: resolved optimizer values, trained tensors and their
    parameters, the provider the session got, the data, and the planned peak of a budget."""
    result = finetune(job, tmp_path / "run", "--steps", "2", "optimizer.eta=0.02", "--memory-budget", "4000")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in records if r["kind"] == "start")
    manifest = json.loads((job / "bundle" / "manifest.json").read_text())
    shapes = [m["shape"] for m in manifest["matrices"]]
    assert start["trained_tensors"] == len(shapes) and start["trained_parameters"] == sum(a * b for a, b in shapes)
    assert start["optimizer_changed"]["eta"] == 0.02 and "N" not in start["optimizer_changed"]  # N: a default
    assert start["provider"] == "cpu" and start["train_examples"] == 200 and start["eval_examples"] == 60
    assert start["budget_mib"] == 4000 and 0 < start["planned_peak_mib"] < 4000
    out = result.stdout + result.stderr
    assert f"trains {len(shapes)} tensors" in out and "eta 0.02" in out and "N 4," in out and "provider cpu" in out
    assert f"planned peak {start['planned_peak_mib']:.0f} MiB, budget 4000 MiB" in out


def rewrite_state(run, change) -> None:
    """Rewrite the newest checkpoint's optimizer state with `change(opt arrays)`, re-marked
    complete (what an older or newer edge-zo would have written)."""
    from edge_zo import checkpoint
    ckpt = load_latest(run / "checkpoints")
    opt = {k[4:]: v for k, v in ckpt.arrays.items() if k.startswith("opt/")}
    rest = {k: v for k, v in ckpt.arrays.items() if not k.startswith("opt/")}
    for path in (run / "checkpoints").glob("ckpt-*"):
        path.unlink()
    checkpoint.save(run / "checkpoints", ckpt.step, {**rest, **{f"opt/{k}": v for k, v in change(opt).items()}},
                    ckpt.meta)


def format0(opt: dict) -> dict:
    """The optimizer state as edge-zo wrote it before STATE_FORMAT (keyed by class names)."""
    opt = {k: v for k, v in opt.items() if k not in ("__format__", "__optimizer__")}
    return {**opt, "__state__": np.array("ZoMopiState"), "config_class": np.array("ZoMopiConfig")}


def test_optimizer_state_formats(job, tmp_path):
    """A format-0 checkpoint (before the format version) resumes bit-identically; a format
    this edge-zo does not know, or another optimizer's state, is refused in one line."""
    finetune(job, tmp_path / "whole", "--steps", "8", "checkpoint_every=4")
    shutil.copytree(tmp_path / "whole", tmp_path / "old")
    for path in (tmp_path / "old" / "checkpoints").glob("ckpt-000000008.*"):
        path.unlink()  # back to step 4, journal too: resume restores it and runs steps 5-8 live
    journal = tmp_path / "old" / "journal.jsonl"
    journal.write_text("".join(line + "\n" for line in journal.read_text().splitlines() if json.loads(line)["step"] < 4))
    rewrite_state(tmp_path / "old", format0)
    finetune(job, tmp_path / "old", "--resume")
    whole, old = final_state(tmp_path / "whole"), final_state(tmp_path / "old")
    assert int(old["opt/__format__"]) == 1 and str(old["opt/__optimizer__"]) == "zo-mopi"
    assert all(np.array_equal(whole[k], old[k]) for k in whole if k.startswith(("W/", "opt/")))
    for change, message in ((lambda opt: {**opt, "__format__": np.array(99)}, "in format 99, which this edge-zo"),
                            (lambda opt: {**opt, "__format__": np.array(1), "__optimizer__": np.array("zo-muon")},
                             "holds a zo-muon optimizer state")):
        rewrite_state(tmp_path / "old", change)
        result = finetune(job, tmp_path / "old", "--resume", check=False)
        assert result.returncode == 2 and message in result.stderr and "ckpt-000000008.npz" in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("extra, message", [
    (["--steps", "0"], "steps=0 must be >= 1"),
    (["optimizer.eta=fast"], "eta='fast': expected a number"),
    (["optimizer.lr_typo=1"], "unknown key 'lr_typo'"),
    (["colour=red"], "unknown key 'colour'"),
    (["--optimizer", "adam"], "unknown optimizer preset 'adam'"),
])
def test_bad_config_is_refused_before_training(job, tmp_path, extra, message):
    result = finetune(job, tmp_path / "run", *extra, check=False)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "journal.jsonl").exists()


def test_an_existing_run_is_not_overwritten(job, tmp_path):
    finetune(job, tmp_path / "run", "--steps", "5")
    result = finetune(job, tmp_path / "run", "--steps", "5", check=False)
    assert result.returncode == 2 and "--resume" in result.stderr


def test_a_subset_of_targets_trains_only_those_matrices(job, tmp_path):
    finetune(job, tmp_path / "run", "--steps", "10", "optimizer.targets=layers.0.fc1.weight",
             "optimizer.nu=4")  # folds at steps 4 and 8 write W
    arrays = final_state(tmp_path / "run")
    assert {k for k in arrays if k.startswith("opt/C/")} == {"opt/C/", "opt/C/layers.0.fc1.weight"}
    start = build(tmp_path / "fresh", max_seq_len=16).weights
    assert not np.array_equal(arrays["W/layers.0.fc1.weight"], start["layers.0.fc1.weight"])
    assert np.array_equal(arrays["W/layers.0.fc2.weight"], start["layers.0.fc2.weight"])
