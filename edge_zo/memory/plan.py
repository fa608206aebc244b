"""The planner: one plan of one job, for `edge-zo plan` and `edge-zo finetune --profile`.

Both commands describe the job as a `Job` (model.py) built here, one way: the bundle, the
job's shape (P probe slots, B rows: a multiple-choice example is a row per candidate,
T = the bundle's max_seq_len unless `plan --seq-len` asks for less), the execution
provider (the device profile's unless the run sets one: `provider=` / `--provider`), its
threads (the run's, else the profile's), the run's resolved optimizer config (preset and
values, as the run resolves them: edge_zo/runconfig.optimizer_config) and the data files.
A bundle in a weight format the profile does not list is refused here (profiles.py).

`plan_job` then calibrates that job (calibration.py: child processes running the loop's
own step, cached), adds the exact parts (model.py) and searches, when it does not fit,
the largest batch, sequence length and probe slots that would (report.py's `Plan`).
docs/plan.md has the model, its measured error and the cache.
"""

from __future__ import annotations

from dataclasses import replace

from edge_zo.bundle import read_manifest
from edge_zo.memory.calibration import calibrate
from edge_zo.memory.model import Calibration, Job, Shape, data_mib, optimizer_mib, predict
from edge_zo.memory.profiles import check_weight_format, weight_format
from edge_zo.memory.report import Plan


def job_of_run(config, profile=None) -> Job:
    """The job a finetune run's resolved config (RunConfig) runs; its provider already
    came from the profile unless the run set one (commands/finetune.py resolves it)."""
    manifest = read_manifest(config.bundle)
    choices = len(getattr(config.prompt_template(), "choices", ("one row",)))
    return make_job(config.bundle, manifest, profile, preset=config.preset,
                    opt_config=config.optimizer_config(manifest.rank), batch=config.batch_size * choices,
                    choices=choices, probe_slots=config.probe_slots, seq_len=manifest.max_seq_len,
                    provider=config.provider, threads=config.threads, data=(config.data, config.eval_data))


def make_job(bundle, manifest, profile, *, preset: str, opt_config, batch: int, choices: int, probe_slots: int,
             seq_len: int, provider: str | None, threads: int = 0, data=()) -> Job:
    """The one way a Job is made: the profile fills what the job leaves open (provider,
    threads), and a bundle whose weight format the profile does not run is refused."""
    if profile is not None:
        check_weight_format(profile, manifest, bundle)
    defaults = profile.run_defaults() if profile is not None else {"provider": "cpu"}
    return Job(str(bundle), Shape(probe_slots, batch, seq_len), choices, provider or defaults["provider"],
               threads or (profile.threads if profile is not None else 0), preset, opt_config,
               tuple(f for f in data if f))


def plan_job(job: Job, budget_mib: float | None, profile=None) -> Plan:
    """The plan of `job` against `budget_mib` (None: no budget); with the `profile` it is
    planned for, where it calibrated is said once (edge_zo/memory/target.py)."""
    manifest = read_manifest(job.bundle)
    cal = calibrate(job, profile=profile)
    plan = make_plan(cal, manifest, job.shape, budget_mib, optimizer_mib(manifest, job.opt_config),
                     data_mib(job.data))
    plan.job = {"optimizer": job.preset, "provider": job.provider, "threads": job.threads,
                "rows_per_example": job.choices}
    if profile is not None:
        plan.job.update(profile=profile.name, weight_formats=list(profile.weight_formats),
                        bundle_format=weight_format(manifest))
    return plan


def plan_run(config, budget_mib: float | None, profile=None) -> Plan:
    """`plan_job` of a finetune run's config."""
    return plan_job(job_of_run(config, profile), budget_mib, profile)


def make_plan(cal: Calibration, manifest, shape: Shape, budget_mib: float | None,
              optimizer: float = 0.0, data: float = 0.0) -> Plan:
    """The prediction at `shape`; when it does not fit, the largest of each of batch,
    sequence length and probe slots (the others as they are) that would."""
    def plan_for(s: Shape) -> Plan:
        start = cal.libraries_mib + cal.load_peak_mib + data
        return Plan(s, predict(cal, manifest, s, optimizer, data), start, cal.libraries_mib + cal.plot_mib,
                    budget_mib)

    plan = plan_for(shape)
    if not plan.fits:
        limits = {"batch": shape.batch, "seq_len": shape.seq_len, "probe_slots": shape.probe_slots}
        plan.fits_shapes = {k: _largest(lambda v, k=k: plan_for(_with(shape, k, v)).fits, hi)
                            for k, hi in limits.items()}
    return plan


def _with(shape: Shape, key: str, value: int) -> Shape:
    return replace(shape, **{key: value})


def _largest(fits, hi: int) -> int:
    """The largest v in 1..hi with fits(v) (the prediction grows with v), 0 when none."""
    lo, best = 1, 0
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(mid):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best
