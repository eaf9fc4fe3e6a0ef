"""Evaluate one model under one RoPE scaling on the needle sets: needle accuracy (greedy exact match),
needle-PPL (PPL of the answer tokens) and plain PPL at every evaluation length.

With ``--factors`` the scaling is swapped into the loaded model in place (training-free comparison);
without it the model's own config decides (fine-tuned exports carry their rope parameters).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from .. import models, rope
from ..artifacts import StageRun
from ..search import Evaluator
from .needles import load_set

NAME = "evaluate"
HELP = "needle accuracy, needle-PPL and PPL of a model (+ optional factors) at every evaluation length"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="model folder")
    p.add_argument("--needles", required=True, metavar="DIR", help="needles stage folder")
    p.add_argument("--factors", metavar="FILE", help="factors JSON to apply in place (default: the model's own RoPE)")
    p.add_argument("--label", required=True, help="method name written to the metrics (e.g. longrope2)")
    p.add_argument("--stage-label", default="training-free", help="before/after/training-free: row label for tables")


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    meta = json.loads((Path(args.needles) / "needles.json").read_text())
    model, _ = models.load_pretrained(args.model)
    if args.factors:
        rope.apply_scaling(model, rope.scaling_from_dict(json.loads(Path(args.factors).read_text())))
    batch = cfg["search"]["batch_tokens"]
    result = {"method": args.label, "stage": args.stage_label, "lengths": {}}
    for L in meta["eval_lengths"]:
        metrics = {}
        for kind in ("needle", "plain"):
            data = load_set(Path(args.needles) / f"eval_{kind}_{L}.npz")
            ev = Evaluator(model, data["input_ids"], data["labels"], batch)
            # evaluate under the scaling already installed: score through the evaluator's batching
            nll, acc = ev.score_installed()
            if kind == "needle":
                metrics.update(needle_acc=acc, needle_ppl=math.exp(nll))
            else:
                metrics.update(ppl=math.exp(nll))
        result["lengths"][str(L)] = metrics
        print(f"{args.label} L={L}: {metrics}", flush=True)
    inputs = [args.model, args.needles] + ([args.factors] if args.factors else [])
    subset = {"label": args.label, "stage": args.stage_label, "needles": cfg["needles"]}
    with StageRun("evaluate", out, subset, inputs=inputs, seed=None) as run_:
        run_.write_json("metrics.json", result)
