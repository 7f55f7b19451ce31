"""Metrics rows and eval rows of a training run -> the experiment trackers people use.

`--report-to tensorboard|wandb|trackio` sends each step's metrics row (the numbers of
metrics.jsonl, under `train/`) and each held-out evaluation row (under `eval/`) to each
tracker named, with the run's configuration as its hyperparameters. Each tracker writes
through its own library: tensorboard through torch's `SummaryWriter`, wandb and trackio
through their `init`/`log`/`finish`. Files stay in the run folder, offline by default:
`DIR/tensorboard/`, `DIR/wandb/` (wandb in offline mode unless WANDB_MODE says
otherwise; `wandb sync` uploads it later) and `DIR/trackio/` (unless TRACKIO_DIR is set).
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from neuromas.diagnostics import UserError

TrackerName = Literal["tensorboard", "wandb", "trackio", "none"]
TRACKERS: tuple[str, ...] = get_args(TrackerName)
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}  # tracker -> the package it needs
PROJECT = "neuromas"  # the wandb and trackio project runs go to


def check_trackers(names: Iterable[str]) -> tuple[str, ...]:
    """The trackers to open (in order, without repeats or 'none'); raises UserError (exit 2)
    naming the install line when a tracker's package is missing. Imports nothing."""
    chosen = tuple(dict.fromkeys(name for name in names if name != "none"))
    for name in chosen:
        if name not in PACKAGES:
            raise UserError(f"--report-to {name}: unknown tracker (expected one of: {', '.join(TRACKERS)})", exit_code=2)
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise UserError(f"--report-to {name} needs the {PACKAGES[name]} package: pip install {PACKAGES[name]} "
                            "(or pip install 'neuromas[track]')", exit_code=2)
    return chosen


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The row's finite numbers (booleans as 0/1), without its step."""
    values = {}
    for key, value in row.items():
        if key == "step" or not isinstance(value, (int, float)):
            continue  # strings (stage, reward_error) and nulls (a skipped update's loss) are not curves
        if math.isfinite(value):
            values[key] = float(value)
    return values


def hyperparameters(config: Mapping[str, Any]) -> dict[str, Any]:
    """A nested config flattened to `a.b` keys with scalar values (lists and tuples joined,
    None as "none"): what every tracker accepts as hyperparameters."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{inner}": item for inner, item in hyperparameters(value).items()})
        elif isinstance(value, (list, tuple)):
            flat[key] = ",".join(str(item) for item in value)
        elif value is None:
            flat[key] = "none"
        else:
            flat[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


class Tracker(Protocol):
    def log(self, values: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker:
    """Scalars and hparams in `folder`, through torch's SummaryWriter."""

    def __init__(self, folder: Path, config: Mapping[str, Any]):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(log_dir=str(folder))
        # hparams() gives the plugin's three summaries; written into this run's own folder
        # (SummaryWriter.add_hparams would open a sub-run), so one run holds config and curves.
        for summary in hparams(dict(config), {}):
            self.writer.file_writer.add_summary(summary)

    def log(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A wandb run in `folder`, offline unless WANDB_MODE names another mode."""

    def __init__(self, folder: Path, config: Mapping[str, Any], name: str):
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=PROJECT, name=name, dir=str(folder), config=dict(config),
                              mode=os.environ.get("WANDB_MODE", "offline"))

    def log(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioTracker:
    """A trackio run, stored locally in `folder` unless TRACKIO_DIR names another place."""

    def __init__(self, folder: Path, config: Mapping[str, Any], name: str):
        os.environ.setdefault("TRACKIO_DIR", str(folder))  # read when trackio is imported
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=PROJECT, name=name, config=dict(config))

    def log(self, values: Mapping[str, float], step: int) -> None:
        self.trackio.log(dict(values), step=step)

    def close(self) -> None:
        self.trackio.finish()


class Trackers:
    """Every tracker of a run, fed from the training loop's `on_step` and `on_eval` rows.

    Use as a context manager; with no tracker named it does nothing. Only the process that
    writes the run's files should open one (rank 0 under torchrun).
    """

    def __init__(self, names: Iterable[str], out: Path, config: Mapping[str, Any], name: str | None = None):
        self.names = check_trackers(names)
        self.out = Path(out)
        self.config = hyperparameters(config)
        self.name = name or self.out.name
        self.trackers: list[Tracker] = []

    def __enter__(self) -> Trackers:
        for tracker in self.names:
            self.trackers.append(self._open(tracker))
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self, name: str) -> Tracker:
        if name == "tensorboard":
            return TensorBoardTracker(self.out / "tensorboard", self.config)
        if name == "wandb":
            return WandbTracker(self.out, self.config, self.name)  # wandb adds its own wandb/ folder
        return TrackioTracker(self.out / "trackio", self.config, self.name)

    def log_step(self, row: Mapping[str, Any]) -> None:
        """One metrics.jsonl row, as `train/<field>` at its step."""
        self._log("train", row)

    def log_eval(self, row: Mapping[str, Any]) -> None:
        """One evals.jsonl row, as `eval/<field>` at its step."""
        self._log("eval", row)

    def _log(self, prefix: str, row: Mapping[str, Any]) -> None:
        values = {f"{prefix}/{key}": value for key, value in scalars(row).items()}
        for tracker in self.trackers:
            tracker.log(values, int(row["step"]))

    def close(self) -> None:
        while self.trackers:
            self.trackers.pop().close()


def run_config(plan: Any, settings: Any, **extra: Any) -> dict[str, Any]:
    """A run's hyperparameters: the plan's training and adapter settings, the run settings
    (a TrainSettings) and whatever the caller adds (spec, task, backend)."""
    import msgspec

    return {
        "system": plan.system,
        "model": plan.model,
        "train": msgspec.structs.asdict(plan.train) if plan.train is not None else {},
        "adapter": msgspec.structs.asdict(plan.adapter),
        "run": settings._asdict(),
        **extra,
    }
