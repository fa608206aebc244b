"""Faults around a fine-tuning run, each in a real subprocess: two processes on one run
folder, stale files in --out, leftovers, signals, damaged or mismatched run files, disk
faults, divergence advice. Each must end in one line naming the place with a documented
exit code (docs/exit-codes.md), leave no half-written file, and where training goes on,
end bit-identical to the uninterrupted reference run."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest

from edge_zo.errors import EXIT_BAD_INPUT, EXIT_BUSY, EXIT_DISK, EXIT_DIVERGED, EXIT_SIGINT, EXIT_SIGTERM
from faults.conftest import mounted_tmpfs, new_run, remount
from faults.helpers import (assert_clean, assert_same_weights, cli, dead_pid, file_size_limit, start,
                            temp_files, wait_for_steps)
from runtime.fixtures import build

pytestmark = pytest.mark.slow


def resume(run, *extra, **popen):
    return cli("finetune", "--resume", run, *extra, **popen)


def assert_resumes_to(run, reference, *extra) -> None:
    """`--resume RUN` finishes, and ends in the reference run's weights, bit for bit."""
    result = resume(run, *extra)
    assert result.returncode == 0, result.stderr
    assert_same_weights(run, reference)
    assert temp_files(run) == []


# ---- 1. one process per run folder -------------------------------------------------------

def test_a_run_folder_is_owned_by_one_process(job, reference, tmp_path):
    run = tmp_path / "run"
    first = start(*new_run(job, run))
    wait_for_steps(run, 3, first)
    os.kill(first.pid, signal.SIGSTOP)  # holding its lock, mid-run
    try:
        config = (run / "config.json").read_bytes()
        other = cli(*new_run(job, run, "--seed", "1"))
        assert_clean(other, EXIT_BUSY, run, f"pid {first.pid}")
        second = resume(run)
        assert_clean(second, EXIT_BUSY, run, f"pid {first.pid}")
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert (run / "config.json").read_bytes() == config  # the survivor's config, its weights:
    assert_same_weights(run, reference)


def test_two_new_runs_started_at_once_on_one_out(job, reference, tmp_path):
    run = tmp_path / "run"
    procs = {seed: start(*new_run(job, run, "--seed", str(seed))) for seed in (0, 1)}
    codes = {seed: proc.wait(timeout=180) for seed, proc in procs.items()}
    winner = next(seed for seed, code in codes.items() if code == 0)
    loser = procs[1 - winner]
    assert codes[1 - winner] in (EXIT_BUSY, EXIT_BAD_INPUT)  # busy, or it came after the end
    assert_clean(loser, codes[1 - winner], run)
    assert json.loads((run / "config.json").read_text())["seed"] == winner
    if winner == 0:
        assert_same_weights(run, reference)
    else:  # the survivor's config says seed 1: so must its weights
        again = tmp_path / "again"
        assert cli(*new_run(job, again, "--seed", "1")).returncode == 0
        assert_same_weights(run, again)


# ---- 2. --out that holds other files, or is a file; a refused job leaves nothing --------------

@pytest.mark.parametrize("stale", ["journal.jsonl", "metrics.jsonl", "checkpoints", "best"])
def test_an_out_folder_with_stale_run_files_is_refused(job, tmp_path, stale):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True) if stale == "checkpoints" else out.mkdir()
    path = out / stale
    if stale == "best":
        path.mkdir()
    elif stale != "checkpoints":
        path.write_text('{"step": 0, "losses": [1.0]}\n')
    before = sorted(p.name for p in out.rglob("*"))
    assert_clean(cli(*new_run(job, out)), EXIT_BAD_INPUT, out, stale, "empty --out")
    assert sorted(p.name for p in out.rglob("*")) == before  # nothing appended, no lock left


def test_an_out_that_is_a_file_is_refused(job, tmp_path):
    out = tmp_path / "run.txt"
    out.write_text("mine")
    assert_clean(cli(*new_run(job, out)), EXIT_BAD_INPUT, out, "is a file")
    assert out.read_text() == "mine"


def test_a_refused_job_leaves_no_folder_behind(job, tmp_path):
    out = tmp_path / "new" / "nested" / "run"
    assert_clean(cli(*new_run(job, out, "template=copa")), EXIT_BAD_INPUT, "copa")
    assert not (tmp_path / "new").exists()  # every folder it made, removed
    mine = tmp_path / "mine"
    mine.mkdir()
    assert_clean(cli(*new_run(job, mine, "template=copa")), EXIT_BAD_INPUT, "copa")
    assert list(mine.iterdir()) == []  # the user's folder stays, empty


# ---- 3. leftovers of killed processes -----------------------------------------------------

def test_stale_temp_files_and_a_dead_holders_lock_are_cleared_on_resume(job, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / ".lock").write_text(f"{dead_pid()}\n")  # its holder was kill -9'ed
    for name in ("checkpoints/ckpt-000000250.npz.tmp", "config.json.tmp", "journal.jsonl.tmp"):
        (run / name).write_bytes(b"half")
    assert_resumes_to(run, reference)


# ---- 4. signals ---------------------------------------------------------------------------

@pytest.mark.parametrize("sig, code", [(signal.SIGINT, EXIT_SIGINT), (signal.SIGTERM, EXIT_SIGTERM)])
def test_a_signal_checkpoints_and_the_resumed_run_is_bit_identical(job, reference, tmp_path, sig, code):
    run = tmp_path / "run"
    proc = start(*new_run(job, run))
    wait_for_steps(run, 3, proc)
    os.kill(proc.pid, signal.SIGSTOP)  # freeze it mid-run, so the signal lands before the end
    os.kill(proc.pid, sig)
    os.kill(proc.pid, signal.SIGCONT)
    proc.wait(timeout=60)
    line = assert_clean(proc, code, f"--resume {run}", signal.Signals(sig).name)
    steps = (run / "journal.jsonl").read_bytes().count(b"\n")
    assert f"before step {steps}" in line  # the stop point: the step after the last journaled
    assert (run / "checkpoints" / f"ckpt-{steps:09d}.done").is_file()
    assert temp_files(run) == []
    assert_resumes_to(run, reference)


def test_a_second_signal_stops_at_once_and_the_journal_resumes_bit_identical(job, reference, tmp_path):
    run = tmp_path / "run"
    proc = start(*new_run(job, run))
    wait_for_steps(run, 3, proc)
    os.kill(proc.pid, signal.SIGSTOP)
    os.kill(proc.pid, signal.SIGTERM)  # two different signals: both are delivered on SIGCONT
    os.kill(proc.pid, signal.SIGINT)
    os.kill(proc.pid, signal.SIGCONT)
    proc.wait(timeout=60)
    assert_clean(proc, EXIT_SIGINT, f"--resume {run}")
    assert temp_files(run) == []
    assert_resumes_to(run, reference)


# ---- 5. damaged or mismatched run files ---------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "empty", "a list"])
def test_a_damaged_config_is_one_line_on_resume(reference, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    text = (run / "config.json").read_text()
    (run / "config.json").write_text({"truncated": text[:len(text) // 2], "empty": "", "a list": "[1]"}[damage])
    assert_clean(resume(run), EXIT_BAD_INPUT, run / "config.json", "start a new run")


@pytest.mark.parametrize("other", [{"hidden": 16}, {"seed": 1}])  # another shape; same shape, other weights
def test_a_bundle_that_now_holds_another_model_is_detected(job, tmp_path, other):
    bundle, run = tmp_path / "bundle", tmp_path / "run"
    shutil.copytree(job / "bundle", bundle)
    args = ["finetune", "--bundle", bundle, "--data", job / "train.jsonl", "--out", run, "steps=20"]
    assert cli(*args).returncode == 0
    shutil.rmtree(bundle)
    build(bundle, max_seq_len=16, **other)
    assert_clean(resume(run), EXIT_BAD_INPUT, bundle, "another model")
    evaluated = cli("eval", "--run", run, "--data", job / "train.jsonl")
    assert_clean(evaluated, EXIT_BAD_INPUT, bundle, "another model")


def test_foreign_lines_in_metrics_are_skipped_with_a_warning(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"foreign": true}\nnot json\n["a", "list"]\n')
    result = resume(run)  # a finished run: nothing to do, and nothing written
    line = assert_clean(result, 0, run / "metrics.jsonl", "skipped 3 line")
    assert line.startswith("edge-zo: warning:")
    assert resume(run, "steps=121").returncode == 0  # one more step: the log is rewritten without them
    assert all(json.loads(l).get("kind") for l in (run / "metrics.jsonl").read_text().splitlines())


def test_a_foreign_line_in_the_journal_is_one_line(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    lines = (run / "journal.jsonl").read_text().splitlines(keepends=True)
    lines.insert(100, '{"note": "from elsewhere"}\n')  # after the step-90 checkpoint: replayed
    (run / "journal.jsonl").write_text("".join(lines))
    for path in (run / "checkpoints").glob("ckpt-000000120.*"):
        path.unlink()  # killed before its end: a finished run has nothing to replay
    assert_clean(resume(run), EXIT_BAD_INPUT, run / "journal.jsonl", "line 101", "remove that line")


# ---- 6. disk faults: file size limit, full disk, read-only folder -------------------------

# ulimit -f in bytes -> what hits it first (journal lines ~180 B, checkpoints ~10 kB, the plot ~55 kB)
LIMITS = {4_000: "journal.jsonl", 9_500: "ckpt-000000030.npz", 20_000: "journal.jsonl", 45_000: "metrics.png"}


@pytest.mark.parametrize("limit", LIMITS)
def test_a_file_size_limit_ends_clean_and_the_run_resumes_bit_identical(job, reference, tmp_path, limit):
    run = tmp_path / "run"
    result = cli(*new_run(job, run), preexec_fn=file_size_limit(limit))
    assert_clean(result, EXIT_DISK, LIMITS[limit], "file size limit", f"--resume {run}")
    assert temp_files(run) == []
    again = resume(run, preexec_fn=file_size_limit(limit))  # resumed under the same limit: clean again
    assert again.returncode in (0, EXIT_DISK), again.stderr
    if again.returncode:
        assert_clean(again, EXIT_DISK, run, "file size limit")
    assert temp_files(run) == []
    assert_resumes_to(run, reference)


def test_a_new_run_that_cannot_write_its_config_leaves_nothing(job, tmp_path):
    run = tmp_path / "new" / "run"
    result = cli(*new_run(job, run), preexec_fn=file_size_limit(300))
    assert_clean(result, EXIT_DISK, run / "config.json", "file size limit", "start the run again")
    assert not (tmp_path / "new").exists()


def test_a_full_disk_ends_clean_and_the_run_resumes_bit_identical(job, reference, tmp_path):
    with mounted_tmpfs(tmp_path / "disk", "48k") as disk:
        run = disk / "run"
        result = cli(*new_run(job, run))
        assert_clean(result, EXIT_DISK, run, "disk is full", f"--resume {run}")
        assert temp_files(run) == []
        again = resume(run)  # still full: clean again, nothing lost
        assert_clean(again, EXIT_DISK, run, "disk is full")
        assert temp_files(run) == []
        remount(disk, "size=4m")
        assert_resumes_to(run, reference)


@pytest.fixture
def read_only(tmp_path):
    """A folder made read-only, and writable again: a remounted tmpfs as root (chmod does not
    stop root), chmod otherwise."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        yield folder, lambda ro: folder.chmod(0o555 if ro else 0o755)
        folder.chmod(0o755)
        return
    with mounted_tmpfs(tmp_path / "ro", "4m") as folder:
        yield folder, lambda ro: remount(folder, "ro" if ro else "rw")


def test_a_read_only_folder_ends_clean_in_finetune_and_resume(job, reference, read_only):
    folder, set_read_only = read_only
    run = folder / "run"
    assert_clean(cli(*new_run(job, run), preexec_fn=file_size_limit(20_000)), EXIT_DISK, run)
    set_read_only(True)
    assert_clean(resume(run), EXIT_DISK, run, "writable")
    assert_clean(cli(*new_run(job, folder / "other")), EXIT_DISK, folder / "other")
    set_read_only(False)
    assert not (folder / "other").exists()
    assert_resumes_to(run, reference)


# ---- 7. divergence: the advice can be followed, with or without a checkpoint ---------------

def test_eta_inf_advice_is_followed_from_step_0(job, reference, tmp_path):
    run = tmp_path / "run"
    line = assert_clean(cli(*new_run(job, run, "optimizer.eta=inf")), EXIT_DIVERGED,
                        f"--resume {run} optimizer.eta=", "no checkpoint yet")
    assert "last checkpoint" not in line
    assert_resumes_to(run, reference, "optimizer.eta=0.01")  # the preset's eta: the reference run


def test_divergence_after_a_checkpoint_resumes_from_it_with_a_lower_eta(job, tmp_path):
    run = tmp_path / "run"
    assert cli(*new_run(job, run, "optimizer.schedule=constant")).returncode == 0
    diverged = resume(run, "--steps", "150", "optimizer.eta=inf")
    assert_clean(diverged, EXIT_DIVERGED, "the last checkpoint (step 120)", f"--resume {run} optimizer.eta=")
    assert resume(run, "optimizer.eta=0.005").returncode == 0
    steps = [json.loads(l)["step"] for l in (run / "journal.jsonl").read_text().splitlines()]
    assert steps == list(range(150))
    assert json.loads((run / "config.json").read_text())["optimizer"]["eta"] == "0.005"


def test_resume_refuses_keys_that_would_change_the_run(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    assert_clean(resume(run, "seed=3"), EXIT_BAD_INPUT, "seed", "optimizer.eta")
    assert_clean(resume(run, "optimizer.eta=fast"), EXIT_BAD_INPUT, "eta")


def test_the_fingerprint_follows_the_model_not_incidental_files(job, tmp_path):
    from edge_zo.bundle import read_manifest, write_manifest
    from edge_zo.bundle_hash import fingerprint

    bundle = tmp_path / "bundle"
    shutil.copytree(job / "bundle", bundle)
    before = fingerprint(bundle)
    manifest = read_manifest(bundle)
    write_manifest(bundle, type(manifest)(**{**manifest.__dict__, "exporter": {"edge_zo": "9"}}))
    (bundle / "notes.txt").write_text("re-exported by a newer edge-zo")
    assert fingerprint(bundle) == before
    write_manifest(bundle, type(manifest)(**{**manifest.__dict__, "label_words": ["good", "bad"]}))
    assert fingerprint(bundle) != before


def test_every_exit_code_is_in_the_docs_table():
    from pathlib import Path

    from edge_zo import errors

    codes = {name: value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    table = (Path(__file__).parents[2] / "docs" / "exit-codes.md").read_text()
    rows = {line.split("|")[2].strip(" `"): int(line.split("|")[1]) for line in table.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip().isdigit()}
    assert rows == codes


def test_exit_codes_are_set_only_by_the_error_classes_of_errors_py():
    """Every UserError subclass is defined in edge_zo/errors.py with the code the docs give it,
    and no other module picks an exit code itself."""
    import re
    import signal
    from pathlib import Path

    from edge_zo import errors

    package = Path(errors.__file__).parent
    elsewhere = [f"{p.relative_to(package)}: {m.group(0)}" for p in package.rglob("*.py") if p.name != "errors.py"
                 for m in re.finditer(r"exit_code\s*=|class \w+\((?:\w+\.)?UserError\)", p.read_text())]
    assert elsewhere == []
    made = {errors.ConfigError("m"): 2, errors.DataError("m"): 2, errors.BundleError("m"): 2,
            errors.DivergedError("m"): 3, errors.BusyError("m"): 73, errors.DiskError("m"): 74,
            errors.MemoryBudgetExceeded("m"): 75, errors.Stopped(signal.SIGINT, "m"): 130,
            errors.Stopped(signal.SIGTERM, "m"): 143}
    assert [e.exit_code for e in made] == list(made.values())
    table = (package.parent / "docs" / "exit-codes.md").read_text()
    for name in ("DivergedError", "BusyError", "DiskError", "MemoryBudgetExceeded", "Stopped"):
        assert f"`{name}`" in table
