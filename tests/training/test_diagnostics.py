"""Per-node diagnostics from a real rollout of NeuroMAS-3 on the bundled model."""

import math

import pytest

from neuromas.runtime.training.diagnostics import answer_overlap, node_diagnostics, node_kl


def test_node_kl_is_the_k3_estimate_per_node_over_its_tokens():
    import torch

    from neuromas.runtime.training.packing import CompletionRow, micro_batches

    half, quarter = math.log(0.5), math.log(0.25)
    rows = [CompletionRow(0, "hidden.0", 0, "a", (1, 2), (3, 4), 1.0, (half, half)),
            CompletionRow(1, "hidden.0", 0, "a", (1, 2), (5,), 1.0, (half,)),
            CompletionRow(0, "hidden.1", 0, "b", (1, 2), (6, 7), 1.0, (quarter, quarter))]
    batches = micro_batches(rows)
    # The base gives every token probability 1/4: per token exp(d) - d - 1 with d = ref - policy.
    refs = [torch.full(batch.completion_mask.shape, quarter) for batch in batches]
    kl = node_kl(rows, batches, refs)
    assert kl == {"node/hidden.0/kl": pytest.approx(0.5 + math.log(2) - 1, abs=1e-5), "node/hidden.1/kl": 0.0}


def test_answer_overlap_is_the_share_of_the_message_words_the_answer_repeats():
    assert answer_overlap("The sum is 42", "42") == pytest.approx(1 / 4)
    assert answer_overlap("forty two", "The answer is 42") == 0.0
    assert answer_overlap("", "42") == 0.0
    assert answer_overlap("Yes, YES yes", "yes") == 1.0


def test_node_diagnostics_of_a_real_rollout(fresh_model, make_plan):
    from neuromas.runtime import Runtime, TransformersBackend, attach_adapters

    model, tokenizer = fresh_model
    plan = make_plan()
    backend = TransformersBackend(attach_adapters(model, plan), tokenizer)
    rollout = Runtime(plan, backend).rollout(["What is 2 + 3?", "What is 4 + 1?"], group=2, seed=0)
    diagnostics = node_diagnostics(rollout)
    nodes = [node.id for node in rollout.plan.nodes]
    assert set(diagnostics) == {f"node/{n}/{k}" for n in nodes for k in ("tokens", "entropy")} | {
        f"node/{n}/answer_overlap" for n in nodes if not n.startswith("answer")}
    for node in nodes:
        records = [s.records[node] for per_input in rollout.samples for s in per_input]
        assert diagnostics[f"node/{node}/tokens"] == pytest.approx(
            sum(len(r.completion_ids) for r in records) / len(records), abs=1e-4)
        assert diagnostics[f"node/{node}/entropy"] > 0 and math.isfinite(diagnostics[f"node/{node}/entropy"])
    assert all(0.0 <= diagnostics[k] <= 1.0 for k in diagnostics if k.endswith("answer_overlap"))


def test_plot_draws_the_per_node_panels_when_rows_have_them(tmp_path):
    import json

    from neuromas.cli import main

    plain = [{"step": s, "reward_mean": 0.1 * s, "reward_std": 0.1, "accuracy": 0.0, "loss": 0.2} for s in range(1, 6)]
    with_nodes = [row | {"node/hidden.0/tokens": 10 + row["step"], "node/hidden.0/entropy": 1.5,
                         "node/hidden.0/answer_overlap": 0.2, "node/answer.0/tokens": 4} for row in plain]
    sizes = []
    for name, rows in (("plain", plain), ("nodes", with_nodes)):
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        assert main(["plot", str(run), "-o", str(tmp_path / f"{name}.png")]) == 0
        from PIL import Image

        sizes.append(Image.open(tmp_path / f"{name}.png").size)
    assert sizes[1][1] > sizes[0][1]  # a third row of panels: tokens, entropy, answer overlap per node
