"""GenRequests -> vLLM request specs: prompt ids, per-row LoRA, sampling settings, seeds, chunks."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuromas.plan import Generation
from neuromas.runtime.models.adapter_versions import AdapterVersion
from neuromas.runtime.backends.base import GenRequest
from neuromas.runtime.backends.vllm_requests import (
    LoraSpec,
    build_requests,
    request_seed,
    row_chunks,
    sampling_kwargs,
)

SAMPLED = Generation(max_tokens=192, temperature=0.8, top_p=0.9, stop=("\n\n", ""))
GREEDY = Generation(max_tokens=64, temperature=0.0, top_p=0.5)
ADAPTERS = {
    "node-hidden-0": AdapterVersion("node-hidden-0", 3, 7, Path("/v/v000003/node-hidden-0")),
    "node-answer-0": AdapterVersion("node-answer-0", 1, 3, Path("/v/v000001/node-answer-0")),
}


def test_sampled_rows_ask_for_the_sampled_token_log_prob():
    assert sampling_kwargs(SAMPLED, seed=11) == {
        "n": 1,
        "max_tokens": 192,
        "temperature": 0.8,
        "top_p": 0.9,
        "stop": ["\n\n"],  # empty stop strings are ignored, as by the transformers backend
        "logprobs": 0,
        "detokenize": True,
        "skip_special_tokens": True,
        "include_stop_str_in_output": False,
        # Neutral, and sent: a server would otherwise fill them from generation_config.json.
        "top_k": 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "seed": 11,
    }
    assert "seed" not in sampling_kwargs(SAMPLED)


def test_greedy_rows_need_no_log_probs_and_no_seed():
    kwargs = sampling_kwargs(GREEDY, seed=11)
    assert (kwargs["temperature"], kwargs["top_p"], kwargs["logprobs"]) == (0.0, 1.0, None)
    assert "seed" not in kwargs
    assert kwargs["max_tokens"] == 64 and kwargs["stop"] == []


def test_each_row_carries_its_prompt_ids_and_its_adapter_version():
    requests = [
        GenRequest((1, 2, 3), "node-hidden-0", SAMPLED),
        GenRequest((1, 2, 3), "node-hidden-0", SAMPLED),
        GenRequest((4, 5), None, GREEDY),
        GenRequest((6,), "node-answer-0", GREEDY),
    ]
    specs = build_requests(requests, ADAPTERS, seed=5)
    assert [spec.prompt_token_ids for spec in specs] == [[1, 2, 3], [1, 2, 3], [4, 5], [6]]
    assert [spec.lora for spec in specs] == [
        LoraSpec("node-hidden-0@v3", 7, "/v/v000003/node-hidden-0"),
        LoraSpec("node-hidden-0@v3", 7, "/v/v000003/node-hidden-0"),
        None,
        LoraSpec("node-answer-0@v1", 3, "/v/v000001/node-answer-0"),
    ]
    # Two samples of one prompt must not draw the same random numbers.
    assert specs[0].sampling["seed"] == request_seed(5, 0) != specs[1].sampling["seed"] == request_seed(5, 1)
    assert specs[2].sampling == sampling_kwargs(GREEDY)


def test_seeds_depend_on_call_seed_and_row_only():
    seeds = {request_seed(call, row) for call in range(50) for row in range(50)}
    assert len(seeds) == 2500
    assert request_seed(123, 4) == request_seed(123, 4)
    assert all(0 <= seed < 2**63 for seed in seeds)
    requests = [GenRequest((1,), None, SAMPLED)] * 6
    unseeded = build_requests(requests, {}, seed=None)
    assert all("seed" not in spec.sampling for spec in unseeded)


def test_unpublished_adapters_and_empty_prompts_are_refused():
    with pytest.raises(ValueError, match="node-hidden-1.*publish"):
        build_requests([GenRequest((1,), "node-hidden-1", SAMPLED)], ADAPTERS)
    with pytest.raises(ValueError, match="empty prompt"):
        build_requests([GenRequest((), None, SAMPLED)], ADAPTERS)


@pytest.mark.parametrize(
    ("count", "max_rows", "expected"),
    [
        (0, 256, []),
        (5, None, [range(0, 5)]),
        (1024, 256, [range(0, 256), range(256, 512), range(512, 768), range(768, 1024)]),
        (10, 4, [range(0, 4), range(4, 8), range(8, 10)]),
        (3, 8, [range(0, 3)]),
    ],
)
def test_row_chunks_cover_every_row_once_in_order(count, max_rows, expected):
    assert row_chunks(count, max_rows) == expected


def test_row_chunks_refuse_a_zero_size():
    with pytest.raises(ValueError):
        row_chunks(4, 0)
