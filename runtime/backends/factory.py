"""A plan and a `BackendChoice` -> the backend that runs it: `make_backend(plan, choice)`.

`transformers` loads the model in-process (CPU or GPU). `vllm` starts an in-process
engine, `server` connects to running `vllm serve` servers; for training, either engine
gets a transformers copy of the model that trains and publishes its adapters to it
(`EngineWithTrainer`), which also publishes fresh adapters to an engine that has none;
generation from saved adapters on an engine needs no training copy.
Heavy modules (torch, vLLM) load only inside `make_backend`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from neuromas.diagnostics import UserError
from neuromas.plan import Plan

from .vllm_options import VLLMOptions

BackendName = Literal["transformers", "vllm", "server"]
BACKENDS: tuple[BackendName, ...] = ("transformers", "vllm", "server")


@dataclass(frozen=True)
class BackendChoice:
    """Which engine runs a plan, and how.

    model: a model name, folder or hub id overriding the plan's; dtype and threads: the
    transformers model's; adapters_dir: saved adapters (`DIR/<slot>/`) to start from;
    trains: whether the adapters will be trained (an engine then gets a training copy);
    is_publisher: under data parallelism, whether this rank loads adapter versions on
    the servers (the others use its names); in_data_parallel_job: launched by torchrun.
    """

    name: BackendName = "transformers"
    model: str | None = None
    dtype: str = "auto"
    threads: int | None = None
    adapters_dir: Path | None = None
    servers: tuple[str, ...] = ()
    vllm: VLLMOptions = field(default_factory=VLLMOptions)
    trains: bool = False
    is_publisher: bool = True
    in_data_parallel_job: bool = False

    def __post_init__(self) -> None:
        if self.name not in BACKENDS:
            raise UserError(f"unknown backend {self.name!r} (expected one of: {', '.join(BACKENDS)})", exit_code=2)
        if self.name == "server" and not self.servers:
            raise UserError(
                "--backend server needs at least one --server URL\n"
                "  fix: start one with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve MODEL --enable-lora "
                "--max-lora-rank 16, then pass --server http://HOST:8000",
                exit_code=2,
            )
        if self.servers and self.name != "server":
            raise UserError(f"--server is used only by --backend server (the backend is {self.name})", exit_code=2)
        if self.name == "vllm" and self.in_data_parallel_job:
            raise UserError(
                "--backend vllm (an engine inside each process) does not run under torchrun yet\n"
                "  fix: serve the model with `vllm serve ... --enable-lora` and pass --backend server --server URL, "
                "or train on --backend transformers",
                exit_code=2,
            )


def make_backend(plan: Plan, choice: BackendChoice) -> Any:
    """Load or connect the backend `choice` names for `plan` (and its growth stages)."""
    engine = _engine(plan, choice)
    if engine is not None and choice.adapters_dir is not None and not choice.trains:
        from ..models.adapters import adapter_folders

        engine.set_adapters(adapter_folders(choice.adapters_dir, [slot.name for slot in plan.adapters], plan.adapter))
        return engine
    from .transformers import TransformersBackend

    backend = TransformersBackend.for_plan(plan, model=choice.model, dtype=choice.dtype, threads=choice.threads,
                                           adapters_dir=choice.adapters_dir)
    if engine is None:
        return backend
    from .engine_trainer import EngineWithTrainer

    return EngineWithTrainer(engine, backend.model)


def _engine(plan: Plan, choice: BackendChoice) -> Any:
    """The vLLM engine or server backend (None for transformers). Started before the
    training model takes its share of the GPU."""
    if choice.name == "vllm":
        from .vllm import VLLMBackend

        return VLLMBackend.for_plan(plan, choice.vllm, model=choice.model)
    if choice.name == "server":
        from .server import ServerBackend

        return ServerBackend.for_plan(plan, list(choice.servers), model=choice.model, is_publisher=choice.is_publisher)
    return None
