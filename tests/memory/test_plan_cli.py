"""`edge-zo plan` and `finetune --profile/--memory-budget`: the table, JSON, what fits, refusal."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edge_zo.bundle import read_manifest
from edge_zo.memory import plan as planner
from edge_zo.memory.calibration import calibrate
from edge_zo.memory.model import Shape
from edge_zo.memory.profiles import load_profile
from edge_zo.runconfig import optimizer_config

from . import jobs


def edge_zo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_zo.cli", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow
def test_plan_prints_components_and_largest_shapes_that_fit(model):
    bundle = str(model("lm") / "bundle")
    fits = edge_zo("plan", "--bundle", bundle, "--profile", "raspberry-pi-5-8gb", "--batch", "16",
                   "--probe-slots", "4")
    assert fits.returncode == 0, fits.stderr
    for word in ("trained weights W", "activations", "optimizer state", "predicted peak", "budget",
                 "margin", "fits: P=4 B=16 T=128"):
        assert word in fits.stdout, word
    pi = ["--profile", "raspberry-pi-5-8gb"]  # one calibration (4 threads) serves every call here
    report = json.loads(edge_zo("plan", "--bundle", bundle, *pi, "--memory-budget", "7168", "--batch", "16",
                                "--probe-slots", "4", "--json").stdout)
    assert report["fits"] and report["budget_mib"] == 7168
    assert report["predicted_peak_mib"] == pytest.approx(sum(report["components_mib"].values()))

    # a budget between the model alone and the job: refused, with what fits
    budget = int(report["predicted_peak_mib"] - 0.5 * report["components_mib"][
        next(k for k in report["components_mib"] if k.startswith("activations"))])
    tight = edge_zo("plan", "--bundle", bundle, *pi, "--memory-budget", str(budget), "--batch", "16",
                    "--probe-slots", "4", "--json")
    assert tight.returncode == 1, tight.stderr
    shrunk = json.loads(tight.stdout)
    assert not shrunk["fits"] and "what fits" in shrunk["verdict"]
    largest = shrunk["largest_that_fit"]
    assert 1 <= largest["batch"] < 16 and largest["probe_slots"] < 4 and largest["seq_len"] < 128
    # the search is exact on the model: the largest fits, one more does not
    manifest = read_manifest(bundle)
    job = planner.make_job(bundle, manifest, load_profile("raspberry-pi-5-8gb"), preset="zo-mopi",
                           opt_config=optimizer_config("zo-mopi", {}, 0, manifest.rank), batch=16, choices=1,
                           probe_slots=4, seq_len=128, provider=None)
    cal = calibrate(job)
    for value, fits in ((largest["batch"], True), (largest["batch"] + 1, False)):
        plan = planner.make_plan(cal, manifest, Shape(4, value, 128), budget,
                                 shrunk["components_mib"]["optimizer state"])
        assert plan.fits is fits


def test_plan_refuses_bad_input_with_the_fix(model):
    bundle = str(model("lm") / "bundle")
    result = edge_zo("plan", "--bundle", bundle, "--memory-budget", "1000", "--seq-len", "4096")
    assert result.returncode == 2 and "max_seq_len 128" in result.stderr
    result = edge_zo("plan", "--bundle", bundle)
    assert result.returncode == 2 and "--profile" in result.stderr


@pytest.mark.slow
def test_finetune_refuses_a_job_that_cannot_fit_before_it_starts(model, tmp_path):
    run = tmp_path / "run"
    args = jobs.job_args(model("lm"), run, 4, 16, options=["--profile", "raspberry-pi-5-8gb",
                                                           "--memory-budget", "100"])
    result = edge_zo("finetune", *args)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "refused before starting" in line and "over the 100 MiB budget" in line
    assert not (run / "journal.jsonl").exists()  # nothing ran
