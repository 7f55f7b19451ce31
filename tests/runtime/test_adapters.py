"""Adapters: one peft LoRA per slot, saved in peft's standard layout and loaded back exactly."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import msgspec
import pytest
import torch
from safetensors.torch import load_file

from neuromas.diagnostics import UserError
from neuromas.runtime import adapter_folders, attach_adapters, load_adapters, save_adapters
from neuromas.runtime.backends.transformers import left_pad

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runtime_helpers.py (pytest runs in importlib mode)
from runtime_helpers import compile_small, randomize_adapters  # noqa: E402

ROWS = [(1, 9690, 198, 2683, 359, 253, 5356, 2, 198, 1, 4093, 198, 1780, 314, 216, 34), (1, 4093, 198, 40, 2)]


def logits(model, names) -> torch.Tensor:
    input_ids, attention_mask = left_pad(ROWS, 2, model.device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     adapter_names=names).logits.float()


def test_one_adapter_per_slot_with_the_plans_lora(loaded):
    plan = compile_small("neuromas3.nmas")
    model = attach_adapters(copy.deepcopy(loaded.model), plan)
    assert sorted(model.peft_config) == sorted(slot.name for slot in plan.adapters)
    config = model.peft_config["node-answer-0"]
    assert (config.r, config.lora_alpha, sorted(config.target_modules)) == (16, 32.0, ["k_proj", "o_proj", "q_proj", "v_proj"])
    # B starts at zero: every slot begins as the base model.
    assert all(torch.count_nonzero(p) == 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_saved_adapters_load_back_with_the_same_logits(loaded, tmp_path):
    plan = compile_small("neuromas3.nmas")
    trained = attach_adapters(copy.deepcopy(loaded.model), plan)
    randomize_adapters(trained, seed=3, scale=0.03)
    trained.eval()
    names = ["node-hidden-0", "node-answer-0"]
    before = logits(trained, names)

    folders = save_adapters(trained, tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(slot.name for slot in plan.adapters)
    folder = folders["node-hidden-1"]
    assert sorted(path.name for path in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    keys = list(load_file(folder / "adapter_model.safetensors"))
    assert keys and all(key.startswith("base_model.model.") and "node-hidden-1" not in key for key in keys)
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 16

    fresh = attach_adapters(copy.deepcopy(loaded.model), plan).eval()
    assert not torch.allclose(logits(fresh, names), before)
    load_adapters(fresh, adapter_folders(tmp_path, [slot.name for slot in plan.adapters]))
    assert torch.equal(logits(fresh, names), before)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_saved_folder_is_what_peft_loads_on_its_own(loaded, tmp_path):
    from peft import PeftModel

    plan = compile_small("neuromas3.nmas")
    trained = attach_adapters(copy.deepcopy(loaded.model), plan)
    randomize_adapters(trained, seed=4, scale=0.03)
    trained.eval()
    save_adapters(trained, tmp_path, ["node-hidden-1"])
    alone = PeftModel.from_pretrained(copy.deepcopy(loaded.model), tmp_path / "node-hidden-1").eval()
    assert torch.equal(logits(alone, ["default"] * 2), logits(trained, ["node-hidden-1"] * 2))


def test_loading_reports_missing_slots_and_other_ranks(loaded, tmp_path):
    plan = compile_small("neuromas3.nmas")
    model = attach_adapters(copy.deepcopy(loaded.model), plan)
    save_adapters(model, tmp_path, ["node-hidden-0"])
    with pytest.raises(UserError, match="no saved adapter for slot.*node-hidden-1.*found: node-hidden-0"):
        adapter_folders(tmp_path, [slot.name for slot in plan.adapters])
    with pytest.raises(UserError, match="does not exist"):
        adapter_folders(tmp_path / "nowhere", ["node-hidden-0"])

    other = msgspec.structs.replace(plan, adapter=msgspec.structs.replace(plan.adapter, rank=4, alpha=8.0))
    smaller = attach_adapters(copy.deepcopy(loaded.model), other)
    with pytest.raises(UserError, match=r"slot 'node-hidden-0': .*adapter_config.json' .*rank: expected 4, found 16"):
        load_adapters(smaller, {"node-hidden-0": tmp_path / "node-hidden-0"})


def test_unknown_lora_targets_are_a_user_error(loaded):
    plan = compile_small("neuromas3.nmas")
    bad = msgspec.structs.replace(plan, adapter=msgspec.structs.replace(plan.adapter, targets=("q_proj", "qq_proj")))
    with pytest.raises(UserError, match="qq_proj match no layer"):
        attach_adapters(copy.deepcopy(loaded.model), bad)


def test_a_rank_above_the_models_hidden_size_is_refused(loaded):
    hidden = loaded.model.config.hidden_size  # 576 for SmolLM2-135M
    plan = compile_small("neuromas3.nmas")
    too_large = msgspec.structs.replace(plan, adapter=msgspec.structs.replace(plan.adapter, rank=hidden + 1))
    with pytest.raises(UserError, match=rf"rank must be between 1 and the model's hidden size \({hidden}\)") as raised:
        attach_adapters(loaded.model, too_large)
    assert raised.value.exit_code == 2
    assert not hasattr(loaded.model, "peft_config")  # refused before anything was attached
