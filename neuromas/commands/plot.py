"""`neuromas plot DIR`: a training run's metrics.jsonl -> a PNG of its reward and loss curves,
and, where the rows have them, each node's message length, entropy and answer overlap."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from neuromas.commands.options import command_parser, whole_number
from neuromas.commands.paths import check_out_file
from neuromas.diagnostics import UserError

EXAMPLES = """examples:
  neuromas plot runs/n3                 # writes runs/n3/curves.png
  neuromas plot runs/n3 -o n3.png --smooth 10

exit status: 0 ok, 2 usage (an output file that cannot be written), 1 no metrics to plot (or damaged ones)"""

METRICS_FILE = "metrics.jsonl"
NUMBER_FIELDS = ("reward_mean", "reward_std", "accuracy", "loss")  # what plot and report draw: a number or null
NODE_FIELDS = {"tokens": "message tokens", "entropy": "entropy (nats/token)", "answer_overlap": "answer overlap",
               "kl": "KL to the base (nats/token)"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = command_parser(
        subparsers, "plot", help="draw a training run's reward and loss curves",
        description="Draw the reward (with accuracy) and loss curves of a `neuromas train` run to a PNG "
                    "(-o FILE, default: DIR/curves.png).",
        epilog=EXAMPLES, groups=("out-file",),
    )
    parser.add_argument("run_dir", metavar="DIR", help="a `neuromas train --out` folder")
    parser.add_argument("--smooth", type=whole_number(0), default=0, metavar="N",
                        help="also draw a moving average over N steps (default: about a tenth of the run)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    rows = read_rows(Path(args.run_dir))
    output = check_out_file(args.output if args.output is not None else str(Path(args.run_dir) / "curves.png"))
    draw(rows, output, title=Path(args.run_dir).name, window=args.smooth or max(1, len(rows) // 10))
    print(output)
    return 0


def read_rows(run_dir: Path) -> list[dict]:
    """The metrics rows of a run, each checked for what plot and report read; raises
    UserError naming the file and line of a bad row, or when there are none."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise UserError(f"'{run_dir}' has no {METRICS_FILE}: is it a `neuromas train --out` folder?")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read '{path}': {getattr(err, 'strerror', None) or err}") from None
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{number}: not valid JSON: {err.msg}") from None
            rows.append(check_row(row, f"{path}:{number}"))
    if not rows:
        raise UserError(f"{path} has no rows yet: nothing to plot")
    return rows


def check_row(row: Any, where: str) -> dict:
    """A metrics row: an object with a whole-number step and numbers (or null) where drawn."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object (one step's metrics), got {type(row).__name__}")
    step = row.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise UserError(f"{where}: 'step' must be a whole number from 0, got {json.dumps(step)}")
    for name in NUMBER_FIELDS:
        value = row.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UserError(f"{where}: '{name}' must be a number or null, got {json.dumps(value)}")
    return row


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

    nodes = sorted({key.split("/")[1] for row in rows for key in row if key.startswith("node/")})
    layout = [["reward"] * len(NODE_FIELDS), ["loss"] * len(NODE_FIELDS)] + ([list(NODE_FIELDS)] if nodes else [])
    figure, axes = plt.subplot_mosaic(layout, figsize=(9, 9 if nodes else 6), constrained_layout=True)
    top, bottom = axes["reward"], axes["loss"]
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

    for field, label in NODE_FIELDS.items() if nodes else ():  # per-node diagnostics (runtime/training/diagnostics.py)
        for index, node in enumerate(nodes):
            values = [_number(row.get(f"node/{node}/{field}")) for row in rows]
            if any(value is not None for value in values):
                axes[field].plot(steps, _nan(moving_average(values, window)), color=f"C{index}", label=node)
        axes[field].set_title(label, fontsize="small")
        axes[field].set_xlabel("step")
        axes[field].grid(alpha=0.3)
    if nodes:
        axes["tokens"].legend(loc="best", fontsize="x-small")

    save_figure(figure, output)


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


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
