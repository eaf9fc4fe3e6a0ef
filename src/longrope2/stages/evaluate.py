"""Evaluate one model under one RoPE scaling on held-out sets: needle accuracy (greedy exact match),
needle-PPL (PPL of the answer tokens) and plain PPL at every evaluation length (L0 x
``needles.eval_length_multiples`` up to the target, and the target).

The sets are built here from *test* documents, seeded by (seed, length): every method, training-free
and fine-tuned, scores the same samples, and no shared data file sits between the jobs (rebuilding
one would re-trigger every evaluation). With ``--factors`` the scaling is swapped into the loaded model
in place (training-free comparison); without it the model's own config decides (fine-tuned exports
carry their rope parameters). A NaN metric (non-finite logits: corrupt weights or a broken scaling)
fails the stage; a PPL that overflows (a baseline that breaks down) is written as ``"inf"``.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from .. import models, progress, rope, stats
from ..artifacts import StageRun
from ..corpus import TokenizedCorpus, check_size
from ..errors import LongRoPE2Error
from ..needles import NeedleBuilder, eval_lengths, needle_set, plain_set
from ..scoring import Evaluator

NAME = "evaluate"
HELP = "needle accuracy, needle-PPL and PPL of a model (+ optional factors) at every evaluation length"
CONFIG_KEYS = ("experiment.seed", "model.geometry.original_length", "extension.target_length", "needles.template",
               "needles.eval_samples", "needles.ppl_samples", "needles.depths", "needles.eval_length_multiples", "evaluation.batch_tokens")
#: arguments naming input artifacts, checked against their producers' manifests before any work
INPUTS = ("model", "corpus", "factors")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="model folder (its tokenizer builds the sets)")
    p.add_argument("--corpus", required=True, metavar="DIR", help="tokenized corpus folder (test split)")
    p.add_argument("--factors", metavar="FILE", help="factors JSON to apply in place (default: the model's own RoPE)")
    p.add_argument("--label", required=True, help="method name written to the metrics (e.g. longrope2)")
    p.add_argument("--stage-label", default="training-free", help="before/after/training-free: row label for tables")


def lengths(cfg: dict) -> list[int]:
    return eval_lengths(cfg["model"]["geometry"]["original_length"], cfg["extension"]["target_length"],
                        cfg["needles"]["eval_length_multiples"])


def eval_sets(cfg: dict, corpus: TokenizedCorpus, tok, length: int) -> dict[str, dict]:
    """The needle and plain-PPL sets of one length (seeded by seed + length: the same for every method)."""
    nc, seed = cfg["needles"], cfg["experiment"]["seed"] + length
    return {"needle": needle_set(NeedleBuilder(corpus, tok, nc["template"], seed=seed), length, nc["eval_samples"],
                                 nc["depths"]),
            "plain": plain_set(corpus, tok.bos_token_id, length, nc["ppl_samples"], seed)}


def ppl(nll: float, what: str) -> float:
    """exp(NLL), infinite past float range; NaN is an error, never a table entry."""
    if math.isnan(nll):
        raise LongRoPE2Error(f"{what} is NaN: the model produced non-finite logits (corrupt weights or a broken scaling)")
    return math.exp(nll) if nll < 709.0 else math.inf


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    test = TokenizedCorpus(args.corpus, "test")
    ls = lengths(cfg)
    check_size(test, max(ls), key="corpus")
    model, tok = models.load_pretrained(args.model)
    if args.factors:
        rope.apply_scaling(model, models.load_factors(args.factors))
    batch = cfg["evaluation"]["batch_tokens"]
    result = {"method": args.label, "stage": args.stage_label, "samples": cfg["needles"]["eval_samples"],
              "ppl_samples": cfg["needles"]["ppl_samples"], "lengths": {}}
    for L in progress.bar(ls, desc=f"evaluate {args.label}"):
        metrics = {}
        for kind, data in eval_sets(cfg, test, tok, L).items():
            # scored under the scaling already installed, through the evaluator's batching; every sample has
            # the same labelled-token count (7-digit answers, full rows), so the mean of the per-sample NLLs
            # is the token mean, and the per-sample values give the intervals
            nll, hit = Evaluator(model, data["input_ids"], data["labels"], batch).per_sample()
            name = "needle_ppl" if kind == "needle" else "ppl"
            point = ppl(float(nll.mean()), f"{name} at length {L}")  # NaN: a one-line error, before any interval
            lo = hi = point  # an overflowing sample (inf): the interval is [inf, inf]
            if np.isfinite(nll).all():
                band = stats.bootstrap_mean(nll, seed=L)
                lo, hi = ppl(band.lo, name), ppl(band.hi, name)
            metrics.update({name: point, f"{name}_lo": lo, f"{name}_hi": hi})
            if kind == "needle":
                acc = stats.wilson(int(hit.sum()), len(hit))
                metrics.update(needle_acc=acc.estimate, needle_acc_lo=acc.lo, needle_acc_hi=acc.hi)
        result["lengths"][str(L)] = metrics
        progress.write(f"{args.label} L={L}: {metrics}")
    inputs = [args.model, args.corpus] + ([args.factors] if args.factors else [])
    subset = {**cfg, "label": args.label, "stage": args.stage_label}
    with StageRun("evaluate", out, subset, inputs=inputs, seed=cfg["experiment"]["seed"]) as run_:
        run_.write_json("metrics.json", result)
