"""Needle-driven search data: the sets the factor search scores every candidate on.

- ``search_needle``: samples of exactly the target length from *validation* documents, the needle at
  ``depths`` evenly spread depths (the paper: 10 PG19 books x 10 depths), answer tokens labelled only;
- ``search_plain``: plain long-document PPL samples of the same length (the ablation objective);
- ``heldout_needle`` / ``heldout_plain``: the same recipes on *test* documents, as many samples: the
  search stage reports its best candidate on them next to its search-set score (over-fitting check).
Each set is an ``.npz`` with ``input_ids``/``labels`` (N x L) and, for needle sets, ``depths``/``values``.
The evaluation sets come from the ``eval-sets`` stage (test documents).
"""

from __future__ import annotations

import argparse

from ..artifacts import StageRun
from ..corpus import TokenizedCorpus, check_size
from ..needles import NeedleBuilder, needle_set, plain_set, save_set

NAME = "needles"
HELP = "needle-PPL / plain-PPL sets at the target length for the factor search"
CONFIG_KEYS = ("experiment.seed", "extension.target_length", "needles.template", "needles.search_samples",
               "needles.depths")
#: arguments naming input artifacts, checked against their producers' manifests before any work
INPUTS = ("corpus", "tokenizer")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", required=True, metavar="DIR", help="tokenized corpus folder (validation split)")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer folder (the base model's)")


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    nc, seed = cfg["needles"], cfg["experiment"]["seed"]
    target = cfg["extension"]["target_length"]
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    val, test = TokenizedCorpus(args.corpus, "validation"), TokenizedCorpus(args.corpus, "test")
    check_size(val, target, key="corpus")
    check_size(test, target, key="corpus")
    with StageRun("needles", out, cfg, inputs=[args.corpus, args.tokenizer], seed=seed) as run_:
        sets = {
            "search_needle": needle_set(NeedleBuilder(val, tok, nc["template"], seed=seed), target,
                                        nc["search_samples"], nc["depths"]),
            "search_plain": plain_set(val, tok.bos_token_id, target, nc["search_samples"], seed),
            "heldout_needle": needle_set(NeedleBuilder(test, tok, nc["template"], seed=seed + 1), target,
                                         nc["search_samples"], nc["depths"]),
            "heldout_plain": plain_set(test, tok.bos_token_id, target, nc["search_samples"], seed + 1),
        }
        summary = {"search_length": target, "sets": {n: save_set(run_.path(f"{n}.npz"), a) for n, a in sets.items()}}
        run_.write_json("needles.json", summary)
    print(f"search sets at {target} tokens ({nc['search_samples']} samples each) -> {out}")
