#!/usr/bin/env bash
# The GPU check, on one CUDA GPU with vllm installed, in at most 9 minutes from a warm start.
# Four steps, each under its own time limit, every output under one folder:
#   1. gpu-tests  the `gpu` tests (tests/gpu: parity, log-probs, sleep mode, the server),
#                 but the NeuroMAS-7 sync test, which step 4 measures on its own
#   2. rollout    bench/rollout_vllm.py at 3 sizes (hidden widths 2, 4, 8)
#   3. train      a 20-step NeuroMAS-3 training run with --backend vllm
#   4. sync       the adapter-sync timing for NeuroMAS-7 (bench/adapter_sync_vllm.py)
# and one more, run only when asked for (`--only update`; it needs no vllm):
#      update     bench/update.py on the GPU: the batched multi-adapter update against
#                 one adapter and a per-node loop (update.json), in at most 90 s
# A failing step is recorded and the next one runs; summary.json lists every step's exit
# status and seconds, and the script exits 1 when any step failed.
#
# Usage: bash bench/gpu_check.sh [--out DIR] [--python PY] [--only STEP]... [--dry-run]
#   --out DIR    the folder for everything (default: bench/results/gpu-check-<UTC time>)
#   --python PY  the interpreter with neuromas and vllm (default: python3)
#   --only STEP  run only these steps (gpu-tests, rollout, train, sync, update); repeatable
#   --dry-run    print the commands and their time limits, run nothing
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=(gpu-tests rollout train sync)  # the default run: 540 s in all
declare -A LIMIT_S=([gpu-tests]=240 [rollout]=100 [train]=140 [sync]=60 [update]=90)

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2; }
fail_usage() { echo "gpu_check.sh: $1" >&2; usage; exit 2; }

OUT="" PY=python3 DRY_RUN=0 ONLY=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || fail_usage "--out needs a folder"; OUT=$2; shift 2 ;;
        --python) [ $# -ge 2 ] || fail_usage "--python needs an interpreter"; PY=$2; shift 2 ;;
        --only)
            [ $# -ge 2 ] || fail_usage "--only needs a step name"
            [ -n "${LIMIT_S[$2]+set}" ] || fail_usage "unknown step '$2' (steps: ${STEPS[*]})"
            ONLY+=("$2"); shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) fail_usage "unknown argument '$1'" ;;
    esac
done
[ ${#ONLY[@]} -gt 0 ] || ONLY=("${STEPS[@]}")
OUT=${OUT:-bench/results/gpu-check-$(date -u +%Y%m%d-%H%M%S)}

command_of() {
    case "$1" in
        update) echo "$PY bench/update.py --max-rounds 5 --out $OUT/update.json" ;;
        gpu-tests) echo "$PY -m pytest -m gpu tests/gpu -s -q -p no:cacheprovider -k 'not seven_nodes'" \
                        "--junitxml $OUT/gpu-tests.xml" ;;
        rollout) echo "$PY bench/rollout_vllm.py --widths 2 4 8 --rows 64 --strategies level" \
                      "--batch-rows 256 --repeats 2 --out $OUT" ;;
        train) echo "$PY -m neuromas train specs/neuromas3.nmas --task jsonl:$OUT/task.jsonl --steps 20" \
                    "--max-tokens 96 --backend vllm --gpu-memory-utilization 0.3 --save-every 20 --out $OUT/train-neuromas3" ;;
        sync) echo "$PY bench/adapter_sync_vllm.py --spec specs/neuromas7.nmas --steps 6 --out $OUT" ;;
    esac
}

write_task() {  # 32 two-term sums: the training run's task
    "$PY" -c 'import json, sys
rows = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(2, 10) for b in (3, 5, 7, 11)]
open(sys.argv[1], "w").write("".join(json.dumps(row) + "\n" for row in rows))' "$OUT/task.jsonl"
}

if [ "$DRY_RUN" = 1 ]; then
    echo "output folder: $OUT"
    for step in "${ONLY[@]}"; do
        echo "[$step] timeout ${LIMIT_S[$step]}s: $(command_of "$step") > $OUT/$step.log"
    done
    exit 0
fi

mkdir -p "$OUT"
write_task
"$PY" -c 'import importlib.metadata, json, sys, torch
try:
    vllm = importlib.metadata.version("vllm")
except importlib.metadata.PackageNotFoundError:
    vllm = None
json.dump({"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
           "vllm": vllm, "torch": torch.__version__}, open(sys.argv[1], "w"), indent=2)' \
    "$OUT/machine.json"
status=0
records=()
for step in "${ONLY[@]}"; do
    echo "[$step] up to ${LIMIT_S[$step]} s, log: $OUT/$step.log" >&2
    started=$(date +%s)
    set +e
    timeout --kill-after=15 "${LIMIT_S[$step]}" bash -c "$(command_of "$step")" >"$OUT/$step.log" 2>&1
    code=$?
    set -e
    seconds=$(( $(date +%s) - started ))
    [ "$code" = 0 ] || status=1
    echo "[$step] exit $code in $seconds s" >&2
    records+=("{\"step\": \"$step\", \"exit\": $code, \"seconds\": $seconds, \"limit_s\": ${LIMIT_S[$step]}}")
done
( IFS=,; echo "[${records[*]}]" ) | "$PY" -c 'import json, sys
steps = json.load(sys.stdin)
machine = json.load(open(sys.argv[1]))
json.dump({"machine": machine, "steps": steps}, open(sys.argv[2], "w"), indent=2)' \
    "$OUT/machine.json" "$OUT/summary.json"
echo "wrote $OUT/summary.json" >&2
exit "$status"
