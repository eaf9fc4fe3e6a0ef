"""Shared by the benchmark scripts: run each variant in a fresh subprocess, write the JSON result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_variant(script: str, variant: str) -> dict:
    """Re-run ``script`` with this process's arguments (minus --out) plus ``--variant``; its last stdout line is JSON."""
    argv = list(sys.argv[1:])
    if "--out" in argv:
        i = argv.index("--out")
        del argv[i : i + 2]
    proc = subprocess.run([sys.executable, script, *argv, "--variant", variant], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def emit(result: dict, out: Path | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
