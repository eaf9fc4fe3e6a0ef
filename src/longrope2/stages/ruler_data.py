"""RULER data for one task at every evaluation length: NVIDIA's templates sized with the experiment's own tokenizer.

One job per task (``--out ruler_data/<task>``) writes, for each of ``--lengths``, ``<length>/samples.jsonl``
(the lm-eval local task's data) and ``<length>/task.json`` (what it holds: sample count, prompt token range,
the tokenizer's fingerprint, or why the task was not run), and one ``manifest.json`` for the task. The
tokenizer, the haystack and the QA set are loaded once per job. Besides RULER's 13 tasks the stage writes
``niah_depth`` (the heat map: niah_single_1's needle at ``evaluation.niah.depths`` evenly spaced depths,
``evaluation.niah.samples`` per cell) and ``passkey``. Each task is given only the config keys it reads
(:func:`config_keys`), so editing one reruns only the tasks that read it.

A task that cannot run at a length is written as such, never dropped: a length too short for the task's
shortest prompt plus its answer budget, or a QA set that is neither a configured file nor loadable from the
Hub. That length's ``samples.jsonl`` is then empty and its ``task.json`` says why; the tables mark the task
"not run" there.
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
HELP = "RULER / needle heat-map / passkey samples of one task at every evaluation length (JSONL sized with the tokenizer)"
#: every key some task reads (each task is given only its own: :func:`config_keys`)
CONFIG_KEYS = ("experiment.seed", "extension.target_length", "evaluation.ruler.samples", "evaluation.ruler.samples_at",
               "evaluation.ruler.haystack",
               "evaluation.ruler.qa_files", "evaluation.ruler.max_new_tokens", "evaluation.niah.depths",
               "evaluation.niah.samples", "evaluation.passkey.samples")
#: the family of each task, as evaluation.ruler.max_new_tokens names it
BUDGET_KEY = {"niah": "niah", "variable_tracking": "vt", "common_words_extraction": "cwe",
              "freq_words_extraction": "fwe", "qa": "qa", "passkey": "passkey"}
#: arguments naming input artifacts, checked against their producers' manifests before any work
INPUTS = ("tokenizer", "corpus")
HAYSTACK_SUFFIXES = (".txt", ".md")


def config_keys(task: str) -> tuple[str, ...]:
    """The config keys one task reads (a subset of :data:`CONFIG_KEYS`, in its order)."""
    spec = ruler.ALL_TASKS[task]
    reads = {"experiment.seed", "extension.target_length", "evaluation.ruler.max_new_tokens"}
    if task == "niah_depth":
        reads |= {"evaluation.niah.depths", "evaluation.niah.samples"}
    elif task == "passkey":
        reads.add("evaluation.passkey.samples")
    else:
        reads |= {"evaluation.ruler.samples", "evaluation.ruler.samples_at"}
    if spec.haystack == "essay":
        reads.add("evaluation.ruler.haystack")
    if spec.generator == "qa":
        reads.add("evaluation.ruler.qa_files")
    return tuple(k for k in CONFIG_KEYS if k in reads)


def config_keys_for(args: argparse.Namespace) -> tuple[str, ...]:
    """The CLI's hook: the keys of this invocation's task (what ``--config-json`` must hold)."""
    return config_keys(args.task)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="the model's tokenizer (prompts are sized with it)")
    p.add_argument("--corpus", required=True, metavar="DIR",
                   help="tokenized corpus: its test split is the essay haystack unless evaluation.ruler.haystack is set")
    p.add_argument("--task", required=True, choices=list(ruler.ALL_TASKS), metavar="TASK",
                   help=f"one of {', '.join(ruler.ALL_TASKS)}")
    p.add_argument("--lengths", required=True, nargs="+", type=int, metavar="L",
                   help="tokens, distinct and positive: prompt + answer budget fit in each; one <L>/ folder per length")


def check_lengths(lengths: list[int], target: int) -> list[int]:
    """Distinct positive lengths, none above the target (checked before any work)."""
    bad = [L for L in lengths if L <= 0]
    if bad:
        raise ConfigError("--lengths", f"must be positive token counts, got {', '.join(map(str, bad))}")
    twice = sorted({L for L in lengths if lengths.count(L) > 1})
    if twice:
        raise ConfigError("--lengths", f"{', '.join(map(str, twice))} given twice; allowed: distinct lengths")
    above = [L for L in lengths if L > target]
    if above:
        raise ConfigError("evaluation.lengths", f"{above[0]} is above what any method supports; allowed: lengths up "
                          f"to extension.target_length={target}")
    return list(lengths)


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


def sources(cfg: dict, task: str, tokenizer, corpus_dir: str) -> dict:
    """What a task draws its samples from, loaded once for all its lengths: the essay haystack (essay tasks),
    the QA set (qa tasks; ``not_run`` says why when it is unavailable offline and no file is configured)."""
    ev, spec = cfg["evaluation"], ruler.ALL_TASKS[task]
    out: dict = {"haystack": "", "where": None, "qa_data": None, "not_run": None}
    if spec.haystack == "essay":
        out["haystack"], out["where"] = haystack_text(ev["ruler"]["haystack"], corpus_dir, tokenizer)
    if spec.generator == "qa":
        path = ev["ruler"]["qa_files"][spec.qa_dataset]
        try:
            out["qa_data"] = ruler.load_qa(spec.qa_dataset, path)
            out["where"] = path or ruler.QA_HUB[spec.qa_dataset][0]
        except ConfigError as e:
            if path:  # a configured file that is missing or malformed is an error, not a skipped task
                raise
            out["not_run"] = str(e)
    return out


def build(cfg: dict, task: str, length: int, tokenizer, corpus_dir: str,
          loaded: dict | None = None) -> tuple[list[dict], dict]:
    """The samples and the task.json record of one (task, length); ``loaded``: the task's :func:`sources`
    (loaded here when not given)."""
    ev, seed = cfg["evaluation"], cfg["experiment"]["seed"]
    check_lengths([length], cfg["extension"]["target_length"])
    if loaded is None:
        loaded = sources(cfg, task, tokenizer, corpus_dir)
    spec = ruler.ALL_TASKS[task]
    budget = ev["ruler"]["max_new_tokens"].get(BUDGET_KEY[spec.generator])
    info = {"task": task, "length": length, "metric": spec.metric, "max_new_tokens": budget or spec.max_new_tokens,
            "tokenizer": ruler.tokenizer_fingerprint(tokenizer), "not_run": loaded["not_run"],
            "haystack": loaded["where"]}
    kwargs: dict = {"depths": None, "qa_data": loaded["qa_data"], "max_new_tokens": budget}
    if task == "niah_depth":
        grid = ev["niah"]["depths"]
        kwargs["depths"] = [i / (grid - 1) for i in range(grid) for _ in range(ev["niah"]["samples"])]
        n = len(kwargs["depths"])
    elif task == "passkey":
        n = ev["passkey"]["samples"]
    else:
        # short windows hold few tasks: samples_at gives those lengths more samples per task
        n = next((a["samples"] for a in ev["ruler"]["samples_at"] if a["length"] == length), ev["ruler"]["samples"])
    if info["not_run"] is None:
        try:
            samples = ruler.generate(task, length, n, tokenizer, loaded["haystack"], seed, **kwargs)
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
    lengths = check_lengths(args.lengths, cfg["extension"]["target_length"])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    loaded = sources(cfg, args.task, tokenizer, args.corpus)
    built = {L: build(cfg, args.task, L, tokenizer, args.corpus, loaded) for L in lengths}
    subset = {**cfg, "task": args.task, "lengths": lengths}
    with StageRun("ruler-data", out, subset, inputs=[args.tokenizer, args.corpus], seed=cfg["experiment"]["seed"]) as run_:
        for L, (samples, info) in built.items():
            run_.write_text(f"{L}/samples.jsonl", "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
            run_.write_json(f"{L}/task.json", info)
    progress.write(f"{args.task}: " + ", ".join(f"{L}={info['samples']} samples" for L, (_, info) in built.items()))
