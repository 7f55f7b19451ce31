"""Compiler passes: pure functions over the IR, run in order by `neuromas.pipeline`."""
