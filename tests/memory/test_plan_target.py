"""`edge-zo plan --profile` on a host that is not the device (issue 20): where it calibrated
said once, an fp32 bundle against an fp16 profile flagged with the fix, a line per pass."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from edge_zo.memory.profiles import load_profile
from edge_zo.memory.target import dtype_mismatch
from runtime.fixtures import build


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build(tmp_path_factory.mktemp("target") / "bundle", max_seq_len=16)


def plan(bundle, profile: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_zo.cli", "plan", "--bundle", str(bundle.path), "--profile",
                           profile, "--batch", "2", "--json"], capture_output=True, text=True, timeout=120)


def lines(result, text: str) -> list[str]:
    return [line for line in result.stderr.splitlines() if text in line]


def test_a_dtype_other_than_the_profiles_is_flagged_with_the_fix(bundle):
    jetson, laptop = load_profile("jetson-orin-nano-8gb"), load_profile("x86-laptop-16gb")
    message = dtype_mismatch(jetson, bundle.manifest)
    assert "weights are fp32 but jetson-orin-nano-8gb runs fp16" in message and "--dtype fp16" in message
    assert dtype_mismatch(laptop, bundle.manifest) == ""
    half = dataclasses.replace(bundle.manifest, matrices=[dataclasses.replace(m, dtype="float16")
                                                          for m in bundle.manifest.matrices])
    assert dtype_mismatch(jetson, half) == "" and "fp16 but x86-laptop-16gb runs fp32" in dtype_mismatch(laptop, half)


@pytest.mark.slow
def test_plan_says_where_it_calibrated_once_and_each_pass(bundle):
    first = plan(bundle, "jetson-orin-nano-8gb")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["fits"]
    (host,) = lines(first, "calibrated on this host")
    assert host.startswith("edge-zo: note: plan:") and "ExecutionProvider" in host and "on jetson-orin-nano-8gb" in host
    assert len(lines(first, "runs fp16")) == 1
    assert [line.split(" at ")[0] for line in lines(first, "calibration pass")] == \
        [f"edge-zo: plan: calibration pass {i}/4" for i in range(1, 5)]
    again = plan(bundle, "jetson-orin-nano-8gb")  # cached: no passes, the notes still said
    assert not lines(again, "calibration pass") and len(lines(again, "calibrated on this host")) == 1
    cpu = plan(bundle, "raspberry-pi-5-8gb")
    (host,) = lines(cpu, "calibrated on this host")
    assert "CPUExecutionProvider" in host and "same provider on another CPU" in host and not lines(cpu, "runs fp")


@pytest.mark.parametrize("profile, used, says", [
    ("jetson-orin-nano-8gb", "CPUExecutionProvider", "which a CPU run does not show, in the same unified memory"),
    ("jetson-orin-nano-8gb", "CUDAExecutionProvider", "the same provider on this host's GPU, not the device's"),
    ("raspberry-pi-5-8gb", "CPUExecutionProvider", "the same provider on another CPU"),
])
def test_what_a_calibration_here_means_for_the_device(profile, used, says):
    from edge_zo.memory.target import _meaning

    text = _meaning(load_profile(profile), used)
    assert says in text and f"plan --profile {profile}` on the device" in text
