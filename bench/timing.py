"""Interleaved timing for benchmarks on a shared, noisy machine.

Every round runs each variant once, in a rotated order, and records wall and CPU time
(this process's, which other programs do not inflate). A ratio between two variants is
taken within each round (both ran under the same load), and the rounds continue until
the 95% interval of the median ratio is within `tolerance` of it, or `max_rounds`.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Ratio = tuple[str, str, str]  # (name, faster variant, slower variant)


def median_interval(values: Sequence[float]) -> tuple[float, float]:
    """A distribution-free ~95% interval for the median: order statistics n/2 -+ 0.98 sqrt(n)
    (the whole range when there are too few values for that)."""
    ordered = sorted(values)
    n = len(ordered)
    low = max(0, math.floor(n / 2 - 0.98 * math.sqrt(n)))
    high = min(n - 1, math.ceil(n / 2 + 0.98 * math.sqrt(n)) - 1)
    return ordered[low], ordered[high]


def interleaved(
    variants: Mapping[str, Callable[[], Any]],
    ratios: Sequence[Ratio],
    *,
    min_rounds: int = 3,
    max_rounds: int = 10,
    tolerance: float = 0.1,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> dict[str, Any]:
    """Run the variants round after round; returns per-variant runs and per-ratio summaries.

    A ratio (name, a, b) is rate(a) / rate(b), how many times faster a is than b, from
    wall time and from CPU time; a variant's rate is the count it returns (e.g. tokens
    generated) per second, or 1 / its time when it returns no number.
    """
    names = list(variants)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    rounds = 0
    summary: dict[str, Any] = {}
    while rounds < max_rounds:
        order = names[rounds % len(names):] + names[: rounds % len(names)]
        for name in order:
            started, cpu_started = time.perf_counter(), time.process_time()
            value = variants[name]()
            _wait_for_gpu()
            runs[name].append({"wall_s": time.perf_counter() - started,
                               "cpu_s": time.process_time() - cpu_started, "value": value})
        rounds += 1
        summary = summarize_ratios(runs, ratios)
        widths = [item["wall_relative_width"] for item in summary.values()]
        log(f"round {rounds}: " + ", ".join(f"{key} {item['wall']:.2f}x" for key, item in summary.items()))
        if rounds >= min_rounds and all(width <= tolerance for width in widths):
            break
    return {"rounds": rounds, "runs": runs, "ratios": summary}


def summarize_ratios(runs: Mapping[str, list[dict[str, Any]]], ratios: Sequence[Ratio]) -> dict[str, Any]:
    summary = {}
    for key, fast, slow in ratios:
        result = {}
        for clock in ("wall", "cpu"):
            per_round = [_rate(f, clock) / _rate(s, clock) for f, s in zip(runs[fast], runs[slow], strict=False)]
            middle = statistics.median(per_round)
            low, high = median_interval(per_round)
            result[clock] = middle
            result[f"{clock}_interval"] = [low, high]
            result[f"{clock}_relative_width"] = (high - low) / middle if middle else math.inf
        summary[key] = result
    return summary


def _rate(run: dict[str, Any], clock: str) -> float:
    """Work per second: the variant's returned count (e.g. tokens) if it gave one, else 1."""
    work = run["value"] if isinstance(run["value"], (int, float)) else 1.0
    return work / run[f"{clock}_s"]


def _wait_for_gpu() -> None:
    """Wait for queued GPU work, so that a variant's time includes it (nothing on a CPU)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


def medians(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    return {clock: statistics.median(run[clock] for run in runs) for clock in ("wall_s", "cpu_s")}


def machine() -> str:
    """The hardware a result was measured on, for its JSON and table."""
    import torch

    gpu = f"{torch.cuda.get_device_name()}, " if torch.cuda.is_available() else ""
    return (f"{gpu}{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s)")
