"""A task reference (`jsonl:PATH`, `reasoning_gym:NAME`) -> training examples and, where the task has one, its own scorer.

Examples are read by position, so a run that resumes at data position p sees exactly
the examples it would have seen: position p is example `order[p mod n]`, where the
order is a fresh seeded shuffle for every pass over the data.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from neuromas.diagnostics import UserError, did_you_mean

PROCEDURAL_SIZE = 100_000  # examples a procedural generator is asked for (made lazily)


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
    question_field: str = "question"
    answer_field: str = "answer"
    options: Mapping[str, Any] = field(default_factory=dict)  # generator settings (reasoning_gym)


def load_task(reference: str, options: TaskOptions) -> Task:
    """The task named by `reference` ("kind:argument"); raises UserError for an unknown
    kind, a missing package or file, or bad data."""
    kind, separator, argument = reference.partition(":")
    if not separator or not argument:
        raise UserError(f"task {reference!r}: expected KIND:ARGUMENT, one of {', '.join(f'{k}:...' for k in TASKS)}")
    if kind not in TASKS:
        hint = did_you_mean(kind, TASKS)
        raise UserError(f"unknown task kind {kind!r} (known: {', '.join(TASKS)})" + (f"; {hint}" if hint else ""))
    return TASKS[kind](argument, options)


def jsonl_task(path: str, options: TaskOptions) -> Task:
    """One JSON object per line, with a question field (the plan's input) and an answer field."""
    from neuromas.runtime.data import read_records

    if len(options.input_names) == 1:
        names = (options.question_field,)
    else:  # several inputs: each is a field of its own name
        names = options.input_names
    examples = []
    for record in read_records(path, names):
        if options.answer_field not in record.fields:
            fields = ", ".join(record.fields)
            raise UserError(f"{path}:{record.line}: no answer field {options.answer_field!r} (fields: {fields})")
        inputs = dict(zip(options.input_names, record.inputs.values(), strict=True))
        examples.append(Example(inputs, _as_text(record.fields[options.answer_field]), record.fields))
    return Task(name=f"jsonl:{path}", examples=examples, seed=options.seed)


def reasoning_gym_task(name: str, options: TaskOptions) -> Task:
    """A reasoning_gym procedural generator; rewards come from its own `score_answer`."""
    try:
        import reasoning_gym
    except ImportError:
        raise UserError("task 'reasoning_gym:...' needs the reasoning-gym package\n  fix: pip install reasoning-gym") from None
    if len(options.input_names) != 1:
        raise UserError(f"reasoning_gym tasks give one question; this system has inputs {', '.join(options.input_names)}")
    settings = {"size": PROCEDURAL_SIZE, **options.options, "seed": options.seed}
    try:
        dataset = reasoning_gym.create_dataset(name, **settings)
    except Exception as err:  # an unknown name or a bad setting: the user's to fix
        raise UserError(f"reasoning_gym could not create {name!r} with {settings}: {err}") from None
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
    "reasoning_gym": reasoning_gym_task,
}
