"""The vLLM backend without vLLM: the errors that tell the user what to do, and the checks
made before the engine is touched. Generation itself is tested on a GPU (tests/gpu)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import neuromas
from neuromas.diagnostics import UserError
from neuromas.plan import Generation
from neuromas.runtime.models.adapter_versions import AdapterVersions
from neuromas.runtime.backends.base import Backend, GenRequest
from neuromas.runtime.backends.vllm import AdapterSync, VLLMBackend, VLLMStats, require_vllm

SLOTS = ("node-hidden-0", "node-hidden-1", "node-answer-0")
HAS_VLLM = importlib.util.find_spec("vllm") is not None


def offline_backend(tmp_path: Path) -> VLLMBackend:
    """A backend with no engine: only for the checks made before the engine is used."""
    return VLLMBackend(None, None, AdapterVersions(tmp_path, SLOTS))


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
def test_missing_vllm_says_how_to_install_it():
    with pytest.raises(UserError, match=r"pip install -e '\.\[vllm\]'"):
        require_vllm()
    with pytest.raises(UserError, match="not installed"):
        VLLMBackend.for_plan(neuromas.compile("specs/neuromas3.nmas"))


def test_missing_gpu_says_so(monkeypatch):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    real_find_spec = importlib.util.find_spec
    fake_vllm_spec = object()  # only the error path runs: require_vllm never imports vllm when CUDA is missing
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: fake_vllm_spec if name == "vllm" else real_find_spec(name, *a)
    )
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        require_vllm()


def test_the_backend_speaks_the_protocol(tmp_path):
    backend = offline_backend(tmp_path)
    assert isinstance(backend, Backend)
    assert backend.generate([]) == []


def test_unpublished_adapters_are_refused_before_the_engine_runs(tmp_path):
    backend = offline_backend(tmp_path)
    request = GenRequest((1, 2), "node-hidden-0", Generation(max_tokens=4, temperature=1.0, top_p=1.0))
    with pytest.raises(ValueError, match="publish"):
        backend.generate([request])


def test_unknown_slots_are_refused_before_anything_is_written(tmp_path):
    backend = offline_backend(tmp_path / "versions")
    with pytest.raises(ValueError, match="node-mid-0"):
        backend.publish(model=None, slots=["node-mid-0"])
    with pytest.raises(ValueError, match="none of the plan's adapter slots"):
        backend.publish(model=object())
    with pytest.raises(UserError, match="node-mid-0"):
        backend.set_adapters({"node-mid-0": tmp_path})
    with pytest.raises(UserError, match="not a saved adapter"):
        backend.set_adapters({"node-hidden-0": tmp_path})
    assert not (tmp_path / "versions").exists()
    assert backend.versions.version == 0


def test_sleeping_engine_refuses_to_generate(tmp_path):
    backend = offline_backend(tmp_path)
    backend.sleeping = True
    with pytest.raises(RuntimeError, match="wake_up"):
        backend.generate([GenRequest((1,), None, Generation(max_tokens=1, temperature=0.0, top_p=1.0))])


def test_stats_keep_adapter_sync_times_until_reset():
    stats = VLLMStats()
    stats.record_sync(AdapterSync(version=1, slots=3, save_s=0.5, load_s=0.25, drop_s=0.125))
    stats.record_sync(AdapterSync(version=2, slots=1, save_s=0.25, load_s=0.25, drop_s=0.0))
    stats.engine_calls = 4
    assert stats.adapter_syncs == 2
    assert stats.adapter_sync_s == pytest.approx(1.375)
    assert stats.last_sync.total_s == pytest.approx(0.5)
    stats.reset()
    counts = (stats.calls, stats.engine_calls, stats.adapter_syncs, stats.adapter_sync_s, stats.last_sync)
    assert counts == (0, 0, 0, 0.0, None)
