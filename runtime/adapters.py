"""Plan adapter slots -> peft LoRA adapters on one shared base model; saved one folder per slot.

Each slot is saved in peft's standard layout, `<root>/<slot>/adapter_config.json` and
`<root>/<slot>/adapter_model.safetensors` (keys without the adapter name), so
`PeftModel.from_pretrained`, `load_adapter` and vLLM's LoRA loader read it as it is.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from neuromas.diagnostics import UserError
from neuromas.plan import Lora, Plan

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def lora_config(lora: Lora, base_model: str | None = None) -> Any:
    """peft's LoraConfig for the plan's `adapter lora(...)` settings."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.targets),
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model,
    )


def attach_adapters(model: Any, plan: Plan, base_model: str | None = None) -> Any:
    """Add one LoRA adapter per plan slot (B = 0, so each starts as the base model).

    `model` is a transformers model or a PeftModel; slots it already has are kept, so
    a grown plan can be attached to a model trained on the stage before. Returns the
    PeftModel, or `model` unchanged when the plan has no trainable slot.
    """
    from peft import PeftModel, get_peft_model

    slots = [slot.name for slot in plan.adapters]
    if not slots:
        return model
    _check_targets(model, plan.adapter)
    was_training = model.training  # peft leaves new adapters in training mode
    with warnings.catch_warnings():
        # peft asks transformers about gradient checkpointing through a name deprecated in v5
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        if not isinstance(model, PeftModel):
            model = get_peft_model(model, lora_config(plan.adapter, base_model), adapter_name=slots[0])
        for name in slots:
            if name not in model.peft_config:
                model.add_adapter(name, lora_config(plan.adapter, base_model))
    return model.train(was_training)


def save_adapters(model: Any, root: Path, slots: Iterable[str] | None = None) -> dict[str, Path]:
    """Write each slot (default: all of the model's adapters) to `root/<slot>/`; returns the folders."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    names = list(model.peft_config) if slots is None else list(slots)
    folders = {}
    for name in names:
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        model.peft_config[name].save_pretrained(str(folder))
        state = get_peft_model_state_dict(model, adapter_name=name)
        save_file({key: value.detach().contiguous().cpu() for key, value in state.items()},
                  str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        folders[name] = folder
    return folders


def adapter_folders(root: Path, slots: Iterable[str]) -> dict[str, Path]:
    """The saved folder of every slot under `root`; raises UserError naming the missing ones."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"adapter folder '{root}' does not exist")
    slots = list(slots)
    folders = {name: root / name for name in slots}
    missing = [name for name, folder in folders.items() if not (folder / WEIGHTS_FILE).is_file()]
    if missing:
        found = sorted(path.name for path in root.iterdir() if (path / WEIGHTS_FILE).is_file())
        raise UserError(
            f"'{root}' has no saved adapter for slot(s) {', '.join(missing)} "
            f"(found: {', '.join(found) or 'none'}; each slot needs {{slot}}/{WEIGHTS_FILE})"
        )
    return folders


def load_adapters(model: Any, folders: Mapping[str, Path]) -> None:
    """Load saved weights into existing slots of a PeftModel, in place.

    Raises UserError when a folder's rank, alpha or targets differ from the slot's, or
    when its weights do not cover the slot's LoRA layers.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    for name, folder in folders.items():
        if name not in getattr(model, "peft_config", {}):
            raise UserError(f"the model has no adapter slot '{name}' to load '{folder}' into")
        _check_config_matches(model.peft_config[name], Path(folder), name)
        state = load_file(str(Path(folder) / WEIGHTS_FILE))
        result = set_peft_model_state_dict(model, state, adapter_name=name)
        unexpected = [key for key in result.unexpected_keys if "lora_" in key]
        expected = {key for key in model.state_dict() if f".{name}." in key and "lora_" in key}
        missing = sorted(expected & set(result.missing_keys))
        if unexpected or missing:
            raise UserError(
                f"adapter '{folder}' does not fit slot '{name}': "
                f"{len(missing)} missing and {len(unexpected)} unexpected LoRA weights"
            )


def _check_config_matches(config: Any, folder: Path, name: str) -> None:
    try:
        saved = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read '{folder / CONFIG_FILE}': {err}") from None
    ours = {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": sorted(config.target_modules)}
    theirs = {
        "r": saved.get("r"),
        "lora_alpha": saved.get("lora_alpha"),
        "target_modules": sorted(saved.get("target_modules") or []),
    }
    if ours != theirs:
        raise UserError(f"adapter '{folder}' was saved with {theirs}, but slot '{name}' uses {ours}")


def _check_targets(model: Any, lora: Lora) -> None:
    """peft matches targets by name suffix; make sure each target matched some layer."""
    names = {module_name.rsplit(".", 1)[-1] for module_name, _ in model.named_modules()}
    unknown = [target for target in lora.targets if target not in names]
    if unknown:
        raise UserError(f"LoRA target(s) {', '.join(unknown)} match no layer of the model")
