"""Finished run folders -> results.json, results.md and results.png: accuracy with Wilson
intervals per arm, the paired comparison with the reference arm, the spread over seeds,
cost columns, accuracy after every growth stage, and reward curves."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from neuromas.runtime.tasks.stats import wilson_interval

from .config import Experiment
from .paired import discordant, mcnemar_exact, paired_bootstrap, seed_spread
from .runner import RunFolder, Runner

CORRECT = 1.0  # a score that reaches this is a correct answer (as `neuromas eval` counts)


def collect(experiment: Experiment, runner: Runner, points: dict[str, list[int]],
            parameters: dict[str, int]) -> dict[str, Any]:
    """The results document: one entry per arm, each compared with the reference arm on
    the same questions (pairs pooled over seeds: seed s of an arm against seed s of the
    reference)."""
    by_arm: dict[str, list[RunFolder]] = {}
    for folder in runner.folders():
        by_arm.setdefault(folder.arm.name, []).append(folder)
    final = {name: [_read(f.eval_file(points[name][-1])) for f in folders] for name, folders in by_arm.items()}
    reference = [_correct(result) for result in final[experiment.reference]]
    arms = []
    for arm in experiment.arms:
        results = final[arm.name]
        correct = [_correct(result) for result in results]
        pooled = [c for seed in correct for c in seed]
        interval = wilson_interval(sum(pooled), len(pooled))
        ref_pooled = [c for seed in reference for c in seed]
        split = discordant(pooled, ref_pooled)
        difference = paired_bootstrap([float(c) for c in pooled], [float(c) for c in ref_pooled])
        spread = seed_spread([sum(seed) / len(seed) for seed in correct])
        timing = [_timing(folder) for folder in by_arm[arm.name]]
        arms.append({
            "arm": arm.name,
            "spec": str(arm.spec),
            "trained": arm.train,
            "steps": experiment.steps_of(arm) if arm.train else 0,
            "trainable_parameters": parameters.get(arm.name, 0),
            "n": len(pooled),
            "accuracy": interval.estimate,
            "accuracy_low": interval.low,
            "accuracy_high": interval.high,
            "seed_mean": spread.mean,
            "seed_std": spread.std,
            "seeds": spread.seeds,
            "vs_reference": {
                "reference": experiment.reference,
                "difference": difference.estimate,
                "difference_low": difference.low,
                "difference_high": difference.high,
                "only_this_right": split.only_a,
                "only_reference_right": split.only_b,
                "mcnemar_p": mcnemar_exact(split.only_a, split.only_b),
            },
            "tokens_per_question": _mean(r["tokens_per_question"] for r in results),
            "calls_per_question": _mean(r["calls_per_question"] for r in results),
            "seconds_per_question": _mean(r["seconds_per_question"] for r in results),
            "train_s": _mean(t.get("train_s", 0.0) for t in timing),
            "eval_s": _mean(t.get("eval_s", 0.0) for t in timing),
            "by_step": [
                {"step": step, "accuracy": _mean(_accuracy(_read(f.eval_file(step))) for f in by_arm[arm.name]),
                 "stage": _read(by_arm[arm.name][0].eval_file(step)).get("stage")}
                for step in points[arm.name]
            ],
            "reward_curve": _reward_curve(by_arm[arm.name]),
        })
    return {"experiment": experiment.name, "task": experiment.task, "held_out": experiment.held_out,
            "held_out_seed": experiment.held_out_seed, "seeds": experiment.seeds, "arms": arms}


def markdown(results: dict[str, Any]) -> str:
    """The table people read: one row per arm, then accuracy after each growth stage."""
    ref = results["arms"][0]["vs_reference"]["reference"]
    lines = [
        f"# {results['experiment']}: {results['task']}, {results['held_out']} held-out questions "
        f"(data seed {results['held_out_seed']}), seeds {results['seeds']}",
        "",
        f"| arm | trained steps | trainable params | accuracy [95% CI] | seeds mean ± sd | Δ vs {ref} [95% CI] "
        "| McNemar p | tokens/q | calls/q | s/q | train s | eval s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in results["arms"]:
        vs = arm["vs_reference"]
        delta = "—" if arm["arm"] == ref else \
            f"{vs['difference']:+.3f} [{vs['difference_low']:+.3f}, {vs['difference_high']:+.3f}]"
        p = "—" if arm["arm"] == ref else f"{vs['mcnemar_p']:.3g}"
        lines.append(
            f"| {arm['arm']} | {arm['steps']} | {arm['trainable_parameters']:,} | {arm['accuracy']:.3f} "
            f"[{arm['accuracy_low']:.3f}, {arm['accuracy_high']:.3f}] | {arm['seed_mean']:.3f} ± {arm['seed_std']:.3f} "
            f"| {delta} | {p} | {arm['tokens_per_question']:.1f} | {arm['calls_per_question']:.2f} "
            f"| {arm['seconds_per_question']:.2f} | {arm['train_s']:.0f} | {arm['eval_s']:.0f} |"
        )
    staged = [arm for arm in results["arms"] if len(arm["by_step"]) > 1]
    if staged:
        lines += ["", "Accuracy after each growth stage (same steps for every arm):", "",
                  "| arm | " + " | ".join(f"step {p['step']}" for p in staged[0]["by_step"]) + " |",
                  "|---|" + "---|" * len(staged[0]["by_step"])]
        for arm in staged:
            lines.append(f"| {arm['arm']} | " + " | ".join(
                f"{p['accuracy']:.3f}" + (f" ({p['stage']})" if p["stage"] else "") for p in arm["by_step"]) + " |")
    return "\n".join(lines) + "\n"


def picture(results: dict[str, Any], path: Path) -> None:
    """Accuracy bars with their 95% intervals, and each trained arm's reward curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = results["arms"]
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(12, 4.5))
    xs = range(len(arms))
    acc = [a["accuracy"] for a in arms]
    err = [[a["accuracy"] - a["accuracy_low"] for a in arms], [a["accuracy_high"] - a["accuracy"] for a in arms]]
    bars.bar(xs, acc, yerr=err, capsize=4, color=["tab:blue" if a["trained"] else "tab:gray" for a in arms])
    bars.set_xticks(list(xs), [a["arm"] for a in arms], rotation=30, ha="right")
    bars.set_ylabel(f"held-out accuracy (n={arms[0]['n']}, 95% Wilson)")
    bars.set_title(results["experiment"])
    for arm in arms:
        if arm["reward_curve"]:
            steps, rewards = zip(*arm["reward_curve"])
            curves.plot(steps, rewards, label=arm["arm"])
    curves.set_xlabel("step")
    curves.set_ylabel("training reward (5-step mean over seeds)")
    if any(arm["reward_curve"] for arm in arms):
        curves.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _read(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _correct(result: dict[str, Any]) -> list[bool]:
    """Per question, right or not; with several samples a question counts as right when
    most samples are."""
    scores, group = result["scores"], result.get("group", 1)
    return [sum(s >= CORRECT for s in scores[i:i + group]) * 2 > group for i in range(0, len(scores), group)]


def _accuracy(result: dict[str, Any]) -> float:
    correct = _correct(result)
    return sum(correct) / len(correct)


def _timing(folder: RunFolder) -> dict[str, float]:
    try:
        return json.loads((folder.path / "timing.json").read_text())
    except (OSError, ValueError):
        return {}


def _reward_curve(folders: list[RunFolder], window: int = 5) -> list[tuple[int, float]]:
    by_step: dict[int, list[float]] = {}
    for folder in folders:
        try:
            lines = (folder.train_dir / "metrics.jsonl").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                row = json.loads(line)
                by_step.setdefault(int(row["step"]), []).append(float(row["reward_mean"]))
            except (ValueError, KeyError, TypeError):
                continue
    steps = sorted(by_step)
    means = [_mean(by_step[s]) for s in steps]
    smooth = [_mean(means[max(0, i - window + 1):i + 1]) for i in range(len(means))]
    return list(zip(steps, smooth))


def _mean(values) -> float:
    values = list(values)
    return math.fsum(values) / len(values) if values else 0.0
