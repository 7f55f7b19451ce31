"""A task reference (`jsonl:PATH`, `hf:SOURCE`, `reasoning_gym:NAME`, `humaneval[:PROBLEMS]`) -> training examples
and, where the task has one, its own scorer.

Examples are read by position, so a run that resumes at data position p sees exactly
the examples it would have seen: position p is example `order[p mod n]`, where the
order is a fresh seeded shuffle for every pass over the data.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from neuromas.diagnostics import UserError, did_you_mean

PROCEDURAL_SIZE = 100_000  # examples a procedural generator is asked for (made lazily)
MAX_PROCEDURAL_SIZE = 10**9  # the most a `size` setting may ask for
DEFAULT_QUESTION_FIELD = "question"
# Data files named by path alone: suffix -> (task kind, the hf file format).
PATH_SUFFIXES = {".jsonl": ("jsonl", None), ".json": ("hf", "json"), ".csv": ("hf", "csv"), ".parquet": ("hf", "parquet")}


class Example(NamedTuple):
    """One training example: the plan's inputs by name, the reference answer, and the raw
    record (a task's own scorer may need more than the answer)."""

    inputs: dict[str, str]
    answer: str
    record: Any


Scorer = Callable[[str, Example], float]  # (final output text, example) -> reward


@dataclass
class Task:
    """A list of examples with a seeded order, and optionally its own scorer."""

    name: str
    examples: Sequence[Example]
    seed: int = 0
    scorer: Scorer | None = None
    is_scored_on_text: bool = False  # its scorer reads the output's whole text (code, choices), not the answer
    _orders: dict[int, list[int]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, position: int, size: int) -> list[Example]:
        """The `size` examples at data positions position, position + 1, ..."""
        return [self.at(p) for p in range(position, position + size)]

    def at(self, position: int) -> Example:
        count = len(self.examples)
        data_pass, offset = divmod(position, count)
        if data_pass not in self._orders:
            order = list(range(count))
            random.Random(f"{self.seed}:{data_pass}").shuffle(order)
            self._orders = {data_pass: order}  # one pass's order at a time is enough
        return self.examples[self._orders[data_pass][offset]]


@dataclass(frozen=True)
class TaskOptions:
    """What a task loader may need besides its reference."""

    input_names: tuple[str, ...]
    seed: int = 0
    question_field: str = DEFAULT_QUESTION_FIELD
    answer_field: str = "answer"
    choices_field: str | None = None  # multiple choice: the field holding each question's options
    options: Mapping[str, Any] = field(default_factory=dict)  # --task-option settings of the task kind


def load_task(reference: str, options: TaskOptions) -> Task:
    """The task named by `reference` ("kind:argument", or a data file's path); raises
    UserError: exit 2 for an unknown kind, a malformed reference, bad settings or a task
    without examples, exit 1 for a missing package or file, or bad data."""
    kind, argument = parse_reference(reference)
    task = TASKS[kind](argument, options)
    if len(task) == 0:
        raise UserError(f"task {reference!r} has no examples (check its --task-option settings)", exit_code=2)
    return task


def parse_reference(reference: str) -> tuple[str, str]:
    """A task reference -> (kind, argument): "kind:argument", a kind that may be named
    alone (`humaneval`), or a path whose suffix says its format (`data.jsonl`, `rows.csv`).
    Raises UserError (exit 2) for anything else."""
    kind, separator, argument = reference.partition(":")
    if kind not in TASKS:
        suffix = Path(reference).suffix.lower()
        if suffix in PATH_SUFFIXES:
            path_kind, file_format = PATH_SUFFIXES[suffix]
            return path_kind, f"{file_format}:{reference}" if file_format else reference
    if not separator and kind in DEFAULT_ARGUMENTS:
        return kind, DEFAULT_ARGUMENTS[kind]
    if not separator or not argument:
        kinds = ", ".join(f"{k}:..." for k in TASKS)
        raise UserError(f"--task {reference!r}: expected KIND:ARGUMENT ({kinds}) or a data file "
                        f"({', '.join(PATH_SUFFIXES)})", exit_code=2)
    if kind not in TASKS:
        hint = did_you_mean(kind, TASKS)
        raise UserError(f"--task {reference!r}: unknown task kind {kind!r} (known: {', '.join(TASKS)})"
                        + (f"; {hint}" if hint else ""), exit_code=2)
    return kind, argument


def jsonl_task(path: str, options: TaskOptions) -> Task:
    """One JSON object per line, with a question field (the plan's input) and an answer field."""
    from .data import read_records

    if options.options:
        raise UserError(f"jsonl tasks take no --task-option settings (got {', '.join(options.options)})", exit_code=2)
    examples = [record_example(record.fields, record.inputs, options, f"{path}:{record.line}")
                for record in read_records(path, _input_fields(options), aliases=_takes_aliases(options))]
    return _record_task(f"jsonl:{path}", examples, options)


def hf_task(argument: str, options: TaskOptions) -> Task:
    """One split of a Hugging Face dataset (a hub id, a local folder, or FORMAT:FILE; see
    runtime/hf_data.py), its rows read like jsonl records."""
    from .data import input_values
    from .hf_data import DEFAULT_SPLIT, load_rows

    rows, columns = load_rows(argument, dict(options.options))
    name = f"hf:{argument}"
    if not rows:
        raise UserError(f"{name} has no rows in split {options.options.get('split', DEFAULT_SPLIT)!r}")
    _check_columns(name, columns, options)
    fields = _input_fields(options)
    aliases = _takes_aliases(options)
    examples = [record_example(row, input_values(row, fields, f"{name} row {i}", aliases=aliases), options,
                               f"{name} row {i}")
                for i, row in enumerate(rows)]
    return _record_task(name, examples, options)


def record_example(fields: Mapping[str, Any], inputs: Mapping[str, str], options: TaskOptions, where: str) -> Example:
    """A data record -> an Example: the inputs (read by field) renamed to the plan's
    inputs, and the answer; with a choices field, the first input gets the lettered
    options and the answer becomes its letter. Raises UserError naming `where`."""
    for role, wanted in (("answer", options.answer_field), ("choices", options.choices_field)):
        if wanted is not None and wanted not in fields:
            raise UserError(f"{where}: no {role} field {wanted!r} (fields: {', '.join(fields)}); "
                            f"choose one with --{role}-field")
    values = dict(zip(options.input_names, inputs.values(), strict=True))
    answer = fields[options.answer_field]
    if options.choices_field is None:
        return Example(values, _as_text(answer), fields)
    from .choices import answer_letter, read_choices, render_question

    choices = read_choices(fields[options.choices_field], where)
    first = options.input_names[0]
    values[first] = render_question(values[first], choices.options)
    return Example(values, answer_letter(answer, choices, where), fields)


def _input_fields(options: TaskOptions) -> tuple[str, ...]:
    """The record fields that hold the plan's inputs: the question field for one input,
    else each input's own name."""
    return (options.question_field,) if len(options.input_names) == 1 else options.input_names


def _takes_aliases(options: TaskOptions) -> bool:
    """Whether a one-input record may hold its question under another name ("prompt",
    "input"): only when --question-field is left at its default; a field the user names
    must be there."""
    return options.question_field == DEFAULT_QUESTION_FIELD


def _check_columns(name: str, columns: Sequence[str], options: TaskOptions) -> None:
    """Every field the task reads is a column, or UserError listing the columns."""
    from .data import SINGLE_INPUT_ALIASES

    shown = ", ".join(columns)
    if len(options.input_names) == 1:
        accepted = (options.question_field, *(SINGLE_INPUT_ALIASES if _takes_aliases(options) else ()))
        if not any(field in columns for field in accepted):
            raise UserError(f"{name}: no question column {options.question_field!r} (columns: {shown}); "
                            "choose one with --question-field")
    else:
        for input_name in options.input_names:
            if input_name not in columns:
                raise UserError(f"{name}: no column {input_name!r} for the input of that name (columns: {shown})")
    for role, wanted in (("answer", options.answer_field), ("choices", options.choices_field)):
        if wanted is not None and wanted not in columns:
            raise UserError(f"{name}: no {role} column {wanted!r} (columns: {shown}); choose one with --{role}-field")


def _record_task(name: str, examples: list[Example], options: TaskOptions) -> Task:
    """A task over data records; a multiple-choice one scores the letter in the whole output."""
    if options.choices_field is None:
        return Task(name=name, examples=examples, seed=options.seed)
    from .rewards import choice_letter

    def score(text: str, example: Example) -> float:
        return choice_letter(text, example.answer)

    return Task(name=name, examples=examples, seed=options.seed, scorer=score, is_scored_on_text=True)


def humaneval_task(argument: str, options: TaskOptions) -> Task:
    """HumanEval problems (`all`, or numbers and ranges: `0-19,40`), scored by running the
    answer's code against the problem's tests in the sandbox (pass@1). Settings: the
    sandbox limits `timeout_s`, `memory_mb`, `file_mb`."""
    from .humaneval import HumanEvalTask, limits_from_settings, select_problems

    if len(options.input_names) != 1:
        raise UserError(f"humaneval gives one question; this system has inputs {', '.join(options.input_names)}", exit_code=2)
    humaneval = HumanEvalTask(limits_from_settings(options.options))
    input_name = options.input_names[0]
    examples = []
    for task_id in select_problems(argument, list(humaneval.problems)):
        item = humaneval.example(task_id)
        examples.append(Example({input_name: item["question"]}, item["answer"], item))

    def score(text: str, example: Example) -> float:
        return humaneval.score(text, example.record)

    return Task(name=f"humaneval:{argument}", examples=examples, seed=options.seed, scorer=score,
                is_scored_on_text=True)


def reasoning_gym_task(name: str, options: TaskOptions) -> Task:
    """A reasoning_gym procedural generator; rewards come from its own `score_answer`."""
    try:
        import reasoning_gym
    except ImportError:
        raise UserError("task 'reasoning_gym:...' needs the reasoning-gym package\n  fix: pip install reasoning-gym") from None
    if len(options.input_names) != 1:
        raise UserError(f"reasoning_gym tasks give one question; this system has inputs {', '.join(options.input_names)}", exit_code=2)
    settings = {"size": PROCEDURAL_SIZE, **options.options, "seed": options.seed}
    size = settings["size"]
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_PROCEDURAL_SIZE:
        raise UserError(f"--task-option size={json.dumps(size)}: must be a whole number from 1 to "
                        f"{MAX_PROCEDURAL_SIZE}", exit_code=2)
    try:
        dataset = reasoning_gym.create_dataset(name, **settings)
        dataset[0]  # some settings fail only when an entry is made: find out before any model loads
    except Exception as err:  # an unknown name or a bad setting: the user's to fix
        shown = ", ".join(f"{key}={value!r}" for key, value in options.options.items()) or "no settings"
        raise UserError(f"--task reasoning_gym:{name} ({shown}): reasoning_gym refused it: "
                        f"{type(err).__name__}: {err}", exit_code=2) from None
    input_name = options.input_names[0]
    examples = _LazyExamples(dataset, input_name)

    def score(text: str, example: Example) -> float:
        return float(dataset.score_answer(text, example.record))

    return Task(name=f"reasoning_gym:{name}", examples=examples, seed=options.seed, scorer=score)


class _LazyExamples(Sequence[Example]):
    """A procedural dataset's entries as Examples, generated when first read."""

    def __init__(self, dataset: Any, input_name: str):
        self.dataset = dataset
        self.input_name = input_name

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Example:  # type: ignore[override]
        entry = self.dataset[index]
        return Example({self.input_name: entry["question"]}, _as_text(entry["answer"]), entry)


def parse_task_options(pairs: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings -> a dict; values are read as JSON where they parse (numbers,
    lists, true/false), else kept as text. Raises UserError for a pair without '='."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise UserError(f"--task-option {pair!r}: expected KEY=VALUE", exit_code=2)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


TASKS: dict[str, Callable[[str, TaskOptions], Task]] = {
    "jsonl": jsonl_task,
    "hf": hf_task,
    "reasoning_gym": reasoning_gym_task,
    "humaneval": humaneval_task,
}
DEFAULT_ARGUMENTS = {"humaneval": "all"}  # kinds that may be named alone: `--task humaneval`
