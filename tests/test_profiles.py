"""Device profiles: every built-in one loads; a user's file works; a malformed one is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_zo.errors import UserError
from edge_zo.memory.profiles import builtin_dir, builtin_names, load_profile

REQUIRED = {"jetson-orin-nano-8gb", "jetson-orin-nx-16gb", "jetson-agx-orin-64gb",
            "jetson-xavier-nx-8gb", "raspberry-pi-5-8gb", "x86-laptop-16gb", "desktop-rtx-4090"}

GOOD = """
description = "a test board"
memory_mib = 4096
reserved_mib = 512
unified_memory = true
execution_provider = "cuda"
dtype = "fp16"
threads = 4
min_onnxruntime = "1.20"
opset = 20
"""


def test_the_required_devices_ship():
    assert REQUIRED <= set(builtin_names())


@pytest.mark.parametrize("name", builtin_names())
def test_builtin_profile_is_consistent(name):
    p = load_profile(name)
    assert p.name == name
    assert 0 < p.budget_mib < p.memory_mib
    # Jetsons share one memory pool between CPU and GPU; the others do not.
    assert p.unified_memory == name.startswith("jetson")
    # Runtimes older than 1.17 cannot read opset-20 graphs (JetPack 5's wheels).
    assert (p.opset == 18) == (tuple(map(int, p.min_onnxruntime.split("."))) < (1, 17))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


@pytest.mark.parametrize("name", builtin_names())
def test_builtin_profile_asks_for_software_edge_zo_runs_on(name):
    """A profile's onnxruntime and any Python it names meet pyproject.toml's floors."""
    import re
    import sys
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    ort_floor = next(d for d in project["dependencies"] if d.startswith("onnxruntime"))
    python_floor = project["requires-python"].removeprefix(">=")
    p = load_profile(name)
    assert _version(p.min_onnxruntime) >= _version(ort_floor.split(">=")[1]), ort_floor
    for named in re.findall(r"Python (?:>= )?(\d+\.\d+)", p.description):  # shipped ones must be said so
        shipped = f"ships Python {named}" in p.description
        assert shipped or _version(named) >= _version(python_floor), (p.description, python_floor)
    if "ships Python" in p.description:
        assert f"Python >= {python_floor}" in p.description, p.description


def test_a_users_file_works_the_same_way(tmp_path):
    path = tmp_path / "my-board.toml"
    path.write_text(GOOD)
    p = load_profile(str(path))
    assert (p.name, p.budget_mib, p.execution_provider) == ("my-board", 3584, "cuda")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t + "colour = 'red'\n", "unknown keys ['colour']"),
    (lambda t: t.replace("threads = 4\n", ""), "missing keys ['threads']"),
    (lambda t: t.replace("threads = 4", 'threads = "four"'), "threads = 'four' must be int"),
    (lambda t: t.replace('"cuda"', '"tpu"'), "execution_provider 'tpu' is not one of"),
    (lambda t: t.replace("reserved_mib = 512", "reserved_mib = 5000"), "leaves nothing"),
    (lambda t: t.replace("opset = 20", "opset = 13"), "opset 13"),
    (lambda t: t.replace("memory_mib = 4096", "memory_mib = [4096"), "not valid TOML"),
])
def test_malformed_profile_is_a_clear_error(tmp_path, edit, message):
    path = tmp_path / "bad.toml"
    path.write_text(edit(GOOD))
    with pytest.raises(UserError) as err:
        load_profile(str(path))
    assert message in str(err.value)
    assert str(path) in str(err.value)  # the message names the file


def test_unknown_name_lists_the_builtins():
    with pytest.raises(UserError, match="jetson-orin-nano-8gb"):
        load_profile("no-such-board")
    assert builtin_dir().is_dir()
