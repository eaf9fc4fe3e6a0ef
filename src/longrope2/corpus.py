"""Corpus sources (documents with ids, deterministic split) and memory-mapped tokenized corpora.

Sources: ``stdlib`` (the running interpreter's standard-library sources: present on every machine,
the offline default), ``text_dir`` (a folder of .txt / .jsonl files) and ``hf_dataset`` (a Hugging Face
dataset through ``datasets``). Tokenized corpora are flat token arrays (``{split}.bin``) plus document
offsets (``{split}.idx.npy``) so later stages (needles, packing) slice documents without re-tokenizing.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from .errors import ConfigError

SPLITS = ("train", "validation", "test")
_STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"}


@dataclass(frozen=True)
class Document:
    id: str
    text: str


def split_of(doc_id: str, validation: float, test: float) -> str:
    """Deterministic split from a hash of the document id (stable across runs and machines)."""
    u = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2**64
    if u < test:
        return "test"
    if u < test + validation:
        return "validation"
    return "train"


def stdlib_documents(min_chars: int = 200) -> Iterator[Document]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if any(part in _STDLIB_SKIP for part in rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if len(text) >= min_chars:
            yield Document(str(rel), text)


def text_dir_documents(path: str | None, field: str = "text", min_chars: int = 200) -> Iterator[Document]:
    if not path or not Path(path).is_dir():
        raise ConfigError("corpus.path", f"must be an existing folder of .txt/.jsonl files, got {path!r}")
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.suffix in (".txt", ".jsonl"))
    if not files:
        raise ConfigError("corpus.path", f"{path} holds no .txt or .jsonl files")
    for p in files:
        rel = str(p.relative_to(root))
        if p.suffix == ".txt":
            text = p.read_text(encoding="utf-8", errors="replace")
            if len(text) >= min_chars:
                yield Document(rel, text)
            continue
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise ConfigError("corpus.path", f"{p}: not UTF-8 text (byte {e.start}); re-encode the file") from None
        for n, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError("corpus.path", f"{p}:{n + 1}: not a JSON record ({e.msg})") from None
            if not isinstance(rec, dict):
                raise ConfigError("corpus.path", f"{p}:{n + 1}: a .jsonl line must be a JSON object")
            if field not in rec:
                raise ConfigError("corpus.field", f"{rel}:{n + 1} has no field {field!r}; keys: {', '.join(rec)}")
            if len(rec[field]) >= min_chars:
                yield Document(f"{rel}:{rec.get('id', n)}", rec[field])


def hf_dataset_documents(spec: Mapping[str, Any], field: str, max_documents: int | None, min_chars: int) -> Iterator[Document]:
    """Stream a Hugging Face dataset (real code path for PG19 / Fineweb-Edu / RedPajama)."""
    name = spec.get("name")
    if not name:
        raise ConfigError("corpus.dataset.name", "is required for corpus.source hf_dataset (e.g. deepmind/pg19)")
    try:
        import datasets

        ds = datasets.load_dataset(name, spec.get("config"), split=spec.get("split", "train"), streaming=True)
        it = iter(ds)
        first = next(it)
    except Exception as e:  # network, auth, missing dataset: all end the same way for the user
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ConfigError(
            "corpus.dataset.name",
            f"could not load Hugging Face dataset {name!r} ({reason}); it needs the Hub or a local cache -- "
            "offline, use corpus.source: stdlib or text_dir",
        ) from None
    n = 0
    for i, rec in enumerate(_chain(first, it)):
        if field not in rec:
            raise ConfigError("corpus.field", f"dataset {name} has no field {field!r}; fields: {', '.join(rec)}")
        if len(rec[field]) >= min_chars:
            yield Document(str(rec.get("id", rec.get("short_book_title", i))), rec[field])
            n += 1
            if max_documents and n >= max_documents:
                return


def _chain(first, rest):
    yield first
    yield from rest


def documents(cfg: Mapping[str, Any]) -> Iterator[Document]:
    """Documents of the configured corpus, in a deterministic order."""
    c = cfg["corpus"]
    src, min_chars, limit = c["source"], c.get("min_chars", 200), c.get("max_documents")
    if src == "stdlib":
        docs = stdlib_documents(min_chars)
    elif src == "text_dir":
        docs = text_dir_documents(c.get("path"), c.get("field", "text"), min_chars)
    elif src == "hf_dataset":
        docs = hf_dataset_documents(c.get("dataset") or {}, c.get("field", "text"), limit, min_chars)
    else:
        raise ConfigError("corpus.source", f"got {src!r}; allowed: stdlib, text_dir, hf_dataset")
    for n, d in enumerate(docs):
        if limit and n >= limit:
            return
        yield d


def split_documents(cfg: Mapping[str, Any]) -> dict[str, list[Document]]:
    c = cfg["corpus"]
    out: dict[str, list[Document]] = {s: [] for s in SPLITS}
    for d in documents(cfg):
        out[split_of(d.id, c.get("validation_fraction", 0.05), c.get("test_fraction", 0.05))].append(d)
    return out


def fingerprint(docs: Mapping[str, list[Document]]) -> dict[str, Any]:
    """File list + content hash, recorded in the manifest (the stdlib differs between Python builds)."""
    h = hashlib.sha256()
    for split in SPLITS:
        for d in docs[split]:
            h.update(f"{split}\0{d.id}\0".encode())
            h.update(hashlib.sha256(d.text.encode()).digest())
    return {
        "sha256": h.hexdigest(),
        "documents": {s: len(docs[s]) for s in SPLITS},
        "characters": {s: sum(len(d.text) for d in docs[s]) for s in SPLITS},
    }


# --------------------------------------------------------------------------------------------------
# Tokenizer (scale model) and tokenized corpora
# --------------------------------------------------------------------------------------------------

SPECIAL_TOKENS = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: str | Path):
    """Byte-level BPE with digits split one by one (so 7-digit needle values are 7 tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS, model_max_length=1_000_000)
    fast.save_pretrained(str(out_dir))
    return fast


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def write_tokenized(docs: list[Document], tokenizer, path_bin: Path, path_idx: Path, batch: int = 256) -> int:
    """Tokenize documents (no special tokens) into a flat array + offsets; returns the token count."""
    from . import progress

    dtype = token_dtype(len(tokenizer))
    offsets = [0]
    with open(path_bin, "wb") as f:
        for i in progress.bar(range(0, len(docs), batch), desc=f"tokenize {path_bin.stem}", unit="batch"):
            enc = tokenizer([d.text for d in docs[i : i + batch]], add_special_tokens=False)["input_ids"]
            for ids in enc:
                np.asarray(ids, dtype=dtype).tofile(f)
                offsets.append(offsets[-1] + len(ids))
    np.save(path_idx, np.asarray(offsets, dtype=np.int64))
    return offsets[-1]


class TokenizedCorpus:
    """Read-only view of one split: ``len(c)`` documents, ``c[i]`` their token arrays (memory-mapped)."""

    def __init__(self, root: str | Path, split: str):
        root = Path(root)
        meta = json.loads((root / "corpus.json").read_text())
        self.split = split
        self.offsets = np.load(root / f"{split}.idx.npy")
        n = int(self.offsets[-1])
        dtype = np.dtype(meta["token_dtype"])
        self.tokens = np.memmap(root / f"{split}.bin", dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)
        self.ids = meta["document_ids"][split]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])


def check_size(corpus: TokenizedCorpus, min_tokens: int, key: str = "corpus") -> None:
    if corpus.n_tokens < min_tokens:
        raise ConfigError(
            key,
            f"the {corpus.split} split has {corpus.n_tokens} tokens, fewer than the {min_tokens} the requested "
            "lengths need; add documents (corpus.max_documents, corpus.path) or lower the lengths",
        )

