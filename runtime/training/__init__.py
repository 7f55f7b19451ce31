"""Training: rollouts, rewards and advantages -> updated adapters, checkpoints and growth.

`loop` is the step loop (rollout -> reward -> advantages -> loss -> step -> log) and its
`on_step` hook, `session` a run's settings, start, resume, save and run-folder lock,
`scoring` the answer scorer built once per run, `metrics` the per-step rows, `loss` the
pure advantage and policy-loss math, `update` the batched multi-adapter backward pass
(`packing` its micro-batches, `flat_tokens` their real tokens without padding,
`head_logprobs` the output head's log-probs), `parameters` the fixed order and stable
names of the LoRA weights, `checkpoint` the checkpoint folders, `growth`, `schedule` and
`plateau` grow a trained system into a larger one, `stop` handles signals, `distributed`
torchrun, `diagnostics` per-node numbers of a step and `tracking` sends rows to
experiment trackers. This room may import every other room; none of them imports it.
"""
