"""Training state -> checkpoint folders written atomically, and back.

A checkpoint is `<out>/checkpoints/step-000012/`: `adapters/<slot>/` in peft's format,
`optimizer.pt`, `rng.pt` (python and torch generator states) and `state.json` (step,
data position, seed, plan fingerprint). It is written under a temporary name and
renamed into place, so a folder named `step-*` is always complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import torch

from neuromas.diagnostics import UserError
from neuromas.plan import Plan
from neuromas.runtime.adapters import adapter_folders, load_adapters, save_adapters

CHECKPOINTS = "checkpoints"
PREFIX = "step-"


class TrainState(NamedTuple):
    """Where a run is: `step` updates done, the next data position, the run's seed, and
    the fingerprint of the plan it trains."""

    step: int
    data_position: int
    seed: int
    plan_fingerprint: str


def plan_fingerprint(plan: Plan) -> str:
    """The plan's content hash with `train.steps` left out: a resumed run may go further."""
    if plan.train is not None:
        plan = msgspec.structs.replace(plan, train=msgspec.structs.replace(plan.train, steps=0))
    return "sha256:" + hashlib.sha256(plan.to_json()).hexdigest()


def save_checkpoint(out: Path, model: Any, slots: list[str], optimizer: torch.optim.Optimizer, state: TrainState) -> Path:
    """Write a checkpoint for `state.step` atomically and return its folder (an older
    checkpoint of the same step is replaced)."""
    root = Path(out) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{state.step:06d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
    try:
        save_adapters(model, staging / "adapters", slots)
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        torch.save({"python": random.getstate(), "torch": torch.get_rng_state()}, staging / "rng.pt")
        (staging / "state.json").write_text(json.dumps(state._asdict(), indent=2) + "\n")
        _fsync_tree(staging)
        if final.exists():
            shutil.rmtree(final)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoint folders under `out`, oldest first."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [path for path in root.iterdir() if path.is_dir() and path.name.startswith(PREFIX)]
    return sorted(found, key=lambda path: path.name)


def prune_checkpoints(out: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (keep < 1 keeps all)."""
    if keep < 1:
        return
    for path in list_checkpoints(out)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(path: Path, model: Any, slots: list[str], optimizer: torch.optim.Optimizer) -> TrainState:
    """Restore adapters, optimizer and RNG states from a checkpoint folder; returns its
    TrainState. Raises UserError for a folder that is not a complete checkpoint."""
    path = Path(path)
    try:
        state = TrainState(**json.loads((path / "state.json").read_text()))
    except (OSError, ValueError, TypeError) as err:
        raise UserError(f"'{path}' is not a readable checkpoint: {err}") from None
    load_adapters(model, adapter_folders(path / "adapters", slots))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=False)  # python's state is a tuple; our own file
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    return state


def _fsync_tree(folder: Path) -> None:
    """Flush every file to disk before the rename makes the checkpoint visible."""
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
