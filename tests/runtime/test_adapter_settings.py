"""Saved adapters trained with other LoRA settings are refused before anything loads, naming slot, file and values."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import msgspec
import pytest

from neuromas.cli import main
from neuromas.diagnostics import UserError
from neuromas.runtime.models.adapters import adapter_folders, attach_adapters, save_adapters

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runtime_helpers.py (pytest runs in importlib mode)
from runtime_helpers import SPECS, compile_small  # noqa: E402


@pytest.fixture(scope="module")
def other_adapters(loaded, tmp_path_factory) -> Path:
    """neuromas3's slots saved with rank 2, alpha 4, on q_proj and v_proj only."""
    plan = compile_small("neuromas3.nmas")
    other = msgspec.structs.replace(plan.adapter, rank=2, alpha=4.0, targets=("q_proj", "v_proj"))
    model = attach_adapters(copy.deepcopy(loaded.model), msgspec.structs.replace(plan, adapter=other))
    root = tmp_path_factory.mktemp("other-adapters")
    save_adapters(model, root)
    return root


def test_other_settings_name_the_slot_the_file_and_each_value(other_adapters):
    plan = compile_small("neuromas3.nmas")
    slots = [slot.name for slot in plan.adapters]
    with pytest.raises(UserError) as caught:
        adapter_folders(other_adapters, slots, plan.adapter)
    message = str(caught.value)
    assert message.startswith(f"adapter slot '{slots[0]}': '{other_adapters / slots[0] / 'adapter_config.json'}' "
                              "was saved with other LoRA settings (rank: expected 16, found 2; "
                              "alpha: expected 32, found 4; "
                              "targets: expected [k_proj, o_proj, q_proj, v_proj], found [q_proj, v_proj])")
    assert "fix: load adapters trained from this spec, or set the spec's `adapter lora(...)`" in message
    assert adapter_folders(other_adapters, slots) == {name: other_adapters / name for name in slots}  # no plan: no check


def test_a_config_that_is_not_peft_lora_is_refused(other_adapters, tmp_path):
    plan = compile_small("neuromas3.nmas")
    slot = plan.adapters[0].name
    folder = tmp_path / slot
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes((other_adapters / slot / "adapter_model.safetensors").read_bytes())
    config = json.loads((other_adapters / slot / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "r": 16, "lora_alpha": 32, "use_dora": True,
                                                            "target_modules": ".*proj"}))
    with pytest.raises(UserError, match=r"targets: expected \[k_proj, o_proj, q_proj, v_proj\], found \"\.\*proj\"; "
                                        r"use_dora: expected false, found true\)"):
        adapter_folders(tmp_path, [slot], plan.adapter)
    (folder / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(UserError, match=rf"adapter slot '{slot}': cannot read .*expected a JSON object, got list"):
        adapter_folders(tmp_path, [slot], plan.adapter)


def test_the_cli_refuses_them_before_the_model_loads(other_adapters, capsys, monkeypatch):
    from neuromas.runtime.models import loading as models

    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before the adapters were checked")

    monkeypatch.setattr(models, "load_model", no_model)
    code = main(["run", str(SPECS / "neuromas3.nmas"), "--input", "hi", "--adapters", str(other_adapters)])
    err = capsys.readouterr().err
    assert code == 1
    assert "error: adapter slot 'node-hidden-0'" in err and "rank: expected 16, found 2" in err
