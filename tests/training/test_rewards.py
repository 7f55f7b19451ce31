"""Built-in rewards, `package.module:function` rewards, and rewards that fail."""

import logging
import sys
from pathlib import Path

import pytest
import torch

from neuromas.diagnostics import UserError
from neuromas.runtime.tasks.rewards import BUILTIN_REWARDS, load_reward, safe_rewards

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # make `tests.training.reward_plugins` importable
PLUGINS = "tests.training.reward_plugins"


@pytest.mark.parametrize(
    "name, completion, answer, expected",
    [
        ("exact_match", "The answer is Paris.", "paris", 1.0),
        ("exact_match", "The answer is Rome.", "Paris", 0.0),
        ("exact_match", "Answer: 1,234", "1234", 1.0),
        ("exact_match", "", "x", 0.0),
        ("numeric_match", "so the total is 1,234.", "1234", 1.0),
        ("numeric_match", "The answer is 0.5", "1/2", 1.0),
        ("numeric_match", "The answer is 12", "-12", 0.0),
        ("numeric_match", "no number", "3", 0.0),
        ("numeric_match", "3", "three", 0.0),
        ("choice_letter", "The answer is (B).", "B", 1.0),
        ("choice_letter", "Answer: c", "(C) a triangle", 1.0),
        ("choice_letter", "Answer: A", "B", 0.0),
        ("contains", "I am sure it is the Blue Whale, yes", "blue whale", 1.0),
        ("contains", "a dolphin", "blue whale", 0.0),
        ("contains", "anything", "", 0.0),
        ("number_answer", "-14", "-14", 1.0),  # the right number alone: full marks
        ("number_answer", " 7 ", "8", 0.75),  # all number, off by one: 0.5 + 0.5 / 2
        ("number_answer", "It is 8", "8", 0.5 * 1 / 5 + 0.5),  # right, but 1 of 5 characters is the number
        ("number_answer", "1111", "8", 0.5 + 0.5 / 1104),  # a string of digits earns the format half only
        ("number_answer", "no number", "3", 0.0),
        ("number_answer", "12", "twelve", 0.5),
    ],
)
def test_builtin_rewards(name, completion, answer, expected):
    assert load_reward(name, allow_code=False)(completion, answer) == expected


def test_unknown_builtin_suggests_the_close_name():
    with pytest.raises(UserError, match="did you mean 'exact_match'"):
        load_reward("exact_mach", allow_code=True)


def test_code_rewards_need_permission():
    with pytest.raises(UserError, match="--allow-code"):
        load_reward(f"{PLUGINS}:length_bonus", allow_code=False)
    reward = load_reward(f"{PLUGINS}:length_bonus", allow_code=True)
    assert reward("abcde", "") == 0.5


def test_code_reward_import_errors_are_user_errors():
    with pytest.raises(UserError, match="cannot import"):
        load_reward("no_such_package_xyz.mod:f", allow_code=True)
    with pytest.raises(UserError, match="no function 'missing'"):
        load_reward(f"{PLUGINS}:missing", allow_code=True)


def test_failing_rewards_score_zero_are_counted_and_logged(caplog):
    explodes = load_reward(f"{PLUGINS}:explodes", allow_code=True)
    with caplog.at_level(logging.WARNING):
        scores = safe_rewards(explodes, ["fine", "boom", "ok"], ["", "", ""], name="explodes")
    assert scores.rewards == [1.0, 0.0, 1.0]
    assert scores.failures == 1
    assert "RuntimeError: boom" in scores.errors[0]
    assert "sample 1" in caplog.text


def test_nan_inf_and_non_numbers_score_zero():
    odd = load_reward(f"{PLUGINS}:not_a_number", allow_code=True)
    scores = safe_rewards(odd, ["nan", "inf", "text", "none", "fine"], [""] * 5)
    assert scores.rewards == [0.0, 0.0, 0.0, 0.0, 0.5]
    assert scores.failures == 4
    assert len(scores.errors) == 3  # only the first few messages are kept


def test_bools_and_zero_d_tensors_are_rewards():
    scores = safe_rewards(lambda text, target: target, ["a", "b", "c"], [True, torch.tensor(0.25), torch.tensor([1.0, 2.0])])
    assert scores.rewards == [1.0, 0.25, 0.0]
    assert scores.failures == 1


def test_builtins_are_the_documented_five():
    assert set(BUILTIN_REWARDS) == {"exact_match", "numeric_match", "choice_letter", "contains", "number_answer"}
