"""TensorBoard event files beside metrics.jsonl (RUN/tensorboard/), when tensorboardX is there.

`pip install 'edge-zo[tensorboard]'` adds tensorboardX (numpy, protobuf; no TensorFlow, no
torch); without it a run writes no events and says so once at its end (edge_zo/loop.py).
metrics.jsonl stays the source of truth and the events mirror it (edge_zo/metrics.py): each
record written is written here too, and whenever the JSONL is cut back to a step (a
resume) the events are rewritten from it: the old files are removed and one new file holds
every kept record, so TensorBoard never shows a step twice.

Scalars, at the record's step: `train/loss`, `train/lr`, `train/rss_mib`; `eval/acc`,
`eval/ce`, `eval/loss` (every eval_* value); `linear_probe/...` (its accuracies and l2).
"""

from __future__ import annotations

import importlib.abc
import shutil
import sys
import time
from pathlib import Path

EVENTS_DIR = "tensorboard"
KINDS = ("train", "eval", "linear_probe")
NOT_SCALARS = {"step", "forward_passes", "train_s", "eval_s"}  # axes and clocks, not curves


class _HideTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("edge-zo: torch is not for the device runtime")


def writer_class():
    """tensorboardX's synchronous event-file writer (its SummaryWriter queues events to a
    thread that its flush() does not wait for), or None when tensorboardX is not installed.
    Its package imports torch whenever torch can be imported (a host with the exporter):
    that took a process from 31 to 221 MiB peak RSS, memory the plan does not count and a
    device never pays, so torch is hidden while tensorboardX loads (it then takes numpy only)."""
    if "tensorboardX" not in sys.modules:
        hide = _HideTorch()
        sys.meta_path.insert(0, hide)
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            return None
        finally:
            sys.meta_path.remove(hide)
    from tensorboardX.event_file_writer import EventsWriter

    return EventsWriter


def scalars(record: dict) -> dict[str, float]:
    """A metrics record's TensorBoard scalars (tag -> value); none for other kinds."""
    kind = record.get("kind")
    if kind not in KINDS:
        return {}
    return {f"{kind}/{key.removeprefix('eval_')}": float(value) for key, value in record.items()
            if key not in NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool)}


class Events:
    """The run's event files; a no-op where tensorboardX is missing (`available` False)."""

    def __init__(self, run_dir: Path, records: list[dict]):
        self.folder = Path(run_dir) / EVENTS_DIR
        self._make = writer_class()
        self._writer = None
        self.rewrite(records)

    @property
    def available(self) -> bool:
        return self._make is not None

    def write(self, record: dict, flush: bool = True) -> None:
        values = scalars(record)
        if self._writer is None or not values:
            return
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=tag, simple_value=v) for tag, v in values.items()])
        self._writer.write_event(Event(wall_time=time.time(), step=int(record.get("step", 0)), summary=summary))
        if flush:  # on disk with the JSONL line
            self._writer.flush()

    def rewrite(self, records: list[dict]) -> None:
        """A new events file holding `records` in place of every earlier one."""
        if not self.available:
            return
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        self._writer = self._make(str(self.folder / "events"))
        for record in records:
            self.write(record, flush=False)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
