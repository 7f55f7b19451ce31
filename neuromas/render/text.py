"""Plan -> the text summary `neuromas compile` prints."""

from __future__ import annotations

from neuromas.plan import Call, Generation, Plan

MAX_LISTED = 8  # node ids listed per call before "+N more"


def edge_count(plan: Plan) -> int:
    return sum(len(node.reads) for node in plan.nodes)


def tokens_per_rollout(plan: Plan) -> int:
    """Generated tokens of one rollout if every node writes up to its max_tokens."""
    return sum(node.generation.max_tokens for node in plan.nodes)


def summarize(plan: Plan) -> str:
    title = f"system {plan.system}" + (f", stage {plan.stage}" if plan.stage else "")
    lines = [
        f"{title}: {len(plan.nodes)} nodes, {plan.depth} levels, {edge_count(plan)} edges, "
        f"{len(plan.adapters)} trainable adapters",
        f"model {plan.model}  lora rank {plan.adapter.rank} alpha {_number(plan.adapter.alpha)} on {', '.join(plan.adapter.targets)}",
    ]
    frozen = sum(node.adapter is None for node in plan.nodes)
    if frozen:
        lines.append(f"frozen nodes (base model, never trained): {frozen}")
    for level in plan.levels:
        if len(level.calls) == 1:
            lines.append(f"level {level.index}  1 call   {_call_line(level.calls[0])}")
            continue
        lines.append(f"level {level.index}  {len(level.calls)} calls  split: {level.calls[0].split_reason}")
        for i, call in enumerate(level.calls):
            lines.append(f"  call {level.index}.{i}  {_call_line(call)}")
    calls = len(plan.calls)
    lines.append(f"calls per rollout: {calls}  (one call per node: {len(plan.nodes)})")
    lines.append(f"generated tokens per rollout at max_tokens: {tokens_per_rollout(plan)}")
    for output in plan.outputs:
        how = f"majority vote over {len(output.nodes)} nodes" if output.aggregate == "vote" else ", ".join(output.nodes)
        lines.append(f"output {output.layer}: {how}" + (f"  format: {output.answer_format}" if output.answer_format else ""))
    if plan.train is not None:
        t = plan.train
        lines.append(f"train: {t.algorithm}, group {t.group}, lr {_number(t.lr)}, kl {_number(t.kl)}, clip {_number(t.clip)}, reward {t.reward}")
    for stage in plan.growth:
        start = "first" if stage.after_steps is None else f"after {stage.after_steps} steps"
        if stage.plateau_evals is not None:
            start += f" or plateau {stage.plateau_evals} evals"
        kinds: dict[str, int] = {}
        for origin in stage.origins:
            kinds[origin.kind] = kinds.get(origin.kind, 0) + 1
        made = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
        lines.append(f"growth stage {stage.name} ({start}): {len(stage.plan.nodes)} nodes, {stage.plan.depth} levels; nodes: {made}")
    lines += [f"warning: {warning}" for warning in plan.warnings]
    return "\n".join(lines) + "\n"


def _call_line(call: Call) -> str:
    shared = _listed([source.name for source in call.shared_prefix]) or "-"
    return f"{_listed(call.nodes)}   shared prefix: {shared}   {_settings(call.generation)}"


def _listed(names: "list[str] | tuple[str, ...]") -> str:
    text = " ".join(names[:MAX_LISTED])
    if len(names) > MAX_LISTED:
        text += f" ... (+{len(names) - MAX_LISTED} more)"
    return text


def _settings(g: Generation) -> str:
    text = f"max_tokens {g.max_tokens}  temperature {_number(g.temperature)}"
    if g.top_p != 1.0:
        text += f"  top_p {_number(g.top_p)}"
    if g.stop:
        text += "  stop " + " ".join(repr(s) for s in g.stop)
    return text


def _number(value: float) -> str:
    return f"{value:g}"
