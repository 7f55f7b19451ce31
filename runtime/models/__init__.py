"""Models: the frozen base model and its per-node LoRA adapters.

`loading` resolves and loads the base model (the bundled GGUF is converted once),
`adapters` attaches, saves and loads one peft adapter per node slot, and
`adapter_versions` names published adapter versions for engines that load them by name.
This room imports nothing else of the runtime.
"""
