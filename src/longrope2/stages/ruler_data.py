"""RULER data for one (task, length): NVIDIA's templates sized with the experiment's own tokenizer.

One job per (task, length) writes ``samples.jsonl`` (the lm-eval local task's data), ``task.json`` (what it
holds: sample count, prompt token range, the tokenizer's fingerprint, or why the task was not run) and the
manifest. Besides RULER's 13 tasks the stage writes ``niah_depth`` (the heat map: niah_single_1's needle at
``evaluation.niah.depths`` evenly spaced depths, ``evaluation.niah.samples`` per cell) and ``passkey``.

A task that cannot run is written as such, never dropped: a length too short for the task's shortest
prompt plus its answer budget, or a QA set that is neither a configured file nor loadable from the Hub.
``samples.jsonl`` is then empty and ``task.json`` says why; the tables mark the task "not run".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import progress
from ..artifacts import StageRun
from ..errors import ConfigError
from ..evaluation import ruler

NAME = "ruler-data"
HELP = "RULER / needle heat-map / passkey samples of one task at one length (JSONL sized with the tokenizer)"
CONFIG_KEYS = ("experiment.seed", "extension.target_length", "evaluation.ruler.samples", "evaluation.ruler.haystack",
               "evaluation.ruler.qa_files", "evaluation.ruler.max_new_tokens", "evaluation.niah.depths",
               "evaluation.niah.samples", "evaluation.passkey.samples")
#: the family of each task, as evaluation.ruler.max_new_tokens names it
BUDGET_KEY = {"niah": "niah", "variable_tracking": "vt", "common_words_extraction": "cwe",
              "freq_words_extraction": "fwe", "qa": "qa", "passkey": "passkey"}
#: arguments naming input artifacts, checked against their producers' manifests before any work
INPUTS = ("tokenizer", "corpus")
HAYSTACK_SUFFIXES = (".txt", ".md")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="the model's tokenizer (prompts are sized with it)")
    p.add_argument("--corpus", required=True, metavar="DIR",
                   help="tokenized corpus: its test split is the essay haystack unless evaluation.ruler.haystack is set")
    p.add_argument("--task", required=True, choices=list(ruler.ALL_TASKS), metavar="TASK",
                   help=f"one of {', '.join(ruler.ALL_TASKS)}")
    p.add_argument("--length", required=True, type=int, help="tokens: prompt + answer budget fit in it")


def haystack_text(source: str | None, corpus_dir: str, tokenizer) -> tuple[str, str]:
    """(text, where it came from): a file, the .txt/.md files of a folder, or the corpus's test split."""
    key = "evaluation.ruler.haystack"
    if source is None:
        from ..corpus import TokenizedCorpus

        test = TokenizedCorpus(corpus_dir, "test")
        text = "\n\n".join(tokenizer.decode(test[i].tolist()) for i in range(len(test)))
        where = f"{corpus_dir} (test split, {len(test)} documents)"
    else:
        path = Path(source)
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.suffix in HAYSTACK_SUFFIXES and f.is_file())
        else:
            raise ConfigError(key, f"{source} is neither a text file nor a folder; give one, or null for the corpus")
        text = "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
        where = f"{source} ({len(files)} files)"
    if not text.strip():
        raise ConfigError(key, f"{where} holds no text; give a text file or a folder of {'/'.join(HAYSTACK_SUFFIXES)} "
                          "files, or null for the corpus's held-out split")
    return text, where


def build(cfg: dict, task: str, length: int, tokenizer, corpus_dir: str) -> tuple[list[dict], dict]:
    """The samples and the task.json record of one (task, length)."""
    ev, seed = cfg["evaluation"], cfg["experiment"]["seed"]
    target = cfg["extension"]["target_length"]
    if length > target:
        raise ConfigError("evaluation.lengths", f"{length} is above what any method supports; allowed: lengths up to "
                          f"extension.target_length={target}")
    spec = ruler.ALL_TASKS[task]
    budget = ev["ruler"]["max_new_tokens"].get(BUDGET_KEY[spec.generator])
    info = {"task": task, "length": length, "metric": spec.metric, "max_new_tokens": budget or spec.max_new_tokens,
            "tokenizer": ruler.tokenizer_fingerprint(tokenizer), "not_run": None, "haystack": None}
    kwargs: dict = {"depths": None, "qa_data": None, "max_new_tokens": budget}
    n = ev["ruler"]["samples"]
    if task == "niah_depth":
        grid = ev["niah"]["depths"]
        kwargs["depths"] = [i / (grid - 1) for i in range(grid) for _ in range(ev["niah"]["samples"])]
    elif task == "passkey":
        n = ev["passkey"]["samples"]
    haystack = ""
    if spec.haystack == "essay":
        haystack, info["haystack"] = haystack_text(ev["ruler"]["haystack"], corpus_dir, tokenizer)
    if spec.generator == "qa":
        path = ev["ruler"]["qa_files"][spec.qa_dataset]
        try:
            kwargs["qa_data"] = ruler.load_qa(spec.qa_dataset, path)
            info["haystack"] = path or ruler.QA_HUB[spec.qa_dataset][0]
        except ConfigError as e:
            if path:  # a configured file that is missing or malformed is an error, not a skipped task
                raise
            info["not_run"] = str(e)
    if info["not_run"] is None:
        try:
            samples = ruler.generate(task, length, n, tokenizer, haystack, seed, **kwargs)
        except ConfigError as e:
            if e.key != "evaluation.lengths":
                raise
            info["not_run"] = str(e)
    if info["not_run"] is not None:
        progress.write(f"{task} at {length}: not run ({info['not_run']})")
        return [], {**info, "samples": 0}
    counts = [s["prompt_tokens"] for s in samples]
    return samples, {**info, "samples": len(samples), "prompt_tokens": {"min": min(counts), "max": max(counts)}}


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    samples, info = build(cfg, args.task, args.length, tokenizer, args.corpus)
    subset = {**cfg, "task": args.task, "length": args.length}
    with StageRun("ruler-data", out, subset, inputs=[args.tokenizer, args.corpus], seed=cfg["experiment"]["seed"]) as run_:
        run_.write_text("samples.jsonl", "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
        run_.write_json("task.json", info)
    progress.write(f"{args.task} at {args.length}: {info['samples']} samples")
