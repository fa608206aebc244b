"""SIGTERM and SIGINT stop a fine-tuning run cleanly, at the end of the current step.

`docker stop`, systemd and power management send SIGTERM; Ctrl-C sends SIGINT. While a
run trains, either one only sets a flag; the loop looks at it before each step, writes a
checkpoint at that point and raises `Stopped`, which the CLI prints as one line saying how
to resume, with exit code 128 + the signal's number (130 for SIGINT, 143 for SIGTERM). A
second signal while the first is being honoured stops at once (KeyboardInterrupt); the
journal still lets `--resume` continue from the last completed step.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from edge_zo.errors import Stopped  # noqa: F401  (defined with every error and exit code)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    """The first stop signal received, or None."""

    def __init__(self):
        self.signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # the second one: stop now
        self.signum = signum


@contextmanager
def stop_on_signals():
    """Within the block, SIGINT and SIGTERM set the returned flag instead of killing."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # only the main thread may set handlers: a library caller's thread keeps its own
        return
    previous = {sig: signal.signal(sig, flag._handle) for sig in SIGNALS}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
