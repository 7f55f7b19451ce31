"""Engine options for the vLLM backend: rank rounding, plan-derived sizes (the flags: tests/cli/test_options.py)."""

from __future__ import annotations

import msgspec
import pytest

import neuromas
from neuromas.diagnostics import UserError
from neuromas.runtime.backends.vllm_options import (
    VLLMOptions,
    adapter_slots,
    adapters_per_call,
    engine_kwargs,
    needed_model_len,
    vllm_lora_rank,
)


@pytest.fixture(scope="module")
def neuromas3():
    return neuromas.compile("specs/neuromas3.nmas")


@pytest.mark.parametrize(
    ("rank", "expected"), [(1, 1), (2, 8), (8, 8), (9, 16), (16, 16), (17, 32), (100, 128), (257, 320), (512, 512)]
)
def test_rank_rounds_up_to_a_rank_vllm_accepts(rank, expected):
    assert vllm_lora_rank(rank) == expected


def test_rank_beyond_vllm_is_a_user_error():
    with pytest.raises(UserError, match="512"):
        vllm_lora_rank(513)
    with pytest.raises(ValueError):
        vllm_lora_rank(0)


def test_engine_kwargs_for_neuromas3(neuromas3):
    kwargs = engine_kwargs(neuromas3, VLLMOptions(), "/models/smol")
    assert kwargs == {
        "model": "/models/smol",
        "tokenizer": "/models/smol",
        "dtype": "auto",
        "seed": 0,
        "gpu_memory_utilization": 0.5,
        "max_model_len": 2048 + 192,  # max_prompt_tokens + the hidden layer's max_tokens
        "enforce_eager": False,
        "tensor_parallel_size": 1,
        "enable_prefix_caching": True,
        "logprobs_mode": "processed_logprobs",
        "enable_sleep_mode": False,
        "enable_lora": True,
        "max_lora_rank": 16,
        "max_loras": 2,  # level 0 runs two adapters in one call
        "max_cpu_loras": 6,  # two versions of each of the three slots
    }


def test_command_line_options_reach_the_engine(neuromas3):
    options = VLLMOptions(
        gpu_memory_utilization=0.3,
        max_model_len=4096,
        max_lora_rank=20,
        enforce_eager=True,
        tensor_parallel_size=2,
        sleep_mode=True,
        max_num_seqs=256,
        seed=7,
        dtype="bfloat16",
    )
    kwargs = engine_kwargs(neuromas3, options, "m")
    assert kwargs["gpu_memory_utilization"] == 0.3
    assert kwargs["max_model_len"] == 4096
    assert kwargs["max_lora_rank"] == 32  # 20 rounded up
    assert kwargs["enforce_eager"] is True
    assert kwargs["tensor_parallel_size"] == 2
    assert kwargs["enable_sleep_mode"] is True
    assert kwargs["max_num_seqs"] == 256
    assert kwargs["seed"] == 7
    assert kwargs["dtype"] == "bfloat16"
    assert "max_num_seqs" not in engine_kwargs(neuromas3, VLLMOptions(), "m")


def test_options_below_the_plan_are_user_errors(neuromas3):
    with pytest.raises(UserError, match="2240"):
        engine_kwargs(neuromas3, VLLMOptions(max_model_len=2000), "m")
    with pytest.raises(UserError, match="rank 16"):
        engine_kwargs(neuromas3, VLLMOptions(max_lora_rank=8), "m")


def test_sizes_follow_the_widest_call_and_every_growth_stage():
    wide = neuromas.compile("specs/wide.nmas")
    assert adapters_per_call(wide) == 15  # node 0 samples cooler: it gets a call of its own
    assert engine_kwargs(wide, VLLMOptions(), "m")["max_lora_rank"] == 8

    growth = neuromas.compile("specs/growth.nmas")
    assert len(growth.adapters) == 3
    assert len(adapter_slots(growth)) == 7  # the NeuroMAS-7 stage's slots are known up front
    assert adapters_per_call(growth) == 3
    assert engine_kwargs(growth, VLLMOptions(), "m")["max_cpu_loras"] == 14
    assert needed_model_len(growth) == 2048 + 128


def test_a_plan_without_adapters_runs_without_lora(neuromas3):
    frozen = msgspec.structs.replace(
        neuromas3,
        nodes=tuple(msgspec.structs.replace(node, adapter=None) for node in neuromas3.nodes),
        adapters=(),
    )
    kwargs = engine_kwargs(frozen, VLLMOptions(), "m")
    assert not any("lora" in key for key in kwargs)


@pytest.mark.parametrize(
    "bad",
    [
        {"gpu_memory_utilization": 0.0},
        {"gpu_memory_utilization": 1.5},
        {"max_model_len": 0},
        {"tensor_parallel_size": 0},
        {"max_batch_rows": 0},
        {"dtype": "int8"},
    ],
)
def test_invalid_options_are_user_errors(bad):
    with pytest.raises(UserError):
        VLLMOptions(**bad)
