"""RULER scored through lm-eval with NVIDIA's metrics: one local task per (task, length), run offline.

lm-eval's own ``ruler`` tasks synthesize their data at run time (partly from the Hub and over HTTP) and
give ``string_match_part`` partial credit. Here the data is the pre-generated JSONL of one (task, length),
registered as an inline task config (no YAML, no task index, no network), and a sample is scored as
NVIDIA/RULER's ``scripts/eval`` scores it, as a fraction (NVIDIA reports percent).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

from ..errors import LongRoPE2Error

METRIC = "score"  # the one metric of every RULER task config
FIELDS = ("index", "task", "length", "input", "gen_prefix", "outputs", "max_new_tokens", "metric")
_CONTROL = re.compile(r"[\x00-\x1f]")


# --------------------------------------------------------------------------------------------------
# NVIDIA's metrics
# --------------------------------------------------------------------------------------------------


def postprocess_pred(pred: str) -> str:
    """NVIDIA's ``postprocess_pred``: strip, turn control characters (\\x00-\\x1f) into newlines, strip again."""
    return _CONTROL.sub("\n", pred.strip()).strip()


def _references(refs: str | Iterable[str]) -> list[str]:
    refs = [refs] if isinstance(refs, str) else list(refs)
    if not refs:
        raise LongRoPE2Error("RULER sample: outputs is empty (no reference to score against)")
    return refs


def string_match_all(pred: str, refs: str | Iterable[str]) -> float:
    """Fraction of the references found in the prediction, case-insensitive (NIAH, VT, CWE, FWE)."""
    refs = _references(refs)
    pred = postprocess_pred(pred).lower()
    return sum(r.lower() in pred for r in refs) / len(refs)


def string_match_part(pred: str, refs: str | Iterable[str]) -> float:
    """1 if any reference is found in the prediction, case-insensitive, else 0 (QA).

    lm-eval's variant divides by the number of references (partial credit); NVIDIA's does not."""
    refs = _references(refs)
    pred = postprocess_pred(pred).lower()
    return float(any(r.lower() in pred for r in refs))


_INTEGER = re.compile(r"\d+")


def first_integer_match(pred: str, refs: str | Iterable[str]) -> float:
    """1 if the first integer in the prediction is a reference (passkey: "12345" in "123456" is no match)."""
    refs = _references(refs)
    found = _INTEGER.search(postprocess_pred(pred))
    return float(found is not None and found.group() in refs)


METRICS = {"all": string_match_all, "part": string_match_part, "number": first_integer_match}


def score(doc: dict, pred: str) -> float:
    """One sample's score under the metric its doc names."""
    fn = METRICS.get(doc.get("metric"))
    if fn is None:
        raise LongRoPE2Error(f"RULER sample {doc.get('task')}/{doc.get('length')} #{doc.get('index')}: metric must be "
                             f"one of {sorted(METRICS)}, got {doc.get('metric')!r}")
    return fn(pred, doc["outputs"])


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """lm-eval ``process_results``: ``results`` holds the one (filtered) generation of ``doc``."""
    return {METRIC: score(doc, results[0])}


# --------------------------------------------------------------------------------------------------
# lm-eval task configs
# --------------------------------------------------------------------------------------------------


def task_name(task: str, length: int) -> str:
    """``ruler_<task>_<length>``, e.g. ``ruler_niah_single_1_4096``."""
    return f"ruler_{task.removeprefix('ruler_')}_{int(length)}"


def read_samples(jsonl_path: str | Path, task: str | None = None, length: int | None = None) -> list[dict]:
    """The samples of one RULER JSONL file, checked against the data contract (one-line errors)."""
    path = Path(jsonl_path)
    if not path.is_file():
        raise LongRoPE2Error(f"RULER data: {path} does not exist")
    docs = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                raise LongRoPE2Error(f"RULER data: {path}:{n} is not JSON ({e})") from None
            missing = [k for k in FIELDS if k not in doc]
            if missing:
                raise LongRoPE2Error(f"RULER data: {path}:{n} lacks {', '.join(missing)}")
            if task is not None and doc["task"] != task or length is not None and int(doc["length"]) != int(length):
                raise LongRoPE2Error(f"RULER data: {path}:{n} is {doc['task']}/{doc['length']}, expected {task}/{length}")
            if doc["metric"] not in METRICS or not isinstance(doc["outputs"], list) or not doc["outputs"]:
                raise LongRoPE2Error(f"RULER data: {path}:{n} needs metric in {sorted(METRICS)} and a non-empty outputs list")
            docs.append(doc)
    if not docs:
        raise LongRoPE2Error(f"RULER data: {path} holds no samples")
    return docs


def task_config(task: str, length: int, jsonl_path: str | Path, *, name: str | None = None,
                cache_dir: str | Path | None = None) -> dict[str, Any]:
    """An inline lm-eval task config for one (task, length) JSONL file, for ``simple_evaluate(tasks=[...])``.

    The model sees ``input + gen_prefix`` exactly (``target_delimiter`` "" so lm-eval adds no space
    between them; no chat template) and decodes greedily for the file's ``max_new_tokens`` with no stop
    strings. ``cache_dir`` is where ``datasets`` keeps its Arrow copy of the file (default: its own cache).
    """
    path = Path(jsonl_path).resolve()
    docs = read_samples(path, task, length)
    max_new = {int(d["max_new_tokens"]) for d in docs}
    if len(max_new) != 1:
        raise LongRoPE2Error(f"RULER data: {path} mixes max_new_tokens {sorted(max_new)}; one (task, length) file needs one")
    dataset_kwargs: dict[str, Any] = {"data_files": {"test": str(path)}}
    if cache_dir is not None:
        dataset_kwargs["cache_dir"] = str(cache_dir)
    return {
        "task": name or task_name(task, length),
        "dataset_path": "json",  # datasets' packaged JSON builder: local files, no Hub
        "dataset_name": None,
        "dataset_kwargs": dataset_kwargs,
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "input",
        "doc_to_target": "outputs",
        "gen_prefix": "gen_prefix",
        "target_delimiter": "",
        "num_fewshot": 0,
        # an empty few-shot pool: otherwise lm-eval copies the whole test split into a list for its sampler
        "fewshot_config": {"samples": []},
        "process_results": process_results,
        "metric_list": [{"metric": METRIC, "aggregation": "mean", "higher_is_better": True}],
        "generation_kwargs": {"do_sample": False, "temperature": 0.0, "max_gen_toks": max_new.pop(), "until": []},
        "metadata": {"version": 1, "ruler_task": task, "length": int(length)},
    }


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------

_DOC_KEYS = ("index", "task", "length", "depth", "metric", "prompt_tokens")


def _metrics(raw: dict) -> dict[str, Any]:
    """``{"score,none": x, "score_stderr,none": "N/A"}`` -> ``{"score": x, "score_stderr": None}``."""
    out = {k.split(",")[0]: (None if v == "N/A" else v) for k, v in raw.items() if "," in k}
    out["n"] = raw.get("sample_len")
    return out


def _record(sample: dict) -> dict[str, Any]:
    """A logged lm-eval sample without its prompt: prediction, references, metric values (+ RULER fields)."""
    doc = sample.get("doc") or {}
    preds = sample["filtered_resps"]
    rec = {"doc_id": sample["doc_id"], **{k: doc[k] for k in _DOC_KEYS if k in doc},
           "prediction": preds[0] if len(preds) == 1 else preds, "references": sample["target"]}
    rec.update({m: sample[m] for m in sample["metrics"]})
    return rec


def run(lm, tasks: list[dict | str], log_samples: bool = True, *, task_manager=None, limit: int | None = None,
        use_cache: str | None = None) -> dict:
    """``lm_eval.simple_evaluate`` over ``tasks`` (inline configs; names need a ``task_manager`` that knows them).

    Returns ``{"tasks": {name: {"score": ..., "score_stderr": ..., "n": ...}}, "samples": {name: [record]}}``
    (plus ``groups`` for group tasks); nothing is written to disk but ``datasets``' cache and, with
    ``use_cache`` (a path prefix; lm-eval appends ``_rank0.db``), the responses so far: the LM reports each
    batch as it finishes, so a killed run resumes where it stopped. The cache is keyed by prompt only:
    give every (model, data) its own path.
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    names = [t["task"] if isinstance(t, dict) else str(t) for t in tasks]
    if len(set(names)) != len(names):
        raise LongRoPE2Error(f"lm-eval tasks: duplicate task names {sorted({n for n in names if names.count(n) > 1})}")
    # inline configs need no task index: skip scanning lm-eval's thousands of bundled YAML files
    task_manager = task_manager or TaskManager(include_defaults=False)
    res = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=task_manager, log_samples=log_samples,
                                  limit=limit, use_cache=use_cache)
    out: dict[str, Any] = {"tasks": {n: _metrics(m) for n, m in res["results"].items()},
                           "samples": {n: sorted((_record(s) for s in ss), key=lambda r: r["doc_id"])
                                       for n, ss in res.get("samples", {}).items()}}
    if res.get("groups"):
        out["groups"] = {n: _metrics(m) for n, m in res["groups"].items()}
    return out
