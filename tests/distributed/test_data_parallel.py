"""Data-parallel training under torchrun (gloo, CPU) against one process on the same samples.

`worker.py` trains two steps (the second resumed from the first's checkpoint) on a fixed
rollout of five questions, batch 3 (shared 2 + 1 over two ranks), REINFORCE (its
batch-mean baseline needs every rank's rewards). Both settings run at once, float32 and
one thread per process: about 30 s on two idle cores (65 s measured with the cores
shared by other jobs), most of it importing torch and loading the model three times.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

WORKER = Path(__file__).with_name("worker.py")
REPO = WORKER.parents[2]
TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return env | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _check(process: subprocess.Popen, what: str) -> None:
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun and its ranks: a session of their own
        output, _ = process.communicate()
        pytest.fail(f"{what} did not finish in {TIMEOUT_S} s; its output:\n{output[-4000:]}")
    assert process.returncode == 0, f"{what} failed:\n{output[-4000:]}"


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # about 55 s: in CI's slow run (.ci/run)
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun (installed with torch) is not on PATH")
def test_two_ranks_take_the_single_process_step(tmp_path):
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    run = dict(cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
               start_new_session=True)
    reference = subprocess.Popen([sys.executable, str(WORKER), str(single)], **run)
    ranks = subprocess.Popen(
        ["torchrun", "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
         str(WORKER), str(parallel)],
        **run,
    )
    _check(reference, "the single process")
    _check(ranks, "torchrun with two ranks")

    # Both ranks hold the same adapters, and they are the single process's.
    expected = torch.load(single / "adapters-rank0.pt")
    rank0, rank1 = (torch.load(parallel / f"adapters-rank{rank}.pt") for rank in (0, 1))
    assert expected.keys() == rank0.keys() == rank1.keys()
    for name in expected:
        assert torch.equal(rank0[name], rank1[name]), name
        diff = (rank0[name] - expected[name]).abs().max().item()
        assert diff <= 1e-5, f"{name}: max abs diff {diff:.2e}"
    moved = max((expected[name]).abs().max().item() for name in expected if "lora_B" in name)
    assert moved > 1e-3  # lora_B starts at zero: the two steps really moved it

    # Rank 0 alone logged each step once, with the whole step's numbers, and checkpointed.
    ours, theirs = _metrics(parallel), _metrics(single)
    assert [row["step"] for row in ours] == [row["step"] for row in theirs] == [1, 2]
    for mine, reference_row in zip(ours, theirs, strict=True):
        for field in ("completions", "tokens", "data_position", "reward_failures"):
            assert mine[field] == reference_row[field], field
        for field in ("reward_mean", "reward_std", "loss", "grad_norm", "entropy"):
            assert mine[field] == pytest.approx(reference_row[field], rel=1e-5, abs=1e-7), field
    assert sorted(path.name for path in (parallel / "checkpoints").iterdir() if path.name.startswith("step-")) == [
        "step-000001", "step-000002"
    ]
