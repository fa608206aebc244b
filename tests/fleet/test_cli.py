"""`edge-zo fleet` in a real process: the Flower app it writes for real devices, and the one
line it ends in when a setting is wrong (the simulation itself: test_flower.py)."""

from __future__ import annotations

import importlib
import sys

import pytest

from faults.helpers import assert_clean, cli

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

pytest.importorskip("flwr")


def test_app_folder_names_the_apps_and_settings(tmp_path):
    result = cli("fleet", "--out", tmp_path / "fleet", "--app", tmp_path / "app", "--clients", "3", "--steps", "7",
                 "--optimizer", "zo-mopi", "eta=1e-3", "nu=50")
    assert_clean(result, 0, "flwr run")
    app = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    for component in app["components"].values():  # what `flwr run` will load
        module, _, name = component.partition(":")
        assert callable(getattr(importlib.import_module(module), name))
    config = app["config"]
    assert config["steps"] == 7 and config["min-clients"] == 3 and config["preset"] == "zo-mopi"
    assert config["optimizer"] == "eta=1e-3 nu=50" and config["out"] == str(tmp_path / "fleet" / "server")
    assert {"bundle", "data", "folder", "batch-size"} <= config.keys()  # each SuperNode's --node-config sets these


@pytest.mark.parametrize("args, names", [
    (("--bundle", "b"), ("--data",)),
    (("--bundle", "b", "--data", "d", "etaa=1"), ("etaa", "eta")),
    (("--bundle", "b", "--data", "d", "--clients", "0"), ("--clients",)),
])
def test_wrong_settings_end_in_one_line(tmp_path, args, names):
    assert_clean(cli("fleet", "--out", tmp_path / "fleet", *args), 2, *names)
    assert not (tmp_path / "fleet").exists()
