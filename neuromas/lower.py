"""AST -> IR: settings checked by name, values converted, errors mapped back to spans.

Lowering builds plain data for `ir.System` while recording, for every path into that
data (`("layers", 0, "width")`), the Span it came from. Pydantic then validates the
data, and each of its errors is reported at the span of its `loc`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pydantic

from neuromas import ast, ir
from neuromas.diagnostics import CompileError, Diagnostic, did_you_mean, quoted
from neuromas.ir_errors import diagnostic_from_pydantic
from neuromas.spans import Path, Span, SpanIndex
from neuromas.vocabulary import ANSWER_FORMATS, INIT_KINDS, PATTERNS

GENERATION_SETTINGS = tuple(ir.Generation.model_fields)
NODE_SETTINGS = (*GENERATION_SETTINGS, "template", "share")
DEFAULT_SETTINGS = (*NODE_SETTINGS, "max_prompt_tokens")
TRAIN_SETTINGS = tuple(ir.Train.model_fields)
LORA_ARGUMENTS = tuple(ir.Lora.model_fields)


def lower(spec: ast.SpecFile) -> tuple[ir.System, SpanIndex]:
    """Turn a parsed spec into a System; raises CompileError with every problem found."""
    lowering = _Lowering(spec)
    data = lowering.system(spec.system)
    diagnostics = list(lowering.diagnostics)
    system = None
    try:
        system = ir.System.model_validate(_as_tuples(data))
    except pydantic.ValidationError as err:
        reported = {d.span for d in diagnostics}  # a value lowering rejected fails validation too: say it once
        found = (diagnostic_from_pydantic(error, lowering.spans) for error in err.errors())
        diagnostics += [d for d in found if d.span not in reported]
    if diagnostics:
        raise CompileError(_sorted(diagnostics), spec.source)
    assert system is not None
    return system, lowering.spans


def _sorted(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    unique = dict.fromkeys(diagnostics)
    return sorted(unique, key=lambda d: (d.span.line, d.span.column) if d.span else (0, 0))


class _Lowering:
    def __init__(self, spec: ast.SpecFile) -> None:
        self.spans = SpanIndex(spec.file)
        self.diagnostics: list[Diagnostic] = []
        self.inputs: set[str] = set()

    def error(self, span: Span, message: str, hint: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(span, message, hint))

    # the system ------------------------------------------------------------------------

    def system(self, decl: ast.SystemDecl) -> dict[str, Any]:
        data: dict[str, Any] = {"name": decl.name.value, "inputs": [], "layers": [], "edges": [], "outputs": []}
        self.spans.add(("name",), decl.name.span)
        self.spans.add((), decl.span)
        defaults: dict[str, Any] = {}
        self.default_spans: dict[str, Span] = {}
        once = [d for d in decl.statements if not isinstance(d, (ast.InputDecl, ast.LayerDecl, ast.EdgeDecl, ast.OutputDecl))]
        seen: dict[type, ast.Statement] = {}
        for statement in once:
            kind = type(statement)
            if kind in seen:
                first = seen[kind].span.line
                self.error(statement.span, f"'{_keyword(statement)}' is set twice (first at line {first})")
                continue
            seen[kind] = statement
        self.inputs = {d.name.value for d in decl.statements if isinstance(d, ast.InputDecl)}

        for statement in decl.statements:
            if statement is not seen.get(type(statement), statement):
                continue
            match statement:
                case ast.ModelDecl(name=name):
                    data["model"] = name.value
                    self.spans.add(("model",), name.span)
                case ast.AdapterDecl(call=call):
                    data["adapter"] = self.lora(call)
                case ast.ShareDecl(mode=mode):
                    defaults["share"] = mode.value
                    self.default_spans["share"] = mode.span
                case ast.TemplateDecl(value=value):
                    defaults["template"] = self.template(value)
                    self.default_spans["template"] = value.span
                case ast.DefaultsDecl(settings=settings):
                    values = self.settings(settings, DEFAULT_SETTINGS, "defaults", allow_nodes=False)
                    for key, (value, span) in values.items():
                        if key == "max_prompt_tokens":
                            data["max_prompt_tokens"] = value
                            self.spans.add(("max_prompt_tokens",), span)
                        else:
                            defaults[key] = value
                            self.default_spans[key] = span
                case ast.TrainDecl(settings=settings):
                    values = self.settings(settings, TRAIN_SETTINGS, "train", allow_nodes=False)
                    data["train"] = {key: value for key, (value, _) in values.items()}
                    for key, (_, span) in values.items():
                        self.spans.add(("train", key), span)
                    self.spans.add(("train",), statement.span)

        for statement in decl.statements:
            match statement:
                case ast.InputDecl(name=name):
                    self.spans.add(("inputs", len(data["inputs"])), name.span)
                    data["inputs"].append(name.value)
                case ast.LayerDecl():
                    path = ("layers", len(data["layers"]))
                    data["layers"].append(self.layer(statement, path, defaults))
                case ast.EdgeDecl():
                    data["edges"] += self.edges(statement, lambda k: ("edges", len(data["edges"]) + k))
                case ast.OutputDecl():
                    path = ("outputs", len(data["outputs"]))
                    self.spans.add(path, statement.ref.span)
                    data["outputs"].append(self.output(statement, path))
        growth = seen.get(ast.GrowthDecl)
        if growth is not None:
            data["growth"] = [self.stage(stage, ("growth", i), defaults) for i, stage in enumerate(growth.stages)]
        return data

    # pieces ----------------------------------------------------------------------------

    def lora(self, call: ast.Call) -> dict[str, Any]:
        if call.name.value != "lora":
            self.error(call.name.span, f"unknown adapter kind '{call.name.value}'", "the adapter kind is 'lora', like 'adapter lora(rank = 16)'")
        result: dict[str, Any] = {}
        for arg in call.args:
            if arg.keyword is None:
                self.error(arg.span, "adapter arguments are named", f"name it: one of {quoted(LORA_ARGUMENTS)}, like 'rank = 16'")
                continue
            key = arg.keyword.value
            if key not in LORA_ARGUMENTS:
                self.error(arg.keyword.span, f"unknown adapter argument '{key}'", did_you_mean(key, LORA_ARGUMENTS) or f"known: {quoted(LORA_ARGUMENTS)}")
                continue
            if key in result:
                self.error(arg.keyword.span, f"adapter argument '{key}' is given twice")
                continue
            value = self.value(arg.value)
            result[key] = (value,) if key == "targets" and isinstance(value, str) else value
            self.spans.add(("adapter", key), arg.value.span)
        self.spans.add(("adapter",), call.span)
        return result

    def template(self, value: ast.Value) -> dict[str, Any]:
        if isinstance(value, ast.Name) and value.value == "builtin":
            return {"kind": "builtin"}
        if isinstance(value, ast.String):
            return {"kind": "jinja", "path": value.value}
        self.error(value.span, "a template is 'builtin' or a file path in double quotes", 'like: template "prompts/node.jinja"')
        return {"kind": "builtin"}

    def value(self, value: ast.Value) -> Any:
        match value:
            case ast.Number():
                return value.value
            case ast.String() | ast.Name():
                return value.value
            case ast.List(items=items):
                return tuple(self.value(item) for item in items)
            case ast.Call(name=name):
                self.error(value.span, f"'{name.value}(...)' is not a value here")
                return None
        raise AssertionError(f"lower: unknown value {value!r}")

    def settings(
        self, settings: ast.Settings, known: tuple[str, ...], block: str, allow_nodes: bool
    ) -> dict[str, tuple[Any, Span]]:
        """Name -> (value, span) for a settings block; unknown or repeated names are errors."""
        found: dict[str, tuple[Any, Span]] = {}
        for item in settings:
            if isinstance(item, ast.NodeSettings):
                if not allow_nodes:
                    self.error(item.span, f"'node' settings belong in a layer, not in '{block}'")
                continue
            name = item.name.value
            if name not in known:
                hint = did_you_mean(name, known) or f"known settings here: {quoted(known)}"
                self.error(item.name.span, f"unknown setting '{name}' in {block}", hint)
                continue
            if name in found:
                self.error(item.name.span, f"setting '{name}' is given twice in {block} (first at line {found[name][1].line})")
                continue
            if name == "template":
                value: Any = self.template(item.value)
            elif name == "stop":
                value = self.value(item.value)
                value = (value,) if isinstance(value, str) else value
            else:
                value = self.value(item.value)
            found[name] = (value, item.value.span)
        return found

    def layer(self, decl: ast.LayerDecl, path: Path, defaults: dict[str, Any]) -> dict[str, Any]:
        self.spans.add(path, decl.name.span)
        self.spans.add((*path, "name"), decl.name.span)
        self.spans.add((*path, "width"), decl.width.span)
        data: dict[str, Any] = {"name": decl.name.value, "width": self.value(decl.width)}
        if decl.repeat is not None:
            data["repeat"] = self.value(decl.repeat)
            self.spans.add((*path, "repeat"), decl.repeat.span)
        if decl.chain is not None:
            data["chain"] = self.pattern(decl.chain, (*path, "chain"))
            if decl.repeat is None:
                self.error(decl.chain.span, "'chain' needs 'repeat'", "like: layer h width 4 repeat 3 chain dense")
        values = self.settings(decl.settings or (), NODE_SETTINGS, f"layer '{decl.name.value}'", allow_nodes=True)
        merged = self._merge(defaults, self.default_spans, values, path)
        data.update(merged)
        nodes = []
        for item in decl.settings or ():
            if isinstance(item, ast.NodeSettings):
                node_path = (*path, "nodes", len(nodes))
                self.spans.add(node_path, item.span)
                self.spans.add((*node_path, "index"), item.index.span)
                node_values = self.settings(item.settings, NODE_SETTINGS, f"node {_show(item.index)}", allow_nodes=False)
                layer_level = {"share": merged["share"], "template": merged["template"], **merged["generation"]}
                layer_spans = {key: self.spans.find((*path, "generation", key)) for key in merged["generation"]}
                node = self._merge(layer_level, layer_spans, node_values, node_path)
                nodes.append({"index": self.value(item.index), **node})
        data["nodes"] = nodes
        return data

    def _merge(self, base: dict[str, Any], base_spans: dict[str, Span | None], values: dict[str, tuple[Any, Span]], path: Path) -> dict[str, Any]:
        """Layer or node settings over the defaults, recording where each value came from."""
        generation = {key: base[key] for key in GENERATION_SETTINGS if key in base}
        for key in GENERATION_SETTINGS:
            if key in values:
                generation[key] = values[key][0]
                self.spans.add((*path, "generation", key), values[key][1])
            elif key in base_spans and base_spans[key] is not None:
                self.spans.add((*path, "generation", key), base_spans[key])
        merged: dict[str, Any] = {"generation": generation}
        for key, fallback in (("share", "per_node"), ("template", {"kind": "builtin"})):
            if key in values:
                merged[key] = values[key][0]
                self.spans.add((*path, key), values[key][1])
            else:
                merged[key] = base.get(key, fallback)
                if base_spans.get(key) is not None:
                    self.spans.add((*path, key), base_spans[key])
        return merged

    def pattern(self, decl: ast.Pattern, path: Path) -> dict[str, Any]:
        name = decl.name.value
        self.spans.add(path, decl.span)
        if name not in PATTERNS:
            self.error(decl.name.span, f"unknown connection pattern '{name}'", did_you_mean(name, PATTERNS) or f"patterns: {quoted(PATTERNS)}")
            return {"kind": "dense"}
        args = decl.args or ()
        positional = [arg for arg in args if arg.keyword is None]
        keywords = {arg.keyword.value: arg for arg in args if arg.keyword is not None}
        data: dict[str, Any] = {"kind": name}
        expected = {"dense": ([], []), "one_to_one": ([], []), "window": (["k"], []), "random": (["p"], ["seed"])}[name]
        names, optional = expected
        if len(positional) != len(names) or set(keywords) - set(optional):
            usage = {"dense": "dense", "one_to_one": "one_to_one", "window": "window(2)", "random": "random(0.5, seed = 1)"}[name]
            self.error(decl.span, f"wrong arguments for '{name}'", f"write it as {usage}")
            return data
        for key, arg in [*zip(names, positional), *keywords.items()]:
            data[key] = self.value(arg.value)
            self.spans.add((*path, key), arg.value.span)
        return data

    def endpoint(self, ref: ast.Ref) -> dict[str, Any]:
        if ref.name.value in self.inputs:
            if ref.repeat is not None or ref.index is not None:
                self.error(ref.span, f"'{ref.name.value}' is an input: it has no repeats or nodes")
            return {"kind": "input", "name": ref.name.value}
        data: dict[str, Any] = {"kind": "layer", "name": ref.layer_text}
        if ref.index is not None:
            data["index"] = ref.index
        return data

    def edges(self, decl: ast.EdgeDecl, path_of: Callable[[int], Path]) -> list[dict[str, Any]]:
        """One edge per source; `path_of(k)` is where the k-th of them will be in the data."""
        target = self.endpoint(decl.target)
        if target["kind"] == "input":
            self.error(decl.target.span, f"'{decl.target.name.value}' is an input: nothing can write to it")
        edges = []
        for source in decl.sources:
            path = path_of(len(edges))
            self.spans.add(path, source.span)
            self.spans.add((*path, "target"), decl.target.span)
            self.spans.add((*path, "source"), source.ref.span)
            edge: dict[str, Any] = {"target": target, "source": self.endpoint(source.ref)}
            if source.pattern is not None:
                edge["pattern"] = self.pattern(source.pattern, (*path, "pattern"))
            edges.append(edge)
        return edges

    def output(self, decl: ast.OutputDecl, path: Path) -> dict[str, Any]:
        if decl.ref.index is not None:
            self.error(decl.ref.span, "an output names a layer, not a node", f"write 'output {decl.ref.layer_text}'")
        data: dict[str, Any] = {"layer": decl.ref.layer_text, "vote": decl.is_vote}
        if decl.answer_format is not None:
            kind = decl.answer_format.value
            if kind not in ANSWER_FORMATS:
                hint = did_you_mean(kind, ANSWER_FORMATS) or f"formats: {quoted(ANSWER_FORMATS)}"
                self.error(decl.answer_format.span, f"unknown answer format '{kind}'", hint)
            else:
                data["answer_format"] = kind
        return data

    # growth ------------------------------------------------------------------------------

    def stage(self, decl: ast.StageDecl, path: Path, defaults: dict[str, Any]) -> dict[str, Any]:
        self.spans.add(path, decl.name.span)
        data: dict[str, Any] = {"name": decl.name.value, "ops": []}
        if decl.after is not None:
            data["after_steps"] = self.value(decl.after.steps)
            self.spans.add((*path, "after_steps"), decl.after.steps.span)
            if decl.after.plateau is not None:
                data["plateau_evals"] = self.value(decl.after.plateau)
                self.spans.add((*path, "plateau_evals"), decl.after.plateau.span)
        for op in decl.ops:
            op_path = (*path, "ops", len(data["ops"]))
            self.spans.add(op_path, op.span)
            match op:
                case ast.Resize(layer=layer, width=width):
                    data["ops"].append({"op": "resize", "layer": self.layer_name(layer), "width": self.value(width)})
                    self.spans.add((*op_path, "layer"), layer.span)
                    self.spans.add((*op_path, "width"), width.span)
                case ast.Widen(layer=layer, width=width, init=init):
                    item = {"op": "widen", "layer": self.layer_name(layer), "width": self.value(width)}
                    self.spans.add((*op_path, "layer"), layer.span)
                    self.spans.add((*op_path, "width"), width.span)
                    if init is not None:
                        item["init"] = self.init(init, (*op_path, "init"))
                    data["ops"].append(item)
                case ast.Insert(name=name, width=width, after=after, init=init, settings=settings):
                    layer_decl = ast.LayerDecl(name, width, None, None, settings, op.span)
                    item = {"op": "insert", "layer": self.layer(layer_decl, (*op_path, "layer"), defaults), "after": self.layer_name(after)}
                    self.spans.add((*op_path, "after"), after.span)
                    if init is not None:
                        item["init"] = self.init(init, (*op_path, "init"))
                    data["ops"].append(item)
                case ast.EdgeRule(is_keep=is_keep, source=source, target=target):
                    data["ops"].append({"op": "keep" if is_keep else "drop", "source": self.layer_name(source), "target": self.layer_name(target)})
                    self.spans.add((*op_path, "source"), source.span)
                    self.spans.add((*op_path, "target"), target.span)
                case ast.EdgeDecl():
                    ops = data["ops"]
                    edges = self.edges(op, lambda k: (*path, "ops", len(ops) + k, "edge"))
                    ops += [{"op": "edge", "edge": edge} for edge in edges]
        return data

    def layer_name(self, ref: ast.Ref) -> str:
        if ref.index is not None:
            self.error(ref.span, "growth works on whole layers, not nodes", f"write '{ref.layer_text}'")
        return ref.layer_text

    def init(self, decl: ast.Init, path: Path) -> dict[str, Any]:
        self.spans.add(path, decl.span)
        kind = decl.kind.value
        if kind not in INIT_KINDS:
            self.error(decl.kind.span, f"unknown init '{kind}'", did_you_mean(kind, INIT_KINDS) or f"inits: {quoted(INIT_KINDS)}")
            return {"kind": "zero"}
        data: dict[str, Any] = {"kind": kind}
        if decl.ref is not None:
            if kind == "zero":
                self.error(decl.ref.span, "'init zero' takes no source")
            data["source"] = str(decl.ref)
            self.spans.add((*path, "source"), decl.ref.span)
        return data


def _as_tuples(data: Any) -> Any:
    """Lists become tuples (the IR is strict and immutable)."""
    if isinstance(data, dict):
        return {key: _as_tuples(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return tuple(_as_tuples(value) for value in data)
    return data


def _keyword(statement: ast.Statement) -> str:
    return type(statement).__name__.removesuffix("Decl").lower()


def _show(value: ast.Value) -> str:
    return value.text if isinstance(value, ast.Number) else getattr(value, "value", "?")
