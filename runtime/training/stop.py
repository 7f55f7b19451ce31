"""SIGINT/SIGTERM -> a stop request that a training loop honours between steps.

`StopSignals` is a context manager: inside it, the first SIGINT or SIGTERM only sets
`requested` (the loop finishes its step, writes a checkpoint and returns); a second
signal aborts at once (SIGINT raises KeyboardInterrupt, SIGTERM ends the process as
its default would). Leaving the context restores the previous handlers. Nothing here
is installed unless a caller enters the context: the embedding API never changes a
process's signal handlers by itself.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Turn the first SIGINT/SIGTERM into `requested`; the second aborts.

    `signum` is the first signal received (None before one arrives); `exit_code` is the
    conventional 128 + signal number (130 for SIGINT, 143 for SIGTERM). Handlers can
    only be installed from the main thread; elsewhere the context does nothing.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS, *, announce: bool = True) -> None:
        self.signals = signals
        self.announce = announce  # say on stderr that the step is being finished
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int | None:
        return None if self.signum is None else 128 + self.signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            if self.announce:
                print(f"\n{signal.Signals(signum).name}: finishing the current step, then saving a checkpoint "
                      "(press Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)
            return
        self.__exit__(None, None, None)  # the second signal: stop honouring requests
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
