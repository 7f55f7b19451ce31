"""Command-line options that choose a task, shared by `train`, `eval` and `rollout`."""

from __future__ import annotations

import argparse
from typing import Any

TASK_HELP = """tasks:
  jsonl:PATH            one JSON object per line: {"question": "...", "answer": "..."}
                        (fields: --question-field, --answer-field); reward: the spec's `reward`
  reasoning_gym:NAME    a reasoning_gym generator (settings: --task-option KEY=VALUE);
                        reward: its own score_answer, unless --reward names one"""


def add_task_options(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--task", required=required, metavar="KIND:ARG", help="jsonl:PATH or reasoning_gym:NAME")
    parser.add_argument("--question-field", default="question", metavar="NAME", help="jsonl: the question field")
    parser.add_argument("--answer-field", default="answer", metavar="NAME", help="jsonl: the answer field")
    parser.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a generator setting (reasoning_gym), e.g. max_digits=1; repeatable")
    parser.add_argument("--reward", metavar="NAME", help="reward overriding the spec's (and a task's own scorer)")
    parser.add_argument("--allow-code", action="store_true", help="allow a 'package.module:function' reward to run")


def task_from_args(args: argparse.Namespace, input_names: tuple[str, ...], seed: int) -> Any:
    """The task the options name, for a plan with these inputs; raises UserError."""
    from neuromas.runtime.tasks import TaskOptions, load_task, parse_task_options

    options = TaskOptions(
        input_names=input_names,
        seed=seed,
        question_field=args.question_field,
        answer_field=args.answer_field,
        options=parse_task_options(args.task_option),
    )
    return load_task(args.task, options)
