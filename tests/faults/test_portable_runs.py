"""Run folders that move: trained in one place, resumed, evaluated and deployed from another
(edge_zo/runpaths.py). Real subprocesses from another working directory; a moved run resumed
must end bit-identical to the same run resumed where it was (a moved run's deploy:
test_deploy_faults.py, which has an exported bundle with its inference graph)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_zo.errors import EXIT_BAD_INPUT
from faults.conftest import RUN_ARGS
from faults.helpers import assert_clean, assert_same_weights, cli
from runtime.fixtures import build

LAST = ("--weights", "last")  # the suite's runs have no eval data, so no best snapshot


def trained_half_way(job: Path, here: Path) -> Path:
    """A copy of the suite's bundle and data in `here`, and a run of half the suite's steps."""
    shutil.copytree(job / "bundle", here / "bundle")
    shutil.copy(job / "train.jsonl", here / "train.jsonl")
    args = ["finetune", "--bundle", "bundle", "--data", "train.jsonl", "--out", "run", *RUN_ARGS, "steps=60"]
    result = cli(*args, cwd=here)  # relative paths, as users type them
    assert result.returncode == 0, result.stderr
    return here / "run"


def resumed_in_place(tmp_path: Path, folder: Path) -> Path:
    """`folder` copied to a control folder and its run resumed there, where it was trained."""
    control = tmp_path / "control"
    shutil.copytree(folder, control)
    assert_clean(cli("finetune", "--resume", "run", "steps=120", cwd=control), 0)
    return control / "run"


def test_a_moved_folder_resumes_bit_identical_and_deploys_the_same(job, tmp_path):
    trained_half_way(job, tmp_path / "here")
    control = resumed_in_place(tmp_path, tmp_path / "here")
    there = tmp_path / "there"
    (tmp_path / "here").rename(there)  # every recorded absolute path is gone now
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = cli("finetune", "--resume", there / "run", "steps=120", cwd=elsewhere)
    assert_clean(resumed, 0)
    assert_same_weights(there / "run", control)
    evaluated = cli("eval", "--run", there / "run", "--data", there / "train.jsonl", "--weights", "last",
                    cwd=elsewhere)
    assert_clean(evaluated, 0)
    assert json.loads(evaluated.stdout)["eval_acc"] == json.loads(
        cli("eval", "--run", control, "--data", there / "train.jsonl", *LAST).stdout)["eval_acc"]
    # the resumed run recorded where its files are now
    config = json.loads((there / "run" / "config.json").read_text())
    assert config["bundle"] == str((there / "bundle").resolve()) and config["paths_from_run"]["bundle"] == "../bundle"


def test_a_run_copied_alone_is_given_its_files_and_checks_them(job, tmp_path):
    trained_half_way(job, tmp_path / "here")
    control = resumed_in_place(tmp_path, tmp_path / "here")
    run = tmp_path / "device" / "run"
    shutil.copytree(tmp_path / "here" / "run", run)
    (tmp_path / "here").rename(tmp_path / "host")  # the bundle and data are on "another machine"
    host = tmp_path / "host"
    assert_clean(cli("finetune", "--resume", run), EXIT_BAD_INPUT, run, "--bundle DIR")
    assert_clean(cli("deploy", run, "--out", tmp_path / "m.onnx", *LAST), EXIT_BAD_INPUT, run, "--bundle DIR")
    no_data = cli("finetune", "--resume", run, "--bundle", host / "bundle")
    assert_clean(no_data, EXIT_BAD_INPUT, "train.jsonl", "--data FILE")

    build(tmp_path / "other", max_seq_len=16, seed=1)  # same shape, other weights
    assert_clean(cli("deploy", run, "--out", tmp_path / "m.onnx", *LAST, "--bundle", tmp_path / "other"),
                 EXIT_BAD_INPUT, tmp_path / "other", "another model")
    changed = tmp_path / "changed.jsonl"
    changed.write_text((host / "train.jsonl").read_text() + '{"text": "one more", "label": "positive"}\n')
    assert_clean(cli("finetune", "--resume", run, "--bundle", host / "bundle", "--data", changed),
                 EXIT_BAD_INPUT, changed, "not the file")
    assert not (tmp_path / "m.onnx").exists()

    resumed = cli("finetune", "--resume", run, "--bundle", host / "bundle", "--data", host / "train.jsonl",
                  "steps=120")
    assert_clean(resumed, 0)
    assert_same_weights(run, control)
    # it recorded where they are: found now without options
    assert_clean(cli("eval", "--run", run, "--data", host / "train.jsonl", *LAST), 0)


def test_a_run_from_before_recorded_paths_still_loads(job, tmp_path):
    """config.json of older runs: the paths as typed, relative to where the run started."""
    run = trained_half_way(job, tmp_path / "here")
    control = resumed_in_place(tmp_path, tmp_path / "here")
    config = json.loads((run / "config.json").read_text())
    old = {k: v for k, v in config.items() if k not in ("paths_from_run", "data_files")}
    (run / "config.json").write_text(json.dumps({**old, "bundle": "bundle", "data": "train.jsonl"}))
    assert_clean(cli("finetune", "--resume", "run", "steps=120", cwd=tmp_path / "here"), 0)
    assert_same_weights(run, control)


def test_a_bundle_beside_the_run_is_taken_only_by_its_fingerprint(job, tmp_path):
    """A run without a recorded fingerprint (its bundle was unreadable when it saved) never
    adopts whatever bundle happens to lie beside it."""
    from edge_zo import runconfig
    build(tmp_path / "someone-elses-bundle", max_seq_len=16)
    config = runconfig.resolve(None, {"bundle": str(tmp_path / "gone"), "data": str(job / "train.jsonl")}, [])
    (tmp_path / "run").mkdir()
    runconfig.save(config, tmp_path / "run")
    assert runconfig.load(tmp_path / "run").bundle == str(tmp_path / "gone")  # as recorded: reading it fails later


# ---- the method and the bundle's graph ---------------------------------------------------

def test_a_low_rank_method_on_a_full_rank_bundle_is_refused_before_any_step(job, tmp_path):
    build(tmp_path / "full", max_seq_len=16, graph="fullrank", probe_slots=1)
    result = cli("finetune", "--bundle", tmp_path / "full", "--data", job / "train.jsonl", "--out", tmp_path / "run",
                 "--optimizer", "lozo", "steps=5")
    assert_clean(result, EXIT_BAD_INPUT, tmp_path / "full", "lozo", "--graph lowrank", "--optimizer mezo")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("preset", ["mezo", "loren"])
def test_a_full_rank_method_on_a_low_rank_bundle_is_the_full_rank_run(job, tmp_path, preset):
    """MeZO / LOREN on a low-rank bundle run with D = 0: every loss and weight bit-identical
    to the same model's full-rank bundle, so it is allowed."""
    build(tmp_path / "full", max_seq_len=16, graph="fullrank", probe_slots=1)
    runs = {}
    for graph, bundle in (("low", job / "bundle"), ("full", tmp_path / "full")):
        runs[graph] = tmp_path / graph
        done = cli("finetune", "--bundle", bundle, "--data", job / "train.jsonl", "--out", runs[graph],
                   "--optimizer", preset, "steps=20", "batch_size=8", "optimizer.eta=1e-2")
        assert done.returncode == 0, done.stderr
    assert (runs["low"] / "journal.jsonl").read_text() == (runs["full"] / "journal.jsonl").read_text()
    assert_same_weights(runs["low"], runs["full"])


def test_a_broken_bundle_beside_the_run_is_passed_over(job, tmp_path):
    trained_half_way(job, tmp_path / "here")
    (tmp_path / "here").rename(tmp_path / "there")
    (tmp_path / "there" / "bundle").rename(tmp_path / "there" / "zzz-bundle")  # found only by its fingerprint
    broken = tmp_path / "there" / "aaa-broken"  # sorted before the real bundle
    shutil.copytree(job / "bundle", broken)
    (broken / "model.onnx").unlink()
    assert_clean(cli("finetune", "--resume", tmp_path / "there" / "run", "steps=120"), 0)
