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
    _check_rank(model, plan.adapter)
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


def adapter_folders(root: Path, slots: Iterable[str], lora: Lora | None = None) -> dict[str, Path]:
    """The saved folder of every slot under `root`; raises UserError naming the missing
    ones and, given the plan's `lora`, any folder saved with other LoRA settings (checked
    before any model or weight loads)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"adapter folder '{root}' does not exist\n"
            "  fix: pass the adapters folder of a trained run (a checkpoint's adapters/, holding <slot>/)"
        )
    slots = list(slots)
    folders = {name: root / name for name in slots}
    missing = [name for name, folder in folders.items() if not (folder / WEIGHTS_FILE).is_file()]
    if missing:
        found = sorted(path.name for path in root.iterdir() if (path / WEIGHTS_FILE).is_file())
        raise UserError(
            f"'{root}' has no saved adapter for slot(s) {', '.join(missing)} "
            f"(found: {', '.join(found) or 'none'}; each slot needs {{slot}}/{WEIGHTS_FILE})\n"
            "  fix: use adapters trained from this spec (the slots are its adapter names), or the spec they came from"
        )
    if lora is not None:
        for name, folder in folders.items():
            check_adapter_config(folder, name, lora_settings(lora))
            check_adapter_weights(folder, name, lora.rank)
    return folders


def check_adapter_weights(folder: Path, slot: str, rank: int) -> None:
    """The saved weights of a slot are a readable safetensors file of finite LoRA
    matrices of rank `rank` (checked without a model); raises UserError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS_FILE
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"adapter slot '{slot}': '{path}' is not a readable safetensors file ({err})\n"
                        "  fix: save the adapters again, or restore them from their checkpoint") from None
    for key, tensor in state.items():
        is_a, is_b = ".lora_A." in key, ".lora_B." in key
        if (is_a or is_b) and (tensor.dim() != 2 or tensor.shape[0 if is_a else 1] != rank):
            raise UserError(f"adapter slot '{slot}': '{path}' holds {key} of shape {tuple(tensor.shape)}, "
                            f"which is not a rank-{rank} LoRA matrix (the file is damaged or from another adapter)")
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise UserError(f"adapter slot '{slot}': '{path}' holds NaN or infinite values in {key}\n"
                            "  fix: load an earlier checkpoint's adapters (a diverged run writes such weights)")


def load_adapters(model: Any, folders: Mapping[str, Path]) -> None:
    """Load saved weights into existing slots of a PeftModel, in place.

    Raises UserError when a folder's LoRA settings (rank, alpha, targets) differ from the
    slot's, checked before its weights load, or when its weights do not cover the slot's
    LoRA layers.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    for name, folder in folders.items():
        if name not in getattr(model, "peft_config", {}):
            raise UserError(f"the model has no adapter slot '{name}' to load '{folder}' into")
        check_adapter_config(Path(folder), name, lora_settings(model.peft_config[name]))
        check_adapter_weights(Path(folder), name, model.peft_config[name].r)
        state = load_file(str(Path(folder) / WEIGHTS_FILE))
        try:
            result = set_peft_model_state_dict(model, state, adapter_name=name)
        except RuntimeError as err:  # torch's size mismatch: the matrices fit another base model
            raise UserError(f"adapter slot '{name}': the weights in '{Path(folder) / WEIGHTS_FILE}' do not fit it: "
                            f"{str(err).strip().splitlines()[-1].strip()}\n"
                            "  fix: load adapters trained on this spec's base model") from None
        unexpected = [key for key in result.unexpected_keys if "lora_" in key]
        expected = {key for key in model.state_dict() if f".{name}." in key and "lora_" in key}
        missing = sorted(expected & set(result.missing_keys))
        if unexpected or missing:
            raise UserError(
                f"adapter slot '{name}': the weights in '{Path(folder) / WEIGHTS_FILE}' do not fit it "
                f"({len(missing)} missing and {len(unexpected)} unexpected LoRA weights: another base model?)\n"
                "  fix: load adapters trained on this spec's base model"
            )


def lora_settings(lora: Lora | Any) -> dict[str, Any]:
    """The settings a saved adapter must share with its slot, from a plan's Lora or a
    peft LoraConfig: they decide the weights' shapes and how they are applied."""
    if isinstance(lora, Lora):
        return {"rank": lora.rank, "alpha": float(lora.alpha), "targets": sorted(lora.targets),
                "use_dora": False, "use_rslora": False}
    return _settings_of(vars(lora))


def check_adapter_config(folder: Path, slot: str, expected: Mapping[str, Any]) -> None:
    """Raise UserError naming the slot, the file, and each setting whose saved value
    differs from `expected` (see `lora_settings`)."""
    path = Path(folder) / CONFIG_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict):
            raise ValueError(f"expected a JSON object, got {type(saved).__name__}")
    except (OSError, ValueError) as err:
        raise UserError(
            f"adapter slot '{slot}': cannot read '{path}': {err}\n"
            "  fix: every saved slot needs the adapter_config.json peft writes next to its weights"
        ) from None
    found = _settings_of(saved)
    differ = [name for name in expected if found.get(name) != expected[name]]
    if differ:
        details = "; ".join(
            f"{name}: expected {_show(expected[name])}, found {_show(found.get(name))}" for name in differ
        )
        raise UserError(
            f"adapter slot '{slot}': '{path}' was saved with other LoRA settings ({details})\n"
            "  fix: load adapters trained from this spec, or set the spec's `adapter lora(...)` to the values found"
        )


def _settings_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """lora_settings of a peft config, as a dict (adapter_config.json) or LoraConfig's vars."""
    targets = config.get("target_modules") or []
    alpha = config.get("lora_alpha")
    return {
        "rank": config.get("r"),
        "alpha": float(alpha) if isinstance(alpha, (int, float)) else alpha,
        "targets": sorted(targets) if not isinstance(targets, str) else targets,  # a str is a regex
        "use_dora": bool(config.get("use_dora", False)),
        "use_rslora": bool(config.get("use_rslora", False)),
    }


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value) if isinstance(value, (bool, str)) or value is None else str(value)


def _check_targets(model: Any, lora: Lora) -> None:
    """peft matches targets by name suffix; make sure each target matched some layer."""
    names = {module_name.rsplit(".", 1)[-1] for module_name, _ in model.named_modules()}
    unknown = [target for target in lora.targets if target not in names]
    if unknown:
        raise UserError(f"LoRA target(s) {', '.join(unknown)} match no layer of the model")


def _check_rank(model: Any, lora: Lora) -> None:
    """A rank above the model's hidden size adds no expressiveness, only minutes of work:
    refuse it here (the IR's own bound, ir.MAX_LORA_RANK, knows no model)."""
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if isinstance(hidden, int) and lora.rank > hidden:
        raise UserError(f"adapter lora(rank = {lora.rank}): the rank must be between 1 and the model's hidden size "
                        f"({hidden}) for this model", exit_code=2)
