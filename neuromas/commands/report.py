"""`neuromas report RUN...`: eval results and training runs -> one comparison table, and optionally a PNG."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, NamedTuple

from neuromas.commands.plot import moving_average, read_rows, save_figure
from neuromas.commands.options import COUNT, command_parser
from neuromas.commands.paths import check_out_file
from neuromas.diagnostics import UserError

PLAN_FILE = "plan.json"
EXAMPLES = """examples:
  neuromas report n3.json n3-trained.json single.json          # eval results side by side
  neuromas report runs/n3 runs/grown n3-trained.json -o report.png

Each RUN is an eval JSON file (`neuromas eval -o`) or a training run folder
(`neuromas train --out`). Eval rows give accuracy with its Wilson 95% interval and the
cost per question; run rows give the steps trained and the mean reward of the last
--last steps. The PNG (-o) has accuracy bars with interval whiskers and, for run folders,
their reward curves.

exit status: 0 ok, 2 usage, 1 a RUN that cannot be read or a PNG that cannot be written"""


class EvalRow(NamedTuple):
    """One eval JSON file."""

    label: str
    result: Any  # neuromas.runtime.tasks.evaluate.EvalResult


class RunRow(NamedTuple):
    """One training run folder: its metrics rows and the system its plan.json names."""

    label: str
    system: str
    rows: list[dict]

    @property
    def steps(self) -> int:
        return max(row.get("step", 0) for row in self.rows)

    def final_reward(self, last: int) -> float | None:
        """The mean of the last `last` steps' batch reward means (None when none is known)."""
        known = [row["reward_mean"] for row in self.rows[-last:] if row.get("reward_mean") is not None]
        return sum(known) / len(known) if known else None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = command_parser(
        subparsers, "report", help="compare eval results and training runs in one table (and a PNG)",
        description="Compare eval results and training runs: one table on stdout, and with -o FILE a picture "
                    "of accuracies (95% intervals) and reward curves.",
        epilog=EXAMPLES, groups=("out-file",),
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="an eval JSON file or a training run folder")
    parser.add_argument("--last", type=COUNT, default=10, metavar="N",
                        help="steps averaged for a run's final reward (default: 10)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    output = check_out_file(args.output) if args.output is not None else None
    entries = read_entries(args.runs)
    print(report_table(entries, args.last), end="")
    if output is not None:
        draw(entries, output)
        print(args.output)
    return 0


def read_entries(paths: list[str]) -> list[EvalRow | RunRow]:
    """Each path as an EvalRow (a JSON file) or a RunRow (a folder with metrics); raises
    UserError for anything else."""
    labels = _labels(paths)
    entries: list[EvalRow | RunRow] = []
    for path_text, label in zip(paths, labels):
        path = Path(path_text)
        if path.is_dir():
            entries.append(RunRow(label, _system_of(path), read_rows(path)))
        elif path.is_file():
            entries.append(EvalRow(label, _read_result(path)))
        else:
            raise UserError(f"no such file or folder: '{path}' (expected an eval JSON file or a training run folder)")
    return entries


def report_table(entries: list[EvalRow | RunRow], last: int) -> str:
    """One row per entry; cells that do not apply to its kind are '-'."""
    header = ("run", "system", "task", "n", "accuracy [95% CI]", "tokens/q", "calls/q", "s/q", "steps",
              f"reward (last {last})")
    rows = [header]
    for entry in entries:
        if isinstance(entry, EvalRow):
            r = entry.result
            rows.append((
                entry.label, r.system + (f" ({r.stage})" if r.stage else ""), r.task, str(r.n * r.group),
                f"{r.accuracy:.3f} [{r.accuracy_low:.3f}, {r.accuracy_high:.3f}]",
                f"{r.tokens_per_question:.1f}", f"{r.calls_per_question:.2f}", f"{r.seconds_per_question:.2f}",
                "-", "-",
            ))
        else:
            reward = entry.final_reward(last)
            rows.append((entry.label, entry.system, "-", "-", "-", "-", "-", "-", str(entry.steps),
                         "-" if reward is None else f"{reward:.3f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines) + "\n"


def draw(entries: list[EvalRow | RunRow], output: Path) -> None:
    """Accuracy bars with 95% interval whiskers (eval results) beside reward curves (runs)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    evals = [entry for entry in entries if isinstance(entry, EvalRow)]
    runs = [entry for entry in entries if isinstance(entry, RunRow)]
    panels = int(bool(evals)) + int(bool(runs))
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), constrained_layout=True, squeeze=False)
    panel = iter(axes[0])
    if evals:
        bars = next(panel)
        accuracy = [entry.result.accuracy for entry in evals]
        whiskers = [[a - entry.result.accuracy_low for a, entry in zip(accuracy, evals)],
                    [entry.result.accuracy_high - a for a, entry in zip(accuracy, evals)]]
        positions = range(len(evals))
        bars.bar(positions, accuracy, yerr=whiskers, capsize=6, color="tab:blue", alpha=0.75)
        bars.set_xticks(list(positions), [entry.label for entry in evals], rotation=20, ha="right")
        bars.set_ylim(0.0, 1.0)
        bars.set_ylabel("accuracy (95% interval)")
        bars.set_title("evaluation")
        bars.grid(axis="y", alpha=0.3)
    if runs:
        curves = next(panel)
        for entry in runs:
            steps = [row["step"] for row in entry.rows]
            reward = [row.get("reward_mean") for row in entry.rows]
            window = max(1, len(reward) // 10)
            smooth = moving_average(reward, window)
            curves.plot(steps, [float("nan") if v is None else v for v in smooth],
                        label=f"{entry.label} ({window}-step mean)")
        curves.set_xlabel("step")
        curves.set_ylabel("reward (batch mean)")
        curves.set_title("training")
        curves.grid(alpha=0.3)
        curves.legend(loc="best", fontsize="small")
    save_figure(figure, output)


def _read_result(path: Path) -> Any:
    import msgspec

    from neuromas.runtime.tasks.evaluate import read_result

    try:
        return read_result(path)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as err:
        raise UserError(f"cannot read eval result '{path}': {err} (expected a `neuromas eval -o` file)") from None


def _system_of(run_dir: Path) -> str:
    """The system named by a run's plan.json ('?' when it has none or it cannot be read)."""
    try:
        plan = json.loads((run_dir / PLAN_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return "?"
    system = str(plan.get("system", "?")) if isinstance(plan, dict) else "?"
    return system + (f" ({plan['stage']})" if isinstance(plan, dict) and plan.get("stage") else "")


def _labels(paths: list[str]) -> list[str]:
    """Short names: a file's stem or a folder's name, or the whole path where two clash."""
    short = [Path(path).stem if Path(path).suffix == ".json" else Path(path).name or path for path in paths]
    return [name if short.count(name) == 1 else path for name, path in zip(short, paths)]

