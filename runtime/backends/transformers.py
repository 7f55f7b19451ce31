"""Batched GenRequests -> GenResults with transformers `generate`: one base model, a LoRA per row.

Rows are left-padded into one batch, and each row runs its own LoRA over the shared
base weights; rows without an adapter run the base model (peft's "__base__"). By default
the per-row adapters are computed by `lora_rows.stacked_lora_rows` (two matmuls per
layer for all adapters); `lora_rows="peft"` uses peft's own mixed-adapter batches
(`adapter_names=`, eval mode only), which give the same logits with more small ops.
The LoRA deltas and the output head are computed in fp32, by the same code as the
update's log-probs (`lora_rows`), so the sampler is the trained policy up to the
base model's own bf16 rounding. On a CPU, decoding steps attend by grouped matmuls
(`attention`; torch's kernel costs 5-10x more a step) and the linears run from weights
packed once (`packed_linear`; 1.3x faster, the same results). Prompts are prefilled
once per shared start: a GRPO group's samples of one node share their prompt, or its
start (`flat_prefill`, on a CPU, where padding is not computed either).

Sampling is done by `sampler.RowSampler`, the last logits processor: it applies each
row's temperature and top-p, draws each row's token itself, records its log-probability,
and hands `generate` a point mass on it, so `generate` runs greedy. `RowStops` ends each
row at its own max_tokens or stop string.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessorList,
    StaticCache,
    StoppingCriteria,
    StoppingCriteriaList,
)

from neuromas.plan import Plan

from .attention import SAMPLING_NAME, cpu_attention
from .base import BackendStats, FinishReason, GenRequest, GenResult
from .flat_prefill import flat_prefill
from .lora_rows import BASE_ADAPTER, fp32_output_head, row_adapters
from .packed_linear import packed_linears
from .sampler import RowSampler

LoraRows = Literal["stacked", "peft"]


class TransformersBackend:
    """A transformers causal LM (usually a PeftModel holding every slot) behind the Backend protocol.

    `model` and `tokenizer` are public: trainers compute log-probs and gradients on the
    same PeftModel that generates. `max_batch_rows` splits very large calls into
    consecutive chunks (None: never) to bound memory; it is still one `generate` call
    for the runtime and for `stats`. `lora_rows` picks how rows get their adapters
    (see the module docstring); "stacked" falls back to "peft" for LoRA variants it
    does not compute. `share_prompts`: shared prompt starts are prefilled once
    (`_prefill`). `cpu_kernels`: on a CPU, linears run from prepacked
    weights (`packed_linear`) and attention as grouped matmuls (`attention`).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        source: str | None = None,
        max_batch_rows: int | None = None,
        lora_rows: LoraRows = "stacked",
        share_prompts: bool = True,
        cpu_kernels: bool = True,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.max_batch_rows = max_batch_rows
        self.lora_rows = lora_rows
        self.share_prompts = share_prompts
        self.cpu_kernels = cpu_kernels
        self.stats = BackendStats()

    @classmethod
    def for_plan(
        cls,
        plan: Plan,
        *,
        model: str | None = None,
        dtype: str = "auto",
        threads: int | None = None,
        adapters_dir: Path | None = None,
        max_batch_rows: int | None = None,
        lora_rows: LoraRows = "stacked",
    ) -> TransformersBackend:
        """Load the plan's model (or `model`), attach one LoRA per adapter slot, and
        load trained weights from `adapters_dir/<slot>/` when given. Raises UserError."""
        from ..models.adapters import adapter_folders, attach_adapters
        from ..models.loading import load_model

        # Missing adapter folders, or ones saved with other LoRA settings, fail before the model loads.
        slots = [s.name for s in plan.adapters]
        folders = adapter_folders(adapters_dir, slots, plan.adapter) if adapters_dir is not None else None
        loaded = load_model(model or plan.model, dtype=dtype, threads=threads)
        peft_model = attach_adapters(loaded.model, plan, base_model=loaded.source)
        backend = cls(
            peft_model, loaded.tokenizer, source=loaded.source, max_batch_rows=max_batch_rows, lora_rows=lora_rows
        )
        if folders:
            backend.set_adapters(folders)
        return backend

    @property
    def has_adapters(self) -> bool:
        return hasattr(self.model, "peft_config")

    def set_adapters(self, adapters: Mapping[str, Path]) -> None:
        """Load saved peft folders into the slots of the same names."""
        from ..models.adapters import load_adapters

        load_adapters(self.model, adapters)

    def generate(self, requests: Sequence[GenRequest], *, seed: int | None = None) -> list[GenResult]:
        """Run all requests as one batch (see the module docstring); results in request order."""
        if not requests:
            return []
        if not self.has_adapters and any(request.adapter is not None for request in requests):
            raise ValueError("requests name adapters, but the model has no LoRA adapters attached")
        if seed is not None:
            torch.manual_seed(seed)
        chunk = self.max_batch_rows or len(requests)
        was_training = self.model.training
        self.model.eval()  # no dropout; and peft mixes adapters in one batch only in eval mode
        try:
            results = []
            for start in range(0, len(requests), chunk):
                results.extend(self._generate_batch(requests[start : start + chunk]))
        finally:
            if was_training:
                self.model.train()
        self.stats.record(results)
        return results

    def _generate_batch(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        device = self.model.device
        input_ids, attention_mask = left_pad([r.prompt_ids for r in requests], self.tokenizer.pad_token_id, device)
        prompt_length = input_ids.shape[1]
        settings = [r.generation for r in requests]
        sampler = RowSampler([g.temperature for g in settings], [g.top_p for g in settings], device)
        stops = RowStops(prompt_length, [g.max_tokens for g in settings], [g.stop for g in settings], self.tokenizer)
        eos_ids = self._eos_ids()
        config = GenerationConfig(
            do_sample=False,  # RowSampler samples and returns a point mass
            max_new_tokens=max(g.max_tokens for g in settings),
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=sorted(eos_ids),
            disable_compile=True,  # a static cache would otherwise compile the model on GPUs
        )
        # A preallocated cache sized for this call: the default one concatenates every
        # layer's keys and values each step (~20% of decoding at 400-token prompts on a
        # CPU). It is made here, not by `cache_implementation="static"`, which sizes it
        # to the longest call so far, so a call's result would depend on earlier calls.
        cache = StaticCache(
            config=self.model.config.get_text_config(), max_cache_len=prompt_length + config.max_new_tokens
        )
        context, extra = self.adapter_rows([r.adapter for r in requests])  # checks the names first
        if self.share_prompts:  # before `context`: it sets its own rows' adapters
            self._prefill(requests, input_ids, attention_mask, cache)
        model = self.model
        kernels = sampling_kernels(model) if self.cpu_kernels else nullcontext()
        with torch.inference_mode(), kernels, fp32_output_head(model, packed=self.cpu_kernels):
            with context:
                sequences = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    generation_config=config,
                    **{cache_argument(): cache},
                    logits_processor=LogitsProcessorList([sampler]),
                    stopping_criteria=StoppingCriteriaList([stops]),
                    **extra,
                )
        completions = sequences[:, prompt_length:]
        logprobs = sampler.sampled_logprobs(completions)  # (B, T)
        return [
            self._result(request, completions[row].tolist(), logprobs[row].tolist(), stops.ended_at[row], eos_ids)
            for row, request in enumerate(requests)
        ]

    def _prefill(
        self, requests: Sequence[GenRequest], input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Any
    ) -> None:
        """Fill `cache` with every prompt but its last token, each shared start once;
        `generate` then starts from the last prompt token. On a CPU (with `cpu_kernels`)
        as flat tokens (`flat_prefill`: common starts once, no padding); elsewhere rows
        with the same (prompt, adapter) share one padded prefill (`_prefill_shared_prompts`)."""
        if self.cpu_kernels:
            names = [request.adapter or BASE_ADAPTER for request in requests]
            if flat_prefill(self.model, input_ids, attention_mask, names, cache, prefer_peft=self.lora_rows == "peft"):
                return
        self._prefill_shared_prompts(requests, input_ids, attention_mask, cache)

    def _prefill_shared_prompts(
        self, requests: Sequence[GenRequest], input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Any
    ) -> None:
        """Where rows share (prompt, adapter), as a GRPO group's samples of one node do, run
        each distinct one's prompt but its last token once and copy its keys and values
        into every row of `cache`. Nothing is shared when every row is distinct (or a
        prompt is one token long): `generate` prefills them itself."""
        keys = [(tuple(r.prompt_ids), r.adapter) for r in requests]
        distinct = list(dict.fromkeys(keys))
        if len(distinct) == len(keys) or min(len(r.prompt_ids) for r in requests) < 2:
            return
        first = {key: keys.index(key) for key in distinct}
        unique = torch.tensor([first[key] for key in distinct], device=input_ids.device)
        rows = torch.tensor([distinct.index(key) for key in keys], device=input_ids.device)  # row -> its prompt
        mask = attention_mask[unique, :-1]
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)
        prefix = DynamicCache()
        context, extra = self.adapter_rows([requests[i].adapter for i in unique.tolist()])
        with torch.inference_mode(), context:
            self.model(input_ids=input_ids[unique, :-1], attention_mask=mask, position_ids=positions,
                       use_cache=True, logits_to_keep=1, **{cache_argument(): prefix}, **extra)
            for layer, shared in zip(cache.layers, prefix.layers, strict=True):
                layer.update(shared.keys[rows], shared.values[rows])

    def adapter_rows(self, adapters: Sequence[str | None]) -> tuple[Any, dict[str, Any]]:
        """(context manager, forward kwargs) that give row i adapter `adapters[i]` (None:
        the base model) in every forward pass inside the context."""
        if not self.has_adapters:
            return nullcontext(), {}
        names = [name or BASE_ADAPTER for name in adapters]
        unknown = set(names) - {BASE_ADAPTER} - set(self.model.peft_config)
        if unknown:
            slots = ", ".join(self.model.peft_config)
            raise ValueError(f"no adapter named {', '.join(sorted(unknown))} (slots: {slots})")
        return row_adapters(self.model, names, prefer_peft=self.lora_rows == "peft")

    def _result(
        self, request: GenRequest, tokens: list[int], logprobs: list[float], ended_at: int | None, eos_ids: set[int]
    ) -> GenResult:
        length = ended_at if ended_at is not None else len(tokens)
        reason: FinishReason = "length"
        if ended_at is not None and ended_at < request.generation.max_tokens:
            reason = "stop"  # a stop string ended it
        for position, token in enumerate(tokens[:length]):
            if token in eos_ids:
                length, reason = position + 1, "stop"
                break
        tokens = tokens[:length]
        text = cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), request.generation.stop)
        return GenResult(tuple(request.prompt_ids), tuple(tokens), tuple(logprobs[:length]), text, reason)

    def _eos_ids(self) -> set[int]:
        configured = self.model.generation_config.eos_token_id
        ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids


@contextmanager
def sampling_kernels(model: Any) -> Iterator[None]:
    """The CPU kernels of sampling inside the block: grouped attention for decoding steps
    and linears from packed weights (each leaves a model on another device alone)."""
    with cpu_attention(model, SAMPLING_NAME), packed_linears(model):
        yield


@functools.cache
def cache_argument() -> str:
    """The keyword that hands a cache to `generate` and to a model's forward: `cache` in
    recent transformers (5.24; `past_key_values` still works there, with a warning),
    `past_key_values` in older ones such as 5.19, which rejects `cache`."""
    from transformers import LlamaModel

    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows -> (input_ids (B, P), attention_mask (B, P)), padded on the left."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        if row:
            input_ids[index, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            attention_mask[index, width - len(row) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    positions = [text.find(s) for s in stop if s and s in text]
    return text[: min(positions)] if positions else text


class RowStops(StoppingCriteria):
    """Ends each row at its own max_tokens or stop string; `ended_at[row]` = tokens kept."""

    def __init__(self, prompt_length: int, max_tokens: Sequence[int], stops: Sequence[Sequence[str]], tokenizer: Any):
        self.prompt_length = prompt_length
        self.max_tokens = torch.tensor(max_tokens, dtype=torch.long)
        self.stops = [tuple(s for s in row if s) for row in stops]
        # Tokens to decode to see a stop string appear: every token has at least one character.
        self.window = [max((len(s) for s in row), default=0) + 1 for row in self.stops]
        self.tokenizer = tokenizer
        self.ended_at: list[int | None] = [None] * len(max_tokens)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_length
        done = (generated >= self.max_tokens).tolist()
        for row, stops in enumerate(self.stops):
            if stops and not done[row] and self.ended_at[row] is None:
                tail = input_ids[row, max(self.prompt_length, input_ids.shape[1] - self.window[row]) :].tolist()
                text = self.tokenizer.decode(tail, skip_special_tokens=True)
                done[row] = any(s in text for s in stops)
        for row, is_done in enumerate(done):
            if is_done and self.ended_at[row] is None:
                self.ended_at[row] = generated
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
