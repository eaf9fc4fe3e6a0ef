"""Corpus stage: documents -> deterministic train/validation/test split -> tokenized memory-mapped arrays.

For the scale model it also trains the tokenizer (byte-level BPE, digits split) on the train split;
for a real model it tokenizes with the imported model's tokenizer (``--tokenizer DIR``).
"""

from __future__ import annotations

import argparse

import numpy as np

from .. import corpus as corpusmod
from ..artifacts import StageRun
from ..errors import ConfigError

NAME = "corpus"
HELP = "documents -> split -> (tokenizer) -> memory-mapped token arrays"
CONFIG_KEYS = ("model.source", "corpus", "tokenizer")
#: arguments naming input artifacts, checked against their producers' manifests before any work
INPUTS = ("tokenizer",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer of a real model (default: train one for the scale model)")


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    c = cfg["corpus"]
    if args.tokenizer is None and cfg["model"]["source"] != "scale":
        raise ConfigError("--tokenizer", "a real model's corpus needs its tokenizer folder (the import-model output)")
    docs = corpusmod.split_documents(cfg)
    for split in corpusmod.SPLITS:
        if not docs[split]:
            raise ConfigError(
                "corpus", f"the {split} split is empty ({sum(map(len, docs.values()))} documents in all); add documents "
                "or raise corpus.validation_fraction/test_fraction"
            )
    fp = corpusmod.fingerprint(docs)
    with StageRun("corpus", out, cfg, inputs=[args.tokenizer] if args.tokenizer else [], seed=None,
                  extra={"corpus_fingerprint": fp}) as run_:
        if args.tokenizer:
            tok = AutoTokenizer.from_pretrained(args.tokenizer)
        else:
            tok = corpusmod.train_tokenizer([d.text for d in docs["train"]], cfg["tokenizer"]["vocab_size"],
                                            run_.path("tokenizer"))
        counts = {}
        for split in corpusmod.SPLITS:
            counts[split] = corpusmod.write_tokenized(docs[split], tok, run_.path(f"{split}.bin"), run_.path(f"{split}.idx.npy"))
        meta = {
            "source": c["source"],
            "fingerprint": fp,
            "vocab_size": len(tok),
            "token_dtype": np.dtype(corpusmod.token_dtype(len(tok))).name,
            "tokens": counts,
            "chars_per_token": {s: fp["characters"][s] / max(counts[s], 1) for s in corpusmod.SPLITS},
            "document_ids": {s: [d.id for d in docs[s]] for s in corpusmod.SPLITS},
        }
        run_.write_json("corpus.json", meta)
    print(f"corpus {c['source']}: documents {fp['documents']} tokens {counts} vocab {len(tok)} -> {out}")
