"""Command-line options that choose a task, shared by `train`, `eval` and `rollout`."""

from __future__ import annotations

import argparse
from typing import Any

TASK_HELP = """tasks:
  jsonl:PATH            one JSON object per line: {"question": "...", "answer": "..."}
                        (fields: --question-field, --answer-field); reward: the spec's `reward`
  hf:ID                 a Hugging Face Hub dataset, e.g. hf:openai/gsm8k --task-option config=main
                        (needs the network or the local cache); fields as for jsonl
  hf:FOLDER             a local folder of data files, or one written by `save_to_disk`
  hf:FORMAT:FILE        a local data file read by `datasets` (FORMAT: json, csv, parquet)
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


def add_task_options(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--task", required=required, metavar="KIND:ARG",
                        help="jsonl:PATH, hf:SOURCE, reasoning_gym:NAME or humaneval[:PROBLEMS] (see below)")
    parser.add_argument("--question-field", default="question", metavar="NAME", help="jsonl, hf: the question field")
    parser.add_argument("--answer-field", default="answer", metavar="NAME", help="jsonl, hf: the answer field")
    parser.add_argument("--choices-field", metavar="NAME", help="jsonl, hf: the options of a multiple-choice question")
    parser.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a task setting, e.g. max_digits=1 (reasoning_gym), split=test (hf), "
                             "timeout_s=10 (humaneval); repeatable")
    parser.add_argument("--reward", metavar="NAME", help="reward overriding the spec's (and a task's own scorer)")
    parser.add_argument("--allow-code", action="store_true", help="allow a 'package.module:function' reward to run")


def task_from_args(args: argparse.Namespace, input_names: tuple[str, ...], seed: int) -> Any:
    """The task the options name, for a plan with these inputs; raises UserError."""
    from neuromas.runtime.tasks.registry import TaskOptions, load_task, parse_task_options

    options = TaskOptions(
        input_names=input_names,
        seed=seed,
        question_field=args.question_field,
        answer_field=args.answer_field,
        choices_field=args.choices_field,
        options=parse_task_options(args.task_option),
    )
    return load_task(args.task, options)
