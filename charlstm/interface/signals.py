"""Ctrl-C in two stages, for every command that runs long: the first asks the work to stop at a safe
point, a second stops at once.

Stopping at once is safe because everything charlstm saves is swapped in by renames: an exit at any
moment leaves the previous complete file in place. Under torchrun one Ctrl-C arrives twice (from the
terminal and forwarded by torchrun), so a signal within ``echo_seconds`` of the first counts as the
same one.
"""

from __future__ import annotations

import signal
import time
from typing import Any, Callable, Sequence


class TwoStageStop:
    """While active, the first of ``signals`` calls ``first(signum)``; the next calls ``second(signum)``,
    which is expected to raise (SystemExit, KeyboardInterrupt) and so unwind the work."""

    def __init__(
        self,
        first: Callable[[int], None],
        second: Callable[[int], None],
        signals: Sequence[signal.Signals] = (signal.SIGINT,),
        echo_seconds: float = 0.0,
    ):
        self.first = first
        self.second = second
        self.signals = tuple(signals)
        self.echo_seconds = echo_seconds
        self.received: list[int] = []
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received and time.monotonic() - self._first_at < self.echo_seconds:
            return
        self.received.append(signum)
        if len(self.received) > 1:
            self.second(signum)
            return
        self._first_at = time.monotonic()
        self.first(signum)

    def __enter__(self) -> "TwoStageStop":
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
