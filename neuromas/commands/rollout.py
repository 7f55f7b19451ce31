"""`neuromas rollout SPEC --data FILE.jsonl --out traces.jsonl`: run a system over a data set.

Writes one JSON line per input and sample: the inputs, the data record's other fields,
each output's answer and every node's text (token ids too with --with-tokens).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from neuromas.commands.run import add_runtime_options, build_runtime, load_plan
from neuromas.diagnostics import UserError

EXAMPLES = """examples:
  neuromas rollout specs/neuromas3.nmas --data questions.jsonl --out traces.jsonl
  neuromas rollout specs/neuromas3.nmas --data questions.jsonl --out traces.jsonl --group 4 --batch 16

data: one JSON object per line with a field per system input (a one-input system also
accepts "question", "prompt" or "input"), e.g. {"question": "What is 2+3?", "answer": "5"}

exit status: 0 ok, 2 bad spec or usage, 1 runtime failure (model, data file, output file)"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rollout",
        help="run a system over a JSONL data set and write traces",
        description="Run a .nmas system on every record of a JSONL file; write one trace per input and sample.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("spec", metavar="SPEC")
    parser.add_argument("--data", required=True, metavar="FILE", help="JSONL inputs")
    parser.add_argument("--out", required=True, metavar="FILE", help="where to write the JSONL traces")
    parser.add_argument("--batch", type=int, default=8, metavar="N",
                        help="inputs per rollout: each level runs N x group x width rows in one call (default: 8)")
    parser.add_argument("--with-tokens", action="store_true", help="also write token ids and log-probs")
    add_runtime_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from neuromas.runtime.tasks.data import read_records

    if args.batch < 1:
        raise UserError(f"--batch must be at least 1, got {args.batch}", exit_code=2)
    plan = load_plan(args)
    records = read_records(args.data, plan.inputs)  # bad data fails before the model loads
    runtime = build_runtime(plan, args)
    out = Path(args.out)
    try:
        handle = out.open("w", encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot write '{out}': {err.strerror or err}") from None
    from tqdm import tqdm

    started, traces = time.perf_counter(), 0
    tokens_before = runtime.backend.stats.completion_tokens
    with handle, tqdm(total=len(records), unit="input", file=sys.stderr, desc="rollout") as progress:
        for start in range(0, len(records), args.batch):
            batch = records[start : start + args.batch]
            rollout = runtime.rollout([record.inputs for record in batch], group=args.group)
            for trace in rollout.traces(with_tokens=args.with_tokens):
                record = batch[trace["input_index"]]
                trace["input_index"] = start + trace["input_index"]
                trace["line"] = record.line
                trace["data"] = {key: value for key, value in record.fields.items() if key not in record.inputs}
                handle.write(json.dumps(trace, ensure_ascii=False) + "\n")
                traces += 1
            progress.update(len(batch))
    elapsed = time.perf_counter() - started
    tokens = runtime.backend.stats.completion_tokens - tokens_before
    print(
        f"wrote {traces} traces to {out} ({runtime.backend.stats.calls} generate calls, "
        f"{tokens} tokens, {tokens / max(elapsed, 1e-9):.1f} tokens/s)",
        file=sys.stderr,
    )
    return 0
