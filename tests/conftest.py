import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Hub access is never needed by the tests (and not available in CI).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def run_cli(*args, cwd=None, check=True):
    """Run the longrope2 console script (the same interface Snakemake rules use)."""
    proc = subprocess.run([str(BIN / "longrope2"), *map(str, args)], cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"longrope2 {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def workdir(tmp_path):
    """A copy of the workflow (no results) to run Snakemake in isolation."""
    for name in ("Snakefile", "rules", "config", "envs", "report", "profiles"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name)
        else:
            shutil.copy(src, tmp_path / name)
    return tmp_path


def snakemake(*args, cwd):
    return subprocess.run([str(BIN / "snakemake"), *map(str, args)], cwd=cwd, capture_output=True, text=True)
