"""The closed registry of optimizers and presets, and `build_config(preset, overrides)`.

    OPTIMIZERS["zo-mopi"].step(state, oracle, key)
    config = build_config("paper-code", ["k=16", "eta=5e-3"])
    opt = OPTIMIZERS[config.name]; state = opt.init(oracle.shapes, config, run_key)

Presets are named dicts of field values over an optimizer's defaults; each optimizer
module lists its own with their sources.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

from edge_zo.optim import loren, lozo, mezo, sketch, zo_mopi, zo_muon
from edge_zo.optim.base import ConfigError
from edge_zo.optim.configs import make_config, parse_overrides


def nothing_pending(state, oracle) -> None:
    """Methods whose every update is already in W (no pending A C)."""
    return None


def nothing_to_flush(state, oracle):
    return state


class Optimizer(NamedTuple):
    """One registered method: its config class, state class and pure functions."""

    name: str
    config_cls: type
    state_cls: type
    init: Callable  # init(shapes, config, key) -> state
    step: Callable  # step(state, oracle, key) -> (state, StepInfo)
    flush: Callable = nothing_to_flush  # flush(state, oracle) -> state: fold pending updates into W
    # pending(state, oracle) -> C or None: the update not yet in W, its sketch bound (evaluations)
    pending: Callable = nothing_pending
    # memory_bytes(shapes, config) -> int: state bytes kept between steps (None: not written
    # yet; base.state_bytes measures a built state)
    memory_bytes: Callable | None = None
    # Whether it needs a low-rank bundle (`export --graph lowrank`): sketch methods bind A and
    # D. Full-rank methods move W itself and run on either graph (on a low-rank one with D = 0:
    # the same losses and weights, bit for bit, as on the full-rank export of the model).
    lowrank_only: bool = True


OPTIMIZERS: dict[str, Optimizer] = {
    "zo-mopi": Optimizer("zo-mopi", zo_mopi.ZoMopiConfig, zo_mopi.ZoMopiState, zo_mopi.init, zo_mopi.step,
                         flush=sketch.flush, pending=sketch.pending),
    "zo-muon": Optimizer("zo-muon", zo_muon.ZoMuonConfig, zo_muon.ZoMuonState, zo_muon.init, zo_muon.step,
                         flush=sketch.flush, pending=sketch.pending),
    "lozo": Optimizer("lozo", lozo.LozoConfig, lozo.LozoState, lozo.init, lozo.step),
    "lozo-m": Optimizer("lozo-m", lozo.LozoMConfig, lozo.LozoState, lozo.init, lozo.step),
    "mezo": Optimizer("mezo", mezo.MezoConfig, mezo.MezoState, mezo.init, mezo.step, lowrank_only=False),
    "loren": Optimizer("loren", loren.LorenConfig, loren.LorenState, loren.init, loren.step,
                       memory_bytes=loren.memory_bytes, lowrank_only=False),
}

# preset name -> (optimizer name, field values)
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    **{p: ("zo-mopi", v) for p, v in zo_mopi.PRESETS.items()},
    **{p: ("zo-muon", v) for p, v in zo_muon.PRESETS.items()},
    **{p: ("lozo", v) for p, v in lozo.PRESETS.items()},
    **{p: ("lozo-m", v) for p, v in lozo.PRESETS_M.items()},
    **{p: ("mezo", v) for p, v in mezo.PRESETS.items()},
    **{p: ("loren", v) for p, v in loren.PRESETS.items()},
}


def build_config(preset: str, overrides: Mapping[str, Any] | Sequence[str] = ()):
    """The config of a preset with `key=value` overrides; unknown keys and bad values raise."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown optimizer preset '{preset}'; known presets: {', '.join(PRESETS)}")
    name, values = PRESETS[preset]
    return make_config(OPTIMIZERS[name].config_cls, {**values, **parse_overrides(overrides)})


def optimizer_for(config) -> Optimizer:
    """The registry entry of a config (by its class's `name`)."""
    return OPTIMIZERS[config.name]


def check_graph(config, graph: str, bundle: str, weights: str = "fp32") -> None:
    """Refuse a low-rank method on a full-rank bundle, and a full-rank one on a quantized
    base (frozen: only a low-rank method's adapter can hold the update), before any step."""
    if weights != "fp32" and not optimizer_for(config).lowrank_only:
        lowrank = ", ".join(name for name, opt in OPTIMIZERS.items() if opt.lowrank_only)
        raise ConfigError(f"{config.name} updates every weight but {bundle} holds a frozen {weights} base: "
                          f"choose --optimizer {lowrank}, or re-export the model without --weights")
    if graph == "lowrank" or not optimizer_for(config).lowrank_only:
        return
    either = " or ".join(name for name, opt in OPTIMIZERS.items() if not opt.lowrank_only)
    raise ConfigError(f"{config.name} is a low-rank method but {bundle} holds a full-rank graph: choose "
                      f"--optimizer {either}, or re-export the model with --graph lowrank")
