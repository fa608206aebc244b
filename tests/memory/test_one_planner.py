"""One planner for `edge-zo plan` and `finetune --profile` (issue 16): the same job gets the
same plan from both, calibrated with the job's own optimizer and the profile's provider;
a bundle in a weight format the profile does not run is refused in one line with the fix."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_zo.errors import UserError
from edge_zo.memory.profiles import check_weight_format, load_profile, parse_profile, weight_format
from runtime.fixtures import build


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    """A tiny bundle, train and dev rows, and a calibration cache of its own."""
    root = tmp_path_factory.mktemp("one-planner")
    build(root / "bundle", max_seq_len=16)
    rows = [{"text": f"the movie was {word} plot", "label": "positive" if word == "good" else "negative"}
            for word in ("good", "bad") * 8]
    for split in ("train", "dev"):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def edge_zo(*args, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    return subprocess.run([sys.executable, "-m", "edge_zo.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=180, env=env)


def calibrated_optimizers(cache: Path) -> set[str]:
    """The optimizers the calibration children stepped, read from the cached calibrations."""
    files = list((cache / "edge-zo" / "plan").glob("*.json"))
    assert files, "no calibration was cached"
    return {point["optimizer"] for f in files for point in json.loads(f.read_text())["points"]}


@pytest.mark.slow
def test_plan_and_finetune_profile_plan_the_same_job_the_same(job, tmp_path):
    # a CUDA profile on this CPU host: both must plan (and the run must ask for) the profile's provider
    profile, cache = "jetson-orin-nano-8gb", tmp_path / "cache"
    plan = edge_zo("plan", "--bundle", job / "bundle", "--profile", profile, "--batch", "4", "--optimizer", "lozo",
                   "--data", job / "train.jsonl", job / "dev.jsonl", "--json", cache=cache)
    assert plan.returncode == 0, plan.stderr
    planned = json.loads(plan.stdout)
    assert planned["job"]["provider"] == "cuda" and planned["job"]["optimizer"] == "lozo"
    run = tmp_path / "run"
    tuned = edge_zo("finetune", "--bundle", job / "bundle", "--data", job / "train.jsonl", "--eval-data",
                    job / "dev.jsonl", "--profile", profile, "--optimizer", "lozo", "--batch-size", "4",
                    "--steps", "1", "--out", run, "eval_every=0", "linear_probe=off", cache=cache)
    assert tuned.returncode == 0, tuned.stderr
    assert "calibration pass" not in tuned.stderr  # the same job: `plan`'s calibration served it
    start = next(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line).get("kind") == "start")
    assert start["planned_peak_mib"] == pytest.approx(planned["predicted_peak_mib"], abs=1e-9)
    assert json.loads((run / "config.json").read_text())["provider"] == "cuda"  # the profile's, recorded
    assert calibrated_optimizers(cache) == {"lozo"}


@pytest.mark.slow
def test_plan_optimizer_calibrates_that_optimizer(job, tmp_path):
    for name, expected in ((None, "zo-mopi"), ("mezo", None), ("zo-muon", "zo-muon")):
        cache = tmp_path / f"cache-{name}"
        args = ["plan", "--bundle", job / "bundle", "--memory-budget", "4000", "--batch", "2", "--json",
                *(["--optimizer", name] if name else [])]
        result = edge_zo(*args, cache=cache)
        if expected is None:  # a full-rank method on a low-rank bundle: the run's own refusal
            assert result.returncode == 0 and calibrated_optimizers(cache) == {"mezo"}, result.stderr
            continue
        assert result.returncode == 0, result.stderr
        assert calibrated_optimizers(cache) == {expected}
    # the optimizer's values are the run's too: optimizer.N changes what is counted
    small = edge_zo("plan", "--bundle", job / "bundle", "--memory-budget", "4000", "--batch", "2", "--json",
                    "--optimizer", "zo-muon", "optimizer.N=2", cache=tmp_path / "cache-N")
    assert small.returncode == 0, small.stderr
    bad = edge_zo("plan", "--bundle", job / "bundle", "--memory-budget", "4000", "steps=3", cache=tmp_path / "c")
    assert bad.returncode == 2 and "only optimizer.KEY=VALUE" in bad.stderr


def test_a_bundles_weight_format_is_read_off_its_manifest(job):
    from edge_zo.bundle import read_manifest

    manifest = read_manifest(job / "bundle")
    assert weight_format(manifest) == "fp32"
    half = dataclasses.replace(manifest, matrices=[dataclasses.replace(m, dtype="float16") for m in manifest.matrices])
    assert weight_format(half) == "fp16"
    assert weight_format(dataclasses.replace(manifest, weights="int4", adapter_rank=8)) == "int4"
    pi = load_profile("raspberry-pi-5-8gb")
    check_weight_format(pi, manifest, "b")  # listed: no error
    with pytest.raises(UserError, match=r"b holds fp16 weights, which raspberry-pi-5-8gb does not run .*--dtype fp32"):
        check_weight_format(pi, half, "b")
    assert "int4" not in load_profile("jetson-xavier-nx-8gb").weight_formats  # onnxruntime 1.16: no MatMulNBits
    assert {"fp16", "int8"} <= set(load_profile("jetson-orin-nano-8gb").weight_formats)


def test_plan_and_finetune_refuse_a_format_the_profile_does_not_run(job, tmp_path):
    text = load_profile("raspberry-pi-5-8gb")
    own = tmp_path / "int8-board.toml"
    fields = {f.name: getattr(text, f.name) for f in dataclasses.fields(text) if f.name != "name"}
    fields["weight_formats"] = ["int8"]
    own.write_text("".join(f"{k} = {json.dumps(list(v) if isinstance(v, tuple) else v)}\n" for k, v in fields.items()))
    assert parse_profile(own).weight_formats == ("int8",)
    for command in (["plan", "--bundle", job / "bundle", "--profile", own],
                    ["finetune", "--bundle", job / "bundle", "--data", job / "train.jsonl", "--profile", own,
                     "--out", tmp_path / "run"]):
        result = edge_zo(*command, cache=tmp_path / "cache")
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert "holds fp32 weights, which int8-board does not run (its weight_formats: int8)" in line
        assert "re-export it with `edge-zo export ... --weights int8`" in line
    assert not (tmp_path / "run" / "journal.jsonl").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text(own.read_text().replace('["int8"]', '["int3"]'))
    with pytest.raises(UserError, match=r"weight_formats \['int3'\] are not among"):
        parse_profile(bad)


@pytest.mark.slow
def test_plan_prints_the_formats_the_device_runs(job, tmp_path):
    result = edge_zo("plan", "--bundle", job / "bundle", "--profile", "raspberry-pi-5-8gb", "--batch", "2",
                     cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert "weight formats raspberry-pi-5-8gb runs: fp32, int8, int4 (this bundle: fp32)" in result.stdout
    assert "job: zo-mopi on cpu" in result.stdout


def test_the_memory_modules_do_not_import_the_loop():
    """The planner points down: only the calibration child's entry imports edge_zo.loop."""
    code = ("import importlib, pkgutil, sys, edge_zo.memory as m\n"
            "for info in pkgutil.iter_modules(m.__path__):\n"
            "    importlib.import_module(f'edge_zo.memory.{info.name}')\n"
            "print('edge_zo.loop' in sys.modules, sorted(i.name for i in pkgutil.iter_modules(m.__path__)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("False") and "child" in out.stdout and "calibration" in out.stdout
