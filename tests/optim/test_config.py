"""Configs, presets and schedules: defaults documented, bad input rejected with the fix."""

from __future__ import annotations

import dataclasses
import math

import pytest

from edge_zo.optim import OPTIMIZERS, PRESETS, ConfigError, build_config
from edge_zo.optim.schedule import eta_at
from edge_zo.optim.zo_mopi import ZoMopiConfig


def test_every_optimizer_has_a_preset_and_every_field_has_help():
    for name, opt in OPTIMIZERS.items():
        assert name in PRESETS and build_config(name).name == name
        for f in dataclasses.fields(opt.config_cls):
            assert f.metadata.get("help"), f"{name}.{f.name} has no help text"


def test_paper_code_preset_is_the_released_run():
    c = build_config("paper-code")
    assert (c.r, c.k, c.nu, c.N, c.estimator, c.beta, c.eta, c.schedule, c.mu) == (
        64, 32, 500, 8, "forward", 0.0, 1e-2, "constant", 1e-3)
    assert (c.reproject, c.reset_v, c.sketch, c.one_d, c.one_d_lr) == (False, True, "random", "sgd", 1e-7)


def test_default_zo_mopi_is_the_described_method():
    c = build_config("zo-mopi")
    assert (c.estimator, c.reproject, c.reset_v, c.one_d) == ("central", True, False, "frozen")
    assert c.beta > 0 and c.schedule == "cosine"


def test_baseline_presets_follow_their_papers():
    assert (lambda c: (c.eta, c.r, c.nu, c.N, c.estimator, c.ns_steps))(build_config("zo-muon")) == (1e-2, 64, 100, 4, "forward", 5)
    assert (lambda c: (c.eta, c.mu, c.N))(build_config("mezo")) == (1e-7, 1e-3, 1)
    assert (lambda c: (c.eta, c.r, c.nu, c.beta))(build_config("lozo")) == (1e-7, 2, 50, 0.0)
    assert build_config("lozo-m").beta == 0.9


def test_overrides_are_typed():
    c = build_config("zo-mopi", ["k=16", "eta=5e-3", "reproject=false", "targets=*.q_proj,*.v_proj"])
    assert (c.k, c.eta, c.reproject, c.targets) == (16, 5e-3, False, ("*.q_proj", "*.v_proj"))
    assert build_config("mezo", {"eta": 1e-6}).eta == 1e-6


@pytest.mark.parametrize(
    "preset,overrides,message",
    [
        ("zo-mopi", ["lr=1e-3"], "unknown key 'lr' for zo-mopi; did you mean 'eta'? known keys: eta"),
        ("zo-mopi", ["etaa=1"], "did you mean 'eta'?"),
        ("zo-mopi", ["k=40", "r=32"], "k=40 must be <= r=32"),
        ("zo-mopi", ["k=3.5"], "k='3.5': expected an integer"),
        ("zo-mopi", ["estimator=backward"], "estimator='backward' is not one of central, forward"),
        ("zo-mopi", ["beta=1"], "beta=1.0 must be in [0, 1)"),
        ("zo-mopi", ["mu=0"], "mu=0.0 must be > 0"),
        ("mezo", ["schedule=cosine"], "set decay_steps to the run's step count"),
        ("mezo", ["eta"], "is not key=value"),
        ("nope", [], "known presets: zo-mopi, paper-code"),
    ],
)
def test_bad_input_says_the_fix(preset, overrides, message):
    with pytest.raises(ConfigError) as e:
        build_config(preset, overrides)
    assert message in str(e.value)


def test_schedules():
    const = ZoMopiConfig(eta=0.1, schedule="constant", warmup=4)
    assert [eta_at(const, t) for t in (0, 3, 4, 10_000)] == [0.025, 0.1, 0.1, 0.1]
    lin = ZoMopiConfig(eta=0.1, schedule="linear", decay_steps=10, eta_min_ratio=0.1)
    assert math.isclose(eta_at(lin, 0), 0.1) and math.isclose(eta_at(lin, 5), 0.055) and math.isclose(eta_at(lin, 99), 0.01)
    cos = ZoMopiConfig(eta=0.1, schedule="cosine", warmup=2, decay_steps=12)
    assert eta_at(cos, 1) == 0.1 and math.isclose(eta_at(cos, 7), 0.05) and eta_at(cos, 12) == 0.0
    assert all(eta_at(cos, t) >= eta_at(cos, t + 1) for t in range(1, 20))
