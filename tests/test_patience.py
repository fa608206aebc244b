"""`patience` (early stopping) end to end, in real subprocesses on a tiny real bundle: where
it stops and what it writes, `--resume` of a stopped run, a patience changed on resume,
runs killed at any moment (and in the windows around an evaluation) that resume to the same
stop, bit for bit, and refused values."""

from __future__ import annotations

import json
import os
import shutil
import signal

import numpy as np
import pytest

from edge_zo.checkpoint import load_latest
from faults.helpers import assert_clean, cli, records, start, wait_for_steps
from test_finetune import job  # noqa: F401  (the fixture: a tiny bundle, 200 training and 60 dev reviews)

STILL = ("steps=40", "eval_every=5", "patience=3", "optimizer.eta=0")  # dev cannot improve: see below
# Learns, then plateaus: dev acc peaks at step 20 and 5 evaluations later (step 40) the run stops;
# checkpoints every 6 steps, so a resume replays across evaluations. Checked by the reference run.
LEARNS = ("steps=400", "eval_every=4", "patience=5", "checkpoint_every=6", "batch_size=8")


def new_run(job, out, *extra):  # noqa: F811
    return cli("finetune", "--bundle", job / "bundle", "--data", job / "train.jsonl",
               "--eval-data", job / "dev.jsonl", "--out", out, *extra)


def resume(run, *extra, **popen):
    return cli("finetune", "--resume", run, *extra, **popen)


def result(proc) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def evals(run) -> list[tuple[int, float]]:
    return [(r["step"], r["eval_acc"]) for r in records(run, "eval")]


def snapshot_of(folder):
    """A snapshot's step, arrays and its count (meta without the wall clocks)."""
    ckpt = load_latest(folder)
    meta = {k: v for k, v in ckpt.meta.items() if not k.endswith("_s")}
    return ckpt.step, ckpt.arrays, meta


def assert_same_end(run, reference) -> None:
    """Same stop, same records of it, and the final and best snapshots bit-identical."""
    for folder in ("checkpoints", "best"):
        (step, arrays, meta), (ref_step, ref_arrays, ref_meta) = snapshot_of(run / folder), snapshot_of(
            reference / folder)
        assert (step, meta) == (ref_step, ref_meta), folder
        assert arrays.keys() == ref_arrays.keys()
        for name in arrays:
            assert np.array_equal(arrays[name], ref_arrays[name]), (folder, name)
    assert evals(run) == evals(reference)  # every evaluation exactly once, the same scores
    for kind in ("verdict", "early_stop"):
        strip = lambda r: {k: v for k, v in r.items() if k != "message"}  # noqa: E731 (run folders differ)
        assert [strip(r) for r in records(run, kind)] == [strip(r) for r in records(reference, kind)], kind
    journal = [json.loads(line)["step"] for line in (run / "journal.jsonl").read_text().splitlines()]
    assert journal == list(range(snapshot_of(reference / "checkpoints")[0]))


@pytest.fixture(scope="module")
def still(job, tmp_path_factory):  # noqa: F811
    """η = 0: the update is 0 × the estimate, so the weights never move and every evaluation
    scores exactly step 0's. A tie is no improvement, so evaluations 5, 10, 15 are three in
    a row without one: the run must stop at step 15 of 40, whatever the machine."""
    run = tmp_path_factory.mktemp("still") / "run"
    proc = new_run(job, run, *STILL)
    return run, proc


@pytest.fixture(scope="module")
def reference(job, tmp_path_factory):  # noqa: F811
    run = tmp_path_factory.mktemp("learns") / "run"
    out = result(new_run(job, run, *LEARNS))
    assert out["stopped_early"] and out["step"] == 40  # what the kill tests below rely on
    assert records(run, "verdict")[0]["best_step"] == 20
    return run


def test_patience_stops_where_dev_cannot_improve(still):
    run, proc = still
    out = result(proc)
    assert out["stopped_early"] is True and out["step"] == 15 and out["kind"] == "eval"
    assert [step for step, _ in evals(run)] == [0, 5, 10, 15]  # the stop's evaluation is the last iterate's
    assert load_latest(run / "checkpoints").step == 15 and load_latest(run / "best").step == 0
    assert load_latest(run / "checkpoints").meta["since_best"] == 3
    assert len((run / "journal.jsonl").read_text().splitlines()) == 15
    verdict, = records(run, "verdict")
    stop, = records(run, "early_stop")
    assert verdict["step"] == 15 and verdict["stopped_early"] and verdict["best_step"] == 0
    assert (stop["step"], stop["patience"], stop["evaluations_without_improvement"], stop["best_step"]) == (15, 3, 3, 0)
    line, = [line for line in proc.stderr.splitlines() if "stopped early" in line]
    assert "at step 15 of 40" in line and "3 evaluations in a row" in line and "at step 0" in line
    assert line == verdict["message"]


def test_resume_of_a_stopped_run_does_nothing_and_says_so(still, job, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(still[0], run)
    files = lambda: {p.relative_to(run): p.read_bytes() for p in run.rglob("*")  # noqa: E731
                     if p.is_file() and p.suffix != ".png" and p.name != ".lock"}  # drawn again; the lock's pid
    before = files()
    proc = resume(run)
    line = assert_clean(proc, 0, "finished at step 15", "nothing to do", "patience=")
    assert [x for x in proc.stderr.splitlines() if x.strip()] == [line]  # one line, no start lines
    assert result(proc)["stopped_early"] is True and result(proc)["step"] == 15
    assert files() == before  # no step, no evaluation, no record
    # Its weights read as any finished run's (deploy reads the same snapshots; it needs an
    # exported bundle's inference.onnx, which this hand-built one has not).
    for weights in ("best", "last"):
        done = cli("eval", "--run", run, "--data", job / "dev.jsonl", "--weights", weights)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.splitlines()[-1])["eval_acc"] == evals(run)[0][1]  # η = 0: as at step 0


def test_a_larger_patience_on_resume_goes_on_from_the_stop(still, tmp_path):
    """patience changes no past step: the journal is kept (replayed, not redone), the run
    goes on from step 15 and stops at 25, the old end's records replaced by the new."""
    run = tmp_path / "run"
    shutil.copytree(still[0], run)
    journal = (run / "journal.jsonl").read_bytes()
    out = result(resume(run, "patience=5"))
    assert out["stopped_early"] and out["step"] == 25
    assert (run / "journal.jsonl").read_bytes().startswith(journal)
    for kind in ("verdict", "early_stop"):
        assert [r["step"] for r in records(run, kind)] == [25], kind
    assert records(run, "resume")[0]["changed"] == {"patience": "5"}
    assert json.loads((run / "config.json").read_text())["patience"] == 5


@pytest.mark.slow  # real SIGKILLs
def test_patience_changed_on_resume_of_a_killed_run_replays_its_journal(job, reference, tmp_path):  # noqa: F811
    """Killed with patience=2 (which stops at step 28), resumed with the reference's 5: the
    journaled steps are replayed under the new count, so the run ends as the reference."""
    run = tmp_path / "run"
    args = [a if not a.startswith("patience=") else "patience=2" for a in LEARNS]
    proc = start("finetune", "--bundle", job / "bundle", "--data", job / "train.jsonl",
                 "--eval-data", job / "dev.jsonl", "--out", run, *args)
    wait_for_steps(run, 15, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    journal = (run / "journal.jsonl").read_bytes()
    result(resume(run, "patience=5"))
    assert (run / "journal.jsonl").read_bytes().startswith(journal[:journal.rfind(b"\n") + 1])
    assert_same_end(run, reference)


@pytest.mark.slow  # real SIGKILLs
def test_a_run_killed_at_any_moment_stops_at_the_same_step(job, reference, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    proc = start("finetune", "--bundle", job / "bundle", "--data", job / "train.jsonl",
                 "--eval-data", job / "dev.jsonl", "--out", run, *LEARNS)
    kills = 0
    for lines in (9, 21, 34):  # before the best (step 20), after it, in the plateau
        try:
            wait_for_steps(run, lines, proc)
        except AssertionError:  # it ended before this kill: nothing left to kill
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        proc = start("finetune", "--resume", run)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert kills >= 1
    assert_same_end(run, reference)


@pytest.mark.parametrize("cut", ["before the stop's evaluation", "before the end's records"])
def test_a_kill_in_the_windows_of_the_stop_resumes_to_the_same_end(reference, tmp_path, cut):
    """What a kill leaves at two exact moments, made from the reference run's files: after
    step 40's journal line but before its evaluation (the replay must redo it, and stop
    there), and after the final checkpoint but before the verdict (written on resume)."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    if cut == "before the stop's evaluation":
        for path in [*(run / "checkpoints").glob("ckpt-000000040.*"), *(run / "best").glob("ckpt-00000004*")]:
            path.unlink()
        kept = [line for line in lines if json.loads(line)["kind"] not in ("verdict", "early_stop")
                and not (json.loads(line)["kind"] == "eval" and json.loads(line)["step"] == 40)]
    else:
        kept = [line for line in lines if json.loads(line)["kind"] not in ("verdict", "early_stop")]
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))
    proc = resume(run)
    out = result(proc)
    assert out["stopped_early"] and out["step"] == 40
    assert "stopped early at step 40" in proc.stderr and "nothing to do" not in proc.stderr
    assert_same_end(run, reference)


@pytest.mark.parametrize("args, message", [
    (("patience=-1",), "patience=-1 must be >= 0"),
    (("patience=2", "--eval-data", ""), "pass --eval-data FILE or drop patience"),
    (("patience=two",), "patience"),
])
def test_bad_patience_is_refused_in_one_line(job, tmp_path, args, message):  # noqa: F811
    base = ["finetune", "--bundle", job / "bundle", "--data", job / "train.jsonl", "--out", tmp_path / "run"]
    if "--eval-data" not in args:
        base += ["--eval-data", job / "dev.jsonl"]
    assert_clean(cli(*base, *args), 2, message)
    assert not (tmp_path / "run").exists()


def test_a_bad_patience_on_resume_is_refused(still, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(still[0], run)
    assert_clean(resume(run, "patience=-2"), 2, "patience=-2 must be >= 0")
