"""Resumable state for the long stages (pre-training, fine-tuning, search) that never resumes the wrong thing.

A killed stage must pick up where it stopped, but only from state that belongs to *this* run:

* every checkpoint carries a fingerprint of the config subset and input hashes that made it; one made
  with another config or other inputs is set aside in ``stale/`` (never loaded into the model), with one
  line on stderr, instead of being resumed silently;
* a checkpoint that does not load (truncated, corrupt, not a checkpoint) is set aside in ``corrupt/`` and
  the next older one is tried, so one bad file cannot make every retry fail;
* files are written atomically (temp file in the same folder, fsync, ``os.replace``), so a kill leaves
  either the old or the new file, never half of one;
* loading uses ``torch.load(weights_only=True)``: a checkpoint file can hold tensors and plain Python
  data, not code. :meth:`Checkpoints.save` checks the state up front so a state that could not be read
  back fails at the first save, not silently at the next resume.

:class:`GenerationLog` does the same for the search's append-only JSONL log: a header line with the
fingerprint, and a torn last line (kill mid-write) is cut off rather than blocking resume forever.
"""

from __future__ import annotations

import collections
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

import torch

from .config import config_hash

FINGERPRINT_KEY = "__checkpoint_fingerprint__"
"""Key under which :meth:`Checkpoints.save` stores the fingerprint in the saved dict (removed on load)."""

LEGACY_NAME = "last.pt"
"""The bare checkpoint the stages wrote before this module: no fingerprint, so never resumed."""

_STEP_RE = re.compile(r"^step-(\d+)\.pt$")
_TMP_PREFIX = ".step-"
_TMP_SUFFIX = ".tmp"

# What torch.load(weights_only=True) reads back, as checked by _check_loadable (see test_checkpoints.py,
# which keeps this list honest against the installed torch).
_CONTAINERS = (dict, collections.OrderedDict, list, tuple, torch.Size, set)
_LEAVES = (type(None), bool, int, float, complex, str, bytes, bytearray, torch.dtype, torch.device)
_TENSORS = (torch.Tensor, torch.nn.Parameter)


def fingerprint(config_subset: Mapping[str, Any], input_hashes: Mapping[str, str]) -> str:
    """Short stable hash of what a stage's state depends on: its config subset and the hashes of its inputs.

    Uses :func:`longrope2.config.config_hash` (sha256 of sorted-key JSON), so key order never matters and
    the value matches the ``config_hash`` idea used in manifests. Input hashes are typically
    ``{str(p): artifacts.sha256_path(p)}``; pass the paths the stage reads, not where it writes.
    """
    return config_hash({"config": dict(config_subset), "inputs": dict(input_hashes)})


# ----------------------------------------------------------------------------------------------------
# small file helpers
# ----------------------------------------------------------------------------------------------------


def _notice(msg: str) -> None:
    """One line on stderr: resuming decisions must be visible in the log, not only in the file system."""
    print(msg, file=sys.stderr, flush=True)


def _short(fp: str) -> str:
    return fp if len(fp) <= 8 else fp[:8] + "…"


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write via a temp file in the same folder + fsync + os.replace: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _set_aside(path: Path, folder: Path) -> Path | None:
    """Move ``path`` into ``folder`` without overwriting earlier evidence; None if it is already gone
    (another rank of the same job set it aside first)."""
    folder.mkdir(parents=True, exist_ok=True)
    dest, n = folder / path.name, 0
    while dest.exists():
        n += 1
        dest = folder / f"{path.stem}.{n}{path.suffix}"
    try:
        os.replace(path, dest)
    except FileNotFoundError:
        return None
    return dest


def _check_loadable(obj: Any, where: str = "state") -> None:
    """Raise TypeError naming the first value ``torch.load(weights_only=True)`` would refuse.

    Checked at save time, because a checkpoint that cannot be read back would otherwise be set aside as
    corrupt on every resume and the stage would silently start over. Python ``random.Random.getstate()``
    tuples, ``torch.get_rng_state()`` tensors, numpy ``bit_generator.state`` dicts and model/optimizer/
    scheduler state dicts all pass as they are; numpy scalars and arrays do not: store ``float(x)`` /
    ``int(x)`` / ``torch.from_numpy(a)`` instead.
    """
    t = type(obj)
    if t in _TENSORS or t in _LEAVES:
        return
    if t in (dict, collections.OrderedDict):
        for k, v in obj.items():
            _check_loadable(k, f"{where} key {k!r}")
            _check_loadable(v, f"{where}[{k!r}]")
        return
    if t in _CONTAINERS:
        for i, v in enumerate(obj):
            _check_loadable(v, f"{where}[{i}]")
        return
    hint = " (use float()/int()/.tolist() or torch.from_numpy)" if t.__module__.startswith("numpy") else ""
    raise TypeError(f"{where} is a {t.__module__}.{t.__qualname__}, which torch.load(weights_only=True) "
                    f"cannot read back{hint}")


# ----------------------------------------------------------------------------------------------------
# torch checkpoints (pre-training, fine-tuning)
# ----------------------------------------------------------------------------------------------------


class Checkpoints:
    """Step checkpoints ``step-00000100.pt`` in one folder, each tagged with the run's fingerprint.

    ``save`` writes atomically and keeps the newest ``keep`` files (more than one, so a bad newest file
    still leaves something to resume from); ``load`` returns the newest good state made with this
    fingerprint, setting mismatching files aside in ``stale/`` and unreadable ones in ``corrupt/``;
    ``clear`` drops the step files once the stage has written its final outputs.

    Under data/model parallelism only one rank should ``save``; every rank may ``load`` (setting a
    file aside is a rename, and a file another rank already moved is simply skipped).
    """

    def __init__(self, directory: str | Path, fingerprint: str, keep: int = 2):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.keep = keep
        self.resumed_from: Path | None = None  # the file the last successful load() read

    def path(self, step: int) -> Path:
        return self.directory / f"step-{step:08d}.pt"

    def steps(self) -> list[tuple[int, Path]]:
        """(step, path) of the step files present, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _STEP_RE.match(p.name))]
        return sorted(found)

    def save(self, step: int, state: Mapping[str, Any]) -> Path:
        """Write ``state`` (plus the fingerprint) as the checkpoint for ``step``; prune older ones."""
        if FINGERPRINT_KEY in state:
            raise ValueError(f"state must not contain the reserved key {FINGERPRINT_KEY!r}")
        _check_loadable(dict(state))
        path = self.path(step)
        payload = {**state, FINGERPRINT_KEY: self.fingerprint}
        _write_atomic(path, lambda f: torch.save(payload, f))
        self._prune(keep_also=path)
        return path

    def _prune(self, keep_also: Path) -> None:
        """Keep the newest ``keep`` step files (never the one just written), drop temp files left by kills."""
        files = [p for _, p in self.steps()]
        for p in files[: max(len(files) - self.keep, 0)]:
            if p != keep_also:
                p.unlink(missing_ok=True)
        for p in self.directory.glob(f".*{_TMP_SUFFIX}"):
            p.unlink(missing_ok=True)

    def load(self) -> dict[str, Any] | None:
        """The newest state saved with this fingerprint (fingerprint key removed), or None to start fresh."""
        self.resumed_from = None
        legacy = self.directory / LEGACY_NAME
        if legacy.is_file():
            dest = _set_aside(legacy, self.directory / "stale")
            if dest is not None:
                _notice(f"checkpoint {legacy.name} predates checkpoint fingerprints, so it may belong to another "
                        f"config or inputs; set aside in {dest.parent}")
        candidates = [p for _, p in reversed(self.steps())]
        for i, path in enumerate(candidates):
            then = f"trying {candidates[i + 1].name}" if i + 1 < len(candidates) else "starting fresh"
            try:
                state = torch.load(path, weights_only=True, map_location="cpu")
            except FileNotFoundError:
                continue  # set aside by another rank meanwhile
            except OSError:
                raise  # permissions, I/O: not the file's content, so do not discard it
            except Exception as exc:  # truncated, corrupt, or holds something other than weights and data
                self._discard(path, "corrupt", f"could not be loaded ({_first_line(exc)})", then)
                continue
            if not isinstance(state, dict) or FINGERPRINT_KEY not in state:
                self._discard(path, "corrupt", "is not a checkpoint written by longrope2.checkpoints", then)
                continue
            theirs = state.pop(FINGERPRINT_KEY)
            if theirs != self.fingerprint:
                self._discard(path, "stale", f"was made with another config or inputs (fingerprint "
                                             f"{_short(str(theirs))} ≠ {_short(self.fingerprint)})", then)
                continue
            self.resumed_from = path
            return state
        return None

    def _discard(self, path: Path, folder: str, why: str, then: str) -> None:
        dest = _set_aside(path, self.directory / folder)
        if dest is not None:
            _notice(f"checkpoint {path.name} {why}; set aside in {dest.parent}, {then}")

    def clear(self) -> None:
        """Remove the step files (and temp leftovers) once the stage's outputs are written; keeps
        ``stale/`` and ``corrupt/`` for inspection, and removes the folder if nothing else is in it."""
        for _, p in self.steps():
            p.unlink(missing_ok=True)
        if self.directory.is_dir():
            for p in self.directory.glob(f".*{_TMP_SUFFIX}"):
                p.unlink(missing_ok=True)
            try:
                self.directory.rmdir()
            except OSError:
                pass


# ----------------------------------------------------------------------------------------------------
# JSONL generation log (search)
# ----------------------------------------------------------------------------------------------------


class GenerationLog:
    """Append-only JSONL: a header line ``{"fingerprint": ...}``, then one JSON record per generation.

    ``read`` returns the records made with this fingerprint; a file from another config/inputs (or one
    without a header, written before this class) is set aside in a ``stale/`` sibling folder; a line that
    does not parse, typically the last one torn by a kill mid-write, is cut off together with anything
    after it (saved to ``<name>.torn`` beside the log) so the run resumes from the last whole generation.
    ``append`` writes one line with flush + fsync.
    """

    def __init__(self, path: str | Path, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self._ready = False  # read() has checked (and if need be repaired) the file

    @property
    def torn_path(self) -> Path:
        return self.path.with_name(self.path.name + ".torn")

    def _header(self) -> bytes:
        return (json.dumps({"fingerprint": self.fingerprint}) + "\n").encode()

    def read(self) -> list[dict[str, Any]]:
        """Records after the header, oldest first; [] for a new, emptied or set-aside log."""
        self._ready = True
        if not self.path.is_file():
            return []
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")  # lines[-1] is what follows the last newline (b"" for a whole file)
        if not raw.strip():
            self.path.unlink(missing_ok=True)  # nothing in it; append() starts it again with a header
            return []
        header = _parse_line(lines[0])
        if not (isinstance(header, dict) and "fingerprint" in header):
            self._stale("has no fingerprint header (written before resumable logs, or not a generation log)")
            return []
        if header["fingerprint"] != self.fingerprint:
            self._stale(f"was made with another config or inputs (fingerprint {_short(str(header['fingerprint']))} "
                        f"≠ {_short(self.fingerprint)})")
            return []
        records: list[dict[str, Any]] = []
        good = [lines[0]]
        cut: int | None = None
        for i in range(1, len(lines)):
            line = lines[i]
            if not line.strip():
                continue
            rec = _parse_line(line)
            if not isinstance(rec, dict):
                cut = i
                break
            records.append(rec)
            good.append(line)
        if cut is not None:
            tail = b"\n".join(lines[cut:])
            with open(self.torn_path, "ab") as f:
                f.write(tail if tail.endswith(b"\n") else tail + b"\n")
                f.flush()
                os.fsync(f.fileno())
            self._rewrite(good)
            after = sum(1 for x in lines[cut + 1:] if x.strip())
            _notice(f"generation log {self.path.name}: line {cut + 1} does not parse (a write cut short by a kill?); "
                    f"cut it and {after} line(s) after it off into {self.torn_path.name}, "
                    f"resuming from the {len(records)} whole record(s) before it")
        elif not raw.endswith(b"\n"):
            self._rewrite(good)  # whole last record but no newline: the next append would join onto it
        return records

    def _rewrite(self, good: list[bytes]) -> None:
        data = b"".join(line.rstrip(b"\r") + b"\n" for line in good if line.strip())
        _write_atomic(self.path, lambda f: f.write(data))

    def _stale(self, why: str) -> None:
        dest = _set_aside(self.path, self.path.parent / "stale")
        if dest is not None:
            _notice(f"generation log {self.path.name} {why}; set aside in {dest.parent}, starting fresh")

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record as one line, durably (flush + fsync); a new or empty log gets its header first."""
        if not self._ready:
            self.read()  # repair a torn tail / set aside a stale file before writing after it
        line = json.dumps(record)
        if "\n" in line:  # cannot happen with json.dumps without indent; guards the one-line-per-record rule
            raise ValueError("record does not serialise to one line")
        if not self.path.is_file() or self.path.stat().st_size == 0:
            _write_atomic(self.path, lambda f: f.write(self._header()))
        with open(self.path, "ab") as f:
            f.write(line.encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())


def _parse_line(line: bytes) -> Any:
    """The JSON value on one line, or None if it does not parse (torn or garbage)."""
    try:
        return json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
