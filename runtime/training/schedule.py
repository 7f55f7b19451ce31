"""A plan with growth stages -> one training run that grows the system at each stage's step.

Stage 1 trains from scratch; when the global step reaches the next stage's
`after_steps`, the trained model grows (kept adapters and optimizer state carried,
new nodes initialised as the compiler says), a checkpoint of the grown system is
written at that step, and training continues in the same run folder, with one metrics
file whose rows name their stage. A stage whose next stage says `or plateau K evals`
ends earlier when held-out reward stops improving (runtime/plateau.py; evaluations go to
`evals.jsonl`). `stages.json` records when and why each stage started, and a
checkpoint's plan fingerprint says which stage it belongs to, so `resume` works across
a growth boundary.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from neuromas.diagnostics import UserError
from neuromas.plan import GrowthStage, Plan

from .checkpoint import load_checkpoint, newest_verified, plan_fingerprint, save_checkpoint
from .growth import carry_optimizer_state, grow_model
from .loop import RowHook, StopRequest, train
from .parameters import trainable_parameters
from .plateau import EvalSettings, evaluate_held_out, has_plateaued, is_due, read_evals, step_trigger_only
from .scoring import AnswerScorer
from .session import PLAN_FILE, RunLock, TrainSession, TrainSettings, check_out_folder, start_session
from ..generation.rollout import Runtime
from ..tasks.registry import Task
from .update import make_optimizer

STAGES_FILE = "stages.json"
GROWTH_PLAN_FILE = "growth_plan.json"  # the whole plan, every stage: what `neuromas grow` reads

RuntimeFactory = Callable[[Plan], Runtime]  # builds the runtime (model + adapters) for a stage's plan

logger = logging.getLogger(__name__)


def stage_plans(plan: Plan) -> list[GrowthStage]:
    """The stages with the full plan's training settings (command-line overrides included)."""
    return [
        msgspec.structs.replace(stage, plan=msgspec.structs.replace(stage.plan, train=plan.train))
        for stage in plan.growth
    ]


def grown_stage_index(stages: list[GrowthStage], stage_name: str) -> int:
    """The index of `stage_name`, a stage that grows from the one before it; raises UserError
    (exit 2) for an unknown stage or the first one."""
    names = [stage.name for stage in stages]
    if stage_name not in names:
        raise UserError(f"no growth stage {stage_name!r} (stages: {', '.join(names) or 'none'})", exit_code=2)
    index = names.index(stage_name)
    if index == 0:
        raise UserError(f"'{stage_name}' is the first stage: there is nothing trained to grow it from", exit_code=2)
    return index


def train_with_growth(
    plan: Plan,
    make_runtime: RuntimeFactory,
    task: Task,
    settings: TrainSettings,
    out: Path,
    *,
    score: AnswerScorer | None = None,
    resume: bool = False,
    on_step: RowHook | None = None,
    evaluation: EvalSettings | None = None,
    on_eval: RowHook | None = None,
    stop: StopRequest | None = None,
) -> TrainSession:
    """Train through every growth stage until `settings.steps`; returns the last session.

    The steps are `loop.train`'s; between steps the system grows when the next stage is
    due. score: as for `session.start_session`. evaluation: held-out evaluations, which
    let `or plateau K evals` start a stage early; without them only `after N steps`
    starts stages (logged as a warning when the spec asks for plateaus). Raises UserError
    for a plan without growth, and ValueError for an evaluation interval or size below 1.
    """
    stages = stage_plans(plan)
    if not stages:
        raise UserError("this spec has no growth block; train it without growth")
    if evaluation is not None and (evaluation.every < 1 or evaluation.n < 1 or evaluation.batch < 1):
        raise ValueError(f"evaluation every, n and batch must be at least 1, got {evaluation}")
    if evaluation is None and (warning := step_trigger_only(stages)) is not None:
        logger.warning(warning)
    index = _resume_stage(stages, out) if resume else 0
    current = stages[index].plan
    session = start_session(current, make_runtime(current), task, settings, out, score=score, resume=resume)
    if session.is_main:  # written once the session holds the run folder's lock
        (Path(out) / GROWTH_PLAN_FILE).write_text(plan.to_pretty_json())
    _record_stage(out, stages[index].name, session.state.step, "start", [stage.name for stage in stages[:index]])
    evals = read_evals(out, session.state.step)
    held_out_score = None if evaluation is None else evaluation.score or session.score

    def evaluate_if_due() -> None:
        step = session.state.step
        if evaluation is None or held_out_score is None or not is_due(step, evaluation.every, settings.steps):
            return
        if any(row["step"] == step for row in evals):
            return  # a resumed run keeps the row its checkpoint's step already has
        evals.append(evaluate_held_out(session, evaluation, held_out_score))
        if on_eval is not None:
            on_eval(evals[-1])

    def grow_if_due(session: TrainSession) -> None:
        nonlocal index
        evaluate_if_due()
        while index + 1 < len(stages):
            following = stages[index + 1]
            stage_rewards = [row["reward_mean"] for row in evals if row["stage"] == session.plan.stage]
            trigger = growth_trigger(following, session.state.step, stage_rewards)
            if trigger is None:
                return
            grow_session(session, following)
            index += 1
            _record_stage(out, following.name, session.state.step, trigger, [stage.name for stage in stages[:index]])
            evaluate_if_due()

    train(session, on_step=on_step, stop=stop, before_step=grow_if_due)
    if session.state.step >= settings.steps:
        evaluate_if_due()
    return session


def growth_trigger(following: GrowthStage | None, step: int, stage_rewards: Sequence[float]) -> str | None:
    """Why the next stage starts at `step`: "steps" (its `after N steps` is reached),
    "plateau" (the current stage's held-out rewards, oldest first, have not improved
    for its `plateau K evals`), or None to keep training the current stage."""
    if following is None:
        return None
    if following.after_steps is not None and step >= following.after_steps:
        return "steps"
    if following.plateau_evals is not None and has_plateaued(stage_rewards, following.plateau_evals):
        return "plateau"
    return None


def grow_session(session: TrainSession, stage: GrowthStage) -> TrainSession:
    """Grow the session's system in place into `stage`'s: same model object and step, the
    stage's plan, an optimizer holding the carried state; its checkpoint is written at once.
    Returns the session."""
    model, origins = grow_model(session.model, session.plan, stage)
    slots = [slot.name for slot in stage.plan.adapters]
    params = trainable_parameters(model, slots)
    optimizer = make_optimizer(params, stage.plan.train.lr if stage.plan.train else session.config.lr)
    carry_optimizer_state(session.optimizer, optimizer, model, origins)
    backend = session.runtime.backend
    backend.model = model
    session.plan, session.model, session.optimizer, session.params = stage.plan, model, optimizer, params
    session.runtime = Runtime(stage.plan, backend, seed=session.runtime.seed)
    session.state = session.state._replace(plan_fingerprint=plan_fingerprint(stage.plan))
    if session.is_main:
        save_checkpoint(session.out, model, slots, optimizer, session.state)
        (session.out / PLAN_FILE).write_text(stage.plan.to_pretty_json())
    return session


def grow_checkpoint(checkpoint: Path, plan: Plan, stage_name: str, out: Path, make_runtime: RuntimeFactory) -> Path:
    """One growth step for people who drive training themselves: load `checkpoint` (of the
    stage before `stage_name`), grow it, and write the grown checkpoint, at the same step,
    and the stage's plan.json into `out`. Returns the new checkpoint folder."""
    stages = stage_plans(plan)
    index = grown_stage_index(stages, stage_name)
    trained, stage = stages[index - 1].plan, stages[index]
    lock = RunLock.acquire(Path(out))  # one writer per run folder, as for train
    try:
        check_out_folder(Path(out), resume=False)  # never over another run's checkpoints and plan
        return _grow_into(Path(checkpoint), trained, stage, index, Path(out), make_runtime, stages)
    finally:
        lock.release()


def _grow_into(checkpoint: Path, trained: Plan, stage: GrowthStage, index: int, out: Path,
               make_runtime: RuntimeFactory, stages: list[GrowthStage]) -> Path:
    stage_name = stage.name
    state_file = Path(checkpoint) / "state.json"
    if not state_file.is_file():
        raise UserError(f"'{checkpoint}' is not a checkpoint folder (it has no state.json)")
    try:
        fingerprint = json.loads(state_file.read_text())["plan_fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"'{state_file}' is not a readable checkpoint state ({type(err).__name__}: {err})") from None
    if fingerprint != plan_fingerprint(trained):
        raise UserError(f"'{checkpoint}' was not trained from stage '{stages[index - 1].name}', the stage before '{stage_name}'")
    runtime = make_runtime(trained)
    model = runtime.backend.model
    trained_slots = [slot.name for slot in trained.adapters]
    optimizer = make_optimizer(trainable_parameters(model, trained_slots), trained.train.lr if trained.train else 1e-4)
    loaded = load_checkpoint(Path(checkpoint), model, trained_slots, optimizer, is_grown_stage=index > 1)
    model, origins = grow_model(model, trained, stage)
    grown_slots = [slot.name for slot in stage.plan.adapters]
    grown = make_optimizer(trainable_parameters(model, grown_slots), stage.plan.train.lr if stage.plan.train else 1e-4)
    carry_optimizer_state(optimizer, grown, model, origins)
    state_now = loaded._replace(plan_fingerprint=plan_fingerprint(stage.plan))
    folder = save_checkpoint(Path(out), model, grown_slots, grown, state_now)
    (Path(out) / PLAN_FILE).write_text(stage.plan.to_pretty_json())
    _record_stage(Path(out), stage_name, loaded.step, "grow")
    return folder


def _resume_stage(stages: list[GrowthStage], out: Path) -> int:
    """The stage the newest verified checkpoint belongs to (0 when there is none)."""
    checkpoint, _ = newest_verified(out)  # start_session reports and sets aside the damaged ones
    if checkpoint is None:
        return 0
    fingerprint = json.loads((checkpoint / "state.json").read_text())["plan_fingerprint"]
    for index, stage in enumerate(stages):
        if plan_fingerprint(stage.plan) == fingerprint:
            return index
    raise UserError(f"'{checkpoint}' belongs to none of this spec's growth stages: resume with the same spec and settings")


def _record_stage(out: Path, name: str, step: int, trigger: str, earlier: Sequence[str] = ()) -> None:
    """Record in out/stages.json that stage `name` runs from `step`, started by `trigger`
    ("start", "steps", "plateau", or "grow" for `grow_checkpoint`). Entries of the
    `earlier` stages stay; a resumed run keeps its stage's entry and drops later ones."""
    path = Path(out) / STAGES_FILE
    old = json.loads(path.read_text()) if path.exists() else []
    history = [entry for entry in old if entry["stage"] in earlier and entry["start_step"] <= step]
    current = [entry for entry in old if entry["stage"] == name and entry["start_step"] <= step]
    history += current[-1:] or [{"stage": name, "start_step": step, "trigger": trigger}]
    path.write_text(json.dumps(history, indent=2) + "\n")
