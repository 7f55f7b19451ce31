"""An experiment TOML file -> a validated `Experiment` (arms, seeds, task, held-out set).

Errors name the file, the arm and the line: `experiments/x.toml:14: arm 'single': unknown
field 'rnk' (did you mean 'rank'?)`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from neuromas.diagnostics import UserError, did_you_mean

NAME = r"^[A-Za-z_][A-Za-z0-9_-]*$"


class Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Arm(Strict):
    """One system under test: its spec, whether it trains, and its overrides."""

    name: str = Field(pattern=NAME)
    spec: Path
    train: bool = True
    rank: int | None = Field(default=None, ge=1, le=1024)  # LoRA rank override (alpha scales with it)
    steps: int | None = Field(default=None, ge=1)  # overrides the experiment's steps
    stage: str | None = None  # evaluate this growth stage's plan (default: the last one)
    group: int | None = Field(default=None, ge=1)
    eval_group: int = Field(default=1, ge=1)  # samples per held-out question (a vote uses the spec's width)
    eval_at: list[int] = []  # more step counts to score a trained arm after (e.g. a grown arm's stage starts)
    budget_group: str | None = None  # with match_budget: arms of one group hold the same trainable parameters


class Experiment(Strict):
    """Every arm is trained (or not) for `steps` on `task`, then scored on the same
    `held_out` questions (data seed `held_out_seed`), once per seed."""

    name: str = Field(pattern=NAME)
    task: str
    task_options: dict[str, str | int | float | bool] = {}
    steps: int = Field(ge=1)
    seeds: list[int] = Field(default=[0], min_length=1)
    held_out: int = Field(default=100, ge=1, le=100_000)
    held_out_seed: int = Field(default=1_000, ge=0)
    batch: int = Field(default=2, ge=1)
    group: int = Field(default=4, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    lr: float | None = Field(default=None, gt=0)
    threads: int = Field(default=1, ge=1)
    backend: Literal["transformers", "vllm", "server"] = "transformers"
    reward: str | None = None  # scores the held-out questions (and trains, unless train_reward is set)
    train_reward: str | None = None  # trains with another reward, e.g. a graded one that gives groups variance
    answer_format: str | None = None
    log_kl: bool = False  # record each trained node's KL to the base every step (one more forward pass)
    reference: str
    match_budget: bool = False  # trained arms of each budget_group (all, if none names one) match within 5%
    arms: list[Arm] = Field(alias="arm", min_length=2)

    @model_validator(mode="after")
    def _check_arms(self) -> Experiment:
        names = [arm.name for arm in self.arms]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"two arms are named '{name}'")
        if self.reference not in names:
            raise ValueError(f"reference arm '{self.reference}' is not an arm{_hint(self.reference, names)}")
        return self

    def budget_groups(self) -> dict[str, list[str]]:
        """Trained arms that must match their trainable parameters, by budget group."""
        named = any(arm.budget_group for arm in self.arms)
        groups: dict[str, list[str]] = {}
        for arm in self.arms:
            if arm.train and (arm.budget_group or not named):
                groups.setdefault(arm.budget_group or "trained", []).append(arm.name)
        return groups

    def arm(self, name: str) -> Arm:
        return next(arm for arm in self.arms if arm.name == name)

    def steps_of(self, arm: Arm) -> int:
        return arm.steps if arm.steps is not None else self.steps


def _hint(name: str, known: list[str]) -> str:
    hint = did_you_mean(name, known)
    return f" ({hint})" if hint else ""


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file; spec paths are relative to the file's folder
    (or the current folder, where the spec is found there). Raises UserError (exit 2) naming
    the file, the arm and the line of every mistake."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read experiment file '{path}': {err}", exit_code=2) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: not valid TOML: {err}", exit_code=2) from None
    try:
        experiment = Experiment.model_validate(data)
    except ValidationError as err:
        raise UserError("\n".join(_located(path, text, data, error) for error in err.errors()), exit_code=2) from None
    arms = [arm.model_copy(update={"spec": _find_spec(path, text, arm)}) for arm in experiment.arms]
    return experiment.model_copy(update={"arms": arms})


def _find_spec(path: Path, text: str, arm: Arm) -> Path:
    for candidate in (path.parent / arm.spec, arm.spec):
        if candidate.is_file():
            return candidate
    line = _line_of(text, ("arm", _arm_index(text, arm.name), "spec"))
    raise UserError(f"{path}:{line}: error: arm '{arm.name}': spec '{arm.spec}' not found (relative to '{path.parent}' or "
                    "the current folder)", exit_code=2)


def _arm_index(text: str, name: str) -> int:
    data = tomllib.loads(text)
    return next(i for i, arm in enumerate(data.get("arm", [])) if arm.get("name") == name)


def _located(path: Path, text: str, data: dict[str, Any], error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    where = ""
    if loc[:1] == ("arm",) and len(loc) >= 2 and isinstance(loc[1], int):
        arms = data.get("arm", [])
        name = arms[loc[1]].get("name", f"#{loc[1] + 1}") if loc[1] < len(arms) else f"#{loc[1] + 1}"
        where = f"arm '{name}': "
    field = str(loc[-1]) if loc else ""
    if error["type"] == "extra_forbidden":
        known = list(Arm.model_fields) if where else [f.alias or n for n, f in Experiment.model_fields.items()]
        message = f"unknown field '{field}'{_hint(field, known)}"
    elif error["type"] == "missing":
        message = f"missing field '{field}'"
    elif loc:
        message = f"'{field}': {error['msg'].removeprefix('Value error, ')}"
    else:
        message = error["msg"].removeprefix("Value error, ")
    return f"{path}:{_line_of(text, loc)}: error: {where}{message}"


def _line_of(text: str, loc: tuple[Any, ...]) -> int:
    """The line where `loc` is written: the field's line inside the right `[[arm]]` table,
    else that table's header, else line 1."""
    lines = text.splitlines()
    start, end = 0, len(lines)
    if loc[:1] == ("arm",) and len(loc) >= 2 and isinstance(loc[1], int):
        headers = [i for i, line in enumerate(lines) if re.match(r"\s*\[\[\s*arm\s*\]\]", line)]
        if loc[1] < len(headers):
            start = headers[loc[1]]
            end = next((i for i in range(start + 1, len(lines)) if re.match(r"\s*\[", lines[i])), len(lines))
        loc = loc[2:]
    else:
        end = next((i for i, line in enumerate(lines) if re.match(r"\s*\[", line)), len(lines))
    if loc and isinstance(loc[0], str):
        for i in range(start, end):
            if re.match(rf"\s*{re.escape(loc[0])}\s*=", lines[i]):
                return i + 1
    return start + 1
