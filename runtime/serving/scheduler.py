"""Concurrent SystemRequests -> batches that share one rollout, behind a bounded queue.

One worker thread owns the runtime (backends are not thread-safe). When a request
arrives at an idle worker, the worker waits `window_s` for others, then runs every
waiting request (up to `max_batch_runs` system runs) in one rollout: each plan call is
one backend call for all of them. Requests that arrive while a batch runs wait for the
next one. A seeded, sampled request runs in a rollout of its own (`jobs.needs_own_rollout`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass

from ..generation.rollout import Runtime
from .jobs import SystemRequest, SystemResult, needs_own_rollout, run_requests

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds `max_queue` requests already; try again after `retry_after_s`."""

    def __init__(self, retry_after_s: int):
        super().__init__(f"the server is busy: try again in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class SchedulerClosed(Exception):
    """The server is shutting down and takes no new requests."""


@dataclass
class SchedulerStats:
    """Running counts: batches run, requests answered, largest batch (in requests), and the
    requests of the batch running now."""

    batches: int = 0
    running: int = 0
    requests: int = 0
    largest_batch: int = 0
    batch_s_total: float = 0.0


@dataclass
class _Pending:
    request: SystemRequest
    future: Future
    arrived: float
    is_alone: bool


class BatchScheduler:
    """Runs SystemRequests on one runtime, batching those that arrive together.

    max_queue: requests waiting (not running) before `submit` raises QueueFull.
    window_s: how long an idle worker waits for more requests after the first.
    max_batch_runs: system runs (prompts x n over requests) per rollout; a larger
        request still runs, alone.
    """

    def __init__(self, runtime: Runtime, *, max_queue: int = 64, window_s: float = 0.01, max_batch_runs: int = 64):
        if max_queue < 1 or max_batch_runs < 1 or window_s < 0:
            raise ValueError("max_queue and max_batch_runs must be at least 1, window_s at least 0")
        self.runtime = runtime
        self.max_queue = max_queue
        self.window_s = window_s
        self.max_batch_runs = max_batch_runs
        self.stats = SchedulerStats()
        self._pending: deque[_Pending] = deque()
        self._condition = threading.Condition()
        self._is_closing = False
        self._worker = threading.Thread(target=self._work, name="neuromas-batches", daemon=True)
        self._worker.start()

    @property
    def queued(self) -> int:
        return len(self._pending)

    def submit(self, request: SystemRequest) -> Future:
        """Queue a request; the future gives its SystemResult. Raises QueueFull or SchedulerClosed."""
        future: Future = Future()
        item = _Pending(request, future, time.monotonic(), needs_own_rollout(request, self.runtime.plan))
        with self._condition:
            if self._is_closing:
                raise SchedulerClosed("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(self.retry_after_s())
            self._pending.append(item)
            self._condition.notify_all()
        return future

    def retry_after_s(self) -> int:
        """Seconds until the queue has likely moved on: the mean batch time (at least 1)."""
        if self.stats.batches == 0:
            return 1
        return max(1, math.ceil(self.stats.batch_s_total / self.stats.batches))

    def close(self, timeout_s: float | None = None) -> None:
        """Take no new requests, finish every queued one, then stop the worker."""
        with self._condition:
            self._is_closing = True
            self._condition.notify_all()
        self._worker.join(timeout_s)

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)

    def _next_batch(self) -> list[_Pending] | None:
        """Wait for requests, then for the window; take what fits (None: closed and drained)."""
        with self._condition:
            while not self._pending:
                if self._is_closing:
                    return None
                self._condition.wait()
            first = self._pending[0]
            if first.is_alone:
                return [self._pending.popleft()]
            deadline = first.arrived + self.window_s
            while not self._is_closing and self._waiting_runs() < self.max_batch_runs:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            batch, runs, kept = [], 0, deque()
            while self._pending:
                item = self._pending.popleft()
                fits = not batch or runs + item.request.runs <= self.max_batch_runs
                if item.is_alone or not fits:
                    kept.append(item)
                    continue
                batch.append(item)
                runs += item.request.runs
            self._pending = kept
            return batch

    def _waiting_runs(self) -> int:
        return sum(item.request.runs for item in self._pending if not item.is_alone)

    def _run(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        live = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if not live:
            return
        seed = live[0].request.seed if live[0].is_alone else None
        self.stats.running = len(live)
        results: list[SystemResult] | None = None
        failure: Exception | None = None
        try:
            results = run_requests(self.runtime, [item.request for item in live], seed=seed)
        except Exception as error:  # reported to each waiting request; the server keeps serving
            logger.exception("a batch of %d request(s) failed", len(live))
            failure = error
        # The stats count the batch before anyone is answered, so a client that reads them
        # after its answer sees its own batch.
        self.stats.running = 0
        self.stats.batches += 1
        self.stats.requests += len(live)
        self.stats.largest_batch = max(self.stats.largest_batch, len(live))
        self.stats.batch_s_total += time.perf_counter() - started
        for index, item in enumerate(live):
            if failure is not None:
                item.future.set_exception(failure)
            else:
                item.future.set_result(results[index])
