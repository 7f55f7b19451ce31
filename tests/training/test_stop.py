"""Clean stops: StopSignals (the first SIGINT/SIGTERM is a request, the second aborts) and the
training loops that honour a request between steps (train, train_with_growth)."""

from __future__ import annotations

import copy
import json
import signal
import threading

import pytest
import torch

from neuromas.runtime.training.checkpoint import list_checkpoints
from neuromas.runtime.training.stop import StopSignals


def test_the_first_signal_is_a_request_and_handlers_are_restored():
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    with StopSignals(announce=False) as stop:
        assert not stop.requested and stop.exit_code is None
        assert signal.getsignal(signal.SIGTERM) != before[signal.SIGTERM]
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM and stop.exit_code == 143
    assert {signum: signal.getsignal(signum) for signum in before} == before


def test_a_second_sigint_aborts(capsys):
    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN under `nohup ... &`
    with pytest.raises(KeyboardInterrupt):
        with StopSignals() as stop:
            signal.raise_signal(signal.SIGINT)
            assert stop.exit_code == 130
            assert "finishing the current step" in capsys.readouterr().err
            signal.raise_signal(signal.SIGINT)
            pytest.fail("the second SIGINT did not abort")
    assert signal.getsignal(signal.SIGINT) is before


def test_outside_the_main_thread_nothing_is_installed():
    before = signal.getsignal(signal.SIGINT)
    seen = []

    def enter() -> None:
        with StopSignals() as stop:
            seen.append((signal.getsignal(signal.SIGINT), stop.requested))

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert seen == [(before, False)]


class StopAfter:
    """A stop request raised once `steps` steps have been reported to `count`."""

    def __init__(self, steps: int) -> None:
        self.steps, self.seen = steps, 0

    @property
    def requested(self) -> bool:
        return self.seen >= self.steps

    def count(self, metrics: dict) -> None:
        self.seen += 1


GROWTH_SPEC = """
system tiny_growth {
    adapter lora(rank = 2, alpha = 4, targets = [q_proj, v_proj])
    input question
    layer hidden width 1 { max_tokens 2 }
    layer answer width 1 { max_tokens 2 }
    hidden <- question
    answer <- hidden dense, question
    output answer
    train { group 2  batch 1  lr 1e-3  reward numeric_match }
    growth {
        stage small {}
        stage wide { widen hidden to 2 init copy } after 1 steps
    }
}
"""


def _runtime(base_model, plan):
    from neuromas.runtime.models.adapters import attach_adapters
    from neuromas.runtime.backends.transformers import TransformersBackend
    from neuromas.runtime.generation.rollout import Runtime

    torch.manual_seed(0)
    model = attach_adapters(copy.deepcopy(base_model.model), plan)
    return Runtime(plan, TransformersBackend(model, base_model.tokenizer))


def _task():
    from neuromas.runtime.tasks.registry import Example, Task

    return Task("sums", [Example({"question": f"What is {i} + {i}?"}, str(2 * i), {}) for i in range(4)], seed=0)


def test_train_stops_between_steps_and_checkpoints_the_last(base_model, make_plan, tmp_path):
    """Two steps on the bundled model: about 30 s on a shared 2-core machine."""
    from neuromas.runtime.training.loop import train
    from neuromas.runtime.training.session import TrainSettings, start_session

    plan = make_plan(max_tokens=2, batch=1)
    settings = TrainSettings(steps=5, save_every=100)
    session = start_session(plan, _runtime(base_model, plan), _task(), settings, tmp_path)
    stop = StopAfter(1)
    assert len(train(session, on_step=stop.count, stop=stop)) == 1
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step-000001"]  # save_every 100 was not due
    assert train(session, stop=stop) == [] and len(list_checkpoints(tmp_path)) == 1  # nothing new to save
    stop.steps = 2
    assert len(train(session, on_step=stop.count, stop=stop)) == 1
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step-000001", "step-000002"]


def test_a_growth_run_stops_cleanly(base_model, tmp_path):
    """Two steps and one growth on the bundled model: about 40 s on a shared 2-core machine."""
    import neuromas
    from neuromas.runtime.training.schedule import train_with_growth
    from neuromas.runtime.training.session import TrainSettings

    plan = neuromas.compile(GROWTH_SPEC)
    stop = StopAfter(2)
    session = train_with_growth(plan, lambda stage: _runtime(base_model, stage), _task(),
                                TrainSettings(steps=6, save_every=100), tmp_path, on_step=stop.count, stop=stop)
    assert session.state.step == 2 and session.plan.stage == "wide"
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step-000001", "step-000002"]  # growth, then stop
    assert json.loads((tmp_path / "checkpoints" / "step-000002" / "state.json").read_text())["step"] == 2
