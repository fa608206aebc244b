"""The memory guard: keeps a running job inside its budget (DESIGN.md section 5; docs/plan.md).

`MemoryGuard.check(step)` runs once per step, before the step's forward passes. It reads the
process's peak RSS so far (VmHWM: the peak inside the last step's onnxruntime runs, not
only what is resident between steps; one small /proc read) plus, on a unified-memory
device, the GPU memory the process holds (NVML where present), since there CPU and GPU
allocate from one pool:
  at 90% of the budget it halves the probe slots per forward call (same probes, same
  losses, fewer at a time: the optimizer's math is unchanged), once per new peak;
  at 100% it raises MemoryBudgetExceeded; the loop writes a checkpoint and the command
  exits with EXIT_CODE, and `edge-zo finetune --resume RUN --memory-budget MiB` goes on.
Peaks only grow: onnxruntime's arena keeps what a run allocated, so lowering P prevents
further growth but does not give memory back; that is why the guard acts before the cap.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import psutil

from edge_zo.errors import EXIT_MEMORY, MemoryBudgetExceeded

EXIT_CODE = EXIT_MEMORY  # EX_TEMPFAIL: retry with a bigger budget or a smaller shape
SOFT = 0.9  # fraction of the budget at which probe slots are lowered


@dataclass(frozen=True)
class Budget:
    """What a job may use: MiB, and the device profile it came from (None: --memory-budget)."""

    mib: float
    profile: object = None
    planned_peak_mib: float | None = None  # the plan's prediction (None: not planned)

    @property
    def unified(self) -> bool:
        return bool(self.profile is not None and self.profile.unified_memory)

    def runtime_options(self) -> dict:
        """Runtime(...) keywords: the CUDA arena's cap (gpu_mem_limit) and extend strategy
        come from the profile (edge_zo/providers.cuda_options); on a unified-memory device
        the arena may take no more than the whole budget."""
        limit = int(self.mib) if self.unified else None
        return {"profile": self.profile, "mem_limit_mib": limit}




def peak_rss_mib() -> float:
    """This process's peak resident memory so far, MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource  # macOS and others: ru_maxrss (bytes on macOS, KiB on Linux)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def gpu_mib() -> float:
    """GPU memory this process holds (NVML), 0 where NVML is missing (CPU-only, Jetson)."""
    try:
        import pynvml
    except ImportError:
        return 0.0
    try:
        pynvml.nvmlInit()
        pid, used = psutil.Process().pid, 0
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory:
                    used += proc.usedGpuMemory
        return used / 2**20
    except pynvml.NVMLError:
        return 0.0


class MemoryGuard:
    """See the module docstring. Without a budget `check` only tracks the peak."""

    def __init__(self, budget: Budget | None, runtime, run_dir=None, sample=None, notify=None):
        self.budget, self.runtime, self.run_dir = budget, runtime, run_dir
        # each lowering is said on the terminal and recorded (edge_zo/notices.announce)
        self.notify = notify or (lambda message, **record: None)
        unified = budget is not None and budget.unified
        self.sample = sample or (lambda: peak_rss_mib() + (gpu_mib() if unified else 0.0))
        self.peak = 0.0
        self._lowered_at = 0.0  # the peak at the last lowering: lower again only above it
        self.events: list[dict] = []

    def check(self, step: int) -> None:
        self.peak = max(self.peak, self.sample())
        if self.budget is None:
            return
        if self.peak >= self.budget.mib:
            raise MemoryBudgetExceeded(self.message(step))
        slots = self.runtime.probe_slots
        if self.peak >= SOFT * self.budget.mib and slots > 1 and self.peak > self._lowered_at:
            self.runtime.set_probe_slots(slots // 2)
            self._lowered_at = self.peak
            event = {"step": step, "peak_mib": round(self.peak, 1), "probe_slots": slots // 2}
            self.events.append(event)
            self.notify(f"memory guard: peak {self.peak:.0f} MiB is over {SOFT:.0%} of the {self.budget.mib:.0f} "
                        f"MiB budget before step {step + 1}: probe slots per forward call lowered {slots} -> "
                        f"{slots // 2} (the same probes and losses, fewer per call)", what="probe_slots",
                        budget_mib=self.budget.mib, **event)

    def message(self, step: int) -> str:
        where = f" (checkpoint at step {step} in {self.run_dir}/checkpoints)" if self.run_dir else ""
        need = int(self.peak * 1.15) + 1
        return (f"memory budget {self.budget.mib:.0f} MiB reached: peak {self.peak:.0f} MiB before step "
                f"{step + 1}, probe slots already at {self.runtime.probe_slots}; stopped{where}. "
                f"Continue with `edge-zo finetune --resume {self.run_dir or 'RUN'} --memory-budget {need}` "
                "or more, or start a run with a smaller batch_size (`edge-zo plan` says what fits)")
