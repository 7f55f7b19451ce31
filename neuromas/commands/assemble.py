"""Parsed options -> what a command runs: the plan, the task, the backend choice, the runtime.

Everything here that can find a usage error does so without loading a model (torch
loads only in `build_runtime`), so commands call it first: `load_plan`, `load_task`,
`check_backend`, then the output path checks of `paths`, and only then `build_runtime`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import neuromas
from neuromas.commands.options import changed_vllm_options, vllm_options
from neuromas.diagnostics import UserError

if TYPE_CHECKING:
    from neuromas.plan import Plan
    from neuromas.runtime.backends.factory import BackendChoice

DEFAULT_BATCH = 8  # inputs per rollout of run, rollout and eval (train: the spec's batch)

TASK_HELP = """tasks (--task):
  jsonl:PATH, PATH.jsonl  one JSON object per line: {"question": "...", "answer": "..."}
                        (fields: --question-field, --answer-field); reward: the spec's `reward`
  hf:ID                 a Hugging Face Hub dataset, e.g. hf:openai/gsm8k --task-option config=main
                        (needs the network or the local cache); fields as for jsonl
  hf:FOLDER             a local folder of data files, or one written by `save_to_disk`
  hf:FORMAT:FILE        a local data file read by `datasets` (FORMAT: json, csv, parquet);
  PATH.json, PATH.csv, PATH.parquet   the same, the format from the suffix
                        hf settings: --task-option split=NAME (default train), config=NAME, revision=REV
  reasoning_gym:NAME    a reasoning_gym generator (settings: --task-option KEY=VALUE);
                        reward: its own score_answer, unless --reward names one
  humaneval[:PROBLEMS]  HumanEval code problems: all 164 (humaneval, humaneval:all) or numbers and
                        inclusive ranges (humaneval:0-19,40); reward: pass@1, the answer's code run
                        against the problem's tests in a sandbox (settings: timeout_s, default 5,
                        memory_mb, default 1024, file_mb, default 16), unless --reward names one

multiple choice (jsonl, hf): --choices-field NAME names a field holding each question's options
  (a list, or {"text": [...], "label": [...]}); the question gets them as lettered lines
  "A. ...", the answer (an index from 0, a label, a letter or an option's text) becomes its
  letter, and the reward is that letter found in the output, unless --reward names one"""


def load_plan(args: argparse.Namespace) -> Plan:
    """The spec's plan (of --stage, when given) with --lora-rank, --max-tokens and --answer-format
    applied, without loading a model; raises CompileError or UserError (exit 2)."""
    plan = neuromas.compile(args.spec, stage=getattr(args, "stage", None),
                            allow_outside_paths=getattr(args, "allow_outside_paths", False))
    if getattr(args, "lora_rank", None) is not None:
        plan = plan.with_lora_rank(args.lora_rank)
    if getattr(args, "max_tokens", None) is not None:
        from neuromas.runtime.generation.rollout import cap_max_tokens

        plan = cap_max_tokens(plan, args.max_tokens)
    if getattr(args, "answer_format", None) is not None:
        plan = plan.with_answer_format(args.answer_format)
    return plan


def require(args: argparse.Namespace, dest: str, command: str) -> Any:
    """The value of a required option, or UserError (exit 2) naming it."""
    value = getattr(args, dest)
    if value is None:
        raise UserError(f"{command} needs --{dest.replace('_', '-')}", exit_code=2)
    return value


def load_task(args: argparse.Namespace, input_names: tuple[str, ...], seed: int) -> Any:
    """The task --task and its options name, for a plan with these inputs; raises UserError
    (exit 2 for a bad reference or setting, 1 for data that cannot be read)."""
    from neuromas.runtime.tasks.registry import TaskOptions, load_task as load, parse_task_options

    options = TaskOptions(
        input_names=input_names,
        seed=seed,
        question_field=args.question_field,
        answer_field=args.answer_field,
        choices_field=args.choices_field,
        options=parse_task_options(args.task_option),
    )
    return load(args.task, options)


def make_scorer(plan: Plan, task: Any, args: argparse.Namespace) -> Any:
    """The scorer of a run's answers: --reward, else the task's own, else the spec's
    reward; raises UserError (exit 2) for an unknown reward or code without --allow-code."""
    from neuromas.runtime.training.scoring import make_scorer as make

    if args.reward is not None and not args.reward.strip():
        raise UserError("--reward is empty: name a reward, or leave the option out for the spec's", exit_code=2)
    plan_reward = plan.train.reward if plan.train is not None else "exact_match"
    return make(plan_reward, task, args.reward, args.allow_code)


def check_backend(args: argparse.Namespace, *, trains: bool = False) -> BackendChoice:
    """The backend the options choose, checked without loading anything; raises UserError
    (exit 2) for options that do not fit together."""
    from neuromas.runtime.backends.factory import BackendChoice

    if args.backend != "vllm":
        changed = changed_vllm_options(args)
        if changed:
            raise UserError(f"{', '.join(changed)}: vLLM engine option(s), used only with --backend vllm",
                            exit_code=2)
    return BackendChoice(
        name=args.backend,
        model=args.model,
        dtype=args.dtype,
        threads=args.threads,
        adapters_dir=Path(args.adapters) if getattr(args, "adapters", None) else None,
        servers=tuple(args.server or ()),
        vllm=vllm_options(args),
        trains=trains,
        in_data_parallel_job=int(os.environ.get("WORLD_SIZE", "1")) > 1,
    )


def use_checkpoint(args: argparse.Namespace) -> None:
    """--checkpoint DIR -> args.adapters (its verified adapters folder); raises UserError."""
    if args.checkpoint:
        if args.adapters:
            raise UserError("--checkpoint and --adapters both name trained adapters: give one", exit_code=2)
        args.adapters = str(checkpoint_adapters(Path(args.checkpoint)))


def checkpoint_adapters(path: Path) -> Path:
    """The adapters folder of a checkpoint (verified against its manifest): `path/adapters`,
    or that of the newest checkpoint of a run folder that verifies, or `path` itself when
    it holds adapters."""
    from neuromas.runtime.training.checkpoint import list_checkpoints, newest_verified, verify_checkpoint

    if (path / "adapters").is_dir():
        verify_checkpoint(path)
        return path / "adapters"
    if list_checkpoints(path):
        newest, skipped = newest_verified(path)
        for bad in skipped:
            print(f"skipping {bad.path.name}: {bad.reason}", file=sys.stderr)
        if newest is None:
            raise UserError(f"no checkpoint in '{path}' passes its manifest check (see above)")
        return newest / "adapters"
    if path.is_dir() and any((child / "adapter_config.json").is_file() for child in path.iterdir()):
        return path
    raise UserError(f"'{path}' holds no checkpoint or adapters (expected a run folder, a checkpoint, or DIR/<slot>/)")


def check_adapters(plan: Plan, args: argparse.Namespace) -> None:
    """Saved --adapters exist for every slot with the plan's LoRA settings (read from their
    configs, before the model loads); raises UserError."""
    if getattr(args, "adapters", None):
        from neuromas.runtime.models.adapters import adapter_folders

        adapter_folders(Path(args.adapters), [slot.name for slot in plan.adapters], plan.adapter)


def build_runtime(plan: Plan, choice: BackendChoice, seed: int) -> Any:
    """Load the model (and adapters) on the chosen backend and return a Runtime.

    Under torchrun this process joins the data-parallel job first, so that a GPU rank
    loads its model onto its own GPU (and rank 0 alone publishes to servers).
    """
    import dataclasses

    from neuromas.runtime import Runtime, resolve_model
    from neuromas.runtime.backends.factory import make_backend
    from neuromas.runtime.training import distributed

    resolve_model(choice.model or plan.model)  # a missing model fails before anything loads
    group = distributed.init_from_env()
    if group is not None:
        choice = dataclasses.replace(choice, is_publisher=group.is_main)
    return Runtime(plan, make_backend(plan, choice), seed=seed)


def runtime_for(plan: Plan, args: argparse.Namespace, *, trains: bool = False) -> Any:
    """`build_runtime` for the backend the options choose (for a plan other than the one
    checked first, such as each growth stage's)."""
    return build_runtime(plan, check_backend(args, trains=trains), args.seed)
