"""Writing and compiling specs needs no ML stack: `neuromas` never imports torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# In a fresh interpreter, so that modules other tests imported do not count.
SCRIPT = """
import sys
import neuromas
from neuromas.cli import main
from neuromas.render import dot, text
plan = neuromas.compile(sys.argv[1])
text.summarize(plan)
dot.to_dot(plan)
main(["check", sys.argv[1]])
heavy = sorted(name for name in ("torch", "transformers", "peft", "trl", "vllm") if name in sys.modules)
print("imported:", *heavy)
"""


def test_compiling_does_not_import_torch() -> None:
    spec = ROOT / "specs" / "growth.nmas"
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(spec)], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[-1] == "imported:"
