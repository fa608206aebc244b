"""What a plan measured on this host says about a profile's device: said once, beside the table.

`edge-zo plan --profile P` calibrates in child processes on the machine it runs on
(edge_zo/memory/plan.py), with onnxruntime's provider for the profile where this host has
it, else the CPU. The figures are this host's: its onnxruntime build, its CPU arena, its
libraries. So the plan says, once, which provider measured and what that means for the
device, and flags a bundle whose weights are not in the dtype the profile expects (an fp32
bundle planned for an fp16 Jetson profile is twice the weights it would run with).
"""

from __future__ import annotations

import platform

from edge_zo.notices import announce

from edge_zo.memory.profiles import DTYPE_NAMES


def say(provider: str, threads: int | None, profile=None, manifest=None) -> None:
    """One line on where the calibration runs (with a profile, always; without one only a
    CUDA request that falls back to the CPU), and one more for a dtype mismatch."""
    from edge_zo.providers import PROVIDER_NAMES, physical_cores, place

    placement = place(provider)
    used = PROVIDER_NAMES[placement.provider]
    fallback = (f"{provider} requested but calibrating on the CPU ({placement.fallback_reason}); "
                if placement.fallback_reason else "")
    if profile is None:
        if fallback:
            announce(f"plan: {fallback}the numbers are this machine's CPU, not the device's; plan on the "
                     "device for them")
        return
    host = (f"{platform.machine() or 'this machine'}, {used}, {threads or physical_cores()} threads on "
            f"{physical_cores()} cores")
    announce(f"plan: {fallback}calibrated on this host ({host}), not on {profile.name}: {_meaning(profile, used)}")
    mismatch = dtype_mismatch(profile, manifest)
    if mismatch:
        announce(mismatch)


def _meaning(profile, used: str) -> str:
    again = f"run `edge-zo plan --profile {profile.name}` on the device"
    if profile.execution_provider == "cuda" and used != "CUDAExecutionProvider":
        return ("the device's CUDA provider keeps activations in its own arena and loads the CUDA libraries, "
                f"which a CPU run does not show{', in the same unified memory' if profile.unified_memory else ''}; "
                f"read the figures as this host's, and {again} for its own")
    if used == "CUDAExecutionProvider":
        return (f"the same provider on this host's GPU, not the device's (its GPU, driver and onnxruntime build"
                f"{', and a memory shared with its CPU' if profile.unified_memory else ''}); expect the device's "
                f"figures near these, and {again} to be sure")
    return ("the same provider on another CPU and onnxruntime build: expect the device's figures within "
            f"the plan's error (docs/plan.md), and {again} to be sure")


def dtype_mismatch(profile, manifest) -> str:
    """The note for a bundle whose trained weights are not the profile's dtype, or ""."""
    if manifest is None:
        return ""
    dtypes = sorted({DTYPE_NAMES.get(m.dtype, m.dtype) for m in manifest.matrices if not m.dense})
    if not dtypes or dtypes == [profile.dtype]:
        return ""
    other = "twice" if profile.dtype == "fp16" else "half"
    return (f"plan: the bundle's weights are {'/'.join(dtypes)} but {profile.name} runs {profile.dtype} "
            f"(its profile's dtype); this plan counts the bundle as it is ({other} the weights' memory of an "
            f"{profile.dtype} bundle): for the device, export with `edge-zo export ... --dtype {profile.dtype}` "
            "and plan that bundle")
