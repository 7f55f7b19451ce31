"""Model references: the bundled GGUF converted once into the cache, folders, hub ids, dtypes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from neuromas.diagnostics import UserError
from neuromas.runtime.models import loading as models


def test_bundled_model_converts_once_into_the_cache(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("NEUROMAS_CACHE", str(tmp_path))
    folder = models.resolve_model("smollm2-135m-instruct")
    assert folder == str(tmp_path / "models" / "smollm2-135m-instruct")
    assert "converting SmolLM2-135M-Instruct.Q4_1.gguf" in capsys.readouterr().err
    config = json.loads((tmp_path / "models" / "smollm2-135m-instruct" / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["smollm2-135m-instruct"]  # no staging left
    assert models.resolve_model("smollm2-135m-instruct") == folder
    assert capsys.readouterr().err == ""  # reused, not converted again


def test_references_resolve_to_folders_or_hub_ids(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert models.resolve_model(str(tmp_path)) == str(tmp_path)
    assert models.resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(UserError, match="model 'nothing-like-this' not found"):
        models.resolve_model("nothing-like-this")


def test_dtypes():
    assert models.resolve_dtype("float32") is torch.float32
    native_bf16 = torch.cuda.is_available() or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert (models.resolve_dtype("auto") is torch.bfloat16) == native_bf16
    with pytest.raises(UserError, match="unknown dtype 'fp8'"):
        models.resolve_dtype("fp8")
    with pytest.raises(UserError, match="--threads must be at least 1"):
        models.set_threads(0)


def test_a_hub_id_without_hub_access_says_what_to_do(monkeypatch):
    """The real transformers and hub code path, offline (as HF_HUB_OFFLINE=1 sets it)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError) as caught:
        models.load_model("someowner/no-such-model-here", threads=1)
    message = str(caught.value)
    assert message.startswith("model 'someowner/no-such-model-here' is a hub id, but the Hugging Face hub cannot be "
                              "reached from here (no network, or HF_HUB_OFFLINE is set) and it is not in the local cache")
    assert "fix: connect to the network once to download it" in message and "--model PATH" in message
    assert "the bundled 'smollm2-135m-instruct' (no network needed)" in message


def test_missing_paths_files_and_empty_folders_are_told_apart(tmp_path):
    with pytest.raises(UserError, match=rf"not a local folder \('{tmp_path}/absent' does not exist\)"):
        models.resolve_model(str(tmp_path / "absent"))
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(UserError, match=r"is a file, not a folder.*\n  fix: point --model at the folder that holds it"):
        models.resolve_model(str(tmp_path / "model.gguf"))
    with pytest.raises(UserError, match="has no config.json: it is not a Hugging Face model folder"):
        models.resolve_model(str(tmp_path))


def test_a_folder_without_weights_names_the_folder(tmp_path):
    folder = tmp_path / "half"
    folder.mkdir()
    bundled = Path(models.resolve_model(models.DEFAULT_MODEL))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((bundled / name).read_bytes())
    with pytest.raises(UserError, match=rf"could not load model '{folder}' from the folder '{folder}': .*\n  fix: the "
                                        r"folder needs config.json, the weights \(\*.safetensors\)"):
        models.load_model(str(folder), threads=1)


def test_the_default_thread_count_leaves_out_the_cores_others_keep_busy(monkeypatch):
    monkeypatch.setattr(models, "_physical_cores", lambda: 2)
    for load, expected in [(0.0, 2), (0.4, 2), (1.0, 1), (1.7, 1), (9.0, 1)]:
        monkeypatch.setattr(models.os, "getloadavg", lambda load=load: (load, load, load))
        assert models.default_threads() == expected, load
    monkeypatch.setattr(models, "_physical_cores", lambda: 16)
    monkeypatch.setattr(models.os, "getloadavg", lambda: (3.2, 3.0, 3.0))
    assert models.default_threads() == 13
    before = torch.get_num_threads()
    try:
        models.set_threads(None)
        assert torch.get_num_threads() == 13
    finally:
        torch.set_num_threads(before)
