"""Checkpoint fingerprints, atomic writes, manifests, resume choice, pruning, RNG round trips (a tiny peft model)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path

import msgspec
import pytest
import torch

from neuromas.diagnostics import UserError
from neuromas.runtime.training import checkpoint
from neuromas.runtime.training.checkpoint import (
    MANIFEST,
    REJECTED,
    TrainState,
    clean_checkpoints,
    list_checkpoints,
    load_checkpoint,
    newest_verified,
    plan_fingerprint,
    prune_checkpoints,
    save_checkpoint,
    verify_checkpoint,
)
from neuromas.runtime.training.session import resume_checkpoint


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


def test_a_checkpoint_without_manifest_is_refused(tiny_peft, tmp_path):
    model, optimizer = tiny_peft
    path = save_checkpoint(tmp_path, model, ["slot_a"], optimizer, TrainState(1, 1, 0, "sha256:x"))
    (path / MANIFEST).unlink()
    with pytest.raises(UserError, match=f"step-000001' has no {MANIFEST}, so it cannot be verified"):
        load_checkpoint(path, model, ["slot_a"], optimizer)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no manifest.json"):
        load_checkpoint(tmp_path / "empty", model, ["slot_a"], optimizer)
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere", model, ["slot_a"], optimizer)


def test_the_manifest_lists_every_file_and_is_written_last(tiny_peft, tmp_path):
    model, optimizer = tiny_peft
    path = save_checkpoint(tmp_path, model, ["slot_a", "slot_b"], optimizer, TrainState(3, 3, 0, "sha256:x"))
    manifest = json.loads((path / MANIFEST).read_text())
    files = {entry["path"]: entry for entry in manifest["files"]}
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} - {MANIFEST}
    assert set(files) == on_disk and "adapters/slot_b/adapter_model.safetensors" in files
    for name, entry in files.items():
        assert entry["size"] == (path / name).stat().st_size
        assert entry["sha256"] == hashlib.sha256((path / name).read_bytes()).hexdigest()
    verify_checkpoint(path)


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


@pytest.mark.parametrize(
    "damage, name, message",
    [
        (flip_byte, "adapters/slot_a/adapter_model.safetensors", "does not match the sha256"),
        (flip_byte, "state.json", "does not match the sha256"),
        (truncate, "optimizer.pt", "has .* bytes, its manifest.json says"),
        (Path.unlink, "rng.pt", "is missing 'rng.pt'"),
        (Path.unlink, "adapters/slot_a/adapter_config.json", "is missing 'adapters/slot_a/adapter_config.json'"),
    ],
)
def test_a_damaged_file_is_named(tiny_peft, tmp_path, damage, name, message):
    model, optimizer = tiny_peft
    path = save_checkpoint(tmp_path, model, ["slot_a"], optimizer, TrainState(4, 4, 0, "sha256:x"))
    damage(path / name)
    with pytest.raises(UserError, match=message) as caught:
        load_checkpoint(path, model, ["slot_a"], optimizer)
    assert f"'{name}'" in str(caught.value) and str(path) in str(caught.value)


def test_resume_picks_the_newest_verified_and_sets_the_others_aside(tiny_peft, tmp_path, caplog):
    model, optimizer = tiny_peft
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, model, ["slot_a"], optimizer, TrainState(step, step, 0, "sha256:x"))
    root = tmp_path / "checkpoints"
    truncate(root / "step-000003" / "rng.pt")
    (root / "step-000002" / MANIFEST).unlink()
    found, skipped = newest_verified(tmp_path)
    assert found == root / "step-000001"
    assert [item.path.name for item in skipped] == ["step-000003", "step-000002"]

    with caplog.at_level(logging.WARNING):
        assert resume_checkpoint(tmp_path) == root / "step-000001"
    assert "resuming from step-000001, not the newer step-000003" in caplog.text and "'rng.pt' has" in caplog.text
    assert "not the newer step-000002" in caplog.text and "no manifest.json" in caplog.text
    assert sorted(p.name for p in (root / REJECTED).iterdir()) == ["step-000002", "step-000003"]
    # keep=1 never deletes the checkpoint a run resumes from before a newer one exists
    prune_checkpoints(tmp_path, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000001"]
    save_checkpoint(tmp_path, model, ["slot_a"], optimizer, TrainState(2, 2, 0, "sha256:x"))
    prune_checkpoints(tmp_path, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002"]


def test_resume_refuses_when_no_checkpoint_verifies(tiny_peft, tmp_path):
    model, optimizer = tiny_peft
    path = save_checkpoint(tmp_path, model, ["slot_a"], optimizer, TrainState(1, 1, 0, "sha256:x"))
    flip_byte(path / "optimizer.pt")
    with pytest.raises(UserError, match="no checkpoint in .* verifies .*'optimizer.pt' does not match.*another --out"):
        resume_checkpoint(tmp_path)
    assert resume_checkpoint(tmp_path / "fresh") is None  # no checkpoints: a new run


def test_a_rewrite_of_the_same_step_replaces_it_and_a_crash_keeps_the_old(tiny_peft, tmp_path, monkeypatch):
    model, optimizer = tiny_peft
    first = save_checkpoint(tmp_path, model, ["slot_a"], optimizer, TrainState(5, 5, 0, "sha256:old"))
    assert save_checkpoint(tmp_path, model, ["slot_a"], optimizer, TrainState(5, 6, 0, "sha256:new")) == first
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000005"]
    assert json.loads((first / "state.json").read_text())["plan_fingerprint"] == "sha256:new"

    renames = []
    real_rename = os.rename

    def crash_on_second_rename(source, target):  # the process dies between the two renames
        renames.append(target)
        if len(renames) == 2:
            raise KeyboardInterrupt
        real_rename(source, target)

    monkeypatch.setattr(checkpoint.os, "rename", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, model, ["slot_a"], optimizer, TrainState(5, 7, 0, "sha256:newer"))
    monkeypatch.undo()
    assert list_checkpoints(tmp_path) == []  # the old one is aside, under a hidden name
    clean_checkpoints(tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000005"]
    assert json.loads((first / "state.json").read_text())["plan_fingerprint"] == "sha256:new"
    verify_checkpoint(first)


def test_clean_removes_unfinished_staging(tiny_peft, tmp_path):
    model, optimizer = tiny_peft
    save_checkpoint(tmp_path, model, ["slot_a"], optimizer, TrainState(1, 1, 0, "sha256:x"))
    staging = tmp_path / "checkpoints" / ".step-000002-abc123"
    (staging / "adapters").mkdir(parents=True)
    clean_checkpoints(tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000001"]


def test_the_rename_is_flushed_to_disk(tiny_peft, tmp_path, monkeypatch):
    model, optimizer = tiny_peft
    flushed = []
    real = checkpoint._fsync_dir
    monkeypatch.setattr(checkpoint, "_fsync_dir", lambda folder: (flushed.append(Path(folder)), real(folder)))
    path = save_checkpoint(tmp_path, model, ["slot_a"], optimizer, TrainState(1, 1, 0, "sha256:x"))
    assert flushed[-1] == path.parent  # the folder holding the renamed entry, after the rename


def _two_slot_model(order: tuple[str, str], seed: int):
    """The tiny model with slots added in `order`: peft then lists their weights in that order."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = lambda: LoraConfig(r=2, lora_alpha=4, target_modules=["proj"])  # noqa: E731
    model = get_peft_model(Tiny(), config(), adapter_name=order[0])
    model.add_adapter(order[1], config())
    return model


def _moments_by_name(model, optimizer) -> dict[str, torch.Tensor]:
    return {name: optimizer.state[param]["exp_avg"].clone()
            for name, param in model.named_parameters() if param in optimizer.state}


def test_optimizer_moments_follow_parameter_names_not_positions(tmp_path):
    """A grown model lists slot_b's weights before slot_a's; a model rebuilt from the plan lists
    them in plan order. Each moment must land on the same slot's tensor."""
    grown = _two_slot_model(("slot_b", "slot_a"), seed=0)
    params = [p for name, p in grown.named_parameters() if "lora_" in name]  # growth order
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=0.1)
    generator = torch.Generator().manual_seed(2)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)  # distinct moments for every tensor
    optimizer.step()
    expected = _moments_by_name(grown, optimizer)
    path = save_checkpoint(tmp_path, grown, ["slot_a", "slot_b"], optimizer, TrainState(1, 1, 0, "sha256:x"))

    rebuilt = _two_slot_model(("slot_a", "slot_b"), seed=1)
    rebuilt_params = [p for name, p in rebuilt.named_parameters() if "lora_" in name]  # plan order
    rebuilt_optimizer = torch.optim.AdamW(rebuilt_params, lr=0.1)
    load_checkpoint(path, rebuilt, ["slot_a", "slot_b"], rebuilt_optimizer)
    found = _moments_by_name(rebuilt, rebuilt_optimizer)
    assert found.keys() == expected.keys()
    for name in expected:
        assert torch.equal(found[name], expected[name]), name
    assert not torch.equal(expected["base_model.model.proj.lora_A.slot_a.weight"],
                           expected["base_model.model.proj.lora_A.slot_b.weight"])  # a swap would show


def test_an_old_positional_optimizer_file_maps_through_its_plan_or_is_refused(tiny_peft, tmp_path):
    model, optimizer = tiny_peft  # built from the plan: slot_a, then slot_b
    expected = _moments_by_name(model, optimizer)
    path = save_checkpoint(tmp_path, model, ["slot_a", "slot_b"], optimizer, TrainState(1, 1, 0, "sha256:x"))
    torch.save(optimizer.state_dict(), path / "optimizer.pt")  # what older versions wrote: positions
    checkpoint.write_manifest(path)
    fresh = torch.optim.AdamW([p for name, p in model.named_parameters() if "lora_" in name], lr=0.1)
    load_checkpoint(path, model, ["slot_a", "slot_b"], fresh)
    found = _moments_by_name(model, fresh)
    assert all(torch.equal(found[name], expected[name]) for name in expected)
    with pytest.raises(UserError, match="by position .* grown stage"):
        load_checkpoint(path, model, ["slot_a", "slot_b"], fresh, is_grown_stage=True)


def test_a_checkpoint_loads_into_the_fused_optimizer_and_keeps_it_fused(tiny_peft, tmp_path):
    """Moments written by torch's per-tensor AdamW (older runs) load into the fused one
    training now makes (`make_optimizer`); the saved hyperparameters are restored, the
    fused implementation kept, and the next step is the per-tensor one's."""
    from neuromas.runtime.training.update import make_optimizer

    model, optimizer = tiny_peft  # per-tensor AdamW, one step taken
    assert not optimizer.param_groups[0]["fused"]
    path = save_checkpoint(tmp_path, model, ["slot_a", "slot_b"], optimizer, TrainState(1, 1, 0, "sha256:x"))
    params = [p for name, p in model.named_parameters() if "lora_" in name]
    fused = make_optimizer(params, lr=0.5)
    assert fused.param_groups[0]["fused"]
    load_checkpoint(path, model, ["slot_a", "slot_b"], fused)
    assert fused.param_groups[0]["fused"] and fused.param_groups[0]["lr"] == 0.1  # implementation kept, lr saved
    assert _moments_by_name(model, fused).keys() == _moments_by_name(model, optimizer).keys()

    before = [p.detach().clone() for p in params]
    grads = [torch.randn_like(p) for p in params]
    for step_with in (optimizer, fused):
        with torch.no_grad():
            for p, b, g in zip(params, before, grads, strict=True):
                p.copy_(b)
                p.grad = g.clone()
        step_with.step()
        if step_with is optimizer:
            expected = [p.detach().clone() for p in params]
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-6)


class _Payload:
    """Unpickling this runs a shell command: what a crafted checkpoint file could hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", ["rng.pt", "optimizer.pt"])
def test_a_crafted_pickle_in_a_checkpoint_never_runs(tiny_peft, tmp_path, name):
    model, optimizer = tiny_peft
    path = save_checkpoint(tmp_path, model, ["slot_a", "slot_b"], optimizer, TrainState(1, 1, 0, "sha256:x"))
    marker = tmp_path / "ran"
    torch.save({"python": _Payload(marker), "torch": torch.get_rng_state(), "state": {}, "param_groups": []},
               path / name)
    checkpoint.write_manifest(path)  # the manifest proves integrity, not trust
    with pytest.raises(UserError, match=f"{name}' holds more than tensors and plain values"):
        load_checkpoint(path, model, ["slot_a", "slot_b"], optimizer)
    assert not marker.exists()


def test_checkpoint_state_files_load_without_pickled_code(tiny_peft, tmp_path):
    model, optimizer = tiny_peft
    path = save_checkpoint(tmp_path, model, ["slot_a", "slot_b"], optimizer, TrainState(1, 1, 0, "sha256:x"))
    for name in ("rng.pt", "optimizer.pt"):
        torch.load(path / name, weights_only=True)  # tensors and plain containers only
