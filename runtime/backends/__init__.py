"""Backends: token-id requests -> completions, behind the `base.Backend` protocol.

`transformers` runs the model in-process (CPU or GPU) with every node's adapter mixed in
one batch; `vllm` runs the vLLM engine in-process; `server` talks to OpenAI-compatible
vLLM servers. All speak `GenRequest`/`GenResult`. The numeric path that sampling and the
update share lives here too: `lora_rows` (per-row adapters, the fp32 head), `attention`
(grouped-query attention as matmuls on a CPU, and its flat layouts) and `packed_linear`
(weights packed once for a CPU's matmuls); `flat_prefill` prefills a call's prompts as
flat tokens; `sampler` draws each row's token and records its log-prob. This
room may import `models`; it knows nothing of tasks or training.
"""

from .base import Backend, BackendStats, FinishReason, GenRequest, GenResult

__all__ = ["Backend", "BackendStats", "FinishReason", "GenRequest", "GenResult"]
