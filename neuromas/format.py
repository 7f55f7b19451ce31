"""AST -> canonical spec text (`neuromas fmt`), keeping every comment.

The canonical form: 4-space indents, one statement a line, single spaces between
tokens, settings values aligned within a block, a block of one item on one line,
at most one blank line kept where the source had some. Statements keep their order.
A comment stays on its line, or moves just above the statement it was inside.
"""

from __future__ import annotations


from neuromas import ast

INDENT = "    "


def format_spec(spec: ast.SpecFile) -> str:
    printer = _Printer(spec.comments)
    printer.system(spec.system)
    return printer.text()


def quote(text: str) -> str:
    """A string literal in the spec's escapes: \\" \\\\ \\n \\t, \\uHHHH for other controls."""
    escaped = []
    for char in text:
        if char in ('"', "\\"):
            escaped.append("\\" + char)
        elif char == "\n":
            escaped.append("\\n")
        elif char == "\t":
            escaped.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def value_text(value: ast.Value) -> str:
    match value:
        case ast.Number(text=text):
            return text
        case ast.String(value=text):
            return quote(text)
        case ast.Name(value=name):
            return name
        case ast.List(items=items):
            return "[" + ", ".join(value_text(item) for item in items) + "]"
        case ast.Call(name=name, args=args):
            return f"{name.value}({_args_text(args)})"
    raise AssertionError(f"format: unknown value {value!r}")


def _args_text(args: tuple[ast.Arg, ...]) -> str:
    return ", ".join(value_text(a.value) if a.keyword is None else f"{a.keyword.value} = {value_text(a.value)}" for a in args)


def _pattern_text(pattern: ast.Pattern) -> str:
    return pattern.name.value if pattern.args is None else f"{pattern.name.value}({_args_text(pattern.args)})"


def _source_text(source: ast.SourceDecl) -> str:
    return str(source.ref) if source.pattern is None else f"{source.ref} {_pattern_text(source.pattern)}"


def _edge_text(edge: ast.EdgeDecl) -> str:
    return f"{edge.target} <- " + ", ".join(_source_text(s) for s in edge.sources)


def _init_text(init: ast.Init | None) -> str:
    if init is None:
        return ""
    return f" init {init.kind.value}" + (f" {init.ref}" if init.ref is not None else "")


class _Printer:
    def __init__(self, comments: tuple[ast.Comment, ...]) -> None:
        self.pending = sorted(comments, key=lambda c: (c.line, c.column))
        self.lines: list[str] = []
        self.depth = 0
        self.last_line = 0  # source line of the last thing printed

    def text(self) -> str:
        for comment in self.pending:  # comments after the system's closing brace
            self.lines.append(comment.text)
        self.pending = []
        return "\n".join(self.lines).rstrip("\n") + "\n"

    # comments and blank lines ---------------------------------------------------------

    def _take(self, before_line: int) -> list[ast.Comment]:
        taken = [c for c in self.pending if c.line < before_line]
        self.pending = [c for c in self.pending if c.line >= before_line]
        return taken

    def _trailing(self, line: int) -> str:
        taken = [c for c in self.pending if c.line == line]
        self.pending = [c for c in self.pending if c.line != line]
        return "".join(f"  {c.text}" for c in taken)

    def _leading(self, span_line: int, end_line: int, keep_blank: bool) -> None:
        """Comments above a statement (and those inside its lines, hoisted), with a
        blank line where the source had one."""
        comments = self._take(end_line)
        first = min([span_line, *(c.line for c in comments)])
        if keep_blank and self.lines and first - self.last_line > 1 and self.lines[-1].strip():
            self.lines.append("")
        for comment in comments:
            self.lines.append(INDENT * self.depth + comment.text)

    def line(self, text: str, span_line: int, end_line: int, keep_blank: bool = True) -> None:
        """A statement printed on one line; comments inside it move above it."""
        self._leading(span_line, end_line, keep_blank)
        self.lines.append(INDENT * self.depth + text + self._trailing(end_line))
        self.last_line = end_line

    def open(self, header: str, span: ast.Span) -> None:
        self._leading(span.line, span.line, keep_blank=True)
        self.lines.append(INDENT * self.depth + header + " {" + self._trailing(span.line))
        self.last_line = span.line
        self.depth += 1

    def close(self, span: ast.Span, suffix: str = "") -> None:
        for comment in self._take(span.end_line):
            self.lines.append(INDENT * self.depth + comment.text)
        self.depth -= 1
        self.lines.append(INDENT * self.depth + "}" + suffix + self._trailing(span.end_line))
        self.last_line = span.end_line

    def _fits_inline(self, span: ast.Span, items: tuple) -> bool:
        if len(items) > 1:
            return False
        if any(isinstance(item, ast.NodeSettings) for item in items):
            return False
        # a comment on the last line can trail the one-line form; one above it cannot
        return not any(span.line <= c.line < span.end_line for c in self.pending)

    # statements -----------------------------------------------------------------------

    def system(self, system: ast.SystemDecl) -> None:
        self.open(f"system {system.name.value}", system.span)
        for statement in system.statements:
            self.statement(statement)
        self.close(system.span)

    def statement(self, statement: ast.Statement) -> None:
        span = statement.span
        match statement:
            case ast.ModelDecl(name=name):
                self.line(f"model {value_text(name)}", span.line, span.end_line)
            case ast.AdapterDecl(call=call):
                self.line(f"adapter {value_text(call)}", span.line, span.end_line)
            case ast.ShareDecl(mode=mode):
                self.line(f"share {mode.value}", span.line, span.end_line)
            case ast.TemplateDecl(value=value):
                self.line(f"template {value_text(value)}", span.line, span.end_line)
            case ast.DefaultsDecl(settings=settings):
                self.block("defaults", settings, span)
            case ast.InputDecl(name=name):
                self.line(f"input {name.value}", span.line, span.end_line)
            case ast.LayerDecl():
                self.layer(statement)
            case ast.EdgeDecl():
                self.line(_edge_text(statement), span.line, span.end_line)
            case ast.OutputDecl(ref=ref, is_vote=is_vote, answer_format=answer_format):
                text = f"output {ref}" + (" vote" if is_vote else "")
                text += f" format {value_text(answer_format)}" if answer_format is not None else ""
                self.line(text, span.line, span.end_line)
            case ast.TrainDecl(settings=settings):
                self.block("train", settings, span)
            case ast.GrowthDecl(stages=stages):
                self.open("growth", span)
                for stage in stages:
                    self.stage(stage)
                self.close(span)

    def layer(self, layer: ast.LayerDecl) -> None:
        header = f"layer {layer.name.value} width {value_text(layer.width)}"
        if layer.repeat is not None:
            header += f" repeat {value_text(layer.repeat)}"
            if layer.chain is not None:
                header += f" chain {_pattern_text(layer.chain)}"
        if layer.settings is None:
            self.line(header, layer.span.line, layer.span.end_line)
        else:
            self.block(header, layer.settings, layer.span)

    def block(self, header: str, settings: ast.Settings, span: ast.Span, suffix: str = "") -> None:
        if self._fits_inline(span, settings):
            inside = " ".join(self._setting_text(item, 0) for item in settings)
            text = f"{header} {{ {inside} }}" if inside else f"{header} {{}}"
            self.line(text + suffix, span.line, span.end_line)
            return
        self.open(header, span)
        width = max((len(item.name.value) for item in settings if isinstance(item, ast.Setting)), default=0)
        for item in settings:
            if isinstance(item, ast.NodeSettings):
                self.block(f"node {value_text(item.index)}", item.settings, item.span)
            else:
                self.line(self._setting_text(item, width), item.span.line, item.span.end_line)
        self.close(span, suffix)

    @staticmethod
    def _setting_text(item: ast.Setting | ast.NodeSettings, width: int) -> str:
        assert isinstance(item, ast.Setting)
        return f"{item.name.value.ljust(width)} {value_text(item.value)}"

    def stage(self, stage: ast.StageDecl) -> None:
        suffix = ""
        if stage.after is not None:
            suffix = f" after {value_text(stage.after.steps)} steps"
            if stage.after.plateau is not None:
                suffix += f" or plateau {value_text(stage.after.plateau)} evals"
        header = f"stage {stage.name.value}"
        ops_inline = len(stage.ops) <= 1 and not any(isinstance(op, ast.Insert) and op.settings for op in stage.ops)
        if ops_inline and self._fits_inline(stage.span, stage.ops):
            inside = " ".join(self._op_text(op) for op in stage.ops)
            text = f"{header} {{ {inside} }}" if inside else f"{header} {{}}"
            self.line(text + suffix, stage.span.line, stage.span.end_line)
            return
        self.open(header, stage.span)
        for op in stage.ops:
            if isinstance(op, ast.Insert) and op.settings:
                self.block(self._op_text(op), op.settings, op.span)
            else:
                self.line(self._op_text(op), op.span.line, op.span.end_line)
        self.close(stage.span, suffix)

    @staticmethod
    def _op_text(op: ast.GrowthOp) -> str:
        match op:
            case ast.Resize(layer=layer, width=width):
                return f"{layer} width {value_text(width)}"
            case ast.Widen(layer=layer, width=width, init=init):
                return f"widen {layer} to {value_text(width)}{_init_text(init)}"
            case ast.Insert(name=name, width=width, after=after, init=init):
                return f"insert {name.value} width {value_text(width)} after {after}{_init_text(init)}"
            case ast.EdgeRule(is_keep=is_keep, source=source, target=target):
                return f"{'keep' if is_keep else 'drop'} {source} -> {target}"
            case ast.EdgeDecl():
                return _edge_text(op)
        raise AssertionError(f"format: unknown growth op {op!r}")
