"""The NeuroMAS runtime: plans -> rollouts, rewards and adapter updates (imports torch)."""
