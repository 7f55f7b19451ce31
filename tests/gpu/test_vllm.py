"""The vLLM backend on a real GPU: parity with the transformers backend, sampling log-probs,
adapter publication (correctness and time), and sleep/wake.

Run on a CUDA machine with `pip install -e '.[train,vllm,dev]'`, then
`python -m pytest -m gpu tests/gpu -s` (-s shows the printed reports).
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

import pytest

import neuromas
from neuromas.plan import Plan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vllm_engine"))
from vllm_helpers import QUESTIONS, compare, randomize_adapters, with_generation  # noqa: E402


@pytest.fixture(scope="module")
def plan3() -> Plan:
    """NeuroMAS-3, greedy, with short completions (identity is measured token for token)."""
    return with_generation(neuromas.compile("specs/neuromas3.nmas"), temperature=0.0, max_tokens=48)


@pytest.fixture(scope="module")
def vllm3(plan3, tmp_path_factory):
    """A vLLM engine for NeuroMAS-3 (started before the transformers model touches the GPU)."""
    from neuromas.runtime.backends.vllm import VLLMBackend
    from neuromas.runtime.backends.vllm_options import VLLMOptions

    backend = VLLMBackend.for_plan(
        plan3,
        VLLMOptions(gpu_memory_utilization=0.3, sleep_mode=True),
        adapters_root=tmp_path_factory.mktemp("vllm3-versions"),
    )
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def base(vllm3):
    from neuromas.runtime.models.loading import load_model

    return load_model(neuromas.compile("specs/neuromas3.nmas").model)


@pytest.fixture(scope="module")
def trainer(plan3, base):
    """The training model: a PeftModel with NeuroMAS-3's slots, fp32 LoRA as in an update."""
    from neuromas.runtime.models.adapters import attach_adapters
    from neuromas.runtime.training.update import prepare_for_update

    model = attach_adapters(copy.deepcopy(base.model), plan3, base_model=base.source)
    prepare_for_update(model)
    return model


def sync(backend, model, seed: int):
    """New random adapter weights in the training model, published to vLLM."""
    randomize_adapters(model, seed)
    return backend.publish(model)


def test_greedy_rollouts_match_the_transformers_backend(plan3, vllm3, base, trainer):
    from neuromas.runtime.backends.base import GenRequest
    from neuromas.runtime.backends.transformers import TransformersBackend
    from neuromas.runtime.generation.rollout import Runtime

    sync(vllm3, trainer, seed=1)
    reference = TransformersBackend(trainer, base.tokenizer)
    theirs = Runtime(plan3, reference).rollout(QUESTIONS, seed=0)
    ours = Runtime(plan3, vllm3).rollout(QUESTIONS, seed=0)

    levels = {node.id: node.level for node in plan3.nodes}
    pairs = list(zip(ours.records(), theirs.records(), strict=True))
    first = [(a, b) for a, b in pairs if levels[a.node] == 0]
    assert all(a.prompt_ids == b.prompt_ids for a, b in first), "level-0 prompts must be the same token ids"
    level0 = compare("parity, level 0", [a.completion_ids for a, _ in first], [b.completion_ids for _, b in first])
    overall = compare("parity, all nodes", [a.completion_ids for a, _ in pairs], [b.completion_ids for _, b in pairs])
    first_token = sum(a.completion_ids[:1] == b.completion_ids[:1] for a, b in first) / len(first)
    print(f"[parity] first tokens agree in {first_token:.0%} of level-0 completions")

    eos = {vllm3.tokenizer.eos_token_id, *_generation_eos(base.model)}
    for record in ours.records():
        assert record.logprobs == (0.0,) * len(record.completion_ids)  # greedy: a point mass
        if record.finish_reason == "stop":
            assert record.completion_ids[-1] in eos
        else:
            assert len(record.completion_ids) == 48

    # The adapters must matter, or parity would say nothing about them.
    base_rows = [GenRequest(a.prompt_ids, None, plan3.nodes[0].generation) for a, _ in first]
    base_ids = [result.completion_ids for result in vllm3.generate(base_rows, seed=0)]
    with_adapters = compare("adapters vs base model", [a.completion_ids for a, _ in first], base_ids)
    assert with_adapters <= 0.25
    assert first_token >= 0.9
    assert level0 >= 0.5
    assert overall >= 0.4


def test_sampling_logprobs_are_the_trainers_at_the_same_temperature(plan3, vllm3, trainer):
    from neuromas.runtime.generation.rollout import Runtime
    from neuromas.runtime.training.update import CompletionRow, micro_batches, score_batches

    sync(vllm3, trainer, seed=2)
    sampled = with_generation(plan3, temperature=0.7, top_p=1.0)
    rollout = Runtime(sampled, vllm3).rollout(QUESTIONS, group=2, seed=3)
    records = [r for r in rollout.records() if r.completion_ids]
    levels = {node.id: node.level for node in sampled.nodes}
    rows = [
        CompletionRow(i, r.node, levels[r.node], r.adapter, r.prompt_ids, r.completion_ids, 0.7)
        for i, r in enumerate(records)
    ]
    batches = [on_device(batch, trainer.device) for batch in micro_batches(rows)]
    diffs, base_diffs = [], []
    for batch, with_lora, without in zip(
        batches, score_batches(trainer, batches), score_batches(trainer, batches, use_adapters=False), strict=True
    ):
        for b, row_index in enumerate(batch.rows):
            ours = records[row_index].logprobs
            count = len(ours)
            assert all(value <= 0.0 for value in ours)
            diffs.extend(abs(x - y) for x, y in zip(ours, with_lora[b, :count].tolist(), strict=True))
            base_diffs.extend(abs(x - y) for x, y in zip(ours, without[b, :count].tolist(), strict=True))
    mean, base_mean = statistics.fmean(diffs), statistics.fmean(base_diffs)
    print(
        f"\n[log-probs] {len(diffs)} tokens: mean |vLLM - trainer| = {mean:.4f} "
        f"(p99 {statistics.quantiles(diffs, n=100)[-1]:.4f}); against the base model: {base_mean:.4f}"
    )
    assert mean < 0.1
    assert mean < 0.5 * base_mean


def test_publishing_new_adapters_changes_generations_and_drops_old_versions(plan3, vllm3, trainer, base):
    from neuromas.runtime.backends.base import GenRequest
    from neuromas.runtime.backends.transformers import TransformersBackend
    from neuromas.runtime.generation.prompts import PromptRenderer

    sync(vllm3, trainer, seed=3)
    old = vllm3.versions.published()
    renderer = PromptRenderer(plan3, vllm3.tokenizer)
    level0 = [node for node in plan3.nodes if node.level == 0]
    requests = [
        GenRequest(renderer.render(node, {"question": q}, {}).ids, node.adapter, node.generation)
        for node in level0
        for q in QUESTIONS
    ]
    before = [r.completion_ids for r in vllm3.generate(requests, seed=0)]

    timing = sync(vllm3, trainer, seed=4)
    new = vllm3.versions.published()
    print(f"\n[adapter sync] {timing.slots} slots: save {timing.save_s:.3f} s, load {timing.load_s:.3f} s, "
          f"drop {timing.drop_s:.3f} s, total {timing.total_s:.3f} s")
    assert {v.name for v in new.values()}.isdisjoint(v.name for v in old.values())
    assert vllm3.loaded_adapters() == {v.lora_id for v in new.values()}  # old ids are gone from the engine
    assert not any(v.path.exists() for v in old.values())
    assert vllm3.stats.last_sync == timing

    after = [r.completion_ids for r in vllm3.generate(requests, seed=0)]
    reference = [r.completion_ids for r in TransformersBackend(trainer, base.tokenizer).generate(requests)]
    unchanged = compare("before vs after the update", before, after)
    matches_new = compare("after the update vs transformers with the new weights", after, reference)
    matches_old = compare("before the update vs transformers with the new weights", before, reference)
    assert unchanged <= 0.25
    assert matches_new >= 0.5
    assert matches_new > matches_old


def test_adapter_sync_time_for_seven_nodes(base, tmp_path):
    from neuromas.runtime.models.adapters import attach_adapters
    from neuromas.runtime.backends.vllm import VLLMBackend
    from neuromas.runtime.backends.vllm_options import VLLMOptions
    from neuromas.runtime.training.update import prepare_for_update

    plan7 = neuromas.compile("specs/neuromas7.nmas")
    backend = VLLMBackend.for_plan(plan7, VLLMOptions(gpu_memory_utilization=0.2), adapters_root=tmp_path)
    try:
        model = attach_adapters(copy.deepcopy(base.model), plan7, base_model=base.source)
        prepare_for_update(model)
        timings = []
        for step in range(6):
            timings.append(sync(backend, model, seed=100 + step))
            assert backend.loaded_adapters() == {v.lora_id for v in backend.versions.published().values()}
        print("\n[adapter sync, NeuroMAS-7] step  slots  save_s  load_s  drop_s  total_s")
        for step, t in enumerate(timings):
            print(f"  {step:>4}  {t.slots:>5}  {t.save_s:6.3f}  {t.load_s:6.3f}  {t.drop_s:6.3f}  {t.total_s:7.3f}")
        steady = statistics.median(t.total_s for t in timings[1:])
        print(f"  median per step after the first: {steady:.3f} s")
        assert all(t.slots == 7 for t in timings)
        assert steady < 30.0
    finally:
        backend.close()


def test_sleep_frees_memory_and_wake_up_restores_adapters(plan3, vllm3, trainer):
    import torch

    from neuromas.runtime.generation.rollout import Runtime

    sync(vllm3, trainer, seed=5)
    vllm3.llm.reset_prefix_cache()
    before = [r.completion_ids for r in Runtime(plan3, vllm3).rollout(QUESTIONS, seed=0).records()]
    free_awake = torch.cuda.mem_get_info()[0]
    start = time.perf_counter()
    vllm3.sleep()
    slept = time.perf_counter()
    free_asleep = torch.cuda.mem_get_info()[0]
    vllm3.wake_up()
    woke = time.perf_counter()
    after = [r.completion_ids for r in Runtime(plan3, vllm3).rollout(QUESTIONS, seed=0).records()]
    freed = (free_asleep - free_awake) / 2**30
    print(f"\n[sleep] freed {freed:.1f} GiB; sleep {slept - start:.2f} s, wake {woke - slept:.2f} s")
    assert freed > 1.0
    assert compare("before sleep vs after wake", before, after) >= 0.9


def on_device(batch, device):
    """A MicroBatch with its tensors on `device` (runtime.update leaves them where collate made them)."""
    return batch._replace(**{
        field: value.to(device) for field, value in batch._asdict().items() if hasattr(value, "to")
    })


def _generation_eos(model) -> set[int]:
    configured = model.generation_config.eos_token_id
    return set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
