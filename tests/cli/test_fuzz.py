"""Every subcommand driven with random bad arguments and damaged files, in-process: each
run exits 1 or 2 with a message and no traceback, and never gets as far as loading a
model (bad arguments are found by the early checks). 1,100 cases in the default run (derandomized: the same cases each run).

Each case starts from a command line that would run (it would load the model) and makes
one thing in it wrong, so that every case is known to be bad.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import string
import sys
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import neuromas
from neuromas.cli import build_parser, main

sys.path.insert(0, str(Path(__file__).resolve().parent))  # cli_helpers.py (pytest runs in importlib mode)
from cli_helpers import GROWTH, NEUROMAS3  # noqa: E402

FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
STAGES = ("neuromas3", "neuromas5", "neuromas7")
TEXT = st.text(alphabet=string.ascii_letters + string.digits + "-_.:/=,", max_size=12)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Files the base command lines name: data, a run folder with metrics and a checkpoint,
    an eval result, a spec copy and saved adapters."""
    from neuromas.runtime.training.checkpoint import checkpoint_path, plan_fingerprint

    root = tmp_path_factory.mktemp("fuzz")
    data = root / "data.jsonl"
    data.write_text(json.dumps({"question": "What is 2 + 3?", "answer": "5"}) + "\n")
    run_dir = root / "run"
    plan = neuromas.compile(GROWTH, stage="neuromas3")
    folder = checkpoint_path(run_dir, 2)
    folder.mkdir(parents=True)
    (run_dir / "plan.json").write_text(plan.to_pretty_json())
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward_mean": 0.5, "loss": 0.1}) + "\n"
                                                   for s in (1, 2)))
    state = {"step": 2, "data_position": 8, "seed": 0, "plan_fingerprint": plan_fingerprint(plan)}
    (folder / "state.json").write_text(json.dumps(state))
    result = {"system": "s", "stage": None, "plan_hash": "h", "task": "t", "adapters": None, "n": 2, "group": 1,
              "correct": 1, "accuracy": 0.5, "accuracy_low": 0.09, "accuracy_high": 0.91, "tokens_per_question": 3.0,
              "calls_per_question": 1.0, "calls_per_rollout": 1, "seconds_per_question": 0.1, "seed": 0,
              "scores": [1.0, 0.0]}
    (root / "result.json").write_text(json.dumps(result))
    (root / "spec.nmas").write_text(Path(NEUROMAS3).read_text())
    (root / "file").write_text("x")
    (root / "experiment.toml").write_text("")
    adapters = root / "adapters"
    plain = neuromas.compile(NEUROMAS3)
    for slot in plain.adapters:
        (adapters / slot.name).mkdir(parents=True)
        config = {"r": plain.adapter.rank, "lora_alpha": plain.adapter.alpha,
                  "target_modules": list(plain.adapter.targets)}
        (adapters / slot.name / "adapter_config.json").write_text(json.dumps(config))
    return {"root": root, "data": data, "run": run_dir, "state": folder / "state.json", "result": root / "result.json",
            "spec": root / "spec.nmas", "file": root / "file", "experiment": root / "experiment.toml",
            "adapters": adapters}


def bases(world: dict[str, Path]) -> dict[str, list[str]]:
    """A command line per subcommand that passes every check (it would run or load a model)."""
    root = world["root"]
    return {
        "check": ["check", str(world["spec"])],
        "fmt": ["fmt", str(world["spec"])],
        "compile": ["compile", str(world["spec"])],
        "run": ["run", NEUROMAS3, "--input", "hi"],
        "rollout": ["rollout", NEUROMAS3, "--data", str(world["data"])],
        "train": ["train", NEUROMAS3, "--task", str(world["data"]), "--out", str(root / "new-run")],
        "grow": ["grow", str(world["run"]), "--spec", GROWTH, "--stage", "neuromas5", "--out", str(root / "grown")],
        "eval": ["eval", NEUROMAS3, "--task", str(world["data"])],
        "plot": ["plot", str(world["run"]), "-o", str(root / "curves.png")],
        "report": ["report", str(world["run"])],
        "serve": ["serve", NEUROMAS3, "--port", "0"],
        "experiment": ["experiment", str(world["experiment"]), "--out", str(root / "experiment")],
    }


def command_actions(*, with_flags_only: bool = False) -> dict[str, list[argparse.Action]]:
    """Each command's options that take a value (or, with_flags_only, every option)."""
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: [a for a in sub._actions if a.option_strings and (with_flags_only or a.nargs != 0)]
            for name, sub in subparsers.choices.items()}


ACTIONS = {name: [a for a in actions if a.option_strings[0] != "-h"] for name, actions in command_actions().items()}
COMMANDS = sorted(ACTIONS)
OUT_PLACES = ("", "/", "/proc/version", "/proc/newdir/x", "/sys/kernel/x", "{file}/below", "/dev/null/x")


def is_valid(action: argparse.Action, value: str) -> bool:
    if action.choices is not None:
        return value in action.choices
    try:
        action.type(value)
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return False
    return True


def bad_value(draw, action: argparse.Action, world: dict[str, Path]) -> str | None:
    """A value this option refuses, or None where no value is known to be bad."""
    dest = action.dest
    if dest in ("out", "output"):
        return draw(st.sampled_from(OUT_PLACES)).format(file=world["file"])
    if dest == "stage":
        return draw(TEXT.filter(lambda text: text not in STAGES))
    if dest in ("data", "adapters", "checkpoint", "spec"):
        return str(world["root"] / f"missing-{draw(TEXT).replace('/', '_')}")
    if dest == "reward":
        return draw(st.sampled_from(["", "exact_mach", "module:function", "numeric"]))
    if dest == "task_option":
        return draw(TEXT)  # a jsonl task takes none: any setting is refused
    if dest == "task":
        from neuromas.diagnostics import UserError
        from neuromas.runtime.tasks.registry import parse_reference

        def refused(text: str) -> bool:
            try:
                parse_reference(text)
            except UserError:
                return True
            return False

        return draw(TEXT.filter(refused) | TEXT.map(lambda text: str(world["root"] / f"no-{text.replace('/', '_')}.jsonl")))
    if action.choices is None and action.type is None:
        return None  # free text (a model name, an input): no value is known to be bad
    numbers = st.one_of(st.integers(-10**25, 10**25).map(str), st.floats(allow_nan=True).map(str), TEXT)
    return draw(numbers.filter(lambda text: not is_valid(action, text)))


def run_quietly(argv: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(argv)
    return code, err.getvalue()


def assert_refused(argv: list[str], model_loaded: type[Exception]) -> None:
    """`argv` exits 1 or 2 with a message and no traceback, before a model loads
    (`model_loaded`: what the no_model fixture raises there)."""
    try:
        code, err = run_quietly(argv)
    except model_loaded:
        pytest.fail(f"reached the model load: {argv}")
    assert code in (1, 2), (argv, code, err)
    assert "Traceback" not in err and err.strip(), (argv, err)


@st.composite
def bad_option(draw, world):
    command = draw(st.sampled_from([name for name in COMMANDS if ACTIONS[name]]))
    action = draw(st.sampled_from(ACTIONS[command]))
    flag = draw(st.sampled_from(action.option_strings))
    value = bad_value(draw, action, world)
    if value is None:  # the option without its value, last: argparse misses its argument
        return [*bases(world)[command], flag]
    if flag.startswith("--"):
        return [*bases(world)[command], f"{flag}={value}"]
    return [*bases(world)[command], flag, value]


@settings(FUZZ, max_examples=500)
@given(data=st.data())
def test_bad_option_values_are_refused(data, world, no_model):
    assert_refused(data.draw(bad_option(world)), no_model)


KNOWN_FLAGS = {name: [flag for action in actions for flag in action.option_strings]
               for name, actions in command_actions(with_flags_only=True).items()}


@st.composite
def broken_command_line(draw, world):
    command = draw(st.sampled_from(COMMANDS))
    argv = bases(world)[command]
    kind = draw(st.sampled_from(["unknown", "missing", "empty"]))
    if kind == "unknown":  # argparse takes a prefix of a known option for it: none of those
        flag = "--" + draw(st.text(alphabet=string.ascii_lowercase + "-", min_size=1, max_size=10))
        if any(option.startswith(flag) for option in KNOWN_FLAGS[command]):
            flag = "--zz-" + flag[2:]
        return [*argv, flag]
    if kind == "missing":  # the first positional (the spec, the run folder) left out
        return [argv[0], *argv[2:]]
    return [argv[0], "", *argv[2:]]  # an empty path where a file goes


@settings(FUZZ, max_examples=200)
@given(data=st.data())
def test_unknown_flags_and_missing_arguments_are_refused(data, world, no_model):
    assert_refused(data.draw(broken_command_line(world)), no_model)


# Damaged files ---------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                           max_leaves=6)


def not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


@st.composite
def bad_data_line(draw):
    """A JSONL line no one-input plan can read."""
    return draw(st.one_of(
        st.text(max_size=20).filter(lambda t: t.strip() and "\n" not in t and not_json(t)),
        JSON_VALUES.filter(lambda v: not isinstance(v, dict)).map(json.dumps),
        st.dictionaries(TEXT.filter(lambda k: k not in ("question", "prompt", "input")), JSON_VALUES,
                        min_size=1, max_size=3).map(json.dumps),
        st.sampled_from([[], {}, True, None]).map(lambda v: json.dumps({"question": v})),
    ))


@st.composite
def bad_metrics_line(draw):
    good = {"step": 1, "reward_mean": 0.5, "loss": 0.1}
    field = draw(st.sampled_from(["step", "reward_mean", "reward_std", "accuracy", "loss"]))
    wrong = draw(JSON_VALUES.filter(lambda v: isinstance(v, (str, list, dict, bool))
                                    or (field == "step" and (v is None or isinstance(v, float)))))
    return draw(st.one_of(
        st.just(json.dumps(good | {field: wrong})),
        JSON_VALUES.filter(lambda v: not isinstance(v, dict)).map(json.dumps),
        st.text(max_size=20).filter(lambda t: t.strip() and "\n" not in t and not_json(t)),
    ))


@st.composite
def bad_state(draw):
    state = {"step": 2, "data_position": 8, "seed": 0, "plan_fingerprint": "sha256:x"}
    key = draw(st.sampled_from(sorted(state)))
    wrong = draw(JSON_VALUES.filter(lambda v: not isinstance(v, int if key != "plan_fingerprint" else str)
                                    or isinstance(v, bool) or (isinstance(v, int) and v < 0)))
    return draw(st.one_of(
        st.just(json.dumps(state | {key: wrong})),
        st.just(json.dumps({k: v for k, v in state.items() if k != key})),
        JSON_VALUES.filter(lambda v: not isinstance(v, dict)).map(json.dumps),
        st.text(max_size=30).filter(not_json),
    ))


def is_eval_result(text: str) -> bool:
    from neuromas.runtime.tasks.evaluate import EvalResult

    try:
        msgspec.json.decode(text, type=EvalResult)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return True


@st.composite
def bad_result(draw, world):
    """An eval result file with one field changed so that no evaluation gives it."""
    result = json.loads(world["result"].read_text())
    key = draw(st.sampled_from(sorted(result)))
    wrong = draw(st.one_of(JSON_VALUES, st.sampled_from([-5, 2.0, -0.5, 10**6])))
    return draw(st.one_of(st.just(json.dumps(result | {key: wrong})), st.just(json.dumps([result])),
                          st.text(max_size=30)).filter(lambda text: not is_eval_result(text)))


@st.composite
def damaged_case(draw, world):
    """(file to write, its new text, the command line that reads it)."""
    root = world["root"]
    kind = draw(st.sampled_from(["data", "metrics", "state", "result", "spec", "experiment", "adapters", "manifest"]))
    if kind == "data":
        lines = draw(st.lists(st.just(json.dumps({"question": "fine"})), max_size=2)) + [draw(bad_data_line())]
        argv = draw(st.sampled_from([["rollout", NEUROMAS3, "--data", "{path}"], ["eval", NEUROMAS3, "--task", "{path}"],
                                     ["train", NEUROMAS3, "--task", "{path}", "--out", str(root / "damaged-run")]]))
        return root / "damaged.jsonl", "\n".join(lines) + "\n", argv
    if kind == "metrics":
        lines = draw(st.lists(st.just(json.dumps({"step": 1, "reward_mean": 0.5})), max_size=2)) + [draw(bad_metrics_line())]
        return world["run"] / "metrics.jsonl", "\n".join(lines) + "\n", draw(st.sampled_from(
            [["plot", str(world["run"]), "-o", str(root / "c.png")], ["report", str(world["run"])]]))
    if kind == "state":
        return world["state"], draw(bad_state()), ["grow", str(world["run"]), "--spec", GROWTH, "--stage", "neuromas5",
                                                   "--out", str(root / "grown")]
    if kind == "result":
        return root / "bad-result.json", draw(bad_result(world)), draw(st.sampled_from(
            [["report", "{path}"], ["eval", "--compare", "{path}"]]))
    if kind == "spec":
        text = draw(st.text(max_size=60).filter(lambda t: "system" not in t))
        return root / "bad.nmas", text, draw(st.sampled_from(
            [["check", "{path}"], ["compile", "{path}"], ["fmt", "{path}"], ["run", "{path}", "--input", "x"]]))
    if kind == "adapters":  # every slot's weights file: bytes that are no safetensors file (or a header alone)
        weights = draw(st.binary(max_size=40) | st.builds(lambda n, text: n.to_bytes(8, "little") + text.encode(),
                                                          st.integers(0, 64), st.text(max_size=20)))
        for folder in world["adapters"].iterdir():
            (folder / "adapter_model.safetensors").write_bytes(weights)
        return None, "", ["run", NEUROMAS3, "--input", "x", "--adapters", str(world["adapters"])]
    if kind == "manifest":  # a checkpoint's manifest: eval and serve read adapters through it
        return world["state"].parent / "manifest.json", draw(st.text(max_size=60) | JSON_VALUES.map(json.dumps)), \
            ["eval", NEUROMAS3, "--task", str(world["data"]), "--checkpoint", str(world["run"])]
    text = draw(st.text(max_size=60))
    return root / "bad.toml", text, ["experiment", "{path}", "--out", str(root / "experiment")]


@settings(FUZZ, max_examples=400)
@given(data=st.data())
def test_damaged_files_are_named_not_crashed_on(data, world, no_model):
    path, text, argv = data.draw(damaged_case(world))
    saved = {name: world[name].read_text() for name in ("state",)} | {"metrics": (world["run"] / "metrics.jsonl").read_text()}
    if path is not None:
        path.write_text(text)
    try:
        assert_refused([arg.replace("{path}", str(path)) for arg in argv], no_model)
    finally:
        world["state"].write_text(saved["state"])
        (world["run"] / "metrics.jsonl").write_text(saved["metrics"])
        (world["state"].parent / "manifest.json").unlink(missing_ok=True)


def test_the_bases_pass_every_check(world, no_model):
    """Without the damage each case adds, the command lines get as far as the model (or
    run): so the refusals above come from the damage, not from the base."""
    for command in ("run", "rollout", "train", "eval", "grow"):
        with pytest.raises(no_model):
            run_quietly(bases(world)[command])
    for command in ("check", "compile", "plot", "report"):
        assert run_quietly(bases(world)[command])[0] == 0, command
    assert run_quietly(["report", str(world["result"])])[0] == 0
    assert msgspec.json.decode(world["result"].read_bytes())["n"] == 2
