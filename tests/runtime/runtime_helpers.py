"""Helpers the runtime tests share: small compiled plans and random LoRA weights."""

from __future__ import annotations

from pathlib import Path

import neuromas
from neuromas.plan import Plan

REPO = Path(__file__).resolve().parents[2]
SPECS = REPO / "specs"


def compile_small(spec: str | Path, max_tokens: int = 8) -> Plan:
    """A spec file (name under specs/, or spec text) compiled, every max_tokens capped."""
    from neuromas.runtime.generation.rollout import cap_max_tokens

    source = str(SPECS / spec) if isinstance(spec, str) and spec.endswith(".nmas") else spec
    return cap_max_tokens(neuromas.compile(source), max_tokens)


def randomize_adapters(model, seed: int = 0, scale: float = 0.02) -> None:
    """Give every LoRA A and B random weights (B starts at zero), different per slot."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
