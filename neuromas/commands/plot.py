"""`neuromas plot DIR`: a training run's metrics.jsonl -> a PNG of its reward and loss curves."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from neuromas.diagnostics import UserError

EXAMPLES = """examples:
  neuromas plot runs/n3                 # writes runs/n3/curves.png
  neuromas plot runs/n3 -o n3.png --smooth 10

exit status: 0 ok, 2 usage, 1 no metrics to plot"""

METRICS_FILE = "metrics.jsonl"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="draw a training run's reward and loss curves",
        description="Draw the reward (with accuracy) and loss curves of a `neuromas train` run to a PNG.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="DIR", help="a `neuromas train --out` folder")
    parser.add_argument("-o", "--output", metavar="PNG", help="where to write the picture (default: DIR/curves.png)")
    parser.add_argument("--smooth", type=int, default=0, metavar="N",
                        help="also draw a moving average over N steps (default: about a tenth of the run)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    rows = read_rows(Path(args.run_dir))
    output = Path(args.output) if args.output else Path(args.run_dir) / "curves.png"
    if args.smooth < 0:
        raise UserError(f"--smooth must be at least 0, got {args.smooth}", exit_code=2)
    draw(rows, output, title=Path(args.run_dir).name, window=args.smooth or max(1, len(rows) // 10))
    print(output)
    return 0


def read_rows(run_dir: Path) -> list[dict]:
    """The metrics rows of a run; raises UserError when there are none."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise UserError(f"'{run_dir}' has no {METRICS_FILE}: is it a `neuromas train --out` folder?")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{number}: not valid JSON: {err.msg}") from None
    if not rows:
        raise UserError(f"{path} has no rows yet: nothing to plot")
    return rows


def moving_average(values: list[float | None], window: int) -> list[float | None]:
    """The mean of the last `window` known values at each step (None while none is known)."""
    averaged: list[float | None] = []
    for end in range(len(values)):
        known = [v for v in values[max(0, end - window + 1) : end + 1] if v is not None]
        averaged.append(sum(known) / len(known) if known else None)
    return averaged


def draw(rows: list[dict], output: Path, *, title: str, window: int) -> None:
    """Two panels sharing the step axis: reward mean (+- std, accuracy) and the loss."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in rows]
    reward = [row.get("reward_mean") for row in rows]
    spread = [row.get("reward_std") or 0.0 for row in rows]
    accuracy = [row.get("accuracy") for row in rows]
    loss = [row.get("loss") for row in rows]

    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 6), constrained_layout=True)
    top.plot(steps, reward, color="tab:blue", alpha=0.45, marker=".", label="reward (batch mean)")
    low = [r - s if r is not None else None for r, s in zip(reward, spread)]
    high = [r + s if r is not None else None for r, s in zip(reward, spread)]
    top.fill_between(steps, _nan(low), _nan(high), color="tab:blue", alpha=0.1, label="± std")
    if window > 1:
        top.plot(steps, _nan(moving_average(reward, window)), color="tab:blue", label=f"reward ({window}-step mean)")
    top.plot(steps, _nan(accuracy), color="tab:green", alpha=0.7, linestyle="--", label="accuracy")
    top.set_ylabel("reward")
    top.set_title(f"{title}: {len(rows)} steps")
    top.grid(alpha=0.3)
    top.legend(loc="best", fontsize="small")

    bottom.plot(steps, _nan(loss), color="tab:red", alpha=0.45, marker=".", label="loss")
    if window > 1:
        bottom.plot(steps, _nan(moving_average(loss, window)), color="tab:red", label=f"loss ({window}-step mean)")
    bottom.axhline(0.0, color="gray", linewidth=0.8)
    bottom.set_xlabel("step")
    bottom.set_ylabel("loss")
    bottom.grid(alpha=0.3)
    bottom.legend(loc="best", fontsize="small")

    save_figure(figure, output)


def _nan(values: list[float | None]) -> list[float]:
    return [float("nan") if value is None else value for value in values]


def save_figure(figure: Any, output: Path) -> None:
    """Write a matplotlib figure as PNG (its folder made if needed) and close it; raises
    UserError when the file cannot be written."""
    import matplotlib.pyplot as plt

    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        figure.savefig(output, dpi=120)
    except OSError as err:
        raise UserError(f"cannot write '{output}': {err.strerror or err}") from None
    finally:
        plt.close(figure)
