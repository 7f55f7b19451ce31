"""Experiments: a TOML file of arms -> one `train` + `eval` run per arm and seed -> a table
with intervals and paired tests against a reference arm.

`config` reads and validates the file, `budget` counts trainable parameters so arms can be
matched, `runner` runs (and resumes) the arms through the `neuromas` command line, `paired`
holds the statistics, and `results` writes results.json, results.md and results.png. Nothing
here imports torch: every run is a `neuromas` subprocess.
"""
