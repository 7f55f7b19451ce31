"""A stand-in for `python -m neuromas train|eval` that writes the same files as the real
commands (metrics rows, eval JSON) from a hash of its arguments, so the experiment runner's
resume logic can be tested in seconds. The real commands run in test_small_experiment.py.

FAKE_CALLS: a file that gets one line per call. FAKE_KILL=`train:ARM:STEP` or
`eval:ARM`: SIGKILL the caller (the runner) once that point is reached, as a crash would.
"""

import hashlib
import json
import os
import signal
import sys
from pathlib import Path

args = sys.argv[1:]
command, spec = args[0], args[1]


def option(name, default=None):
    return args[args.index(name) + 1] if name in args else default


def unit(*parts) -> float:
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16) / 2**32


def trained_steps(folder: Path) -> int:
    metrics = folder / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


seed = option("--seed")
arm = Path(spec).stem
kill = os.environ.get("FAKE_KILL", "")
with open(os.environ["FAKE_CALLS"], "a") as calls:
    calls.write(" ".join([command, arm, seed, option("--steps", "-"), option("-o", "-"), option("--reward", "-"), "log-kl" if "--log-kl" in args else "-"]) + "\n")

if command == "train":
    out = Path(option("--out"))
    out.mkdir(parents=True, exist_ok=True)
    if trained_steps(out) and "--resume" not in args:
        sys.exit("error: already holds a run")
    for step in range(trained_steps(out) + 1, int(option("--steps")) + 1):
        with open(out / "metrics.jsonl", "a") as metrics:
            metrics.write(json.dumps({"step": step, "reward_mean": unit(arm, seed, step)}) + "\n")
        if kill == f"train:{arm}:{step}":
            os.kill(os.getppid(), signal.SIGKILL)
            sys.exit(1)
elif command == "eval":
    n = int(option("--n"))
    steps = trained_steps(Path(option("--checkpoint"))) if "--checkpoint" in args else 0
    scores = [float(unit(arm, seed, steps, i) < 0.3 + 0.05 * steps) for i in range(n)]
    result = {"accuracy": sum(scores) / n, "scores": scores, "group": 1, "stage": option("--stage"),
              "tokens_per_question": 10.0, "calls_per_question": 1.0, "seconds_per_question": 0.1}
    Path(option("-o")).write_text(json.dumps(result))
    if kill == f"eval:{arm}":
        os.kill(os.getppid(), signal.SIGKILL)
