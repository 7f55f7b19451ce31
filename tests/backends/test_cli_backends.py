"""`--backend {transformers,vllm,server}` on run, rollout, eval and train: the errors users can fix."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from neuromas.cli import main
from neuromas.diagnostics import UserError

REPO = Path(__file__).resolve().parents[2]
NEUROMAS3 = str(REPO / "specs" / "neuromas3.nmas")
CLOSED_PORT_URL = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"question": "What is 2 + 3?", "answer": "5"}) + "\n")
    return path


def commands(data: Path, tmp_path: Path) -> dict[str, list[str]]:
    return {
        "run": ["run", NEUROMAS3, "--input", "What is 2 + 3?"],
        "rollout": ["rollout", NEUROMAS3, "--data", str(data), "-o", str(tmp_path / "traces.jsonl")],
        "eval": ["eval", NEUROMAS3, "--task", f"jsonl:{data}", "--n", "1"],
        "train": ["train", NEUROMAS3, "--task", f"jsonl:{data}", "--steps", "1", "--out", str(tmp_path / "run")],
    }


@pytest.mark.parametrize("command", ["run", "rollout", "eval", "train"])
def test_the_server_backend_without_a_server_is_a_usage_error(command, data, tmp_path, capsys):
    code = main([*commands(data, tmp_path)[command], "--backend", "server"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--backend server needs at least one --server URL" in err and "vllm serve" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--server", "http://gpu1:8000"], "--server is used only by --backend server (the backend is transformers)"),
        (["--tensor-parallel-size", "2", "--enforce-eager"],
         "--enforce-eager, --tensor-parallel-size: vLLM engine option(s), used only with --backend vllm"),
        (["--backend", "server", "--server", "http://gpu1:8000", "--sleep-mode"], "--sleep-mode: vLLM engine option"),
    ],
)
def test_options_of_another_backend_are_usage_errors(extra, message, data, tmp_path, capsys):
    code = main([*commands(data, tmp_path)["run"], *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the runtime needs torch")
def test_the_vllm_backend_without_vllm_says_what_is_missing(data, tmp_path, capsys):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here: the backend starts (tests/vllm_engine test it for real)")
    code = main([*commands(data, tmp_path)["run"], "--backend", "vllm"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "needs the 'vllm' package" in err and "pip install -e '.[vllm]'" in err
    assert "transformers backend" in err


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the runtime needs torch")
def test_an_unreachable_server_is_reported_before_any_model_loads(data, tmp_path, capsys):
    code = main([*commands(data, tmp_path)["run"], "--backend", "server", "--server", CLOSED_PORT_URL])
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"{CLOSED_PORT_URL}/v1/models: cannot reach the server" in err and "--enable-lora" in err


def test_a_tensor_parallel_size_above_the_visible_gpus_is_refused():
    from neuromas.runtime.backends.vllm import check_tensor_parallel

    check_tensor_parallel(2, 2)
    with pytest.raises(UserError, match=r"--tensor-parallel-size 4 needs 4 GPUs, and this process sees 2\n  fix:"):
        check_tensor_parallel(4, 2)
