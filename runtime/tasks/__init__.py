"""Tasks and scoring: where questions come from and how answers are scored.

`registry` turns `--task KIND:ARGUMENT` into a `Task`; `data`, `hf_data`, `choices` and
`humaneval` read the sources; `rewards` scores an answer; `sandbox` runs untrusted code
for code rewards; `evaluate` and `stats` score a system on held-out questions. This room
may import `generation` (answers, rollouts); it knows nothing of training.
"""
