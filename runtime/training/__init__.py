"""Training: rollouts, rewards and advantages -> updated adapters, checkpoints and growth.

`train` is the step loop (rollout -> reward -> advantages -> loss -> step -> log), `loss`
holds the pure advantage and policy-loss math, `update` runs the batched multi-adapter
backward pass, `checkpoint` saves and resumes runs, `growth`, `schedule` and `plateau` grow
a trained system into a larger one, `stop` handles signals and `distributed` torchrun. This
room may import every other room; none of them imports it.
"""
