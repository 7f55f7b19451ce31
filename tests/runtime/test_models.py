"""Model references: the bundled GGUF converted once into the cache, folders, hub ids, dtypes."""

from __future__ import annotations

import json

import pytest
import torch

from neuromas.diagnostics import UserError
from neuromas.runtime import models


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
