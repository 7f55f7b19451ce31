"""Compile time and peak memory for systems of 10 to 100,000 nodes.

    python bench/compile.py [--quick] [--repeat N] [--out bench/results/compile.json]

Each system is spec text of one shape: an input feeds `layer h width W repeat R chain P`
(N = W x R nodes), and one answer node reads the last repeat densely.

    window  W = min(N, 100), P = window(2): a node reads at most 3 nodes of the layer before
    dense   W = min(N, 10),  P = dense:     a node reads all 10 nodes of the layer before

(A dense chain of width W has W^2 edges per repeat; width 10 keeps 100,000 nodes at
about a million edges.) Each size runs in a fresh subprocess: the compile time is the
best of --repeat runs (wall clock and the process's CPU time), peak memory is that of
one more compile under tracemalloc (Python allocations), and max RSS is the
subprocess's. The exponent k fits time ~ (nodes + edges)^k over the sizes of 1,000
nodes and more, where per-node work dominates the fixed cost of parsing.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from importlib import metadata
from pathlib import Path
from typing import Any

SIZES = (10, 100, 1_000, 3_000, 10_000, 30_000, 100_000)
QUICK_SIZES = (10, 100, 1_000, 10_000)
SHAPES = {"window": (100, "window(2)"), "dense": (10, "dense")}  # shape -> (widest layer, chain)
TARGET_NODES, TARGET_SECONDS = 10_000, 1.0  # window connectivity
FIT_FROM = 1_000  # nodes
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "compile.json"


def spec_text(shape: str, nodes: int) -> str:
    """A system of `nodes` nodes (plus the answer node) of the given shape."""
    widest, chain = SHAPES[shape]
    width = min(nodes, widest)
    repeat = nodes // width
    return f"""system bench_{shape}_{nodes} {{
    input question
    layer h width {width} repeat {repeat} chain {chain}
    layer answer width 1
    h.0 <- question
    answer <- h.{repeat - 1} dense
    output answer
}}
"""


def measure(shape: str, nodes: int, repeat: int) -> dict[str, Any]:
    """Compile one system `repeat` times (best time), then once under tracemalloc."""
    from neuromas.pipeline import compile_source

    compile_source(spec_text(shape, 10))  # imports and the parser, outside the timings
    text = spec_text(shape, nodes)
    walls, cpus = [], []
    for _ in range(repeat):
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        plan = compile_source(text, verify=False)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    del plan
    gc.collect()
    tracemalloc.start()
    plan = compile_source(text, verify=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "shape": shape,
        "nodes": len(plan.nodes),
        "edges": sum(len(node.reads) for node in plan.nodes),  # inputs read included
        "wall_s": min(walls),
        "cpu_s": min(cpus),
        "peak_traced_mib": peak / 2**20,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_one(shape: str, nodes: int, repeat: int) -> dict[str, Any]:
    """`measure` in a fresh interpreter, so that sizes do not share memory or caches."""
    command = [sys.executable, __file__, "--one", shape, str(nodes), "--repeat", str(repeat)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def exponent(rows: list[dict[str, Any]], key: str = "wall_s") -> float | None:
    """Least-squares slope of log(time) against log(nodes + edges)."""
    points = [(math.log(r["nodes"] + r["edges"]), math.log(r[key])) for r in rows if r["nodes"] >= FIT_FROM]
    if len(points) < 2:
        return None
    return statistics.linear_regression(*zip(*points)).slope


def table(rows: list[dict[str, Any]]) -> str:
    header = f"{'shape':<7} {'nodes':>8} {'edges':>10} {'wall s':>8} {'cpu s':>8} {'us/(n+e)':>9} {'peak MiB':>9} {'RSS MiB':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        per = r["wall_s"] / (r["nodes"] + r["edges"]) * 1e6
        lines.append(
            f"{r['shape']:<7} {r['nodes']:>8,} {r['edges']:>10,} {r['wall_s']:>8.3f} {r['cpu_s']:>8.3f} {per:>9.2f} "
            f"{r['peak_traced_mib']:>9.1f} {r['max_rss_mib']:>8.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"sizes up to {QUICK_SIZES[-1]:,} nodes only")
    parser.add_argument("--repeat", type=int, default=None, help="timed compiles per size (best kept; default 3, 2 with --quick)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON results")
    parser.add_argument("--one", nargs=2, metavar=("SHAPE", "NODES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    repeat = args.repeat or (2 if args.quick else 3)
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), repeat)))
        return 0

    rows = []
    for shape in SHAPES:
        for nodes in QUICK_SIZES if args.quick else SIZES:
            rows.append(run_one(shape, nodes, repeat))
            print(f"  {shape} {nodes:,} nodes: {rows[-1]['wall_s']:.3f} s", file=sys.stderr)
    groups = {**{shape: [r for r in rows if r["shape"] == shape] for shape in SHAPES}, "all": rows}
    fits = {clock: {name: exponent(group, f"{clock}_s") for name, group in groups.items()} for clock in ("wall", "cpu")}
    target = next(r for r in rows if r["shape"] == "window" and r["nodes"] >= TARGET_NODES)
    met = target["wall_s"] < TARGET_SECONDS

    print(table(rows))
    print(f"\ntime ~ (nodes + edges)^k, fitted from {FIT_FROM:,} nodes up:")
    for clock, found in fits.items():
        print(f"  {clock:<4} " + ", ".join(f"{name} k = {k:.2f}" for name, k in found.items() if k is not None))
    print(f"target: {target['nodes']:,} nodes (window) in {target['wall_s']:.3f} s, under {TARGET_SECONDS:.0f} s: {'met' if met else 'MISSED'}")

    result = {
        "arguments": {"quick": args.quick, "repeat": repeat},
        "versions": {name: metadata.version(name) for name in ("neuromas", "lark", "pydantic", "msgspec")},
        "python": platform.python_version(),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),  # timings on a busy machine read high: compare cpu_s
        "shapes": {shape: {"widest": width, "chain": chain} for shape, (width, chain) in SHAPES.items()},
        "results": rows,
        "exponent": fits,
        "target": {"nodes": target["nodes"], "wall_s": target["wall_s"], "limit_s": TARGET_SECONDS, "met": met},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written to {args.out}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
