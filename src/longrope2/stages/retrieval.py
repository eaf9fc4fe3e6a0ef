"""Retrieval check of a base model: RULER niah_single-style accuracy at L0 and, with no RoPE scaling,
at multiples of L0 (for information: beyond L0 it is expected to collapse).

``single``: one needle; ``multi``: four needles with different keys, one queried. Greedy exact match of
the 7-digit value, on held-out (test split) documents. Writes ``retrieval.json``:
``{"lengths": {"256": {"single": 0.95, "multi": 0.7}, ...}, "samples": N, "multi_choice": {"256": ...}}``;
``multi_choice`` says which needle's value the model prefers when it has to pick one by its key.
"""

from __future__ import annotations

import argparse

import numpy as np

from .. import models, progress, scoring, stats
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


def choice_summary(chosen, asked, n_needles: int) -> dict:
    """Which needle's value the model prefers (``needle_choice``): the share that is the asked one, the share
    of choices at each place in the text (0: first), and the asked needle's share chosen by its place. A
    model that copies *a* value without matching the key chooses the asked one ~1 / n_needles of the time,
    whatever its place; one biased to the nearest needle piles its choices on the last place."""
    chosen, asked = np.asarray(chosen), np.asarray(asked)
    hit = stats.wilson(int(np.sum(chosen == asked)), len(chosen))
    return {"asked": hit.estimate, "asked_lo": hit.lo, "asked_hi": hit.hi,
            "chosen_at": [round(float(np.mean(chosen == p)), 4) for p in range(n_needles)],
            "asked_at": [int(np.sum(asked == p)) for p in range(n_needles)],
            "accuracy_asked_at": [round(float(np.mean(chosen[asked == p] == p)), 4) if np.any(asked == p) else None
                                  for p in range(n_needles)]}


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    rc = cfg["retrieval"]
    l0 = cfg["model"]["geometry"]["original_length"]
    lengths = [int(m * l0) for m in rc["length_multiples"]]
    test = TokenizedCorpus(args.corpus, "test")
    check_size(test, max(lengths), key="corpus")
    model, tok = models.load_pretrained(args.model)
    result = {"lengths": {}, "samples": rc["samples"], "nll": {}, "multi_choice": {}}
    with StageRun("retrieval", out, cfg, inputs=[args.model, args.corpus], seed=cfg["experiment"]["seed"]) as run_:
        jobs = [(L, name, k) for L in lengths for name, k in (("single", 1), ("multi", 4))]
        for L, name, k in progress.bar(jobs, desc="retrieval"):
            builder = NeedleBuilder(test, tok, cfg["needles"]["template"], seed=cfg["experiment"]["seed"] + 7919 * L + k)
            samples = builder.draw(L, k, rc["samples"])
            acc, nll = scoring.needle_accuracy(model, samples, rc["batch_tokens"])
            result["lengths"].setdefault(str(L), {})[name] = acc
            result["nll"].setdefault(str(L), {})[name] = nll
            print(f"L={L} {name}: acc={acc:.3f} answer-nll={nll:.3f}", flush=True)
            if k > 1:
                result["multi_choice"][str(L)] = choice = choice_summary(
                    scoring.needle_choice(model, samples, rc["batch_tokens"]), [s.asked for s in samples], k)
                print(f"L={L} {name}: value chosen = the asked needle's {choice['asked']:.3f} [{choice['asked_lo']:.3f}, {choice['asked_hi']:.3f}], by the chosen "
                      f"needle's place in the text {choice['chosen_at']}", flush=True)
        run_.write_json("retrieval.json", result)
