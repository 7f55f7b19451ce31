"""The spec language's closed word lists, each defined once as a `Literal`.

The IR and the plan type their fields with these; the tuples (for error messages,
did-you-mean hints and CLI choices) are derived from them with `typing.get_args`.
"""

from __future__ import annotations

from typing import Literal, get_args

AnswerFormat = Literal["text", "number", "choice"]  # how the answer node's text is read (runtime/generation/answers.py)
Algorithm = Literal["grpo", "reinforce", "rloo"]  # how rewards become advantages (runtime/training/loss.py)
LossNorm = Literal["token", "sequence"]
PatternKind = Literal["dense", "one_to_one", "window", "random"]  # how the nodes of two layers connect
InitKind = Literal["copy", "mean", "zero"]  # how a grown node's adapter starts
OriginKind = Literal["keep", InitKind]  # where a grown stage's node gets its adapter
Sharing = Literal["per_node", "per_layer", "shared", "frozen"]

ANSWER_FORMATS: tuple[str, ...] = get_args(AnswerFormat)
ALGORITHMS: tuple[str, ...] = get_args(Algorithm)
LOSS_NORMS: tuple[str, ...] = get_args(LossNorm)
PATTERNS: tuple[str, ...] = get_args(PatternKind)
INIT_KINDS: tuple[str, ...] = get_args(InitKind)
ORIGIN_KINDS: tuple[str, ...] = get_args(OriginKind)
SHARINGS: tuple[str, ...] = get_args(Sharing)
