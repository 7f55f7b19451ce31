"""Generation backends: token-id requests -> completions (see `base.Backend`).

`transformers` is imported from `backends.transformers`; a vLLM backend would live in
`backends/vllm.py` and speak the same `GenRequest`/`GenResult` types.
"""

from .base import Backend, BackendStats, FinishReason, GenRequest, GenResult

__all__ = ["Backend", "BackendStats", "FinishReason", "GenRequest", "GenResult"]
