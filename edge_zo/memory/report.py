"""A plan's report: the predicted components against a budget, the verdict, what fits.

`Plan` is what `edge-zo plan` prints (a table, or JSON with --json) and what
`finetune --profile` refuses a job with; plan.py makes it (edge_zo/memory/plan.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from edge_zo.memory.model import Shape

_FLAGS = {"batch": "batch size", "seq_len": "sequence length", "probe_slots": "probe slots"}


@dataclass
class Plan:
    """A prediction against a budget, with the largest shapes that fit when it does not."""

    shape: Shape
    parts: dict[str, float]
    start_up_mib: float
    plot_peak_mib: float  # metrics.png, drawn after the runtime is freed: not on top of it
    budget_mib: float | None
    fits_shapes: dict = field(default_factory=dict)  # "batch"/"seq_len"/"probe_slots" -> int
    job: dict = field(default_factory=dict)  # what was planned: optimizer, provider, weight formats

    @property
    def total_mib(self) -> float:
        return max(sum(self.parts.values()), self.start_up_mib, self.plot_peak_mib)

    @property
    def margin_mib(self) -> float | None:
        return None if self.budget_mib is None else self.budget_mib - self.total_mib

    @property
    def fits(self) -> bool:
        return self.budget_mib is None or self.margin_mib >= 0

    def table(self) -> str:
        lines = [f"{'component':52s} {'MiB':>8s}"]
        lines += [f"{name:52s} {mib:8.1f}" for name, mib in self.parts.items()]
        lines.append(f"{'start-up peak (loading the bundle)':52s} {self.start_up_mib:8.1f}")
        lines.append(f"{'plot peak (metrics.png, after the runtime)':52s} {self.plot_peak_mib:8.1f}")
        lines.append(f"{'predicted peak':52s} {self.total_mib:8.1f}")
        if self.budget_mib is not None:
            lines.append(f"{'budget':52s} {self.budget_mib:8.1f}")
            pct = 100 * self.margin_mib / self.budget_mib
            lines.append(f"{'margin':52s} {self.margin_mib:8.1f}  ({pct:+.0f}% of the budget)")
        lines += self._job_lines()
        lines.append(self.verdict())
        return "\n".join(lines)

    def _job_lines(self) -> list[str]:
        job = self.job
        lines = [f"job: {job['optimizer']} on {job['provider']}"] if "optimizer" in job else []
        if job.get("profile"):
            formats = ", ".join(job["weight_formats"]) or "not stated in the profile"
            lines.append(f"weight formats {job['profile']} runs: {formats} (this bundle: {job['bundle_format']})")
        return lines

    def verdict(self) -> str:
        if self.budget_mib is None:
            return f"predicted peak {self.total_mib:.0f} MiB (no budget given)"
        if self.fits:
            return (f"fits: {self.shape.text} needs {self.total_mib:.0f} MiB of the "
                    f"{self.budget_mib:.0f} MiB budget")
        return self.refusal()

    def refusal(self) -> str:
        head = (f"{self.shape.text} needs {self.total_mib:.0f} MiB, over the "
                f"{self.budget_mib:.0f} MiB budget by {-self.margin_mib:.0f} MiB")
        options = [f"{_FLAGS[k]} {v}" for k, v in self.fits_shapes.items() if v]
        if options:
            return head + "; what fits, each alone: " + ", ".join(options) + \
                " (a shorter sequence means re-exporting with a lower --max-seq-len or shorter texts)"
        return head + ("; no batch, sequence length or probe slots fit: the model alone is too big "
                       "for this budget, use a device with more memory or an fp16 bundle")

    def to_json(self) -> dict:
        return {"shape": asdict(self.shape), "components_mib": self.parts,
                "start_up_mib": self.start_up_mib, "plot_peak_mib": self.plot_peak_mib,
                "predicted_peak_mib": self.total_mib,
                "budget_mib": self.budget_mib, "margin_mib": self.margin_mib, "fits": self.fits,
                "largest_that_fit": self.fits_shapes, "job": self.job, "verdict": self.verdict()}
