"""Versioned, atomic stage outputs: every stage writes through :class:`StageRun`.

Outputs are first written into a hidden staging folder inside ``--out``; only when the stage body
finishes without error are they renamed into place, followed by ``manifest.json`` (config subset and
its hash, package version, git commit, input hashes, seed, wall time, library versions, device). A
failure leaves no partial artifact behind.

Inputs are checked on entry against the hashes their producing stage recorded in its manifest, so a
changed or corrupt artifact (a flipped byte in a weight file, a hand-edited factors file) stops the
stage with one line instead of flowing into a table.
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

from . import __version__, workload
from .config import config_hash
from .errors import LongRoPE2Error

MANIFEST = "manifest.json"
_PROCESS_START = time.perf_counter()  # a stage's wall time counts from its process start


class InputError(LongRoPE2Error):
    """An input artifact that no longer matches what its producing stage wrote."""
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


def cpu_model() -> str:
    """The CPU's model name (CPU results differ between machines: tables name the one they came from)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        # the vector ISA torch's CPU kernels use (AVX512, AVX2, ...): one CPU model name can hide two, and
        # floating-point results differ between them
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        if torch.cuda.is_available():
            info["device"] = "cuda"
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
        else:
            info["device"] = "cpu"
    except ImportError:
        info["device"] = "cpu"
    return info


def producer_hash(path: str | Path) -> str | None:
    """The hash the producing stage's manifest recorded for ``path``: a stage folder (holding its own
    manifest) or one output of a stage (manifest beside it). None for an input no stage made here."""
    path = Path(path)
    if path.is_dir() and (path / MANIFEST).is_file():
        return "stage-folder"
    manifest = path.parent / MANIFEST
    if not manifest.is_file():
        return None
    try:
        return json.loads(manifest.read_text()).get("outputs", {}).get(path.name)
    except (json.JSONDecodeError, OSError):
        raise InputError(f"{manifest}: unreadable manifest; rerun the stage that makes {path}") from None


_VERIFIED: dict[str, str] = {}  # inputs already checked in this process (hashing a model is not free)


def verified_hash(path: str | Path) -> str:
    """sha256 of an input, checked against its producer's manifest (one-line InputError on a mismatch)."""
    path = Path(path)
    if str(path) in _VERIFIED:
        return _VERIFIED[str(path)]
    if not path.exists():
        raise InputError(f"{path}: input does not exist")
    want = producer_hash(path)
    if want == "stage-folder":
        outputs = json.loads((path / MANIFEST).read_text()).get("outputs", {})
        for name, h in outputs.items():
            _check(path / name, h)
        have = sha256_path(path)
    elif want is not None:
        have = _check(path, want)
    else:
        have = sha256_path(path)
    _VERIFIED[str(path)] = have
    return have


def forget_verified() -> None:
    _VERIFIED.clear()


def verify_inputs(paths: Iterable[str | Path] | Mapping[str, str | Path]) -> dict[str, str]:
    """Check every input of a stage before it does any work (the CLI calls this with the stage's INPUTS,
    as {argument: path}, so a missing one is named by its argument)."""
    named = paths.items() if isinstance(paths, Mapping) else ((None, p) for p in paths)
    # an argument taking several paths (nargs="+") is checked path by path
    named = [(arg, p) for arg, value in named for p in (value if isinstance(value, (list, tuple)) else [value])]
    out = {}
    for arg, path in named:
        if arg and not Path(path).exists():
            raise InputError(f"--{arg.replace('_', '-')}: {path} does not exist")
        out[str(path)] = verified_hash(path)
    return out


def _check(path: Path, want: str) -> str:
    if not path.exists():
        raise InputError(f"{path}: missing, although its stage's manifest lists it; rerun that stage")
    have = sha256_path(path)
    if have != want:
        raise InputError(f"{path}: changed or corrupt since its stage wrote it (sha256 {have[:12]}… ≠ manifest "
                         f"{want[:12]}…); rerun the stage that makes it")
    return have


def jsonable(obj: Any, where: str = "") -> Any:
    """Valid JSON only: an infinite float becomes "inf"/"-inf" (a PPL that overflowed), NaN is an error."""
    if isinstance(obj, float):
        if obj != obj:
            raise LongRoPE2Error(f"{where or 'value'} is NaN; refusing to write it")
        return obj if abs(obj) != float("inf") else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, Mapping):
        return {k: jsonable(v, f"{where}.{k}" if where else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    return obj


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(jsonable(obj), f, indent=2, sort_keys=False, default=_json_default, allow_nan=False)
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
        prior_wall_s: float = 0.0,
    ):
        self.stage = stage
        self.out_dir = Path(out_dir)
        self.config_subset = dict(config_subset)
        self.seed = seed
        self.extra = dict(extra or {})
        self.prior_wall_s = prior_wall_s  # earlier attempts of a resumed stage
        self._staging: Path | None = None
        # checked now, before any output exists: a changed input fails the stage with nothing written
        self.input_hashes = {str(p): verified_hash(p) for p in inputs}

    def __enter__(self) -> "StageRun":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.out_dir))
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
            json.dump(jsonable(obj, name), f, indent=2, default=_json_default, allow_nan=False)
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
            names = sorted(item.name for item in staging.iterdir())
            for name in names:
                target = self.out_dir / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(staging / name, target)
            # hashed in place: relative links (linked exports) resolve only there
            outputs = {name: sha256_path(self.out_dir / name) for name in names}
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
            "inputs": self.input_hashes,
            "outputs": dict(outputs),
            "seed": self.seed,
            "wall_time_s": round(self.prior_wall_s + time.perf_counter() - _PROCESS_START, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": sys.argv,
            "libraries": library_versions(),
            "device": device_description(),
            **({"work": work} if (work := workload.snapshot()) else {}),
            **self.extra,
        }
