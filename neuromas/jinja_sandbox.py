"""Jinja templates for node prompts: checked when a spec compiles, rendered under limits.

Rendering runs in Jinja's immutable sandbox (no attribute escapes, no unsafe calls, no
changes to the values a template is given, no file access) and under limits, so that a
template can neither run for minutes nor fill memory:

- time: at most MAX_RENDER_S seconds per prompt (checked on every line the template runs);
- size: no value and no output above MAX_CHARS characters (`'x' * 10**10` is refused
  before it is built; so are `center(10**10)` and `'%10000000000d' % 1`);
- numbers: no integer above MAX_INT_BITS bits (`((10**1000)**1000)**1000`).

jinja2 is imported on first use: it comes with the runtime's dependencies.
"""

from __future__ import annotations

import functools
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

MAX_RENDER_S = 2.0
MAX_CHARS = 1_000_000
MAX_INT_BITS = 100_000  # about 30,000 digits
# The variables a node template is given (documented in runtime/generation/prompts.py).
VARIABLES = ("system", "node", "sources", "inputs", "messages", "answer_format", "answer_instruction")

_TEMPLATE_FILE = "<template>"  # the file name Jinja compiles template code under
_NUMBER = re.compile(r"\d+")
_FORMAT_SPEC = re.compile(r"%[-+ #0]*\d*(?:\.\d+)?|\{[^{}]*\}")  # printf-style, or a {field:spec}


class TemplateLimitError(Exception):
    """A template went over a time, size or number limit while rendering."""


def render(template: Any, variables: Mapping[str, Any], time_limit_s: float = MAX_RENDER_S) -> str:
    """`template` (from `compile_template`) rendered with `variables`, under the limits;
    raises TemplateLimitError past one of them, and the template's own errors as they are."""
    deadline = time.monotonic() + time_limit_s

    def on_call(frame: Any, event: str, arg: Any) -> Any:
        _check_time(deadline, time_limit_s)
        return on_line if frame.f_code.co_filename == _TEMPLATE_FILE else None

    def on_line(frame: Any, event: str, arg: Any) -> Any:
        _check_time(deadline, time_limit_s)
        return on_line

    previous = sys.gettrace()
    parts: list[str] = []
    size = 0
    sys.settrace(on_call)
    try:
        for part in template.generate(**variables):
            size += len(part)
            if size > MAX_CHARS:
                raise TemplateLimitError(f"the prompt is longer than {MAX_CHARS:,} characters")
            parts.append(part)
    finally:
        sys.settrace(previous)
    return "".join(parts)


def compile_template(text: str) -> Any:
    """The compiled template; raises jinja2's TemplateSyntaxError for a bad one."""
    return _environment().from_string(text)


def template_problems(text: str) -> list[tuple[int, str, str | None, str | None]]:
    """What is wrong with a template's text, before it renders: a syntax error, an
    unknown filter or test, a variable no node template is given. Each problem is
    (line, message, hint, the name it is about)."""
    from jinja2 import TemplateSyntaxError, meta, nodes

    from neuromas.diagnostics import did_you_mean, quoted

    environment = _environment()
    try:
        tree = environment.parse(text)
        environment.compile(tree)
    except TemplateSyntaxError as err:
        return [(err.lineno or 1, f"template syntax error: {err.message}", None, None)]
    known = set(VARIABLES) | set(environment.globals)
    problems = []
    for name in sorted(meta.find_undeclared_variables(tree) - known):
        line = min(n.lineno for n in tree.find_all(nodes.Name) if n.name == name and n.ctx == "load")
        hint = did_you_mean(name, VARIABLES) or f"a node template is given {quoted(VARIABLES)}"
        problems.append((line, f"template uses an undefined variable '{name}'", hint, name))
    return sorted(problems)


def template_line(err: BaseException) -> int | None:
    """The template line an error was raised at (Jinja maps its tracebacks to them)."""
    line = getattr(err, "lineno", None)
    traceback = err.__traceback__
    while traceback is not None:
        if traceback.tb_frame.f_code.co_filename == _TEMPLATE_FILE:
            line = traceback.tb_lineno
        traceback = traceback.tb_next
    return line


def _check_time(deadline: float, limit_s: float) -> None:
    if time.monotonic() > deadline:
        raise TemplateLimitError(f"the template ran longer than {limit_s:g} s")


def _check_chars(count: int, what: str) -> None:
    if count > MAX_CHARS:
        raise TemplateLimitError(f"{what} would have {count:,} characters or items; the limit is {MAX_CHARS:,}")


def _check_arguments(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Sizes passed to calls and filters (`ljust(n)`, `center(n)`, `indent(n)`)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_CHARS:
            raise TemplateLimitError(f"the number {value} is too large as an argument here (at most {MAX_CHARS:,})")


def _check_format(text: str) -> None:
    """Widths and precisions in a format string (`%10000000000d`, `{:>10000000000}`)."""
    for spec in _FORMAT_SPEC.findall(text):
        for number in _NUMBER.findall(spec):
            if len(number) > len(str(MAX_CHARS)) or int(number) > MAX_CHARS:
                raise TemplateLimitError(f"the width or precision {number} in a format string is too large (at most {MAX_CHARS:,})")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    sized = (str, list, tuple)
    if operator == "*":
        for sequence, count in ((left, right), (right, left)):
            if isinstance(sequence, sized) and isinstance(count, int):
                _check_chars(len(sequence) * max(count, 0), "this repetition")
        if isinstance(left, int) and isinstance(right, int):
            _check_bits(abs(left).bit_length() + abs(right).bit_length())
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            _check_bits(right * abs(left).bit_length())
    elif operator == "+":
        if isinstance(left, sized) and isinstance(right, sized):
            _check_chars(len(left) + len(right), "this sum")
    elif operator == "%" and isinstance(left, str):
        _check_format(left)


def _check_bits(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise TemplateLimitError(f"this number would have about {bits:,} bits; the limit is {MAX_INT_BITS:,}")


def _checked_concat(parts: tuple[Any, ...]) -> str:
    """`a ~ b`: the strings joined, if the result stays under the size limit."""
    texts = [str(part) for part in parts]
    _check_chars(sum(map(len, texts)), "this concatenation")
    return "".join(texts)


def _checked_result(value: Any) -> Any:
    """A call's result, refused when it came out too large (`replace` repeated)."""
    if isinstance(value, (str, list, tuple)):
        _check_chars(len(value), "this value")
    return value


def _checked_filter(function: Any) -> Any:
    skip = 2 if getattr(function, "jinja_pass_arg", None) else 1  # the context or environment, then the value

    @functools.wraps(function)  # keeps Jinja's pass_context/pass_environment marks
    def checked(*args: Any, **kwargs: Any) -> Any:
        _check_arguments(args[skip:], kwargs)
        if function.__name__ == "do_format" and args:
            _check_format(str(args[0]))
        return _checked_result(function(*args, **kwargs))

    return checked


@functools.cache
def _environment() -> Any:
    from jinja2 import DictLoader, StrictUndefined
    from jinja2.compiler import CodeGenerator, optimizeconst
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class LimitedCodeGenerator(CodeGenerator):
        @optimizeconst
        def visit_Concat(self, node: Any, frame: Any) -> None:
            self.write("environment.checked_concat((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    class LimitedEnvironment(ImmutableSandboxedEnvironment):
        code_generator_class = LimitedCodeGenerator
        intercepted_binops = frozenset({"*", "**", "+", "%"})  # also stops Jinja folding them at compile time

        def __init__(self) -> None:
            # An empty loader: `{% include %}` and `{% import %}` find nothing (TemplateNotFound).
            super().__init__(loader=DictLoader({}), undefined=StrictUndefined, keep_trailing_newline=False)
            self.filters = {name: _checked_filter(function) for name, function in self.filters.items()}
            self.checked_concat = _checked_concat

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _check_binop(operator, left, right)
            return super().call_binop(context, operator, left, right)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (Jinja's signature)
            _check_arguments(args, kwargs)
            return _checked_result(super().call(__context, __obj, *args, **kwargs))

        def wrap_str_format(self, value: Any) -> Any:
            """`'{:>9}'.format(x)`: Jinja's sandboxed formatting, after a look at the widths."""
            wrapped = super().wrap_str_format(value)
            if wrapped is not None:
                _check_format(value.__self__)
            return wrapped

    return LimitedEnvironment()
