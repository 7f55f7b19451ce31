"""The syntax tree of a .nmas spec: frozen records, each keeping the Span it came from."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Union

from neuromas.spans import Span

_MAX_EXPONENT = 30  # `1e30` is still read exactly; a larger exponent is a float, and out of range anywhere

# Values ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Number:
    text: str  # as written, so `fmt` keeps `1e-4` as `1e-4`
    span: Span

    @property
    def value(self) -> int | float:
        """An int for digits alone and for an exponent form with a whole value (`1e6`,
        `2.5e3`), else a float (`1.0`, `1e-4`)."""
        try:
            return int(self.text)
        except ValueError:
            pass
        if "e" in self.text.lower():
            exact = Decimal(self.text)
            if exact.adjusted() <= _MAX_EXPONENT and exact == exact.to_integral_value():
                return int(exact)
        return float(self.text)


@dataclass(frozen=True, slots=True)
class String:
    value: str  # unescaped
    span: Span


@dataclass(frozen=True, slots=True)
class Name:
    value: str
    span: Span


@dataclass(frozen=True, slots=True)
class List:
    items: tuple[Value, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Arg:
    keyword: Name | None
    value: Value
    span: Span


@dataclass(frozen=True, slots=True)
class Call:
    name: Name
    args: tuple[Arg, ...]
    span: Span


Value = Union[Number, String, Name, List, Call]

# Settings blocks ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setting:
    name: Name
    value: Value
    span: Span


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """`node 1 { temperature 0.5 }` inside a layer: settings of one node."""

    index: Value
    settings: tuple[Setting | NodeSettings, ...]
    span: Span


Settings = tuple[Union[Setting, NodeSettings], ...]

# Graph -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ref:
    """`hidden`, `h.1` (repeat 1 of layer h), `h.1[0]` (node 0 of it), or an input name."""

    name: Name
    repeat: int | None
    index: int | None
    span: Span

    @property
    def layer_text(self) -> str:
        return self.name.value if self.repeat is None else f"{self.name.value}.{self.repeat}"

    def __str__(self) -> str:
        return self.layer_text if self.index is None else f"{self.layer_text}[{self.index}]"


@dataclass(frozen=True, slots=True)
class Pattern:
    """How two layers connect: `dense`, `one_to_one`, `window(2)`, `random(0.5, seed = 1)`."""

    name: Name
    args: tuple[Arg, ...] | None  # None when written without parentheses
    span: Span


@dataclass(frozen=True, slots=True)
class SourceDecl:
    ref: Ref
    pattern: Pattern | None
    span: Span


@dataclass(frozen=True, slots=True)
class EdgeDecl:
    target: Ref
    sources: tuple[SourceDecl, ...]
    span: Span


# System statements ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelDecl:
    name: String
    span: Span


@dataclass(frozen=True, slots=True)
class AdapterDecl:
    call: Call
    span: Span


@dataclass(frozen=True, slots=True)
class ShareDecl:
    mode: Name
    span: Span


@dataclass(frozen=True, slots=True)
class TemplateDecl:
    value: Value
    span: Span


@dataclass(frozen=True, slots=True)
class DefaultsDecl:
    settings: Settings
    span: Span


@dataclass(frozen=True, slots=True)
class InputDecl:
    name: Name
    span: Span


@dataclass(frozen=True, slots=True)
class LayerDecl:
    name: Name
    width: Value
    repeat: Value | None
    chain: Pattern | None
    settings: Settings | None  # None: no block written
    span: Span


@dataclass(frozen=True, slots=True)
class OutputDecl:
    ref: Ref
    is_vote: bool
    answer_format: String | None
    span: Span


@dataclass(frozen=True, slots=True)
class TrainDecl:
    settings: Settings
    span: Span


# Growth --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Init:
    """How new nodes' adapters start: `init copy [ref]`, `init mean [layer]`, `init zero`."""

    kind: Name
    ref: Ref | None
    span: Span


@dataclass(frozen=True, slots=True)
class Resize:
    layer: Ref
    width: Value
    span: Span


@dataclass(frozen=True, slots=True)
class Widen:
    layer: Ref
    width: Value
    init: Init | None
    span: Span


@dataclass(frozen=True, slots=True)
class Insert:
    name: Name
    width: Value
    after: Ref
    init: Init | None
    settings: Settings | None
    span: Span


@dataclass(frozen=True, slots=True)
class EdgeRule:
    """`keep a -> b` or `drop a -> b`: what a growth stage does with an existing edge."""

    is_keep: bool
    source: Ref
    target: Ref
    span: Span


GrowthOp = Union[Resize, Widen, Insert, EdgeRule, EdgeDecl]


@dataclass(frozen=True, slots=True)
class After:
    steps: Value
    plateau: Value | None
    span: Span


@dataclass(frozen=True, slots=True)
class StageDecl:
    name: Name
    ops: tuple[GrowthOp, ...]
    after: After | None
    span: Span


@dataclass(frozen=True, slots=True)
class GrowthDecl:
    stages: tuple[StageDecl, ...]
    span: Span


Statement = Union[
    ModelDecl, AdapterDecl, ShareDecl, TemplateDecl, DefaultsDecl, InputDecl,
    LayerDecl, EdgeDecl, OutputDecl, TrainDecl, GrowthDecl,
]


@dataclass(frozen=True, slots=True)
class Comment:
    text: str  # including the leading '#'
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class SystemDecl:
    name: Name
    statements: tuple[Statement, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class SpecFile:
    """A parsed spec: the system, its comments (for `fmt`), and where it came from."""

    system: SystemDecl
    comments: tuple[Comment, ...]
    file: str
    source: str
