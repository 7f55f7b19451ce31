"""Node templates render under a time, size and number limit, and their problems are
found before they render (`neuromas check` reports them at the template's file:line)."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("jinja2", reason="jinja2 comes with the runtime's dependencies")

from neuromas.jinja_sandbox import TemplateLimitError, compile_template, render, template_problems  # noqa: E402

HOSTILE = {
    "nested loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "ran longer than"),
    "a huge power": ("{{ ((10**1000)**1000)**1000 }}", "bits"),
    "a huge repetition": ("{{ 'x'*10**10 }}", "10,000,000,000 characters"),
    "a huge filter width": ("{{ 'x'|center(10000000000) }}", "too large as an argument"),
    "a huge method width": ("{{ 'x'.ljust(10000000000) }}", "too large as an argument"),
    "a huge printf width": ("{{ '%10000000000d' % 1 }}", "in a format string"),
    "a huge format filter width": ("{{ '%10000000000d'|format(1) }}", "in a format string"),
    "a huge str.format width": ("{{ '{:>10000000000}'.format(1) }}", "in a format string"),
    "doubling by concatenation": ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "concatenation"),
    "doubling by replace": ("{{ ('x'*1000)|replace('x', 'x'*1000)|replace('x', 'x'*1000) }}", "this value|ran longer than"),  # whichever comes first
    "a huge output": ("{% for i in range(100000) %}{{ 'x'*100 }}{% endfor %}", "longer than 1,000,000 characters"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_templates_fail_fast(name: str) -> None:
    source, message = HOSTILE[name]
    started = time.monotonic()
    with pytest.raises(TemplateLimitError, match=message):
        render(compile_template(source), {}, time_limit_s=0.5)
    assert time.monotonic() - started < 5


def test_ordinary_templates_render_as_jinja_renders_them() -> None:
    source = ("{{ node.id }}|{{ 'ab' * 3 }}|{{ 2**10 }}|{{ '%5d' % 3 }}|{{ 'a' ~ 'b' }}|{{ [1, 2]|join(',') }}|"
              "{{ '{:>4}'.format(1) }}|{{ 'year 20000000' }}|{% for s in sources %}{{ loop.index }}{{ s }}{% endfor %}")
    variables = {"node": {"id": "a[0]"}, "sources": ["x", "y"]}
    assert render(compile_template(source), variables) == "a[0]|ababab|1024|    3|ab|1,2|   1|year 20000000|1x2y"


def test_the_sandbox_still_refuses_unsafe_attributes() -> None:
    from jinja2.exceptions import SecurityError

    with pytest.raises(SecurityError):
        render(compile_template("{{ ''.__class__.__mro__[1].__subclasses__() }}"), {})


def test_problems_are_found_before_rendering() -> None:
    assert template_problems("{{ node.id }}\n{% for s in sources %}{{ s.text }}{{ loop.index }}{% endfor %}") == []
    assert template_problems("a\n{% if %}") == [(2, "template syntax error: Expected an expression, got 'end of statement block'", None, None)]
    assert template_problems("{{ x|no_such_filter }}")[0][:2] == (1, "template syntax error: No filter named 'no_such_filter'.")
    (line, message, hint, name), = template_problems("ok\n\n{{ nod.id }}")
    assert (line, message, hint, name) == (3, "template uses an undefined variable 'nod'", "did you mean 'node'?", "nod")
