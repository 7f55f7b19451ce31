"""A plan and engine settings -> the keyword arguments of `vllm.LLM` (a plain dict).

From the plan (and its growth stages, so one engine serves every stage): the LoRA
rank (rounded up to a rank vLLM accepts), the most adapters one call uses
(`max_loras`: every adapter of a call is resident at once), the adapter count
(`max_cpu_loras`: twice the slots, so a new version of every slot is loaded before
the old ones are dropped, without evictions), and the longest sequence
(`max_prompt_tokens` + the largest `max_tokens`). From the command line: the GPU
memory share, a larger model length or rank, eager mode, tensor parallelism, sleep
mode, the scheduler's sequence limit, and the backend's `max_batch_rows` (the flags
are defined with the CLI's options: `neuromas.commands.options.add_vllm_arguments`).

Always on: prefix caching (vLLM keys cached blocks by adapter name, so group samples
of one node and nodes sharing an adapter reuse each other's prompt KV) and
`logprobs_mode="processed_logprobs"` (the log-prob of each sampled token after
temperature and top-p: the distribution it was sampled from, as `GenResult` defines).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neuromas.diagnostics import UserError
from neuromas.plan import Plan

# vllm/config/lora.py (0.26.0): MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

# Rows per `LLM.generate` call. vLLM's `LLM` admits 1024 sequences at once on GPUs of
# 70 GiB or more (not A100), but captures CUDA graphs only up to 512: a 1024-row call
# decodes without CUDA graphs and takes about twice as long as four calls of 256.
DEFAULT_MAX_BATCH_ROWS = 256

# The colocated default: half the GPU for vLLM, half for the training model.
DEFAULT_GPU_MEMORY_UTILIZATION = 0.5

VLLM_DTYPES = ("auto", "bfloat16", "float16", "float32")


def vllm_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts as `max_lora_rank` that holds a LoRA of `rank`."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise UserError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank ({VLLM_LORA_RANKS[-1]})")


@dataclass(frozen=True)
class VLLMOptions:
    """Engine settings that do not come from the plan. None: derived from the plan
    (max_model_len, max_lora_rank) or left to vLLM (max_num_seqs).

    max_batch_rows: most rows per `LLM.generate` call; a larger call is split into
    consecutive sub-calls of this size (None: never split). See DEFAULT_MAX_BATCH_ROWS.
    """

    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
    max_model_len: int | None = None
    max_lora_rank: int | None = None
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    sleep_mode: bool = False
    max_num_seqs: int | None = None
    max_batch_rows: int | None = DEFAULT_MAX_BATCH_ROWS
    seed: int = 0
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise UserError(f"--gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        for flag, value in (
            ("--max-model-len", self.max_model_len),
            ("--max-lora-rank", self.max_lora_rank),
            ("--tensor-parallel-size", self.tensor_parallel_size),
            ("--max-num-seqs", self.max_num_seqs),
            ("--max-batch-rows", self.max_batch_rows),
        ):
            if value is not None and value < 1:
                raise UserError(f"{flag} must be at least 1, got {value}")
        if self.dtype not in VLLM_DTYPES:
            raise UserError(f"unknown dtype '{self.dtype}' for vLLM (expected one of: {', '.join(VLLM_DTYPES)})")


def stage_plans(plan: Plan) -> list[Plan]:
    """The plan and the plans of its growth stages."""
    return [plan, *(stage.plan for stage in plan.growth)]


def adapter_slots(plan: Plan) -> list[str]:
    """Every adapter slot of the plan and its growth stages, first-seen order."""
    return list(dict.fromkeys(slot.name for each in stage_plans(plan) for slot in each.adapters))


def adapters_per_call(plan: Plan) -> int:
    """The most distinct adapters any one generation call uses (plan and growth stages)."""
    counts = [0]
    for each in stage_plans(plan):
        nodes = each.node_map()
        for call in each.calls:
            counts.append(len({nodes[node_id].adapter for node_id in call.nodes} - {None}))
    return max(counts)


def needed_model_len(plan: Plan) -> int:
    """The longest prompt plus the longest completion any node can produce."""
    return max(
        each.max_prompt_tokens + max(node.generation.max_tokens for node in each.nodes) for each in stage_plans(plan)
    )


def engine_kwargs(plan: Plan, options: VLLMOptions, model: str) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM(**kwargs)` serving `plan` from the model folder or hub id `model`.

    Raises UserError when --max-model-len or --max-lora-rank is below what the plan needs.
    """
    needed = needed_model_len(plan)
    if options.max_model_len is not None and options.max_model_len < needed:
        raise UserError(
            f"--max-model-len {options.max_model_len} is too short: prompts of up to max_prompt_tokens "
            f"plus the longest max_tokens need {needed}"
        )
    kwargs: dict[str, Any] = {
        "model": model,
        "tokenizer": model,
        "dtype": options.dtype,
        "seed": options.seed,
        "gpu_memory_utilization": options.gpu_memory_utilization,
        "max_model_len": options.max_model_len or needed,
        "enforce_eager": options.enforce_eager,
        "tensor_parallel_size": options.tensor_parallel_size,
        "enable_prefix_caching": True,
        "logprobs_mode": "processed_logprobs",
        "enable_sleep_mode": options.sleep_mode,
    }
    if options.max_num_seqs is not None:
        kwargs["max_num_seqs"] = options.max_num_seqs
    slots = adapter_slots(plan)
    if slots:
        rank = max(each.adapter.rank for each in stage_plans(plan) if each.adapters)
        if options.max_lora_rank is not None and options.max_lora_rank < rank:
            raise UserError(f"--max-lora-rank {options.max_lora_rank} is below the plan's LoRA rank {rank}")
        kwargs |= {
            "enable_lora": True,
            "max_lora_rank": vllm_lora_rank(max(rank, options.max_lora_rank or 0)),
            "max_loras": max(1, adapters_per_call(plan)),
            "max_cpu_loras": 2 * len(slots),
        }
    return kwargs
