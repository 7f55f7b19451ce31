"""Generation: a plan and a backend -> rollouts (prompts, one backend call per level, answers).

`prompts` renders what each node reads, `rollout` runs the plan's levels in order, and
`answers` reads the answer node's text as text, a number or a choice. This room may import
`backends`, `models` and `failures`; it knows nothing of tasks or training.
"""
