"""LongBench or MMLU of one model through lm-eval's own tasks (real-model experiments).

The data is checked before the model is loaded: a local mirror of the dataset repo
(``evaluation.<suite>.data_dir``), or the Hub / ``datasets`` cache; if neither has it the job stops with one
line saying what is missing and how to provide it (or leave the suite out of ``evaluation.suites``).
LongBench prompts longer than the model's window are cut in the middle, as LongBench's ``pred.py`` does;
MMLU runs 5-shot. Outputs: ``suite.json`` (per-task and suite scores) and ``samples.jsonl`` (per-sample
scores: the tables bootstrap intervals and the retention ratio from them).
"""

from __future__ import annotations

import argparse
import json
import tempfile

from .. import models, progress
from ..artifacts import StageRun
from ..evaluation import suites

NAME = "suite"
HELP = "LongBench or MMLU (lm-eval's own tasks) of one model: suite.json, samples.jsonl"
CONFIG_KEYS = ("experiment.seed", "evaluation.batch_size", "evaluation.longbench", "evaluation.mmlu")
#: arguments naming input artifacts, checked against their producers' manifests before any work
INPUTS = ("model",)
MODEL_SUITES = ("longbench", "mmlu")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", required=True, choices=MODEL_SUITES)
    p.add_argument("--model", required=True, metavar="DIR", help="exported model folder (its own rope parameters)")
    p.add_argument("--max-length", required=True, type=int, help="the model's window (longer LongBench prompts are cut)")
    p.add_argument("--label", required=True, help="method name written to the results")
    p.add_argument("--stage-label", default="training-free", help="training-free / after: row label for tables")


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    from ..evaluation.lm import LongContextLM

    sc = cfg["evaluation"][args.suite]
    suites.check_data(args.suite, sc["data_dir"])  # before the model is loaded: fail in seconds, not minutes
    model, tokenizer = models.load_pretrained(args.model)
    lm = LongContextLM(model, tokenizer, max_length=args.max_length, batch_size=cfg["evaluation"]["batch_size"],
                       truncate="middle" if args.suite == "longbench" else None)
    with tempfile.TemporaryDirectory(prefix="suite-cache-") as cache:
        result = suites.run_suite(lm, args.suite, sc["data_dir"], limit=sc["limit"], seed=cfg["experiment"]["seed"],
                                  cache_dir=cache if sc["data_dir"] else None)
    samples = result.pop("samples")
    result.update(method=args.label, stage=args.stage_label, max_length=args.max_length, truncated=lm.truncated)
    subset = {**cfg, "suite": args.suite, "label": args.label, "stage": args.stage_label, "max_length": args.max_length}
    with StageRun("suite", out, subset, inputs=[args.model], seed=cfg["experiment"]["seed"]) as run_:
        run_.write_json("suite.json", result)
        run_.write_text("samples.jsonl", "".join(json.dumps({"task": t, **r}) + "\n" for t, rs in samples.items()
                                                 for r in rs))
    progress.write(f"{args.label} {args.suite}: {result['score']:.4f} over {result['n']} samples "
                   f"({lm.truncated} prompts cut in the middle)")
