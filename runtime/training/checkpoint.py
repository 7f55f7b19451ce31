"""Training state -> checkpoint folders written atomically and verified on load, and back.

A checkpoint is `<out>/checkpoints/step-000012/`: `adapters/<slot>/` in peft's format,
`optimizer.pt` (AdamW's moments keyed by parameter name, `parameters.parameter_key`),
`rng.pt` (python and torch generator states), `state.json` (step, data position, seed,
plan fingerprint) and, written last, `manifest.json` (every other file's relative path,
size and sha256). `optimizer.pt` and `rng.pt` hold only tensors and plain containers and
load with `torch.load(weights_only=True)`: nothing in a run folder is ever unpickled. It is written under a temporary name (`.step-*`),
flushed to disk and renamed into place, so a folder named `step-*` is complete unless the
disk altered it later; loading checks it against its manifest.
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
from ..models.adapters import adapter_folders, load_adapters, save_adapters
from .parameters import named_lora_parameters, plan_built_order

CHECKPOINTS = "checkpoints"
PREFIX = "step-"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
OPTIMIZER_FORMAT = "adamw-by-name-v2"  # older checkpoints saved torch's positional state_dict
IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable", "differentiable")  # how an optimizer steps, not what
REJECTED = "rejected"  # checkpoints a resume skipped are moved here, for the user to inspect
_REPLACED = ".replaced-"  # an older checkpoint of the same step, while its successor moves in


class TrainState(NamedTuple):
    """Where a run is: `step` updates done, the next data position, the run's seed, and
    the fingerprint of the plan it trains."""

    step: int
    data_position: int
    seed: int
    plan_fingerprint: str


class Skipped(NamedTuple):
    """A checkpoint that failed verification, and why."""

    path: Path
    reason: str


def plan_fingerprint(plan: Plan) -> str:
    """The plan's content hash with `train.steps` left out: a resumed run may go further."""
    if plan.train is not None:
        plan = msgspec.structs.replace(plan, train=msgspec.structs.replace(plan.train, steps=0))
    return "sha256:" + hashlib.sha256(plan.to_json()).hexdigest()


def save_checkpoint(out: Path, model: Any, slots: list[str], optimizer: torch.optim.Optimizer, state: TrainState) -> Path:
    """Write a checkpoint for `state.step` atomically and return its folder (an older
    checkpoint of the same step is replaced)."""
    final = checkpoint_path(out, state.step)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
    try:
        save_adapters(model, staging / "adapters", slots)
        torch.save(optimizer_state_by_name(model, optimizer), staging / "optimizer.pt")
        torch.save(rng_state(), staging / "rng.pt")
        (staging / "state.json").write_text(json.dumps(state._asdict(), indent=2) + "\n")
        write_manifest(staging)
        _fsync_tree(staging)
        _move_into_place(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def checkpoint_path(out: Path, step: int) -> Path:
    """Where the checkpoint of `step` lives under the run folder `out`."""
    return Path(out) / CHECKPOINTS / f"{PREFIX}{step:06d}"


def write_manifest(folder: Path) -> Path:
    """Record every file under `folder` (path, size, sha256) in `folder/manifest.json`."""
    folder = Path(folder)
    files = [_describe(path, folder) for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST]
    manifest = folder / MANIFEST
    manifest.write_text(json.dumps({"version": MANIFEST_VERSION, "files": files}, indent=2) + "\n")
    return manifest


def verify_checkpoint(path: Path) -> None:
    """Check every file of a checkpoint against its manifest; raises UserError naming the
    checkpoint and the first missing, resized or altered file."""
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise UserError(
            f"checkpoint '{path}' has no {MANIFEST}, so it cannot be verified (it was not completed by "
            "`neuromas train`, or an older version wrote it): resume from a verified checkpoint or start a new --out"
        )
    try:
        entries = json.loads(manifest.read_text())["files"]
        listed = [(entry["path"], int(entry["size"]), str(entry["sha256"])) for entry in entries]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"checkpoint '{path}' has an unreadable {MANIFEST} ({err}): it was damaged after it was written"
        ) from None
    if not any(name == "state.json" for name, _, _ in listed):
        raise UserError(f"checkpoint '{path}': {MANIFEST} does not list state.json, so it is not a training checkpoint")
    for name, size, digest in listed:
        file = path / name
        if not file.is_file():
            raise UserError(f"checkpoint '{path}' is missing '{name}' (listed in its {MANIFEST})")
        found = file.stat().st_size
        if found != size:
            raise UserError(
                f"checkpoint '{path}': '{name}' has {found} bytes, its {MANIFEST} says {size} (truncated or altered)"
            )
        if _sha256(file) != digest:
            raise UserError(f"checkpoint '{path}': '{name}' does not match the sha256 in its {MANIFEST} (corrupted)")


def list_checkpoints(out: Path) -> list[Path]:
    """Checkpoint folders under `out` (complete when written; see `verify_checkpoint`), oldest first."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [path for path in root.iterdir() if path.is_dir() and path.name.startswith(PREFIX)]
    return sorted(found, key=lambda path: path.name)


def newest_verified(out: Path) -> tuple[Path | None, list[Skipped]]:
    """The newest checkpoint under `out` that passes `verify_checkpoint` (None if none does),
    and the newer ones that failed, newest first, with the reason."""
    skipped = []
    for path in reversed(list_checkpoints(out)):
        try:
            verify_checkpoint(path)
        except UserError as err:
            skipped.append(Skipped(path, str(err)))
            continue
        return path, skipped
    return None, skipped


def reject_checkpoint(path: Path) -> Path:
    """Move a checkpoint that failed verification to `checkpoints/rejected/`, out of the
    run's history (a resumed run rewrites its step), and return its new place."""
    path = Path(path)
    folder = path.parent / REJECTED
    folder.mkdir(exist_ok=True)
    target = folder / path.name
    number = 1
    while target.exists():
        number += 1
        target = folder / f"{path.name}-{number}"
    os.rename(path, target)
    _fsync_dir(path.parent)
    return target


def clean_checkpoints(out: Path) -> None:
    """Tidy what a crash can leave under `out/checkpoints`: delete unfinished `.step-*`
    staging folders, and put back an older checkpoint whose replacement never arrived.
    Call it only when no other process writes to `out`."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        if path.name.startswith(_REPLACED):
            final = root / path.name[len(_REPLACED):].split(".")[0]
            if final.exists():
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.rename(path, final)
        elif path.name.startswith(f".{PREFIX}"):
            shutil.rmtree(path, ignore_errors=True)
    _fsync_dir(root)


def prune_checkpoints(out: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (keep < 1 keeps all)."""
    if keep < 1:
        return
    for path in list_checkpoints(out)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(
    path: Path, model: Any, slots: list[str], optimizer: torch.optim.Optimizer, *, is_grown_stage: bool = False
) -> TrainState:
    """Verify a checkpoint folder, then restore adapters, optimizer and RNG states from it;
    returns its TrainState. Raises UserError for a folder that is not a complete checkpoint,
    or whose optimizer or RNG state cannot be read safely.

    is_grown_stage: the plan of `slots` is a growth stage after the first, whose models
    list adapters in more than one order; an old positional optimizer file is then refused.
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"checkpoint '{path}' does not exist")
    verify_checkpoint(path)
    try:
        state = TrainState(**json.loads((path / "state.json").read_text()))
    except (OSError, ValueError, TypeError) as err:
        raise UserError(f"'{path}' is not a readable checkpoint: {err}") from None
    saved_optimizer = _load_plain(path / "optimizer.pt")
    rng = _load_plain(path / "rng.pt")
    load_adapters(model, adapter_folders(path / "adapters", slots))
    load_optimizer_state(model, slots, optimizer, saved_optimizer, path / "optimizer.pt", is_grown_stage=is_grown_stage)
    set_rng_state(rng, path / "rng.pt")
    return state


def optimizer_state_by_name(model: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state_dict with every parameter index replaced by its parameter_key,
    so it loads onto the same adapters whatever order another model lists them in."""
    key_of = {id(param): key for key, param in named_lora_parameters(model)}
    positional = optimizer.state_dict()
    params = [param for group in optimizer.param_groups for param in group["params"]]
    keys = [key_of[id(param)] for param in params]
    return {
        "format": OPTIMIZER_FORMAT,
        "param_groups": [
            {**{k: v for k, v in group.items() if k != "params"}, "params": [keys[i] for i in group["params"]]}
            for group in positional["param_groups"]
        ],
        "state": {keys[index]: value for index, value in positional["state"].items()},
    }


def load_optimizer_state(
    model: Any,
    slots: list[str],
    optimizer: torch.optim.Optimizer,
    saved: Any,
    source: Path,
    *,
    is_grown_stage: bool = False,
) -> None:
    """Load `saved` (read from `source`) into `optimizer`, matching parameters by name.

    An old positional state_dict maps through the plan that wrote it: a model built from
    that plan lists LoRA weights in `named_lora_parameters(model, slots)` order. A grown
    stage's model may have listed them in growth order, so there it is refused (UserError).
    """
    params = [param for group in optimizer.param_groups for param in group["params"]]
    key_of = {id(param): key for key, param in named_lora_parameters(model, slots)}
    keys = [key_of.get(id(param)) for param in params]
    if not isinstance(saved, dict) or "state" not in saved or "param_groups" not in saved:
        raise UserError(f"'{source}' is not an optimizer state (expected a dict with state and param_groups)")
    if saved.get("format") != OPTIMIZER_FORMAT:
        if is_grown_stage:
            raise UserError(
                f"'{source}' keeps optimizer state by position (an older neuromas wrote it), and in a grown stage "
                "positions do not say which adapter a moment belongs to: resume from a checkpoint this version "
                "wrote, or start the stage again from the previous stage's checkpoint with `neuromas grow`"
            )
        by_plan = plan_built_order(model, slots)
        try:
            saved = {
                "param_groups": [{**g, "params": [by_plan[i] for i in g["params"]]} for g in saved["param_groups"]],
                "state": {by_plan[int(i)]: value for i, value in saved["state"].items()},
            }
        except (IndexError, TypeError, ValueError):
            raise UserError(f"'{source}' holds optimizer state for another set of adapters") from None
    index_of = {key: index for index, key in enumerate(keys) if key is not None}
    unknown = [key for key in saved["state"] if key not in index_of]
    if unknown:
        raise UserError(f"'{source}' holds optimizer state for parameters this model lacks, such as {unknown[0]!r}")
    if len(saved["param_groups"]) != len(optimizer.param_groups):
        raise UserError(f"'{source}' has {len(saved['param_groups'])} parameter groups, this optimizer "
                        f"{len(optimizer.param_groups)}")
    try:
        # torch matches a state_dict's parameter ids to the optimizer's parameters by position,
        # so the ids are the current optimizer's own order; the hyperparameters are the saved
        # ones, the implementation (fused or not) this optimizer's.
        groups, offset = [], 0
        for saved_group, group in zip(saved["param_groups"], optimizer.param_groups, strict=True):
            hyper = {k: v for k, v in saved_group.items() if k != "params"}
            hyper.update({k: group[k] for k in IMPLEMENTATION_KEYS if k in group})
            groups.append({**hyper, "params": list(range(offset, offset + len(group["params"])))})
            offset += len(group["params"])
        positional = {"param_groups": groups, "state": {index_of[key]: value for key, value in saved["state"].items()}}
        optimizer.load_state_dict(positional)
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"'{source}' does not fit this model's optimizer ({err})") from None


def rng_state() -> dict[str, Any]:
    """python's and torch's generator states as plain containers and a tensor."""
    version, internal, gauss_next = random.getstate()
    return {"python": [version, list(internal), gauss_next], "torch": torch.get_rng_state()}


def set_rng_state(saved: Any, source: Path) -> None:
    """Restore the generators from `rng_state()`'s dict (read from `source`); raises UserError
    for anything else."""
    try:
        version, internal, gauss_next = saved["python"]
        random.setstate((int(version), tuple(int(value) for value in internal), gauss_next))
        torch.set_rng_state(saved["torch"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise UserError(f"'{source}' is not a random generator state ({err})") from None


def _load_plain(path: Path) -> Any:
    """torch.load with weights_only=True: tensors and plain containers, never code."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # an UnpicklingError names the refused global; any damage lands here too
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"'{path}' holds more than tensors and plain values, so it is not loaded: {first}") from None


def _move_into_place(staging: Path, final: Path) -> None:
    """Rename `staging` to `final` and flush the directory entry. An existing `final` is
    first moved aside, so a crash in between leaves it for `clean_checkpoints` to restore."""
    aside = None
    if final.exists():
        aside = final.parent / f"{_REPLACED}{final.name}.{os.getpid()}"
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(final, aside)
    os.rename(staging, final)
    _fsync_dir(final.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _describe(path: Path, folder: Path) -> dict[str, Any]:
    return {"path": path.relative_to(folder).as_posix(), "size": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_tree(folder: Path) -> None:
    """Flush every file, then every folder entry, to disk before the rename makes the
    checkpoint visible."""
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    for path in [*(p for p in folder.rglob("*") if p.is_dir()), folder]:
        _fsync_dir(path)


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename or a new file) to disk."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
