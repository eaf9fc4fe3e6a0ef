"""LongBench (v1) and MMLU through lm-eval's own task configs, read from local data, never downloaded.

Two suites of Hub-backed lm-eval tasks for real-model experiments (RULER, NIAH and passkey generate their
own data elsewhere):

* ``longbench``: the 16 English LongBench v1 tasks of LongRoPE/LongRoPE2-style tables, lm-eval's
  ``longbench_<dataset>`` tasks (greedy generation, the native metric under the unified name ``score``).
  Suite score: the mean of the 16 task scores (a macro average, as LongBench reports its average).
* ``mmlu``: lm-eval's 57 ``mmlu_<subject>`` tasks, 5-shot (``first_n`` from the ``dev`` split),
  loglikelihood over A/B/C/D. Suite score: lm-eval's ``mmlu`` group ``acc`` (``weight_by_size``: the
  micro average over questions), computed here from the per-sample results.

Data is looked up, before any model work (:func:`check_data`), in this order:

1. ``data_dir``: a local mirror of the Hub dataset repo (``Xnhyacinth/LongBench``, ``cais/mmlu``), i.e. a
   snapshot of the repo's files, e.g. ``hf download --repo-type dataset cais/mmlu --local-dir DIR`` run on a
   machine with the Hub. Assumed layout (what ``push_to_hub(config_name=...)`` writes, and what both repos
   hold as parquet conversions; verified here with ``datasets.load_dataset(DIR, name=<config>)`` on a fake
   mirror of that shape)::

       DIR/README.md                                 YAML front matter: configs: - config_name: <config>
                                                                         data_files: - split: <split>
                                                                                       path: <config>/<split>-*
       DIR/<config>/<split>-00000-of-00001.parquet   one folder per config (LongBench dataset / MMLU subject)

   Only the README's ``configs`` mapping matters (paths such as ``data/<config>/...`` work as well); every
   member config must list the splits lm-eval reads (LongBench ``test``; MMLU ``test`` and ``dev``) and
   its files must exist (Git LFS pointer files of a clone without LFS are refused).
   LongBench rows carry ``context``, ``question``, ``answers`` (list) and ``all_classes`` (list or null),
   as lm-eval's prompts and metrics read them; MMLU rows ``question``, ``subject``, ``choices`` (4),
   ``answer`` (0-3 / class label A-D).
2. the ``datasets`` cache (``HF_DATASETS_CACHE``, or ``cache_dir``): probed by loading ONE member config
   with Hub access switched off, so a machine without network fails in seconds, not after timeouts.

Neither found: :class:`~longrope2.errors.ConfigError` on ``evaluation.<suite>.data_dir`` naming the repo and
the ways to provide it. The run itself (:func:`run_suite`) keeps Hub access off as well.

How lm-eval is made to read the mirror (:func:`task_overrides`): lm-eval 0.4.13 merges the non-group keys
of a *registered* group config into every member task it builds, so a group listing the member tasks with
a group-level ``dataset_path: <DIR>`` makes each member call ``datasets.load_dataset(<DIR>,
name=<its dataset_name>)``. The group is written as one YAML file into a temporary include path next to
lm-eval's own task folder (an inline group dict passed to ``simple_evaluate`` does not work in 0.4.13: its
group keys leak into the member task configs).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, LongRoPE2Error
from ..hub import hub_or_cache

#: every value evaluation.suites accepts; ruler, niah and passkey have their own generated data
ALL_SUITES = ("ruler", "niah", "passkey", "longbench", "mmlu")

LONGBENCH_DATASETS = (
    # single-document QA
    "narrativeqa", "qasper", "multifieldqa_en",
    # multi-document QA
    "hotpotqa", "2wikimqa", "musique",
    # summarization
    "gov_report", "qmsum", "multi_news",
    # few-shot learning
    "trec", "triviaqa", "samsum",
    # synthetic
    "passage_count", "passage_retrieval_en",
    # code
    "lcc", "repobench-p",
)

# the native metric each LongBench task reports next to its unified "score" (lm-eval metrics.py)
LONGBENCH_METRICS = {
    "narrativeqa": "qa_f1_score", "qasper": "qa_f1_score", "multifieldqa_en": "qa_f1_score",
    "hotpotqa": "qa_f1_score", "2wikimqa": "qa_f1_score", "musique": "qa_f1_score",
    "gov_report": "rouge_score", "qmsum": "rouge_score", "multi_news": "rouge_score",
    "trec": "classification_score", "triviaqa": "qa_f1_score", "samsum": "rouge_score",
    "passage_count": "count_score", "passage_retrieval_en": "retrieval_score",
    "lcc": "code_sim_score", "repobench-p": "code_sim_score",
}

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine",
    "college_physics", "computer_security", "conceptual_physics", "econometrics", "electrical_engineering",
    "elementary_mathematics", "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics", "high_school_mathematics",
    "high_school_microeconomics", "high_school_physics", "high_school_psychology", "high_school_statistics",
    "high_school_us_history", "high_school_world_history", "human_aging", "human_sexuality",
    "international_law", "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition", "philosophy",
    "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy",
    "virology", "world_religions",
)


@dataclass(frozen=True)
class Suite:
    """One Hub-backed suite: lm-eval task names and what they read."""

    name: str
    repo: str  # the Hub dataset repo of the tasks' dataset_path
    task_dir: str  # folder under lm_eval/tasks with the member task YAMLs
    configs: dict[str, str]  # lm-eval task name -> dataset_name (config of the repo), in suite order
    splits: tuple[str, ...]  # splits lm-eval reads: test_split (+ fewshot_split)
    num_fewshot: int | None  # None: the task's own default (LongBench: zero-shot prompts)
    metric: str  # the per-sample metric the suite score averages
    weight_by_size: bool  # True: micro average over samples; False: mean of task scores
    gen_kwargs: dict[str, Any] | None = None  # merged into generate_until tasks' generation_kwargs

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.configs)

    @property
    def group(self) -> str:
        """The name of the group :func:`task_overrides` registers (clashes with no lm-eval name)."""
        return f"longrope2_{self.name}"


SUITES: dict[str, Suite] = {
    "longbench": Suite(
        name="longbench", repo="Xnhyacinth/LongBench", task_dir="longbench",
        configs={f"longbench_{d}": d for d in LONGBENCH_DATASETS}, splits=("test",), num_fewshot=None,
        metric="score", weight_by_size=False,
        # lm-eval's YAMLs say `temperature: 1, do_sample: False` (greedy; HF ignores the temperature);
        # LongContextLM refuses any temperature > 0, so make the greedy intent explicit
        gen_kwargs={"temperature": 0.0, "do_sample": False},
    ),
    "mmlu": Suite(
        name="mmlu", repo="cais/mmlu", task_dir="mmlu/default",
        configs={f"mmlu_{s}": s for s in MMLU_SUBJECTS}, splits=("test", "dev"), num_fewshot=5,
        metric="acc", weight_by_size=True,
    ),
}


# --------------------------------------------------------------------------------------------------
# Suites and member tasks
# --------------------------------------------------------------------------------------------------


def get_suite(suite: str) -> Suite:
    """The :class:`Suite` of a name in :data:`SUITES`; one-line :class:`ConfigError` otherwise."""
    if suite not in ALL_SUITES:
        raise ConfigError("evaluation.suites", f"unknown suite {suite!r}; allowed: {', '.join(ALL_SUITES)}")
    if suite not in SUITES:
        raise LongRoPE2Error(f"suite {suite!r} generates its own data: it has its own evaluation stage, not "
                             f"longrope2.evaluation.suites (which runs the Hub-backed {', '.join(SUITES)})")
    return SUITES[suite]


def select_tasks(suite: str, tasks: Sequence[str] | None = None) -> list[str]:
    """lm-eval task names of ``suite``: all (``None``), or a subset named by task (``mmlu_anatomy``) or by
    config (``anatomy``, ``hotpotqa``), kept in suite order."""
    s = get_suite(suite)
    if tasks is None:
        return list(s.tasks)
    if isinstance(tasks, str):
        tasks = [tasks]
    by_config = {c: t for t, c in s.configs.items()}
    chosen, unknown = set(), []
    for t in tasks:
        name = t if t in s.configs else by_config.get(t)
        if name is None:
            unknown.append(t)
        else:
            chosen.add(name)
    if unknown or not chosen:
        raise ConfigError(f"evaluation.{suite}.tasks",
                          f"unknown {suite} tasks {unknown}; allowed: lm-eval task names or configs of "
                          f"{', '.join(s.configs.values())}" if unknown else "no tasks selected")
    return [t for t in s.tasks if t in chosen]


# --------------------------------------------------------------------------------------------------
# Data: a local mirror of the Hub repo, else the datasets cache
# --------------------------------------------------------------------------------------------------


def _how_to_provide(s: Suite) -> str:
    return (f"provide a local mirror dir of it as evaluation.{s.name}.data_dir (on a machine with the Hub: "
            f"`hf download --repo-type dataset {s.repo} --local-dir DIR`), a pre-filled datasets cache "
            f"(HF_DATASETS_CACHE), or leave {s.name} out of evaluation.suites")


def _readme_configs(root: Path) -> dict[str, dict[str, list[str]]] | str:
    """``{config: {split: [path patterns]}}`` from the README.md YAML front matter of a dataset repo, or a
    problem description."""
    import yaml

    readme = root / "README.md"
    if not readme.is_file():
        return "it has no README.md (the dataset card whose `configs:` maps configs to files)"
    lines = readme.read_text(encoding="utf-8").splitlines()
    # the dataset card's metadata: the YAML between a first line `---` and the next `---` line
    end = next((i for i, line in enumerate(lines[1:], 1) if line.rstrip() == "---"), None)
    front = "\n".join(lines[1:end]) if lines and lines[0].rstrip() == "---" and end else None
    try:
        meta = yaml.safe_load(front) if front else None
    except yaml.YAMLError as e:
        return f"its README.md front matter is not YAML ({str(e).splitlines()[0]})"
    configs = (meta or {}).get("configs") if isinstance(meta, dict) else None
    if not isinstance(configs, list):
        return "its README.md declares no `configs:` (keep the dataset card of the Hub repo)"
    out: dict[str, dict[str, list[str]]] = {}
    for c in configs:
        if not isinstance(c, dict) or "config_name" not in c:
            continue
        files = c.get("data_files", {})
        splits: dict[str, list[str]] = {}
        if isinstance(files, (str, list)) and not (isinstance(files, list) and files and isinstance(files[0], dict)):
            splits["train"] = [files] if isinstance(files, str) else list(files)
        elif isinstance(files, dict):
            splits = {k: [v] if isinstance(v, str) else list(v) for k, v in files.items()}
        else:
            for f in files:
                path = f.get("path", [])
                splits.setdefault(str(f.get("split", "train")), []).extend([path] if isinstance(path, str) else path)
        out[str(c["config_name"])] = splits
    return out


def _mirror_problem(s: Suite, root: Path, tasks: list[str]) -> str | None:
    """Why ``root`` cannot serve ``tasks`` of ``s`` (None: it can)."""
    if not root.is_dir():
        return "no such directory"
    configs = _readme_configs(root)
    if isinstance(configs, str):
        return configs
    missing, no_split, no_files, lfs = [], [], [], []
    for task in tasks:
        cfg = s.configs[task]
        if cfg not in configs:
            missing.append(cfg)
            continue
        for split in s.splits:
            patterns = configs[cfg].get(split)
            if not patterns:
                no_split.append(f"{cfg}/{split}")
                continue
            files = [p for pat in patterns if pat for p in sorted(root.glob(pat.lstrip("/"))) if p.is_file()]
            if not files:
                no_files.append(f"{cfg}/{split} ({', '.join(patterns)})")
            for f in files:
                with f.open("rb") as fh:
                    if fh.read(24).startswith(b"version https://git-lfs"):
                        lfs.append(str(f.relative_to(root)))
    problems = []
    if missing:
        problems.append(f"README.md configs lack {_short(missing)}")
    if no_split:
        problems.append(f"configs declare no split {_short(no_split)}")
    if no_files:
        problems.append(f"no data files for {_short(no_files)}")
    if lfs:
        problems.append(f"Git LFS pointers instead of data: {_short(lfs)} "
                        f"(run `git lfs pull`, or download with `hf download`)")
    return "; ".join(problems) or None


def _short(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def check_data(suite: str, data_dir: str | os.PathLike | None, *, tasks: Sequence[str] | None = None,
               cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Where ``suite``'s data comes from, checked before any model work; one-line ConfigError if nowhere.

    ``data_dir`` set: it must be a mirror of the suite's Hub repo holding every selected member config
    (nothing else is tried: a wrong path is an error, not a silent fall-back). Unset: the ``datasets``
    cache (``cache_dir`` or HF_DATASETS_CACHE) must hold the repo, probed by loading the first selected
    config with Hub access off. Returns ``{"suite", "repo", "source": "data_dir" | "cache" | "generated",
    "data_dir", "tasks"}`` ("generated": ruler, niah and passkey, nothing to check here).
    """
    if suite not in ALL_SUITES:
        get_suite(suite)  # raises the unknown-suite error
    if suite not in SUITES:
        return {"suite": suite, "repo": None, "source": "generated", "data_dir": None, "tasks": []}
    s = SUITES[suite]
    selected = select_tasks(suite, tasks)
    key = f"evaluation.{suite}.data_dir"
    if data_dir is not None and str(data_dir) != "":
        root = Path(data_dir).expanduser().resolve()
        problem = _mirror_problem(s, root, selected)
        if problem:
            raise ConfigError(key, f"{root} is not a usable local mirror of the Hub dataset {s.repo}: {problem}; "
                                   f"{_how_to_provide(s)}")
        return {"suite": suite, "repo": s.repo, "source": "data_dir", "data_dir": str(root), "tasks": selected}

    import datasets

    first = s.configs[selected[0]]
    try:
        with hub_or_cache():
            datasets.load_dataset(s.repo, name=first, split=s.splits[0],
                                  cache_dir=None if cache_dir is None else str(cache_dir))
    except Exception as e:  # noqa: BLE001 - any failure means: not usable offline
        where = cache_dir or datasets.config.HF_DATASETS_CACHE
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(key, f"the Hub dataset {s.repo} is not available offline (no data_dir set, and config "
                               f"{first!r} is not in the datasets cache {where}: {reason}); "
                               f"{_how_to_provide(s)}") from None
    return {"suite": suite, "repo": s.repo, "source": "cache", "data_dir": None, "tasks": selected}


# --------------------------------------------------------------------------------------------------
# lm-eval
# --------------------------------------------------------------------------------------------------


def task_overrides(suite: str, data_dir: str | os.PathLike | None, *, tasks: Sequence[str] | None = None,
                   cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The group config that runs ``suite`` through lm-eval's own task configs, reading ``data_dir``.

    A registered group (see :func:`run_suite`) listing the member tasks; its non-group keys are merged
    into every member task config by lm-eval 0.4.13: ``dataset_path`` (the mirror, when given),
    ``dataset_kwargs`` (``cache_dir``, when given) and ``num_fewshot`` (MMLU: 5). The aggregate is the
    suite's (informational: :func:`run_suite` computes the suite score from the per-sample results).
    """
    s = get_suite(suite)
    cfg: dict[str, Any] = {
        "group": s.group,
        "task": select_tasks(suite, tasks),
        "aggregate_metric_list": [{"metric": s.metric, "weight_by_size": s.weight_by_size}],
        "metadata": {"version": 1, "suite": suite, "repo": s.repo},
    }
    if data_dir is not None and str(data_dir) != "":
        cfg["dataset_path"] = str(Path(data_dir).expanduser().resolve())
    if cache_dir is not None:
        cfg["dataset_kwargs"] = {"cache_dir": str(cache_dir)}
    if s.num_fewshot is not None:
        cfg["num_fewshot"] = s.num_fewshot
    return cfg


def _lm_eval_tasks_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


def _finite(x: Any) -> float | None:
    if x is None or x == "N/A":
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def run_suite(lm, suite: str, data_dir: str | os.PathLike | None, *, limit: int | None = None, seed: int = 0,
              tasks: Sequence[str] | None = None, cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Evaluate ``lm`` (an lm-eval ``LM``) on ``suite`` with ``lm_eval.simple_evaluate``; nothing is written.

    ``limit``: first N docs per task; ``seed``: lm-eval's python/numpy/torch/few-shot seeds; ``tasks``: a
    subset (see :func:`select_tasks`). Returns ``{"suite", "repo", "source", "metric", "num_fewshot",
    "limit", "seed", "tasks": {task: {"metric", "score", "stderr", "n"}}, "score", "n", "samples":
    {task: [{"doc_id", "score"}]}}``: ``score`` is the mean of task scores (LongBench) or the micro
    average over all samples (MMLU, lm-eval's ``weight_by_size`` group acc); per-task ``metric`` names the
    native metric (LongBench: its value is lm-eval's unified ``score``).
    """
    s = get_suite(suite)
    source = check_data(suite, data_dir, tasks=tasks, cache_dir=cache_dir)
    group = task_overrides(suite, data_dir, tasks=tasks, cache_dir=cache_dir)

    import lm_eval
    import yaml
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="longrope2-suite-") as tmp, hub_or_cache():
        (Path(tmp) / f"{s.group}.yaml").write_text(yaml.safe_dump(group, sort_keys=False), encoding="utf-8")
        # lm-eval's own member task YAMLs + the group; no scan of the thousands of other bundled tasks
        manager = TaskManager(include_defaults=False, include_path=[str(_lm_eval_tasks_dir() / s.task_dir), tmp])
        res = lm_eval.simple_evaluate(
            model=lm, tasks=[s.group], task_manager=manager, log_samples=True, limit=limit,
            gen_kwargs=dict(s.gen_kwargs) if s.gen_kwargs else None,
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    if res is None:  # non-zero rank under a distributed launcher
        raise LongRoPE2Error(f"lm-eval returned no results for suite {suite} (not rank 0?)")

    out_tasks: dict[str, dict[str, Any]] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    for task in group["task"]:
        raw = res["results"].get(task)
        logged = res.get("samples", {}).get(task)
        if raw is None or logged is None:
            raise LongRoPE2Error(f"suite {suite}: lm-eval returned no results for {task}")
        recs = sorted(({"doc_id": int(x["doc_id"]), "score": float(x[s.metric])} for x in logged),
                      key=lambda r: r["doc_id"])
        samples[task] = recs
        metric = LONGBENCH_METRICS.get(s.configs[task], s.metric) if suite == "longbench" else s.metric
        score = _finite(raw.get(f"{s.metric},none"))
        out_tasks[task] = {"metric": metric,
                           "score": score if score is not None else sum(r["score"] for r in recs) / max(len(recs), 1),
                           "stderr": _finite(raw.get(f"{s.metric}_stderr,none")), "n": len(recs)}
    n = sum(len(r) for r in samples.values())
    if n == 0:
        raise LongRoPE2Error(f"suite {suite}: no samples were evaluated")
    if s.weight_by_size:
        suite_score = sum(r["score"] for recs in samples.values() for r in recs) / n
    else:
        suite_score = sum(t["score"] for t in out_tasks.values()) / len(out_tasks)
    return {"suite": suite, "repo": s.repo, "source": source["source"], "metric": s.metric,
            "num_fewshot": s.num_fewshot or 0, "limit": limit, "seed": seed,
            "tasks": out_tasks, "score": suite_score, "n": n, "samples": samples}


def retention(score: float, base_score: float) -> float:
    """``score / base_score``: the share of the base model's score the extended model keeps."""
    if base_score is None or not base_score > 0:
        raise ValueError(f"retention needs a positive base score, got {base_score!r}")
    return float(score) / float(base_score)
