"""Paths the CLI tests share (imported by file name: pytest runs in importlib mode)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NEUROMAS3 = str(ROOT / "specs" / "neuromas3.nmas")
GROWTH = str(ROOT / "specs" / "growth.nmas")
