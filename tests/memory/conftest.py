"""Memory tests: calibrations cached in a per-session folder, model folders built once."""

from __future__ import annotations

import pytest

from . import jobs


@pytest.fixture(scope="session", autouse=True)
def plan_cache(tmp_path_factory):
    """Calibrations go to a fresh cache (children inherit the environment)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def model(tmp_path_factory):
    """name (a key of jobs.MODELS) -> folder with bundle/, train.jsonl, dev.jsonl."""
    root, cache = tmp_path_factory.mktemp("models"), {}

    def get(name: str):
        if name not in cache:
            cache[name] = jobs.make_model(root, name)
        return cache[name]
    return get
