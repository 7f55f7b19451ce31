"""One home for CLI options: every option is defined once, one flag per concept, checked ranges."""

from __future__ import annotations

import argparse
from collections import defaultdict

import pytest

from neuromas.cli import COMMANDS, build_parser, main
from neuromas.commands.options import GROUPS, add_vllm_arguments, parent, vllm_options
from neuromas.runtime.backends.vllm_options import DEFAULT_MAX_BATCH_ROWS, VLLMOptions


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (subparsers,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def test_every_command_is_built():
    assert set(command_parsers()) == set(COMMANDS)


def test_no_option_is_defined_twice():
    """An option that several commands take is one object: it comes from one parent parser."""
    actions: dict[str, set[int]] = defaultdict(set)
    users: dict[str, list[str]] = defaultdict(list)
    for name, parser in command_parsers().items():
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    actions[flag].add(id(action))
                    users[flag].append(name)
    twice = {flag: users[flag] for flag, ids in actions.items() if len(ids) > 1}
    assert not twice, f"defined more than once: {twice}"


def test_shared_options_come_from_the_groups():
    shared = {flag for name in GROUPS for action in parent(name)._actions for flag in action.option_strings}
    counts: dict[str, int] = defaultdict(int)
    for parser in command_parsers().values():
        for action in parser._actions:
            for flag in action.option_strings:
                counts[flag] += 1
    used_twice = {flag for flag, count in counts.items() if count > 1} - {"-h", "--help"}
    assert used_twice <= shared


def test_an_output_folder_is_out_dir_and_an_output_file_is_o_file():
    for name, parser in command_parsers().items():
        for action in parser._actions:
            if "--out" in action.option_strings:
                assert action.metavar == "DIR", name
            if "-o" in action.option_strings:
                assert action.option_strings == ["-o"] and action.metavar == "FILE", name
            assert not {"--output", "--png"} & set(action.option_strings), name
    assert {name for name, parser in command_parsers().items()
            if any("-o" in action.option_strings for action in parser._actions)} >= {
        "compile", "rollout", "eval", "plot", "report"}


def test_help_states_the_real_defaults(capsys):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--group G samples per input (default: train, grow: the spec's train group" in text
    assert "--batch B inputs per rollout (default: train, grow: the spec's train batch" in text
    assert "--steps N optimiser steps in all (default: the spec's)" in text


def test_the_vllm_flags_round_trip():
    parser = argparse.ArgumentParser()
    add_vllm_arguments(parser)
    assert vllm_options(parser.parse_args([])) == VLLMOptions()
    args = parser.parse_args(
        "--gpu-memory-utilization 0.4 --max-model-len 3000 --max-lora-rank 64 --enforce-eager "
        "--tensor-parallel-size 2 --sleep-mode --max-num-seqs 128 --max-batch-rows 0".split()
    )
    assert vllm_options(args) == VLLMOptions(
        gpu_memory_utilization=0.4,
        max_model_len=3000,
        max_lora_rank=64,
        enforce_eager=True,
        tensor_parallel_size=2,
        sleep_mode=True,
        max_num_seqs=128,
        max_batch_rows=None,
    )
    assert VLLMOptions().max_batch_rows == DEFAULT_MAX_BATCH_ROWS == 256


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seed", "99999999999999999999999"], "argument --seed: must be from 0 to 4294967295, got 99999999999999999999999"),
        (["--seed", "-1"], "argument --seed: must be from 0 to 4294967295, got -1"),
        (["--threads", "0"], "argument --threads: must be from 1 to 2147483647, got 0"),
        (["--group", "1.5"], "argument --group: expected a whole number from 1 to 2147483647, got '1.5'"),
        (["--server", "notaurl", "--backend", "server"], "argument --server: 'notaurl' is not an http(s) URL"),
        (["--server", "http://h:99999", "--backend", "server"], "argument --server: 'http://h:99999' is not a URL"),
        (["--gpu-memory-utilization", "1.5"], "argument --gpu-memory-utilization: must be in (0, 1], got 1.5"),
        (["--max-batch-rows", "-1"], "argument --max-batch-rows: must be from 0 to 2147483647, got -1"),
    ],
)
def test_numbers_and_urls_out_of_range_are_usage_errors_with_the_range(argv, message, capsys, tmp_path):
    assert main(["run", "spec.nmas", "--input", "x", *argv]) == 2
    assert message in capsys.readouterr().err
