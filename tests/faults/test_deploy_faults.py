"""Faults around `export` and `deploy`, in real subprocesses: staging folders left by killed
processes, disk faults (file size limit, read-only folder), a bundle that now holds another
model. Each ends in one line naming the place, with nothing half-written at --out."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from edge_zo.cli import main  # noqa: E402
from edge_zo.errors import EXIT_BAD_INPUT, EXIT_DISK  # noqa: E402
from faults.helpers import assert_clean, cli, dead_pid, file_size_limit, start, temp_files  # noqa: E402
from runtime.fixtures import build  # noqa: E402

pytestmark = [pytest.mark.export, pytest.mark.slow]

_spec = importlib.util.spec_from_file_location("tiny_models", Path(__file__).parents[1] / "export" / "tiny_models.py")
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


def plant_partial(out: Path, pid: int) -> Path:
    """A staging folder as a process `pid` killed mid-write would leave it."""
    staging = out.parent / f".{out.name}.partial-{pid}"
    staging.mkdir()
    (staging / out.name).write_bytes(b"\0" * 1000)
    return staging


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny exported encoder (exported beside a dead export's and a live process's staging
    folders) and a short run on it."""
    root = tmp_path_factory.mktemp("deploy_faults")
    model = tiny.build("bert", root / "model")
    bundle = root / "bundle"
    other = subprocess.Popen(["sleep", "300"])  # a live process that is not the exporter
    dead, live = plant_partial(bundle, dead_pid()), plant_partial(bundle, other.pid)
    try:  # in this process: torch is loaded once for the module
        assert main(["export", str(model), "--task", "classification", "--label-words", "terrible", "great",
                     "--rank", "2", "--out", str(bundle)]) == 0
    finally:
        other.kill()
        other.wait()
    data = root / "reviews.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in
                            [("a great movie", "positive"), ("a terrible movie", "negative")] * 8))
    run = root / "run"
    done = cli("finetune", "--bundle", bundle, "--data", data, "--out", run, "steps=4", "batch_size=4")
    assert done.returncode == 0, done.stderr
    return {"root": root, "bundle": bundle, "run": run, "dead": dead, "live": live}


def test_export_removes_only_the_staging_folders_of_dead_processes(trained):
    assert not trained["dead"].exists()
    assert trained["live"].is_dir()  # its process still ran


def test_deploy_removes_a_killed_deploys_staging_folder(trained, tmp_path):
    out = tmp_path / "model.onnx"
    dead, live = plant_partial(out, dead_pid()), plant_partial(out, os.getpid())
    result = cli("deploy", trained["run"], "--out", out)
    assert result.returncode == 0, result.stderr
    assert out.is_file() and not dead.exists() and live.is_dir()


def test_a_deploy_killed_mid_write_is_cleaned_up_by_the_next(trained, tmp_path):
    out = tmp_path / "model.onnx"
    for _ in range(3):  # the staging window is short: catch it, freeze it, kill it
        proc = start("deploy", trained["run"], "--out", out)
        while proc.poll() is None and not list(tmp_path.glob(".model.onnx.partial-*")):
            time.sleep(0.001)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGSTOP)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        out.unlink(missing_ok=True)
    else:
        pytest.skip("deploy finished before its staging folder could be caught")
    assert list(tmp_path.glob(".model.onnx.partial-*")) and not out.exists()  # what kill -9 leaves
    assert cli("deploy", trained["run"], "--out", out).returncode == 0
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_a_file_size_limit_in_deploy_writes_nothing(trained, tmp_path):
    out = tmp_path / "model.onnx"
    result = cli("deploy", trained["run"], "--out", out, preexec_fn=file_size_limit(100_000))
    assert_clean(result, EXIT_DISK, f".{out.name}.partial-", "file size limit", f"nothing was written to {out}")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_in_deploy_writes_nothing(trained, tmp_path):
    from faults.conftest import mounted_tmpfs

    with mounted_tmpfs(tmp_path / "disk", "128k") as disk:
        result = cli("deploy", trained["run"], "--out", disk / "model.onnx")
        assert_clean(result, EXIT_DISK, disk, "disk is full", "nothing was written")
        assert list(disk.iterdir()) == []


def test_a_read_only_folder_in_deploy_writes_nothing(trained, tmp_path):
    from faults.conftest import mounted_tmpfs, remount

    if os.geteuid() == 0:
        with mounted_tmpfs(tmp_path / "ro", "1m") as folder:
            remount(folder, "ro")
            result = cli("deploy", trained["run"], "--out", folder / "model.onnx")
            assert list(folder.iterdir()) == []
    else:
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o555)
        result = cli("deploy", trained["run"], "--out", folder / "model.onnx")
        assert list(folder.iterdir()) == []
    assert_clean(result, EXIT_DISK, folder, "nothing was written")


def test_deploy_refuses_a_bundle_that_now_holds_another_model(trained, tmp_path):
    bundle, run = tmp_path / "bundle", tmp_path / "run"
    shutil.copytree(trained["bundle"], bundle)
    shutil.copytree(trained["run"], run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "bundle": str(bundle)}))
    assert cli("deploy", run, "--out", tmp_path / "ok.onnx").returncode == 0  # the same model: fine
    shutil.rmtree(bundle)
    build(bundle, max_seq_len=16)  # another (tiny, torch-free) model in the same folder
    out = tmp_path / "model.onnx"
    assert_clean(cli("deploy", run, "--out", out), EXIT_BAD_INPUT, bundle, "another model")
    assert not out.exists() and temp_files(tmp_path) == []


def test_a_moved_run_deploys_the_same_model(trained, tmp_path):
    """Bundle and run moved together to another folder: deploy finds the bundle beside the
    run (edge_zo/runpaths.py) and writes the same bytes as from the original place."""
    here = tmp_path / "here"
    here.mkdir()
    shutil.copytree(trained["bundle"], here / "bundle")
    shutil.copytree(trained["run"], here / "run")
    config = json.loads((here / "run" / "config.json").read_text())  # as if trained here
    (here / "run" / "config.json").write_text(json.dumps({**config, "bundle": str(here / "bundle")}))
    assert_clean(cli("deploy", here / "run", "--out", tmp_path / "here.onnx"), 0)
    here.rename(tmp_path / "there")
    assert_clean(cli("deploy", tmp_path / "there" / "run", "--out", tmp_path / "there.onnx", cwd=tmp_path), 0)
    assert (tmp_path / "there.onnx").read_bytes() == (tmp_path / "here.onnx").read_bytes()
