"""`neuromas run SPEC --input TEXT`: run a system once on one input and print its answer.

Also holds the runtime options that run, rollout, train and eval share, the backend
choice among them: `transformers` (CPU or GPU), `vllm` (an in-process engine on this
machine's GPUs) or `server` (running `vllm serve` servers). With an engine backend the
adapters are trained on a transformers copy of the model and published to the engine.
torch, transformers and peft load only inside the handlers (`neuromas.runtime`), never
when the CLI starts.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import TYPE_CHECKING, Any

import neuromas
from neuromas.diagnostics import UserError

if TYPE_CHECKING:
    from neuromas.plan import Plan

BACKENDS = ("transformers", "vllm", "server")

EXAMPLES = """examples:
  neuromas run specs/neuromas3.nmas --input "What is 12 * 7?"
  neuromas run specs/neuromas3.nmas --input "What is 12 * 7?" --trace --max-tokens 32
  neuromas run my.nmas --input question="..." --input context="..." --adapters runs/step-300
  neuromas run specs/neuromas3.nmas --input "What is 12 * 7?" --backend vllm --tensor-parallel-size 2
  neuromas run specs/neuromas3.nmas --input "What is 12 * 7?" --backend server --server http://gpu1:8000

exit status: 0 ok, 2 bad spec or usage, 1 runtime failure (model, adapters)"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a system on one input and print its answer",
        description="Run a .nmas system on one input and print the answer.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("spec", metavar="SPEC")
    parser.add_argument(
        "--input", action="append", required=True, metavar="TEXT",
        help="the input text; for several inputs, NAME=TEXT once per input",
    )
    parser.add_argument("--trace", action="store_true", help="print every node's message as a tree by level")
    add_runtime_options(parser)
    parser.set_defaults(handler=run)


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """Options every command that runs a plan shares."""
    parser.add_argument(
        "--model", metavar="MODEL", help="bundled model name, local HF folder or hub id (default: the spec's)"
    )
    parser.add_argument("--group", type=int, default=1, metavar="G", help="samples per input (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"),
                        help="model dtype (default: auto, bfloat16 where native)")
    parser.add_argument("--adapters", metavar="DIR", help="load trained adapters from DIR/<slot>/")
    parser.add_argument("--max-tokens", type=int, metavar="N", help="cap every node's max_tokens at N")
    parser.add_argument("--stage", metavar="NAME", help="run this growth stage's plan")
    parser.add_argument("--backend", choices=BACKENDS, default="transformers",
                        help="generation engine: transformers (CPU or GPU, the default), vllm (in-process, "
                        "CUDA GPUs) or server (vllm serve servers given with --server)")
    parser.add_argument("--server", action="append", metavar="URL",
                        help="base URL of a `vllm serve MODEL --enable-lora` server (with "
                        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) for --backend server; repeat for several")
    from neuromas.runtime.backends.vllm_options import add_vllm_arguments

    add_vllm_arguments(parser)
    parser.add_argument("--allow-outside-paths", action="store_true", help="let the spec name files outside its folder")


def load_plan(args: argparse.Namespace) -> Plan:
    """The spec's plan with the command-line overrides applied (without loading a model)."""
    plan = neuromas.compile(args.spec, allow_outside_paths=args.allow_outside_paths)
    if args.stage is not None:
        try:
            plan = plan.stage_plan(args.stage).plan
        except KeyError as err:
            raise UserError(err.args[0], exit_code=2) from None
    if args.group < 1:
        raise UserError(f"--group must be at least 1, got {args.group}", exit_code=2)
    if args.max_tokens is not None:
        if args.max_tokens < 1:
            raise UserError(f"--max-tokens must be at least 1, got {args.max_tokens}", exit_code=2)
        from neuromas.runtime.generation.rollout import cap_max_tokens

        plan = cap_max_tokens(plan, args.max_tokens)
    return plan


def check_backend_options(args: argparse.Namespace) -> None:
    """Raise UserError (exit 2) for backend options that do not fit together: --backend
    server without --server, --server or vLLM engine flags with another backend."""
    backend = getattr(args, "backend", "transformers")
    servers = getattr(args, "server", None) or []
    if backend == "server" and not servers:
        raise UserError(
            "--backend server needs at least one --server URL\n"
            "  fix: start one with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve MODEL --enable-lora "
            "--max-lora-rank 16, then pass --server http://HOST:8000",
            exit_code=2,
        )
    if servers and backend != "server":
        raise UserError(f"--server is used only by --backend server (the backend is {backend})", exit_code=2)
    if backend != "vllm":
        changed = [flag for flag, dest, default in _vllm_flags() if getattr(args, dest, default) != default]
        if changed:
            raise UserError(f"{', '.join(changed)}: vLLM engine option(s), used only with --backend vllm", exit_code=2)


def _vllm_flags() -> list[tuple[str, str, Any]]:
    """(flag, dest, default) of every option `add_vllm_arguments` adds."""
    from neuromas.runtime.backends.vllm_options import add_vllm_arguments

    parser = argparse.ArgumentParser(add_help=False)
    add_vllm_arguments(parser)
    return [(action.option_strings[0], action.dest, action.default) for action in parser._actions]


def build_runtime(plan: Plan, args: argparse.Namespace) -> Any:
    """Load the model and adapters on the chosen backend and return a Runtime; raises UserError.

    Under torchrun this process joins the data-parallel job first, so that a GPU rank
    loads its model onto its own GPU.
    """
    from pathlib import Path

    from neuromas.runtime import Runtime, TransformersBackend, resolve_model
    from neuromas.runtime.training import distributed

    check_backend_options(args)
    backend_name = getattr(args, "backend", "transformers")
    resolve_model(args.model or plan.model)  # a missing model fails before anything loads
    group = distributed.init_from_env()
    if group is not None and backend_name == "vllm":
        raise UserError(
            "--backend vllm (an engine inside each process) does not run under torchrun yet\n"
            "  fix: serve the model with `vllm serve ... --enable-lora` and pass --backend server --server URL, "
            "or train on --backend transformers",
            exit_code=2,
        )
    adapters_dir = Path(args.adapters) if args.adapters else None
    engine = None
    if backend_name == "vllm":  # started before the training model takes its share of the GPU
        from neuromas.runtime.backends.vllm import VLLMBackend
        from neuromas.runtime.backends.vllm_options import VLLMOptions

        engine = VLLMBackend.for_plan(plan, VLLMOptions.from_args(args), model=args.model)
    elif backend_name == "server":
        from neuromas.runtime.backends.server import ServerBackend

        # Under torchrun rank 0 loads each adapter version on the servers; the others use its names.
        engine = ServerBackend.for_plan(plan, args.server, model=args.model, is_publisher=group is None or group.is_main)
    if engine is not None and adapters_dir is not None and getattr(args, "command", None) != "train":
        engine.set_adapters(_adapter_folders(plan, adapters_dir))  # generation only: no training copy
        return Runtime(plan, engine, seed=args.seed)
    backend = TransformersBackend.for_plan(
        plan,
        model=args.model,
        dtype=args.dtype,
        threads=args.threads,
        adapters_dir=adapters_dir,
    )
    if engine is not None:
        from neuromas.runtime.backends.engine_trainer import EngineWithTrainer

        backend = EngineWithTrainer(engine, backend.model)
    return Runtime(plan, backend, seed=args.seed)


def _adapter_folders(plan: Plan, root: Any) -> Any:
    from neuromas.runtime import adapter_folders

    return adapter_folders(root, [slot.name for slot in plan.adapters], plan.adapter)


def run(args: argparse.Namespace) -> int:
    plan = load_plan(args)
    inputs = parse_inputs(args.input, plan.inputs)
    runtime = build_runtime(plan, args)
    rollout = runtime.rollout([inputs], group=args.group)
    for sample in rollout.samples[0]:
        if args.trace:
            print(render_trace(plan, inputs, sample))
        prefix = f"sample {sample.sample}: " if args.group > 1 else ""
        for layer, answer in sample.answers.items():
            label = f"{layer}: " if len(sample.answers) > 1 else ""
            print(f"{prefix}{label}{answer.text}")
    return 0


def parse_inputs(values: list[str], names: tuple[str, ...]) -> dict[str, str]:
    """`--input` values -> {input name: text}; raises UserError (exit 2) for a bad set."""
    if len(names) == 1 and len(values) == 1 and not values[0].startswith(f"{names[0]}="):
        return {names[0]: values[0]}
    result = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or name not in names:
            raise UserError(f"--input {value!r}: expected NAME=TEXT with NAME one of: {', '.join(names)}", exit_code=2)
        result[name] = text
    missing = [name for name in names if name not in result]
    if missing:
        raise UserError(f"missing --input for: {', '.join(missing)}", exit_code=2)
    return result


def render_trace(plan: Plan, inputs: dict[str, str], sample: Any) -> str:
    """Every node's message as a tree: the system, its levels, each level's nodes."""
    lines = [f"{plan.system}  (sample {sample.sample})"]
    for name, text in inputs.items():
        lines.append(f"│  {name}: {_one_line(text)}")
    for level_index, level in enumerate(plan.levels):
        is_last_level = level_index == len(plan.levels) - 1
        lines.append(f"{'└' if is_last_level else '├'}─ level {level.index}")
        stem = "   " if is_last_level else "│  "
        node_ids = [node_id for call in level.calls for node_id in call.nodes]
        for position, node_id in enumerate(node_ids):
            record = sample.records[node_id]
            is_last_node = position == len(node_ids) - 1
            adapter = record.adapter or "frozen"
            lines.append(
                f"{stem}{'└' if is_last_node else '├'}─ {node_id}  "
                f"[{adapter}, {len(record.completion_ids)} tokens, {record.finish_reason}]"
            )
            body = stem + ("   " if is_last_node else "│  ")
            for text_line in (record.text.strip() or "(empty)").splitlines():
                for wrapped in textwrap.wrap(text_line, 100) or [""]:
                    lines.append(body + wrapped)
    return "\n".join(lines)


def _one_line(text: str, width: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."
