"""Growing a trained system on the real bundled model: kept, copied, mean and zero adapters."""

from __future__ import annotations

import copy

import pytest
import torch

import neuromas
from neuromas.runtime.models.adapters import attach_adapters
from neuromas.runtime.training.growth import carry_optimizer_state, grow_model, slot_origins
from neuromas.runtime.training.update import lora_parameters, make_optimizer

ZERO_GROWTH = """
system grow_zero {
    adapter lora(rank = 4, alpha = 8, targets = [q_proj, v_proj])
    input question
    layer hidden width 1 { max_tokens 4 }
    layer answer width 1 { max_tokens 4 }
    hidden <- question
    answer <- hidden dense, question
    output answer
    growth {
        stage small {}
        stage deep { insert mid width 1 after hidden init zero } after 5 steps
    }
}
"""


def _randomize(model) -> None:
    """Non-zero A and B everywhere, so copies and means are distinguishable."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, param in lora_parameters_named(model):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def lora_parameters_named(model):
    return [(name, param) for name, param in model.named_parameters() if "lora_" in name]


def _slot_weights(model, slot: str) -> dict[str, torch.Tensor]:
    return {name.replace(f".{slot}.", ".SLOT."): param.detach().clone()
            for name, param in model.named_parameters() if f".{slot}." in name}


@pytest.fixture
def grown_growth_spec(loaded):
    plan = neuromas.compile("specs/growth.nmas")
    first, second, third = plan.growth
    model = attach_adapters(copy.deepcopy(loaded.model), first.plan, base_model=loaded.source)
    _randomize(model)
    return plan, model


def test_kept_and_copied_adapters(grown_growth_spec, loaded):
    plan, model = grown_growth_spec
    first, second, _ = plan.growth
    before = {slot.name: _slot_weights(model, slot.name) for slot in first.plan.adapters}
    model, origins = grow_model(model, first.plan, second, loaded.source)
    assert {slot.name for slot in second.plan.adapters} == set(origins)
    for slot, weights in before.items():
        assert origins[slot].kind == "keep"
        after = _slot_weights(model, slot)
        assert all(torch.equal(weights[name], after[name]) for name in weights)  # bit for bit
    # the compiler says mid[i] copies hidden[i]: the adapters must be equal
    for origin in second.origins:
        if origin.kind == "copy":
            new_slot = second.plan.node_map()[origin.node].adapter
            source_slot = first.plan.node_map()[origin.source].adapter
            assert origins[new_slot].sources == (source_slot,)
            copied, source = _slot_weights(model, new_slot), _slot_weights(model, source_slot)
            assert copied.keys() == source.keys()
            assert all(torch.equal(copied[name], source[name]) for name in copied)


def _deltas(model, slot: str) -> dict[str, torch.Tensor]:
    """Each LoRA module's weight update B @ A of one slot, in float64."""
    return {name: module.lora_B[slot].weight.double() @ module.lora_A[slot].weight.double()
            for name, module in model.named_modules()
            if hasattr(module, "lora_A") and isinstance(module.lora_A, torch.nn.ModuleDict) and slot in module.lora_A}


def test_mean_adapter_update_is_the_layer_mean_update(grown_growth_spec, loaded):
    plan, model = grown_growth_spec
    first, second, third = plan.growth
    model, _ = grow_model(model, first.plan, second, loaded.source)
    _randomize(model)  # mid[0] and mid[1] trained apart
    a, b = _deltas(model, "node-mid-0"), _deltas(model, "node-mid-1")
    model, origins = grow_model(model, second.plan, third, loaded.source)
    assert origins["node-mid-2"].kind == "mean"
    assert set(origins["node-mid-2"].sources) == {"node-mid-0", "node-mid-1"}
    rank = plan.adapter.rank
    for name, delta in _deltas(model, "node-mid-2").items():
        mean = (a[name] + b[name]) / 2  # rank up to 2r: the best rank-r update is its truncated SVD
        u, s, vh = torch.linalg.svd(mean, full_matrices=False)
        best = (u[:, :rank] * s[:rank]) @ vh[:rank]
        torch.testing.assert_close(delta, best, atol=1e-6, rtol=1e-4)
        assert (delta - mean).norm() < 0.9 * mean.norm()  # the product of mean factors is cross-term noise


def test_mean_of_opposite_factors_keeps_their_shared_update():
    """B1 A1 = (-B)(-A) = B A: the mean update is B A, while mean(B) mean(A) would be 0."""
    from neuromas.runtime.training.growth import mean_delta_factors

    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 32, generator=generator), torch.randn(24, 4, generator=generator)
    new_a, new_b = mean_delta_factors([(a, b), (-a, -b)])
    assert new_a.shape == a.shape and new_b.shape == b.shape and new_a.dtype == a.dtype
    torch.testing.assert_close(new_b @ new_a, b @ a, atol=1e-5, rtol=1e-5)
    new_a, new_b = mean_delta_factors([(a, b), (a, 3 * b), (-a, -b)])
    torch.testing.assert_close(new_b @ new_a, 5 * b @ a / 3, atol=1e-5, rtol=1e-5)


def test_zero_node_starts_as_the_base_model(loaded):
    plan = neuromas.compile(ZERO_GROWTH)
    first, second = plan.growth
    model = attach_adapters(copy.deepcopy(loaded.model), first.plan, base_model=loaded.source)
    _randomize(model)
    model, origins = grow_model(model, first.plan, second, loaded.source)
    assert origins["node-mid-0"].kind == "zero"
    model.eval()
    ids = loaded.tokenizer("What is 2 + 3?", return_tensors="pt").input_ids
    with torch.no_grad():
        zero = model(ids, adapter_names=["node-mid-0"]).logits
        trained = model(ids, adapter_names=["node-hidden-0"]).logits
        with model.disable_adapter():
            base = model(ids).logits
    assert torch.equal(zero, base)
    assert not torch.allclose(trained, base)


def test_optimizer_state_follows_kept_and_copied_slots(grown_growth_spec, loaded):
    plan, model = grown_growth_spec
    first, second, _ = plan.growth
    params = lora_parameters(model)
    for param in params:
        param.requires_grad_(True)
    optimizer = make_optimizer(params, 1e-3)
    sum(param.square().sum() for param in params).backward()
    optimizer.step()
    model, origins = grow_model(model, first.plan, second, loaded.source)
    grown_params = lora_parameters(model)
    grown = make_optimizer(grown_params, 1e-3)
    carry_optimizer_state(optimizer, grown, model, origins)
    named = dict(lora_parameters_named(model))
    for name, param in named.items():
        if ".node-hidden-0." in name:
            assert torch.equal(grown.state[param]["exp_avg"], optimizer.state[param]["exp_avg"])
        if ".node-mid-0." in name:  # a copy of hidden[0]: its moments too
            source = named[name.replace(".node-mid-0.", ".node-hidden-0.")]
            assert torch.equal(grown.state[param]["exp_avg"], optimizer.state[source]["exp_avg"])
            assert grown.state[param]["exp_avg"] is not optimizer.state[source]["exp_avg"]


def test_slot_origins_match_the_compiler_maps():
    plan = neuromas.compile("specs/growth.nmas")
    first, second, third = plan.growth
    origins = slot_origins(second.plan, third)
    nodes = third.plan.node_map()
    for origin in third.origins:
        slot = nodes[origin.node].adapter
        assert origins[slot].kind == origin.kind
