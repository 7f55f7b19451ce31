"""`neuromas rollout SPEC --data FILE.jsonl -o traces.jsonl`: run a system over a data set.

Writes one JSON line per input and sample: the inputs, the data record's other fields,
each output's answer and every node's text (token ids too with --with-tokens), to the
file -o names or to standard output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from neuromas.commands.assemble import DEFAULT_BATCH, build_runtime, check_adapters, check_backend, load_plan
from neuromas.commands.options import add_spec_argument, command_parser
from neuromas.commands.paths import check_out_file
from neuromas.diagnostics import UserError

EXAMPLES = """examples:
  neuromas rollout specs/neuromas3.nmas --data questions.jsonl -o traces.jsonl
  neuromas rollout specs/neuromas3.nmas --data questions.jsonl -o traces.jsonl --group 4 --batch 16
  neuromas rollout specs/neuromas3.nmas --data questions.jsonl | head -1     # traces to standard output

data: one JSON object per line with a field per system input (a one-input system also
accepts "question", "prompt" or "input"), e.g. {"question": "What is 2+3?", "answer": "5"}

exit status: 0 ok, 2 bad spec or usage, 1 runtime failure (model, data file, output file)"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = command_parser(subparsers, "rollout", help="run a system over a JSONL data set and write traces",
                            description="Run a .nmas system on every record of a JSONL file; write one trace per "
                                        "input and sample (to -o FILE, default: standard output).",
                            epilog=EXAMPLES, groups=("spec", "stage", "model", "runtime", "sampling", "batch", "backend", "out-file"))
    add_spec_argument(parser)
    parser.add_argument("--data", required=True, metavar="FILE", help="JSONL inputs")
    parser.add_argument("--with-tokens", action="store_true", help="also write token ids and log-probs")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from neuromas.runtime.tasks.data import read_records

    plan = load_plan(args)
    records = read_records(args.data, plan.inputs)  # bad data fails before the model loads
    choice = check_backend(args)
    check_adapters(plan, args)
    out = check_out_file(args.output) if args.output is not None else None
    batch_size = args.batch = args.batch or DEFAULT_BATCH  # the values used, for error messages too
    group = args.group = args.group or 1
    runtime = build_runtime(plan, choice, args.seed)
    try:
        handle = out.open("w", encoding="utf-8") if out is not None else _stdout()
    except OSError as err:
        raise UserError(f"cannot write '{out}': {err.strerror or err}") from None
    from tqdm import tqdm

    started, traces = time.perf_counter(), 0
    tokens_before = runtime.backend.stats.completion_tokens
    with handle as sink, tqdm(total=len(records), unit="input", file=sys.stderr, desc="rollout") as progress:
        for start in range(0, len(records), batch_size):
            batch = records[start : start + batch_size]
            rollout = runtime.rollout([record.inputs for record in batch], group=group)
            for trace in rollout.traces(with_tokens=args.with_tokens):
                record = batch[trace["input_index"]]
                trace["input_index"] = start + trace["input_index"]
                trace["line"] = record.line
                trace["data"] = {key: value for key, value in record.fields.items() if key not in record.inputs}
                sink.write(json.dumps(trace, ensure_ascii=False) + "\n")
                traces += 1
            progress.update(len(batch))
    elapsed = time.perf_counter() - started
    tokens = runtime.backend.stats.completion_tokens - tokens_before
    print(
        f"wrote {traces} traces to {out or 'standard output'} ({runtime.backend.stats.calls} generate calls, "
        f"{tokens} tokens, {tokens / max(elapsed, 1e-9):.1f} tokens/s)",
        file=sys.stderr,
    )
    return 0


def _stdout():
    """Standard output for `with`, left open when the block ends."""
    import contextlib

    return contextlib.nullcontext(sys.stdout)
