"""Retrieval check of a base model: RULER niah_single-style accuracy at L0 and, with no RoPE scaling,
at multiples of L0 (for information: beyond L0 it is expected to collapse).

``single``: one needle; ``multi``: four needles with different keys, one queried. Greedy exact match of
the 7-digit value, on held-out (test split) documents. Writes ``retrieval.json``:
``{"lengths": {"256": {"single": 0.95, "multi": 0.7}, ...}, "samples": N}``.
"""

from __future__ import annotations

import argparse

from .. import models, progress, scoring
from ..artifacts import StageRun
from ..corpus import TokenizedCorpus, check_size
from ..needles import NeedleBuilder

NAME = "retrieval"
HELP = "needle retrieval accuracy of the base model at L0 and multiples of it (no scaling)"
CONFIG_KEYS = ("experiment.seed", "model.geometry.original_length", "retrieval", "needles.template")
#: arguments naming input artifacts, checked against their producers' manifests before any work
INPUTS = ("model", "corpus")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="base model folder (HF layout)")
    p.add_argument("--corpus", required=True, metavar="DIR", help="tokenized corpus folder (test split is used)")


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    rc = cfg["retrieval"]
    l0 = cfg["model"]["geometry"]["original_length"]
    lengths = [int(m * l0) for m in rc["length_multiples"]]
    test = TokenizedCorpus(args.corpus, "test")
    check_size(test, max(lengths), key="corpus")
    model, tok = models.load_pretrained(args.model)
    result = {"lengths": {}, "samples": rc["samples"], "nll": {}}
    with StageRun("retrieval", out, cfg, inputs=[args.model, args.corpus], seed=cfg["experiment"]["seed"]) as run_:
        jobs = [(L, name, k) for L in lengths for name, k in (("single", 1), ("multi", 4))]
        for L, name, k in progress.bar(jobs, desc="retrieval"):
            builder = NeedleBuilder(test, tok, cfg["needles"]["template"], seed=cfg["experiment"]["seed"] + 7919 * L + k)
            acc, nll = scoring.needle_accuracy(model, builder, L, k, rc["samples"], rc["batch_tokens"])
            result["lengths"].setdefault(str(L), {})[name] = acc
            result["nll"].setdefault(str(L), {})[name] = nll
            print(f"L={L} {name}: acc={acc:.3f} answer-nll={nll:.3f}", flush=True)
        run_.write_json("retrieval.json", result)
