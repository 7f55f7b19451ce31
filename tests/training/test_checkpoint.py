"""Checkpoint fingerprints, atomic writes, pruning, and RNG round trips (a tiny peft model)."""

from __future__ import annotations

import random

import msgspec
import pytest
import torch

from neuromas.diagnostics import UserError
from neuromas.runtime import checkpoint
from neuromas.runtime.checkpoint import (
    TrainState,
    list_checkpoints,
    load_checkpoint,
    plan_fingerprint,
    prune_checkpoints,
    save_checkpoint,
)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.proj(x)


@pytest.fixture
def tiny_peft():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(Tiny(), LoraConfig(r=2, lora_alpha=4, target_modules=["proj"]), adapter_name="slot_a")
    model.add_adapter("slot_b", LoraConfig(r=2, lora_alpha=4, target_modules=["proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    params = [p for name, p in model.named_parameters() if "lora_" in name]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=0.1)
    model(torch.randn(3, 8)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_fingerprint_ignores_steps_only(make_plan):
    plan = make_plan()
    longer = msgspec.structs.replace(plan, train=msgspec.structs.replace(plan.train, steps=999))
    other_lr = msgspec.structs.replace(plan, train=msgspec.structs.replace(plan.train, lr=0.5))
    assert plan_fingerprint(plan) == plan_fingerprint(longer)
    assert plan_fingerprint(plan) != plan_fingerprint(other_lr)
    assert plan_fingerprint(plan).startswith("sha256:")


def test_round_trip_restores_adapters_optimizer_and_rng(tiny_peft, tmp_path):
    model, optimizer = tiny_peft
    state = TrainState(step=5, data_position=40, seed=1, plan_fingerprint="sha256:x")
    random.seed(11)
    torch.manual_seed(12)
    path = save_checkpoint(tmp_path, model, ["slot_a", "slot_b"], optimizer, state)
    expected_random, expected_torch = random.random(), torch.rand(3)
    saved = {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}
    saved_optimizer = optimizer.state_dict()

    with torch.no_grad():  # disturb everything
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(1.0)
    optimizer.state.clear()
    random.seed(0)
    torch.manual_seed(0)

    assert load_checkpoint(path, model, ["slot_a", "slot_b"], optimizer) == state
    assert (random.random(), torch.rand(3).tolist()) == (expected_random, expected_torch.tolist())
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert torch.equal(p, saved[name]), name
    restored = optimizer.state_dict()["state"]
    for key, value in saved_optimizer["state"].items():
        assert torch.equal(restored[key]["exp_avg"], value["exp_avg"])


def test_a_failed_write_leaves_no_checkpoint(tiny_peft, tmp_path, monkeypatch):
    model, optimizer = tiny_peft
    state = TrainState(1, 1, 0, "sha256:x")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "_fsync_tree", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, model, ["slot_a"], optimizer, state)
    assert list_checkpoints(tmp_path) == []
    assert list((tmp_path / "checkpoints").iterdir()) == []  # the staging folder is gone too


def test_prune_keeps_the_newest(tiny_peft, tmp_path):
    model, optimizer = tiny_peft
    for step in (1, 2, 3, 10):
        save_checkpoint(tmp_path, model, ["slot_a"], optimizer, TrainState(step, step, 0, "sha256:x"))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000001", "step-000002", "step-000003", "step-000010"]
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000003", "step-000010"]
    prune_checkpoints(tmp_path, keep=0)  # 0 keeps all
    assert len(list_checkpoints(tmp_path)) == 2


def test_unreadable_checkpoint_is_a_user_error(tiny_peft, tmp_path):
    model, optimizer = tiny_peft
    (tmp_path / "step-000001").mkdir()
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "step-000001", model, ["slot_a"], optimizer)
