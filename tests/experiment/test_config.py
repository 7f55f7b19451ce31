"""Experiment files: validation with errors that name the file, the arm and the line."""

from pathlib import Path

import pytest

import neuromas
from neuromas.diagnostics import UserError
from neuromas.experiment.budget import check_matched, trainable_parameters
from neuromas.experiment.config import load_experiment

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = {"hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3, "num_hidden_layers": 30,
           "intermediate_size": 1536}

GOOD = f"""
name = "small"
task = "reasoning_gym:basic_arithmetic"
steps = 4
reference = "single"

[[arm]]
name = "single"
spec = "{ROOT / 'specs/single_agent.nmas'}"

[[arm]]
name = "n3"
spec = "{ROOT / 'specs/neuromas3.nmas'}"
train = false
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return path


def test_a_good_file_loads_with_defaults(tmp_path):
    experiment = load_experiment(write(tmp_path, GOOD))
    assert [arm.name for arm in experiment.arms] == ["single", "n3"]
    assert experiment.seeds == [0] and experiment.held_out == 100
    assert experiment.arm("n3").train is False
    assert experiment.steps_of(experiment.arm("single")) == 4


def test_an_unknown_arm_field_names_the_arm_the_line_and_a_hint(tmp_path):
    path = write(tmp_path, GOOD.replace('train = false', 'train = false\nrnak = 4'))
    with pytest.raises(UserError) as err:
        load_experiment(path)
    line = GOOD.replace('train = false', 'train = false\nrnak = 4').splitlines().index("rnak = 4") + 1
    assert str(err.value) == f"{path}:{line}: error: arm 'n3': unknown field 'rnak' (did you mean 'rank'?)"
    assert err.value.exit_code == 2


def test_a_missing_spec_names_the_arm_and_its_line(tmp_path):
    text = GOOD.replace(str(ROOT / "specs/neuromas3.nmas"), "nope.nmas")
    with pytest.raises(UserError, match=r"exp.toml:13: error: arm 'n3': spec 'nope.nmas' not found"):
        load_experiment(write(tmp_path, text))


def test_a_bad_value_and_a_missing_field_are_both_reported(tmp_path):
    text = GOOD.replace("steps = 4", "steps = 0").replace('name = "small"\n', "")
    with pytest.raises(UserError) as err:
        load_experiment(write(tmp_path, text))
    message = str(err.value)
    assert "missing field 'name'" in message
    assert "exp.toml:3: error: 'steps': Input should be greater than or equal to 1" in message


def test_an_unknown_reference_is_refused_with_a_hint(tmp_path):
    with pytest.raises(UserError, match=r"reference arm 'singel' is not an arm \(did you mean 'single'\?\)"):
        load_experiment(write(tmp_path, GOOD.replace('reference = "single"', 'reference = "singel"')))


def test_not_toml_is_a_located_usage_error(tmp_path):
    with pytest.raises(UserError, match=r"exp.toml: not valid TOML: .*line 2") as err:
        load_experiment(write(tmp_path, "name = 'x'\nsteps = = 3\n"))
    assert err.value.exit_code == 2


def test_budget_matches_a_rank_48_single_agent_with_rank_16_neuromas3():
    import neuromas

    single = neuromas.compile(ROOT / "specs/single_agent.nmas")
    n3 = neuromas.compile(ROOT / "specs/neuromas3.nmas")
    per_rank = 30 * ((576 + 576) + (576 + 192) * 2 + (576 + 576))  # layers x (q, k, v, o) in+out features
    assert trainable_parameters(single, SMOLLM2) == 48 * per_rank
    assert trainable_parameters(n3, SMOLLM2) == 3 * 16 * per_rank
    assert trainable_parameters(n3.with_lora_rank(4), SMOLLM2) == 3 * 4 * per_rank
    check_matched({"single": trainable_parameters(single, SMOLLM2), "n3": trainable_parameters(n3, SMOLLM2)})


def test_an_unmatched_budget_is_refused_naming_the_counts():
    with pytest.raises(UserError, match=r"differ by more than 5% \('single' 1,000, 'n3' 900\)") as err:
        check_matched({"single": 1000, "n3": 900})
    assert err.value.exit_code == 2
    check_matched({"single": 1000, "n3": 960})  # within 5%


def test_budget_groups_name_the_arms_that_must_match(tmp_path):
    text = GOOD.replace('train = false', 'budget_group = "a"') + f"""
[[arm]]
name = "n7"
spec = "{ROOT / 'specs/neuromas7.nmas'}"
"""
    text = text.replace('spec = "' + str(ROOT / 'specs/single_agent.nmas') + '"',
                        'spec = "' + str(ROOT / 'specs/single_agent.nmas') + '"\nbudget_group = "a"')
    experiment = load_experiment(write(tmp_path, text))
    assert experiment.budget_groups() == {"a": ["single", "n3"]}  # n7 is in no group: not matched
    assert load_experiment(write(tmp_path, GOOD)).budget_groups() == {"trained": ["single"]}


@pytest.mark.parametrize("name", ["paper_small", "paper_small_yesno", "paper_gpu", "probes/chain_sum", "probes/syllogism"])
def test_the_shipped_experiments_load_and_match_their_budgets(name):
    import neuromas

    experiment = load_experiment(ROOT / "experiments" / f"{name}.toml")
    for names in experiment.budget_groups().values() if experiment.match_budget else ():
        plans = {n: neuromas.compile(experiment.arm(n).spec) for n in names}
        check_matched({n: trainable_parameters(plan, SMOLLM2) for n, plan in plans.items()})


def test_an_arm_is_scored_at_the_end_at_its_stage_starts_and_at_its_eval_at_steps(tmp_path):
    from neuromas.experiment.runner import eval_points

    text = GOOD.replace('spec = "' + str(ROOT / "specs/single_agent.nmas") + '"',
                        'spec = "' + str(ROOT / "specs/single_agent.nmas") + '"\neval_at = [1, 3, 9]')
    experiment = load_experiment(write(tmp_path, text))
    single, frozen = experiment.arm("single"), experiment.arm("n3")
    assert single.eval_at == [1, 3, 9]
    assert eval_points(experiment, single, []) == [1, 3, 4]  # 9 lies past the end: the end is scored anyway
    assert eval_points(experiment, single, [2]) == [1, 2, 3, 4]
    assert eval_points(experiment, frozen, [2]) == [0]


def test_a_grown_arm_counts_the_parameters_it_ends_with():
    root = Path(__file__).resolve().parents[2]
    grown = neuromas.compile(root / "experiments/specs/growth_small.nmas")
    scratch = neuromas.compile(root / "specs/neuromas7.nmas")
    assert trainable_parameters(grown, SMOLLM2) == trainable_parameters(scratch, SMOLLM2) == 12_902_400
