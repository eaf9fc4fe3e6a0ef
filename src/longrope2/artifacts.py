"""Versioned, atomic stage outputs: every stage writes through :class:`StageRun`.

Outputs are first written into a hidden staging folder inside ``--out``; only when the stage body
finishes without error are they renamed into place, followed by ``manifest.json`` (config subset and
its hash, package version, git commit, input hashes, seed, wall time, library versions, device). A
failure leaves no partial artifact behind.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

from . import __version__
from .config import config_hash

MANIFEST = "manifest.json"
_LIBS = ("torch", "transformers", "tokenizers", "numpy", "pandas", "matplotlib", "snakemake", "lm_eval", "datasets")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_path(path: str | Path) -> str:
    """Hash of a file, or of a folder as the hash of its sorted (relative path, file hash) list."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file() and q.name != MANIFEST and not q.name.startswith(".")):
            h.update(str(p.relative_to(path)).encode())
            h.update(sha256_file(p).encode())
        return h.hexdigest()
    raise FileNotFoundError(path)


def git_commit() -> str:
    """Commit of the source tree the package runs from (``+dirty`` when it has local changes)."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in _LIBS:
        try:
            out[lib] = metadata.version(lib.replace("_", "-"))
        except metadata.PackageNotFoundError:
            continue
    return out


def device_description() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["device"] = "cuda"
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
        else:
            info["device"] = "cpu"
    except ImportError:
        info["device"] = "cpu"
    return info


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class StageRun:
    """Context manager for one stage execution writing into ``out_dir``.

    >>> with StageRun("critical_dims", out, config_subset, inputs=[...], seed=0) as run:
    ...     run.write_json("critical_dims.json", data)
    ...     fig.savefig(run.path("critical_dims.png"))
    """

    def __init__(
        self,
        stage: str,
        out_dir: str | Path,
        config_subset: Mapping[str, Any],
        inputs: Iterable[str | Path] = (),
        seed: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ):
        self.stage = stage
        self.out_dir = Path(out_dir)
        self.config_subset = dict(config_subset)
        self.inputs = [Path(p) for p in inputs]
        self.seed = seed
        self.extra = dict(extra or {})
        self._staging: Path | None = None
        self._t0 = 0.0

    def __enter__(self) -> "StageRun":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.out_dir))
        self._t0 = time.perf_counter()
        return self

    def path(self, name: str) -> Path:
        """Where to write output ``name`` (a file or folder) during the stage; moved into place on success."""
        assert self._staging is not None, "use StageRun as a context manager"
        p = self._staging / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_json(self, name: str, obj: Any) -> Path:
        p = self.path(name)
        with open(p, "w") as f:
            json.dump(obj, f, indent=2, default=_json_default)
            f.write("\n")
        return p

    def write_csv(self, name: str, rows: list[Mapping[str, Any]]) -> Path:
        p = self.path(name)
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return p

    def write_text(self, name: str, text: str) -> Path:
        p = self.path(name)
        p.write_text(text)
        return p

    def __exit__(self, exc_type, exc, tb) -> bool:
        staging = self._staging
        assert staging is not None
        try:
            if exc_type is not None:
                return False
            outputs = {}
            for item in sorted(staging.iterdir()):
                target = self.out_dir / item.name
                outputs[item.name] = sha256_path(item)
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(item, target)
            write_json_atomic(self.out_dir / MANIFEST, self.manifest(outputs))
            return False
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def manifest(self, outputs: Mapping[str, str]) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "package": {"name": "longrope2", "version": __version__, "git_commit": git_commit()},
            "config": self.config_subset,
            "config_hash": config_hash(self.config_subset),
            "inputs": {str(p): sha256_path(p) for p in self.inputs},
            "outputs": dict(outputs),
            "seed": self.seed,
            "wall_time_s": round(time.perf_counter() - self._t0, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": sys.argv,
            "libraries": library_versions(),
            "device": device_description(),
            **self.extra,
        }
