"""Rollouts of compiled specs on the real bundled model: batching per call, records, seeds, votes."""

from __future__ import annotations

import sys
from itertools import groupby
from pathlib import Path

import pytest

from neuromas.runtime import Runtime, TransformersBackend
from neuromas.runtime.generation.answers import normalize_text
from neuromas.runtime.generation.rollout import majority_vote

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runtime_helpers.py (pytest runs in importlib mode)
from runtime_helpers import compile_small  # noqa: E402

QUESTIONS = ["What is 2 + 3?", "What is the capital of France?"]

# Node 0 samples cooler than its siblings, so level 0 takes two calls; h[1] is frozen.
SPLIT_LEVEL_SPEC = """
system split {
    model "smollm2-135m-instruct"
    adapter lora(rank = 4, alpha = 8, targets = [q_proj, v_proj])
    input question
    layer h width 3 {
        max_tokens 3
        node 0 { temperature 0.3 }
        node 1 { share frozen }
    }
    layer answer width 1 { max_tokens 3 }
    h <- question
    answer <- h dense, question
    output answer
}
"""


class RecordingBackend(TransformersBackend):
    """The real backend, keeping each generate call's requests."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = []

    def generate(self, requests, *, seed=None):
        self.batches.append(list(requests))
        return super().generate(requests, seed=seed)


def test_neuromas3_answers_two_questions_end_to_end(make_backend):
    plan = compile_small("neuromas3.nmas", max_tokens=10)
    backend = make_backend(plan, RecordingBackend)
    rollout = Runtime(plan, backend, seed=3).rollout(QUESTIONS)

    assert rollout.calls == backend.stats.calls == 2  # one per level
    assert [len(batch) for batch in backend.batches] == [2 * 2, 2 * 1]  # inputs x width
    for input_index in range(2):
        sample = rollout.samples[input_index][0]
        assert list(sample.records) == ["hidden[0]", "hidden[1]", "answer[0]"]
        for record in sample.records.values():
            assert 1 <= len(record.completion_ids) <= 10
            assert len(record.logprobs) == len(record.completion_ids)
            assert all(logprob <= 0.0 for logprob in record.logprobs)
            assert record.adapter == plan.node_map()[record.node].adapter
        answer = rollout.answer(input_index)
        assert answer.text == sample.records["answer[0]"].text
        # The answer node read both hidden messages, labeled by position, and the question.
        prompt = backend.tokenizer.decode(sample.records["answer[0]"].prompt_ids)
        assert QUESTIONS[input_index] in prompt
        for node_id in ("hidden[0]", "hidden[1]"):
            assert f"From {node_id} (layer 1):\n{sample.records[node_id].text.strip()}" in prompt
    traces = list(rollout.traces())
    assert len(traces) == 2 and traces[1]["inputs"] == {"question": QUESTIONS[1]}


def test_each_plan_call_is_one_backend_call_with_rows_grouped(make_backend):
    plan = compile_small(SPLIT_LEVEL_SPEC, max_tokens=3)
    assert len(plan.calls) == 3 and plan.depth == 2
    assert None in {node.adapter for node in plan.nodes}
    backend = make_backend(plan, RecordingBackend)
    rollout = Runtime(plan, backend).rollout(QUESTIONS, group=2)

    assert rollout.calls == len(backend.batches) == 3
    for call, batch in zip(plan.calls, backend.batches):
        assert len(batch) == len(call.nodes) * 2 * 2  # nodes x inputs x group
        adapters = [request.adapter for request in batch]
        runs = [key for key, _ in groupby(adapters)]
        assert len(runs) == len(set(adapters))  # each adapter's rows are adjacent
        # Both samples of one input share their (level-0) prompt and sit side by side.
        for start in range(0, len(batch), 2):
            assert batch[start].adapter == batch[start + 1].adapter
    first_call = backend.batches[0]
    assert first_call[0].prompt_ids == first_call[1].prompt_ids != first_call[2].prompt_ids


def test_frozen_layers_run_one_call_per_level_without_adapters(make_backend):
    plan = compile_small("moa.nmas", max_tokens=3)  # share frozen: no peft model at all
    backend = make_backend(plan)
    assert not backend.has_adapters
    rollout = Runtime(plan, backend).rollout(QUESTIONS[:1])
    assert rollout.calls == plan.depth == 4
    assert {record.adapter for record in rollout.records()} == {None}


def test_same_seed_same_rollout_and_another_seed_differs(make_backend):
    plan = compile_small("neuromas3.nmas", max_tokens=6)
    runtime = Runtime(plan, make_backend(plan))
    first = runtime.rollout(QUESTIONS[:1], group=2, seed=11)
    again = runtime.rollout(QUESTIONS[:1], group=2, seed=11)
    other = runtime.rollout(QUESTIONS[:1], group=2, seed=12)

    def key(rollout):
        return [(r.node, r.completion_ids, r.logprobs, r.text) for r in rollout.records()]

    assert key(first) == key(again)
    assert key(first) != key(other)
    # The two group samples are independent draws.
    samples = first.samples[0]
    assert samples[0].records["hidden[0]"].completion_ids != samples[1].records["hidden[0]"].completion_ids


def test_vote_output_counts_the_layers_answers(make_backend):
    plan = compile_small("self_consistency.nmas", max_tokens=6)
    rollout = Runtime(plan, make_backend(plan)).rollout(["Reply with one word: yes or no?"])
    answer = rollout.answer()
    texts = [record.text for record in rollout.records()]
    assert len(texts) == 7 and rollout.calls == 1
    assert sum(answer.votes.values()) <= 7
    if answer.votes:  # the winner got the most votes
        assert answer.votes[normalize_text(answer.answer)] == max(answer.votes.values())
    else:
        assert answer.answer is None


def test_majority_vote_normalizes_and_breaks_ties_by_node_order():
    texts = ["The answer is 1,234.", "answer: 1234", "Answer: 7", "no idea\n**7**"]
    answer = majority_vote("sample", texts, "number")
    assert answer.votes == {"1234": 2, "7": 2}
    assert answer.text == "1234"  # tie: the earliest node's answer wins
    assert majority_vote("sample", ["", " "], "text") == ("sample", "", None, {})


def test_prompt_truncation_in_a_rollout_is_counted_and_bounded(make_backend):
    import msgspec

    plan = compile_small("neuromas3.nmas", max_tokens=16)
    backend = make_backend(plan)
    free = Runtime(plan, backend, seed=2).rollout(QUESTIONS[:1])
    answer_length = len(free.samples[0][0].records["answer[0]"].prompt_ids)
    hidden_length = max(len(free.samples[0][0].records[n].prompt_ids) for n in ("hidden[0]", "hidden[1]"))
    limit = answer_length - 6
    assert hidden_length < limit
    tight = Runtime(msgspec.structs.replace(plan, max_prompt_tokens=limit), backend, seed=2).rollout(QUESTIONS[:1])
    records = tight.samples[0][0].records
    assert records["hidden[0]"].truncated == records["hidden[1]"].truncated == ()
    assert records["hidden[0]"].completion_ids == free.samples[0][0].records["hidden[0]"].completion_ids
    assert len(records["answer[0]"].prompt_ids) <= limit
    assert set(records["answer[0]"].truncated) <= {"hidden[0]", "hidden[1]"}
    assert tight.truncations == len(records["answer[0]"].truncated) >= 1


def test_missing_inputs_are_reported(make_backend):
    plan = compile_small("neuromas3.nmas")
    runtime = Runtime(plan, make_backend(plan))
    with pytest.raises(ValueError, match="lacks question"):
        runtime.rollout([{"prompt": "hi"}])
    with pytest.raises(ValueError, match="group must be at least 1"):
        runtime.rollout(["hi"], group=0)
