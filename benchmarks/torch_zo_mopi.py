"""edge-zo's ZO-MOPI step against the same step in PyTorch eager, written the authors' way.

    python benchmarks/torch_zo_mopi.py --model minilm             # 16 x 64 tokens, r = 8
    python benchmarks/torch_zo_mopi.py --model minilm --rank 64   # the released code's r = 64, k = 32
    python benchmarks/torch_zo_mopi.py --tiny

The PyTorch side follows MOFA-LAB/ZO-MOPI's ZOMuonTrainer (anchors note 2.3, preset
`paper-code`): one unperturbed loss, then per probe i the weights are perturbed in place
with the materialised P·u_i (m×n per matrix), a forward, and the same in-place subtraction
to restore; then per matrix G = mean g_i u_i, M = G (β = 0), one power-iteration sweep
V = QR(Mᵀ M V_prev), U = normalized columns of M V, W -= η P (U Vᵀ). Same model and loss
head as the bundle (edge_zo_export.pipeline.prepare: the exporter's own PyTorch module, sdpa
attention as the authors' HF model loads it), the same trained matrices (the bundle's
targets; the released code also perturbs embeddings and 1-D tensors, which this leaves out
on both sides), the same random batch, r and k, N = 8, fp32, the same threads.
The edge-zo side is `Runtime` + the `paper-code` optimizer over the low-rank bundle.
Each side runs in its own fresh process (peak RSS = its VmHWM, and its RSS after
imports); processes alternate A, B, A, B; reported are medians of the per-process median
step times and peak RSS. Goal: edge-zo faster (ratio > 1) and smaller (ratio < 1).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from step_cost import optimizer_config  # noqa: E402

SIDES = ("edge-zo", "torch")


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common(p)
    p.add_argument("--steps", type=int, default=None, help="timed steps per process (default 3; tiny 2)")
    p.add_argument("--pairs", type=int, default=None, help="A/B process pairs (default 3; tiny 1)")
    p.add_argument("--worker", choices=SIDES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--bundle", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    common.fill_shape(args)
    args.steps = args.steps or (2 if args.tiny else 3)
    args.pairs = args.pairs or (1 if args.tiny else 3)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.worker:
        print(json.dumps((edge_worker if args.worker == "edge-zo" else torch_worker)(args)))
        return 0
    clock, machine = common.Stopwatch(), common.machine()  # load average at the start
    bundle = common.exports(args, ("lowrank",))["lowrank"]
    runs = {side: [] for side in SIDES}
    for i in range(args.pairs):
        for side in (SIDES if i % 2 == 0 else SIDES[::-1]):
            runs[side].append(common.run_child(child_cmd(args, side, bundle)))
    med = {side: {k: common.median(r[k] for r in rs) for k in ("step_s", "peak_rss_mib", "import_rss_mib")}
           for side, rs in runs.items()}
    e, t = med["edge-zo"], med["torch"]
    report = {"model": common.tag(args), "command": common.command(__file__, argv), "batch": args.batch,
              "seq": args.seq, "threads": args.threads, "rank": args.rank, "k": runs["edge-zo"][0]["k"], "N": runs["edge-zo"][0]["N"],
              "steps_per_process": args.steps, "pairs": args.pairs, **machine, "medians": med,
              "ratios": {"steps_per_s_edge_vs_torch": t["step_s"] / e["step_s"],
                         "peak_rss_edge_vs_torch": e["peak_rss_mib"] / t["peak_rss_mib"],
                         "peak_above_imports_edge_vs_torch": (e["peak_rss_mib"] - e["import_rss_mib"])
                         / (t["peak_rss_mib"] - t["import_rss_mib"])},
              "runs": runs, "wall_s": clock()}
    common.write_json(report, args.results / f"torch_zo_mopi-{common.tag(args)}-r{args.rank}.json")
    print(json.dumps(report["ratios"], indent=2))
    return 0


def child_cmd(args, side: str, bundle: Path) -> list[str]:
    cmd = [sys.executable, __file__, "--worker", side, "--bundle", str(bundle), "--model", args.model,
           "--batch", str(args.batch), "--seq", str(args.seq), "--threads", str(args.threads),
           "--rank", str(args.rank), "--steps", str(args.steps), "--work", str(args.work), "--head", args.head]
    return cmd + (["--tiny"] if args.tiny else [])


def finish(times: list[float], import_rss: float, **extra) -> dict:
    return {"step_s": common.median(times[1:]), "step_times_s": times, "peak_rss_mib": common.peak_rss_mib(),
            "import_rss_mib": import_rss, **extra}


# ---- edge-zo ------------------------------------------------------------------------------

def edge_worker(args) -> dict:
    from edge_zo.optim import optimizer_for
    from edge_zo.rng import Key
    from edge_zo.runtime import Runtime
    import_rss = common.rss_mib()
    rt = Runtime(args.bundle, threads=args.threads, probe_slots=1)
    config = optimizer_config("paper-code", rt.manifest.rank)
    opt = optimizer_for(config)
    state = opt.init(rt.shapes, config, Key.root(0).child("init"))
    batch = common.token_batch(args.batch, args.seq, len(rt.manifest.label_words))
    times = []
    for t in range(args.steps + 1):  # the first step is the warm-up
        start = time.perf_counter()
        rt.set_batch(*batch)
        state, info = opt.step(state, rt, Key.root(0).child("step", t))
        times.append(time.perf_counter() - start)
    return finish(times, import_rss, k=config.k, N=config.N, forward_passes=info.forward_passes)


# ---- PyTorch, the authors' way --------------------------------------------------------------

def load_torch_core(args, model: str | None = None, label_words: list[str] | None = None):
    """(the exporter's PyTorch module with the bundle's loss head, export's Prepared);
    model and label words default to the script's --model / --tiny and its LABELS."""
    import torch
    from edge_zo_export.pipeline import ExportOptions, prepare
    torch.set_num_threads(args.threads)
    model = model or common.model_arg(args)
    prep = prepare(ExportOptions(model=model, task="classification", out=args.work / "unused",
                                 label_words=label_words or common.forward.LABELS.get(model, [" terrible", " great"]),
                                 max_seq_len=args.seq, head=args.head))
    try:
        prep.model.set_attn_implementation("sdpa")  # what the authors' HF model loads by default
    except Exception:  # noqa: BLE001 - eager stays; the worker records which
        pass
    return prep.core([]), prep


def torch_worker(args) -> dict:
    import torch
    import_rss = common.rss_mib()
    core, prep = load_torch_core(args)
    config = optimizer_config("paper-code", args.rank)
    ids, mask, labels = (torch.from_numpy(a) for a in common.token_batch(
        args.batch, args.seq, len(prep.labels.words)))
    # the low-rank matrices; a dense linear head (2 x H) has no r-dimensional sketch
    mats = {name: prep.model.get_parameter(name) for name in prep.targets if name not in prep.dense}
    zo = TorchZoMopi(lambda: core(ids, mask, labels)[0][0].item(), mats, config)
    times = []
    for t in range(args.steps + 1):
        start = time.perf_counter()
        zo.step(t)
        times.append(time.perf_counter() - start)
    attn = getattr(prep.model.config, "_attn_implementation", "?")
    return finish(times, import_rss, k=config.k, N=config.N, attention=attn, torch=torch.__version__)


class TorchZoMopi:
    """ZOMuonTrainer's multi-sample step (anchors note 2.3), β = 0, fp32."""

    def __init__(self, loss, mats: dict, config):
        import torch
        self.torch, self.loss, self.mats, self.cfg = torch, loss, mats, config
        self.P, self.V = {}, {}

    def haar(self, m: int, r: int):
        q, rr = self.torch.linalg.qr(self.torch.randn(m, r))
        return q * self.torch.sign(self.torch.diagonal(rr))

    def step(self, t: int) -> None:
        torch, cfg = self.torch, self.cfg
        with torch.inference_mode():
            seed0 = 1000 * t
            loss0 = self.loss()
            saved, g = {n: [] for n in self.mats}, []
            for i in range(cfg.N):
                torch.manual_seed(seed0 + i)
                for name, W in self.mats.items():
                    if (t % cfg.nu == 0 and i == 0) or name not in self.P:
                        self.P[name] = self.haar(W.shape[0], cfg.r)
                        self.V.pop(name, None)  # reset_v_on_p_refresh
                    u = torch.randn(cfg.r, W.shape[1])
                    saved[name].append(u)
                    W.add_(self.P[name] @ u, alpha=cfg.mu)  # materialised m×n perturbation
                g.append((self.loss() - loss0) / cfg.mu)
                for name, W in self.mats.items():
                    W.sub_(self.P[name] @ saved[name][-1], alpha=cfg.mu)
            for name, W in self.mats.items():
                M = sum(gi * u for gi, u in zip(g, saved[name])) / cfg.N  # β = 0: M = G
                W.sub_(self.P[name] @ self.rank_k_sign(name, M), alpha=cfg.eta)

    def rank_k_sign(self, name: str, M):
        torch = self.torch
        k = min(self.cfg.k, M.shape[0], M.shape[1])
        Vp = self.V.get(name)
        Vp = torch.linalg.qr(torch.randn(M.shape[1], k))[0] if Vp is None else torch.linalg.qr(Vp)[0]
        V = torch.linalg.qr(M.T @ (M @ Vp))[0]
        U = M @ V
        U = U / U.norm(dim=0, keepdim=True).clamp_min(1e-12)
        self.V[name] = V
        return U @ V.T


if __name__ == "__main__":
    sys.exit(main())
