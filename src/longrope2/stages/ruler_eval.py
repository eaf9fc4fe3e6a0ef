"""RULER, the needle heat map and passkey of one model, scored through lm-eval.

Every (task, length) folder written by ``ruler-data`` (``ruler_data/<task>/<length>/``; a task folder
stands for all of its lengths) becomes a local lm-eval task (``dataset_path: json``)
and all of them run in one ``lm_eval.simple_evaluate`` call on :class:`LongContextLM`: greedy, batched,
exact when generation crosses L0 on a LongRoPE export, and refusing any prompt longer than the longest
evaluation length. The model is an exported folder (a training-free method's light export, or a
fine-tuned model) read with its own rope parameters, as stock transformers loads it.

Outputs: ``scores.json`` (per task and length: mean score, sample count, or why it was not run) and
``samples.jsonl`` (every sample's prediction, references and score: the tables bootstrap their intervals
from it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from .. import models, progress
from ..artifacts import StageRun
from ..errors import ConfigError
from ..evaluation import harness, ruler

NAME = "ruler"
HELP = "score a model on RULER / needle heat-map / passkey data through lm-eval (scores.json, samples.jsonl)"
CONFIG_KEYS = ("evaluation.batch_size",)
#: arguments naming input artifacts, checked against their producers' manifests before any work
INPUTS = ("model", "data")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="exported model folder (its own rope parameters)")
    p.add_argument("--data", required=True, nargs="+", metavar="DIR",
                   help="ruler-data folders: <task>/<length> (samples.jsonl + task.json), or a <task> folder for "
                        "every length in it")
    p.add_argument("--label", required=True, help="method name written to the scores (e.g. longrope2)")
    p.add_argument("--stage-label", default="training-free", help="training-free / after: row label for tables")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="responses so far, to resume after a kill (keyed by config and inputs; removed on success)")


def data_folders(folder: str | Path) -> list[Path]:
    """The (task, length) folders of one ``--data`` argument: itself when it holds a task.json, else the
    ``<length>/`` folders of a ruler-data task folder, shortest first."""
    folder = Path(folder)
    if (folder / "task.json").is_file():
        return [folder]
    lengths = sorted((p for p in folder.iterdir() if p.name.isdigit() and (p / "task.json").is_file()),
                     key=lambda p: int(p.name)) if folder.is_dir() else []
    if not lengths:
        raise ConfigError("--data", f"{folder} holds no task.json, neither itself nor in <length>/ folders; "
                          "allowed: ruler-data's <task>/<length> or <task> folders")
    return lengths


def read_tasks(folders: list[str]) -> list[dict]:
    """task.json of every data folder (a task folder: of each of its lengths), with its folder; one
    (task, length) may appear once."""
    infos, seen = [], set()
    for folder in (f for given in folders for f in data_folders(given)):
        info = json.loads((folder / "task.json").read_text())
        key = (info["task"], int(info["length"]))
        if key in seen:
            raise ConfigError("--data", f"{info['task']} at {info['length']} is given twice")
        seen.add(key)
        infos.append({**info, "folder": str(folder)})
    return infos


def check_tokenizer(infos: list[dict], tokenizer, model_dir: str) -> None:
    """Data sized with another tokenizer would not fit (or would not be the prompts other methods saw)."""
    have = ruler.tokenizer_fingerprint(tokenizer)
    for info in infos:
        if info["tokenizer"] != have:
            raise ConfigError("--model", f"{model_dir} has another tokenizer ({have}) than the one {info['folder']} was "
                              f"sized with ({info['tokenizer']}); allowed: a model sharing the data's tokenizer")


def make_lm(model, tokenizer, infos: list[dict], batch_size: int):
    """The one lm-eval model of every evaluation: no prompt beyond the longest length is accepted."""
    from ..evaluation.lm import LongContextLM

    lengths = [int(i["length"]) for i in infos if i["not_run"] is None] or [1]
    return LongContextLM(model, tokenizer, max_length=max(lengths), batch_size=batch_size)


def score(lm, infos: list[dict], use_cache: str | None = None) -> tuple[dict, list[dict]]:
    """(scores per task and length, per-sample records) of an lm-eval model on the given data; ``use_cache``
    keeps the responses so far (see :func:`harness.run`)."""
    runnable = [i for i in infos if i["not_run"] is None]
    results: dict = {"tasks": {}, "samples": {}}
    if runnable:
        with tempfile.TemporaryDirectory(prefix="lm-eval-cache-") as cache:  # datasets' Arrow copies: not outputs
            configs = [harness.task_config(i["task"], int(i["length"]), Path(i["folder"]) / "samples.jsonl",
                                           cache_dir=cache) for i in runnable]
            results = harness.run(lm, configs, use_cache=use_cache)
    scores: dict = {}
    records = []
    for info in sorted(infos, key=lambda i: (i["task"], int(i["length"]))):
        task, length = info["task"], int(info["length"])
        cell: dict = {"n": 0, "score": None, "not_run": info["not_run"]}
        if info["not_run"] is None:
            name = harness.task_name(task, length)
            cell.update(n=results["tasks"][name]["n"], score=results["tasks"][name][harness.METRIC])
            for rec in results["samples"][name]:
                records.append({"task": task, "length": length, "index": rec.get("index", rec["doc_id"]),
                                "depth": rec.get("depth"), "score": rec[harness.METRIC],
                                "prediction": rec["prediction"], "references": rec["references"]})
        scores.setdefault(task, {})[str(length)] = cell
    return scores, records


def response_cache(cache_dir: str | None, cfg: dict, inputs: list[str]) -> str | None:
    """The path prefix of this run's response cache; caches of other configs or inputs are set aside."""
    if not cache_dir:
        return None
    from ..artifacts import verify_inputs
    from ..checkpoints import fingerprint

    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    prefix = f"responses-{fingerprint(cfg, verify_inputs(inputs))}"
    for old in folder.glob("responses-*"):
        if not old.name.startswith(prefix):
            progress.write(f"response cache {old.name} belongs to another config or inputs: removed")
            old.unlink()
    return str(folder / prefix)


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    infos = read_tasks(args.data)
    model, tokenizer = models.load_pretrained(args.model)
    check_tokenizer(infos, tokenizer, args.model)
    subset = {**cfg, "label": args.label, "stage": args.stage_label}
    cache = response_cache(args.cache_dir, subset, [args.model, *args.data])
    scores, records = score(make_lm(model, tokenizer, infos, cfg["evaluation"]["batch_size"]), infos, cache)
    result = {"method": args.label, "stage": args.stage_label, "tasks": scores}
    with StageRun("ruler", out, subset, inputs=[args.model, *args.data]) as run_:
        run_.write_json("scores.json", result)
        run_.write_text("samples.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    if cache:
        for done in Path(cache).parent.glob(Path(cache).name + "*"):
            done.unlink()
    for task, cells in scores.items():
        progress.write(f"{args.label} {task}: " + ", ".join(
            f"{L}={'not run' if c['score'] is None else round(c['score'], 3)}" for L, c in cells.items()))
