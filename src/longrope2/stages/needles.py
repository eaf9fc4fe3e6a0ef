"""Needle-driven data: the search's needle-PPL set, the plain long-document PPL set, and evaluation sets.

- ``search_needle``: samples of exactly the target length from *validation* documents, the needle at
  ``depths`` evenly spread depths (the paper: 10 PG19 books x 10 depths), answer tokens labelled only;
- ``search_plain``: plain long-document PPL samples of the same length (the ablation objective);
- ``eval_needle_{L}`` / ``eval_plain_{L}`` for every evaluation length (L0, 2 L0, ... target) from
  *test* documents, used by the training-free and fine-tuning comparisons.
Each set is an ``.npz`` with ``input_ids``/``labels`` (N x L) and, for needle sets, ``depths``/``values``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..artifacts import StageRun
from ..corpus import TokenizedCorpus, check_size
from ..needles import NeedleBuilder

NAME = "needles"
HELP = "needle-PPL / plain-PPL sets for the search and the evaluations"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", required=True, metavar="DIR", help="tokenized corpus folder")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer folder (the base model's)")


def eval_lengths(cfg: dict) -> list[int]:
    """L0 x each multiple up to the target, and the target itself."""
    l0, target = cfg["model"]["geometry"]["original_length"], cfg["extension"]["target_length"]
    lengths = {int(round(m * l0)) for m in cfg["needles"]["eval_length_multiples"] if m * l0 <= target}
    return sorted(lengths | {l0, target})


def needle_set(builder: NeedleBuilder, length: int, n: int, n_depths: int) -> dict[str, np.ndarray]:
    depths = np.linspace(0.0, 1.0, n_depths)
    samples = [builder.sample(length, 1, depths=[depths[i % n_depths]]) for i in range(n)]
    return {
        "input_ids": np.stack([s.input_ids for s in samples]).astype(np.int32),
        "labels": np.stack([s.labels for s in samples]).astype(np.int32),
        "depths": np.array([s.depths[0] for s in samples]),
        "values": np.array([s.value for s in samples]),
    }


def plain_set(corpus: TokenizedCorpus, bos: int, length: int, n: int, seed: int) -> dict[str, np.ndarray]:
    """BOS + ``length-1`` consecutive tokens (documents concatenated), every token labelled."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        start = int(rng.integers(0, max(1, corpus.n_tokens - length)))
        rows.append(np.concatenate([[bos], corpus.tokens[start : start + length - 1]]).astype(np.int32))
    ids = np.stack(rows)
    return {"input_ids": ids, "labels": ids.copy()}


def save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def load_set(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    nc, seed = cfg["needles"], cfg["experiment"]["seed"]
    target = cfg["extension"]["target_length"]
    subset = {"needles": nc, "extension": {"target_length": target},
              "model": {"geometry": cfg["model"]["geometry"]}, "seed": seed}
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    val, test = TokenizedCorpus(args.corpus, "validation"), TokenizedCorpus(args.corpus, "test")
    lengths = eval_lengths(cfg)
    check_size(val, target, key="corpus")
    check_size(test, max(lengths), key="corpus")
    template = nc.get("template")
    summary = {"search_length": target, "eval_lengths": lengths, "sets": {}}
    with StageRun("needles", out, subset, inputs=[args.corpus, args.tokenizer], seed=seed) as run_:
        sets = {
            "search_needle": needle_set(NeedleBuilder(val, tok, template, seed=seed), target, nc["search_samples"], nc["depths"]),
            "search_plain": plain_set(val, tok.bos_token_id, target, nc["search_samples"], seed),
        }
        for L in lengths:
            sets[f"eval_needle_{L}"] = needle_set(NeedleBuilder(test, tok, template, seed=seed + L), L, nc["eval_samples"], nc["depths"])
            sets[f"eval_plain_{L}"] = plain_set(test, tok.bos_token_id, L, nc["eval_samples"], seed + L)
        for name, arrays in sets.items():
            save(run_.path(f"{name}.npz"), arrays)
            summary["sets"][name] = {"samples": int(arrays["input_ids"].shape[0]), "length": int(arrays["input_ids"].shape[1]),
                                     "labelled_tokens": int((arrays["labels"] != -100).sum())}
        run_.write_json("needles.json", summary)
    print(f"needle sets: search at {target} ({nc['search_samples']} samples), eval lengths {lengths} -> {out}")
