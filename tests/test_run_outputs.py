"""What a run leaves beside metrics.jsonl (issue 20): metrics.png's panels and the
TensorBoard event files (tensorboardX, the [tensorboard] extra; in [dev] so these run in CI),
and one line at the end of a run when either extra is missing."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_zo.events import EVENTS_DIR, Events, scalars
from edge_zo.metrics import MetricsLog
from edge_zo.plot import _eval_panel, _loss_panel, moving_average, plot
from faults.helpers import ENV, assert_clean, notes
from runtime.fixtures import build

TRAIN = [{"kind": "train", "step": s, "loss": 1.0 / s, "lr": 0.1, "forward_passes": 4 * s, "train_s": 0.5 * s}
         for s in range(1, 6)]
EVAL0 = {"kind": "eval", "step": 0, "eval_acc": 0.5, "forward_passes": 0, "train_s": 0.0, "eval_s": 0.1}
EVAL5 = {**EVAL0, "step": 5, "eval_acc": 0.75, "forward_passes": 20, "train_s": 2.5}


def read_events(folder: Path) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in the folder's event files: TFRecords (length,
    its crc, an Event proto, its crc) parsed with tensorboardX's own proto."""
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for path in sorted(folder.iterdir()):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return out


# ---- metrics.png ---------------------------------------------------------------------------

def test_moving_average_is_trailing_and_starts_at_the_first_value():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def test_panels_smooth_the_loss_draw_the_baseline_and_say_when_empty():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss, scored, empty) = plt.subplots(1, 3)
    _loss_panel(loss, TRAIN * 4, "forward_passes")  # 20 points: a window of 2
    assert [line.get_label() for line in loss.lines] == ["per step", "moving average (2 steps)"]
    _eval_panel(scored, [EVAL0, EVAL5], "forward_passes")
    baseline = [line for line in scored.lines if "baseline" in line.get_label()]
    assert len(baseline) == 1 and list(baseline[0].get_ydata()) == [0.5, 0.5]
    _eval_panel(empty, [], "forward_passes")
    assert any("no eval data" in text.get_text() for text in empty.texts) and not empty.lines
    plt.close(fig)


def test_plot_writes_the_png_with_the_title(tmp_path, monkeypatch):
    import matplotlib.figure

    titles = []
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle", lambda self, t, **kw: titles.append(t))
    assert plot([*TRAIN, EVAL0, EVAL5], tmp_path / "m.png", "run-1: zo-mopi on bundle") == tmp_path / "m.png"
    assert (tmp_path / "m.png").stat().st_size > 1000 and titles == ["run-1: zo-mopi on bundle"]


# ---- TensorBoard events --------------------------------------------------------------------

def test_scalars_are_the_records_curves():
    assert scalars(TRAIN[0]) == {"train/loss": 1.0, "train/lr": 0.1}
    assert scalars(EVAL5) == {"eval/acc": 0.75}
    assert scalars({"kind": "notice", "step": 3, "rows": 2}) == {}


def test_events_hold_the_loss_and_a_resume_never_shows_a_step_twice(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.mirror = Events(tmp_path, log.read())
    assert log.mirror.available
    for record in TRAIN:
        log.write(record)
    assert [(s, v) for tag, s, v in read_events(tmp_path / EVENTS_DIR) if tag == "train/loss"] == \
        [(r["step"], pytest.approx(r["loss"])) for r in TRAIN]
    # A resume from step 3: the log is cut back, the events rewritten from it, steps 4-5 redone.
    log.mirror.close()
    resumed = MetricsLog(tmp_path / "metrics.jsonl")
    resumed.mirror = Events(tmp_path, resumed.read())
    resumed.truncate_after(3)
    for record in TRAIN[3:]:
        resumed.write(record)
    resumed.mirror.close()
    steps = [s for tag, s, _ in read_events(tmp_path / EVENTS_DIR) if tag == "train/loss"]
    assert steps == [1, 2, 3, 4, 5] and len(list((tmp_path / EVENTS_DIR).iterdir())) == 1


def test_loading_the_writer_does_not_load_torch():
    """tensorboardX's writer imports torch where it can (this venv has it for the exporter)."""
    code = "import sys; from edge_zo.events import writer_class; assert writer_class(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr


# ---- a run, with and without the extras ----------------------------------------------------

BLOCK = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("matplotlib", "tensorboardX"):
                raise ImportError(name + " is not installed here")
    if BLOCKED:
        sys.meta_path.insert(0, Block())
    from edge_zo.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("outputs")
    build(root / "bundle", max_seq_len=16)
    rows = [{"text": t, "label": y} for t, y in [("good film", "positive"), ("bad film", "negative")] * 4]
    (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def finetune(job: Path, run: Path, blocked: bool) -> subprocess.CompletedProcess:
    args = ["finetune", "--bundle", job / "bundle", "--data", job / "d.jsonl", "--eval-data", job / "d.jsonl",
            "--out", run, "steps=3", "batch_size=4", "eval_every=0"]
    return subprocess.run([sys.executable, "-c", f"BLOCKED = {blocked}\n" + BLOCK, *map(str, args)],
                          capture_output=True, text=True, timeout=180, env=ENV)


@pytest.mark.slow
@pytest.mark.parametrize("blocked", [False, True])
def test_a_run_writes_png_and_events_or_says_once_what_to_install(job, tmp_path, blocked):
    run = tmp_path / "run"
    result = finetune(job, run, blocked)
    assert_clean(result, 0)
    said = notes(result, "pip install")
    if blocked:
        assert len(said) == 1 and "edge-zo[plot]" in said[0] and "edge-zo[tensorboard]" in said[0], result.stderr
        assert not (run / "metrics.png").exists() and not (run / EVENTS_DIR).exists()
    else:
        assert not said and (run / "metrics.png").is_file()
        steps = [s for tag, s, _ in read_events(run / EVENTS_DIR) if tag == "train/loss"]
        assert steps == [1, 2, 3]
