"""Execution providers without a GPU: options, fallback with a warning, placement, threads, env."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge_zo import fold, providers
from edge_zo.memory.profiles import load_profile
from edge_zo.providers import CPU, CUDA, Buffer, Placement, ProviderFallback, SlotBuffer
from edge_zo.runtime import Runtime

REPO = Path(__file__).resolve().parents[2]


def test_cuda_options_come_from_the_profile():
    desktop = load_profile("desktop-rtx-4090")
    opts = providers.cuda_options(desktop)
    assert opts["gpu_mem_limit"] == str(24576 << 20)
    assert opts["arena_extend_strategy"] == "kSameAsRequested"
    jetson = load_profile("jetson-orin-nano-8gb")  # unified memory: the host budget caps it
    assert providers.cuda_options(jetson)["gpu_mem_limit"] == str(jetson.budget_mib << 20)
    assert providers.cuda_options(jetson, device_id=1, mem_limit_mib=2000) == {
        "device_id": "1", "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC", "gpu_mem_limit": str(2000 << 20)}


def test_placement_decisions():
    cpu = providers.place("cpu")
    assert (cpu.provider, cpu.device, cpu.providers) == ("cpu", "cpu", [CPU])
    gpu = providers.place("cuda", load_profile("jetson-orin-nano-8gb"), available=[CUDA, CPU])
    assert (gpu.provider, gpu.device, gpu.fallback_reason) == ("cuda", "cuda", "")
    assert gpu.providers[0][0] == CUDA and "gpu_mem_limit" in gpu.providers[0][1]
    missing = providers.place("cuda", available=[CPU])
    assert missing.provider == "cpu" and "no CUDA provider" in missing.fallback_reason
    with pytest.raises(ValueError, match="tpu"):
        providers.place("tpu")


def test_cuda_requested_on_this_machine_falls_back_to_cpu_with_a_warning(tiny_cls):
    with pytest.warns(ProviderFallback, match="no CUDA provider"):
        rt = Runtime(tiny_cls.path, provider="cuda", profile=load_profile("desktop-rtx-4090"))
    assert rt.startup["provider"] == "cpu" and rt.startup["requested"] == "cuda"
    rt.set_batch(**tiny_cls.batch())
    assert np.isfinite(rt.scores()).all()


class _ClaimsCuda:
    """A real CPU session that reports the CUDA provider, as a mis-built CUDA wheel does."""

    def __init__(self, path, opts, providers):
        self.requested = providers
        self.inner = ort.InferenceSession(path, opts, providers=[CPU])

    def get_providers(self):
        return [CUDA, CPU]


def _open(tiny, check):
    fake = Placement("cuda", "cpu", requested="cuda", options={"device_id": "0"})
    return providers.open_session(str(tiny.path / "model.onnx"), fake, 1, lambda pl: {}, check, create=_ClaimsCuda)


def test_a_failing_start_up_run_falls_back_to_cpu_with_a_warning(tiny_cls):
    def broken(session, placement):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    with pytest.warns(ProviderFallback, match="no kernel image"):
        session, placement, seconds = _open(tiny_cls, broken)
    assert placement.provider == "cpu" and "no kernel image" in placement.fallback_reason
    assert isinstance(session, _ClaimsCuda) and session.requested == [CPU] and seconds > 0


def test_a_passing_start_up_run_keeps_cuda(tiny_cls):
    seen = []
    session, placement, _ = _open(tiny_cls, lambda s, p: seen.append(p.provider))
    assert seen == ["cuda"] and placement.provider == "cuda" and session.requested[0][0] == CUDA


def test_the_start_up_check_runs_real_work_on_the_provider():
    fold.startup_check(providers.place("cpu"))  # passes on a working provider


def test_device_buffers_work_through_update_inplace():
    """The non-CPU code path (ORT-owned tensors, update_inplace), run on the CPU."""
    counter = [0]
    w = Buffer(np.arange(6, dtype=np.float32).reshape(2, 3), keep_host=False, counter=counter, zero_copy=False)
    assert w.host is None and w.value.data_ptr() != 0
    w.write(np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(w.read(), np.ones((2, 3)))
    slots = SlotBuffer((4, 2, 3), counter=counter, zero_copy=False)
    slots.host[:2] = 5.0
    slots.push(2)
    np.testing.assert_array_equal(slots.value(2).numpy(), np.full((2, 2, 3), 5.0))
    assert counter[0] == 24 + 48


def test_device_fold_path_reads_and_writes_w(tmp_path):
    placement = providers.place("cpu")
    w = Buffer(np.zeros((3, 2), np.float32), zero_copy=False, keep_host=False)
    folder = fold.Folder(placement, "float32")
    a, c = np.ones((3, 1), np.float32), np.full((1, 2), 2.0, np.float32)
    folder.fold(w, a, c)
    np.testing.assert_array_equal(w.read(), np.full((3, 2), 2.0))
    wt = Buffer(np.zeros((2, 3), np.float32), zero_copy=False, keep_host=False)
    folder.fold(wt, a, c, layout="in_out")
    np.testing.assert_array_equal(wt.read(), np.full((2, 3), 2.0))


def test_intra_op_threads(tiny_cls):
    assert Runtime(tiny_cls.path).startup["intra_op_threads"] == providers.physical_cores()
    assert Runtime(tiny_cls.path, threads=1).startup["intra_op_threads"] == 1
    profile = load_profile("raspberry-pi-5-8gb")
    assert Runtime(tiny_cls.path, profile=profile).startup["intra_op_threads"] == profile.threads


def _child(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_the_entry_point_pins_blas_threads_before_numpy_loads():
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    result = _child("""
        import os, sys
        from edge_zo.cli import main
        assert "numpy" not in sys.modules, "numpy loaded before the entry point could pin BLAS"
        try:  # the env is set on main's first line; what the parser does after is not this test's
            main(["--version"])
        except BaseException:
            pass
        print(os.environ.get("OPENBLAS_NUM_THREADS"))
    """, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "1"


def test_the_runtime_reports_the_blas_setting(tiny_cls):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    result = _child(f"""
        from edge_zo.runtime import Runtime
        print(Runtime({str(tiny_cls.path)!r}).startup["OPENBLAS_NUM_THREADS"])
    """, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"
