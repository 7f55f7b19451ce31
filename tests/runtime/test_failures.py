"""Out of memory and a full disk: mapped to UserErrors that name the phase or file and the way forward."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from neuromas.cli import main
from neuromas.runtime.failures import disk_full_reason, explain, in_phase, is_out_of_memory, written_file

REPO = Path(__file__).resolve().parents[2]
TINY_SPEC = """system tiny {
    model "smollm2-135m-instruct"
    adapter lora(rank = 1, alpha = 2, targets = [q_proj])
    input question
    layer answer width 1 { max_tokens 1 }
    answer <- question
    output answer
    train {
        algorithm grpo
        group     2
        batch     1
        reward    numeric_match
    }
}
"""
TRAIN_OPTIONS = {"out": None, "batch": None, "group": 4, "max_tokens": None, "token_budget": 4096}


def real_allocation_failure() -> RuntimeError:
    """What torch's CPU allocator raises when an allocation fails: 1 PiB is more than any
    address space, so this fails at once without touching memory."""
    import torch

    try:
        torch.empty(2**50, dtype=torch.uint8)
    except RuntimeError as err:
        return err
    raise AssertionError("allocating 1 PiB succeeded")


def tiny_run(tmp_path: Path) -> tuple[Path, Path]:
    spec = tmp_path / "tiny.nmas"
    spec.write_text(TINY_SPEC)
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"question": "What is 2 + 3?", "answer": "5"}) + "\n")
    return spec, data


def test_out_of_memory_is_recognised():
    assert is_out_of_memory(real_allocation_failure())
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shapes do not match"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_torch_out_of_memory_is_a_gpu_error():
    import torch

    err = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nMore details")
    message = str(explain(tagged(err, "update"), "eval", {"batch": 8, "group": 1, "max_tokens": None}))
    assert message.startswith("out of GPU memory during the update (the training forward and backward passes): "
                              "CUDA out of memory. Tried to allocate 2.00 GiB.\n")


@pytest.mark.gpu
def test_a_real_gpu_allocation_failure_is_mapped():
    """A 1 PiB allocation on the GPU fails at once; no vllm needed."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    try:
        torch.empty(2**50, dtype=torch.uint8, device="cuda")
    except torch.OutOfMemoryError as err:
        message = str(explain(tagged(err, "rollout"), "run", {"group": 2, "max_tokens": None}))
    else:
        pytest.fail("allocating 1 PiB on the GPU succeeded")
    assert message.startswith("out of GPU memory during the rollout") and "--group (samples per input, now 2)" in message


def test_phases_tag_the_innermost_function():
    @in_phase("update")
    def update():
        raise MemoryError

    @in_phase("rollout")
    def outer():
        update()

    with pytest.raises(MemoryError) as caught:
        outer()
    assert caught.value.neuromas_phase == "update"
    with pytest.raises(ValueError, match="unknown phase 'sampling'"):
        in_phase("sampling")


def tagged(err: BaseException, phase: str) -> BaseException:
    err.neuromas_phase = phase
    return err


def test_out_of_memory_messages_name_the_phase_and_the_settings(tmp_path):
    (tmp_path / "checkpoints" / "step-000010").mkdir(parents=True)
    options = {**TRAIN_OPTIONS, "out": str(tmp_path)}
    update = str(explain(tagged(real_allocation_failure(), "update"), "train", options))
    assert update.startswith("out of CPU memory during the update (the training forward and backward passes): "
                             "can't allocate memory: you tried to allocate 1125899906842624 bytes")
    assert f"the last checkpoint, '{tmp_path / 'checkpoints' / 'step-000010'}', is intact" in update
    assert "fix: lower --token-budget (padded tokens per training micro-batch, now 4096), then rerun with --resume" in update
    assert "--batch" not in update

    rollout = str(explain(tagged(MemoryError(), "rollout"), "train", options))
    assert "during the rollout" in rollout and "--resume" in rollout and "--token-budget" not in rollout
    assert "--batch (inputs per batch) or --group (samples per input, now 4) or --max-tokens" in rollout
    assert "starts afresh in another --out" in rollout

    empty = str(explain(tagged(MemoryError(), "update"), "train", {**options, "out": str(tmp_path / "new")}))
    assert f"no checkpoint was written to '{tmp_path / 'new'}' yet" in empty
    assert "then rerun (the update settings" in empty and "--resume" not in empty

    run = str(explain(tagged(MemoryError(), "rollout"), "run", {"group": 1, "max_tokens": None}))
    assert "fix: lower --group (samples per input, now 1) or --max-tokens (tokens each node writes)" in run
    assert "checkpoint" not in run and "--batch" not in run


def test_disk_errors_are_recognised():
    assert disk_full_reason(OSError(errno.ENOSPC, "No space left on device")) == "no space left on the device"
    assert disk_full_reason(OSError(errno.EDQUOT, "Disk quota exceeded")) == "the disk quota is exceeded"
    assert "file size limit" in disk_full_reason(OSError(errno.EFBIG, "File too large"))
    assert disk_full_reason(OSError(errno.EACCES, "Permission denied")) is None
    assert disk_full_reason(RuntimeError("something else")) is None
    assert explain(ValueError("not ours"), "train", {}) is None
    error = OSError(errno.ENOSPC, "No space left on device", "runs/x/metrics.jsonl")
    assert written_file(error) == "runs/x/metrics.jsonl"


def test_out_of_memory_in_a_real_update_names_the_token_budget(tmp_path, monkeypatch, capsys):
    """A real training step on the bundled model whose update forward pass makes a real
    (impossible) allocation: the CLI names the update and --token-budget."""
    from neuromas.runtime.training import update

    real_token_logprobs = update.token_logprobs

    def allocating(*args, **kwargs):
        import torch

        torch.empty(2**50, dtype=torch.uint8)
        return real_token_logprobs(*args, **kwargs)

    monkeypatch.setattr(update, "token_logprobs", allocating)
    # The tiny run's rewards are constant, and rows without signal would skip the forward pass.
    monkeypatch.setattr(update, "rows_with_signal", lambda batch, advantages, config: list(range(len(batch.rows))))
    spec, data = tiny_run(tmp_path)
    out = tmp_path / "run"
    code = main(["train", str(spec), "--task", f"jsonl:{data}", "--steps", "1", "--out", str(out), "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert "error: out of CPU memory during the update" in err and "fix: lower --token-budget" in err
    assert f"no checkpoint was written to '{out}' yet" in err


def test_out_of_memory_in_a_real_rollout_names_group_and_max_tokens(monkeypatch, capsys):
    from neuromas.runtime.backends.transformers import TransformersBackend

    real_generate = TransformersBackend.generate

    def allocating(self, requests, **kwargs):
        import torch

        torch.empty(2**50, dtype=torch.uint8)
        return real_generate(self, requests, **kwargs)

    monkeypatch.setattr(TransformersBackend, "generate", allocating)
    code = main(["run", str(REPO / "specs" / "single_agent.nmas"), "--input", "hi", "--max-tokens", "1", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert "error: out of CPU memory during the rollout (generating every node's completion)" in err
    assert "fix: lower --group (samples per input, now 1) or --max-tokens (tokens each node writes, now 1)" in err


def mounted_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill ({result.stderr.strip()})")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs to fill needs root")
def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    """Two training steps into a 760 KiB tmpfs: the first checkpoint (about 500 KiB) fits,
    the second fills the disk while torch writes its optimizer state. The tiny run's
    rewards are constant, so every row is kept in the update: AdamW then steps and its
    state has the size of a real run's."""
    from neuromas.runtime.training import update

    monkeypatch.setattr(update, "rows_with_signal", lambda batch, advantages, config: list(range(len(batch.rows))))
    spec, data = tiny_run(tmp_path)
    out = tmp_path / "disk"
    mounted_tmpfs(out, "760k")
    try:
        code = main(["train", str(spec), "--task", f"jsonl:{data}", "--steps", "2", "--save-every", "1",
                     "--keep", "0", "--out", str(out), "--threads", "1"])
        err = capsys.readouterr().err
        checkpoints = sorted(path.name for path in (out / "checkpoints").iterdir())
        kept = (out / "checkpoints" / "step-000001" / "state.json").read_text()
        safetensors_error = safetensors_write_error(out / "big.safetensors")
        with pytest.raises(OSError) as text_error:
            (out / "big.txt").write_text("x" * 4_000_000)
    finally:
        subprocess.run(["umount", str(out)], check=True)
    assert code == 1
    assert f"could not write '{out / 'checkpoints'}/.step-000002-" in err
    assert "the checkpoint being written was discarded" in err
    assert f"the last checkpoint, '{out / 'checkpoints' / 'step-000001'}', is intact" in err
    assert "fix: free space on that disk and rerun with --resume to continue from it, or train into another --out" in err
    assert checkpoints == ["step-000001"]  # the staging folder is gone
    assert json.loads(kept)["step"] == 1
    # safetensors (adapter weights) reports the full disk as "os error 28" without the file
    assert disk_full_reason(safetensors_error) == "no space left on the device"
    assert written_file(safetensors_error) == str(out / "big.safetensors")
    assert disk_full_reason(text_error.value) == "no space left on the device"
    assert written_file(text_error.value) == str(out / "big.txt")  # Python's write error has no filename


def safetensors_write_error(path: Path) -> Exception:
    import torch
    from safetensors.torch import save_file

    try:
        save_file({"x": torch.zeros(1_000_000)}, str(path))  # 4 MB
    except Exception as err:
        return err
    raise AssertionError(f"writing 4 MB to '{path}' succeeded")


@pytest.mark.slow
def test_a_file_size_limit_while_writing_traces_names_the_file(tmp_path):
    """`neuromas rollout` in a process allowed to write 64 bytes per file (RLIMIT_FSIZE):
    the first trace fails with EFBIG. Slow (10 to 20 s): a child process imports torch and
    loads the model; the tmpfs test above covers a full disk in the default run."""
    resource = pytest.importorskip("resource")
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"question": "What is 2 + 3?"}) + "\n")
    traces = tmp_path / "traces.jsonl"

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))

    argv = [sys.executable, "-B", "-m", "neuromas.cli", "rollout", str(REPO / "specs" / "single_agent.nmas"),
            "--data", str(data), "-o", str(traces), "--max-tokens", "1", "--threads", "1"]
    result = subprocess.run(argv, capture_output=True, text=True, preexec_fn=limit_file_size, cwd=REPO, timeout=300)
    assert result.returncode == 1, result.stderr
    assert f"error: could not write '{traces}': the file is larger than this process may write" in result.stderr
    assert f"'{traces}' is incomplete; files written before it are unchanged" in result.stderr
    assert f"fix: raise the file size limit (ulimit -f), or write somewhere else (now '{traces}')" in result.stderr
