"""LongBench and MMLU suites: up-front data checks, local-mirror overrides, scores from fake mirrors (offline)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from lm_eval.api.model import LM
from transformers import AutoModelForCausalLM, LlamaConfig

from longrope2.errors import ConfigError, LongRoPE2Error
from longrope2.evaluation import suites
from longrope2.evaluation.lm import LongContextLM
from test_lm_eval import char_tokenizer

LM_EVAL_TASKS = Path(__import__("lm_eval").__file__).parent / "tasks"


# --------------------------------------------------------------------------------------------------
# fake mirrors in the layout of a Hub snapshot: README.md `configs:` + <config>/<split>-00000-of-00001.parquet
# --------------------------------------------------------------------------------------------------


def write_mirror(root: Path, tables: dict[str, dict[str, list[dict]]], schema: pa.Schema) -> Path:
    card = {"configs": []}
    for config, splits in tables.items():
        (root / config).mkdir(parents=True, exist_ok=True)
        files = []
        for split, rows in splits.items():
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / config / f"{split}-00000-of-00001.parquet")
            files.append({"split": split, "path": f"{config}/{split}-*"})
        card["configs"].append({"config_name": config, "data_files": files})
    (root / "README.md").write_text("---\n" + yaml.safe_dump(card, sort_keys=False) + "---\n# fake mirror\n")
    return root


MMLU_SCHEMA = pa.schema([("question", pa.string()), ("subject", pa.string()), ("choices", pa.list_(pa.string())),
                         ("answer", pa.int64())])
MMLU_TEST = {"anatomy": 3, "astronomy": 1}  # unequal sizes: the micro average differs from the task mean


def mmlu_rows(subject, split, n):
    return [{"question": f"{subject} {split} question {i}?", "subject": subject,
             "choices": [f"{subject} choice {j}" for j in range(4)], "answer": (i + 1) % 4} for i in range(n)]


@pytest.fixture(scope="module")
def mmlu_mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("cais_mmlu")
    tables = {s: {"test": mmlu_rows(s, "test", n), "validation": mmlu_rows(s, "validation", 1),
                  "dev": mmlu_rows(s, "dev", 5)} for s, n in MMLU_TEST.items()}
    return write_mirror(root, tables, MMLU_SCHEMA)


LB_SCHEMA = pa.schema([("context", pa.string()), ("question", pa.string()), ("answers", pa.list_(pa.string())),
                       ("length", pa.int64()), ("dataset", pa.string()), ("language", pa.string()),
                       ("all_classes", pa.list_(pa.string())), ("_id", pa.string())])
TREC_CLASSES = ["Location", "Number", "Person", "Abbreviation"]


@pytest.fixture(scope="module")
def longbench_mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("longbench")
    count = [{"context": f"Paragraph 1: alpha.\nParagraph 2: beta.\nParagraph 3: alpha.{' gamma.' * i}",
              "question": "", "answers": [str(2 + i)], "length": 9, "dataset": "passage_count", "language": "en",
              "all_classes": None, "_id": f"pc{i}"} for i in range(2)]
    trec = [{"context": "Question: Where is Paris?\nType: Location\nQuestion: How many legs?\nType: Number",
             "question": f"Question: Who wrote book {i}?\nType:", "answers": [TREC_CLASSES[i % 4]], "length": 12,
             "dataset": "trec", "language": "en", "all_classes": TREC_CLASSES, "_id": f"trec{i}"} for i in range(3)]
    return write_mirror(root, {"passage_count": {"test": count}, "trec": {"test": trec}}, LB_SCHEMA)


# --------------------------------------------------------------------------------------------------
# models: an MMLU loglikelihood oracle, and LongContextLM with a scripted decoding step
# --------------------------------------------------------------------------------------------------


class LetterLM(LM):
    """Prefers the letter ``pick(doc)`` (the gold one for the oracle) in every A/B/C/D loglikelihood request."""

    def __init__(self, pick):
        super().__init__()
        self.pick = pick
        self.contexts = []

    def loglikelihood(self, requests, disable_tqdm=False):
        out = []
        for req in requests:
            context, continuation = req.args
            self.contexts.append(context)
            out.append((0.0 if continuation.strip() == "ABCD"[self.pick(req.doc)] else -5.0, False))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError

    def generate_until(self, requests, disable_tqdm=False):
        raise NotImplementedError


class DocAnswerLM(LongContextLM):
    """LongContextLM (its request checks, greedy-only generation kwargs, stop handling) whose decoding step
    writes ``answer(doc)`` for the doc of each prompt instead of running the model."""

    def __init__(self, answer, **kw):
        tok = char_tokenizer()
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, bos_token_id=1, eos_token_id=2,
                          pad_token_id=0, max_position_embeddings=4096,
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
        torch.manual_seed(0)
        super().__init__(AutoModelForCausalLM.from_config(cfg).eval(), tok, max_length=4096, **kw)
        self.answer = answer
        self.gen_kwargs = []

    def generate_until(self, requests, disable_tqdm=False):
        self._docs = {tuple(self.tok_encode(r.args[0])): r.doc for r in requests}
        self.gen_kwargs += [dict(r.args[1]) for r in requests]
        return super().generate_until(requests, disable_tqdm=True)

    def _generate(self, prompts, max_new_tokens, untils):
        rows = [self.tokenizer.encode(self.answer(self._docs[tuple(p)]), add_special_tokens=False) for p in prompts]
        return [(r + [self.eot_token_id])[:max_new_tokens] for r in rows]


# --------------------------------------------------------------------------------------------------
# suites and errors
# --------------------------------------------------------------------------------------------------


def test_suites_are_lm_eval_own_tasks():
    """Every member is an installed lm-eval task YAML reading the declared repo and config."""
    assert suites.ALL_SUITES == ("ruler", "niah", "passkey", "longbench", "mmlu")
    assert set(suites.SUITES) == {"longbench", "mmlu"}
    lb, mmlu = suites.SUITES["longbench"], suites.SUITES["mmlu"]
    assert len(lb.tasks) == 16 and lb.repo == "Xnhyacinth/LongBench" and lb.num_fewshot is None
    assert len(mmlu.tasks) == 57 and mmlu.repo == "cais/mmlu" and mmlu.num_fewshot == 5
    assert {p.stem for p in (LM_EVAL_TASKS / "mmlu/default").glob("mmlu_*.yaml")} == set(mmlu.tasks)
    template = yaml.safe_load((LM_EVAL_TASKS / "mmlu/default/_default_template_yaml").read_text())
    assert (template["dataset_path"], template["test_split"], template["fewshot_split"]) == ("cais/mmlu", "test", "dev")
    for task, config in mmlu.configs.items():
        assert f'"dataset_name": "{config}"' in (LM_EVAL_TASKS / "mmlu/default" / f"{task}.yaml").read_text()
    for task, config in lb.configs.items():
        text = (LM_EVAL_TASKS / "longbench" / f"{config}.yaml").read_text()
        assert f"task: {task}\n" in text and f"dataset_name: {config}\n" in text
        assert "dataset_path: Xnhyacinth/LongBench\n" in text and "test_split: test\n" in text
        assert f"metrics.get_{suites.LONGBENCH_METRICS[config].removesuffix('_score')}_with_score" in text


def test_unknown_suite_is_one_line():
    with pytest.raises(ConfigError) as e:
        suites.check_data("x", None)
    msg = str(e.value)
    assert msg.startswith("evaluation.suites: unknown suite 'x'; allowed: ") and "\n" not in msg
    for name in suites.ALL_SUITES:
        assert name in msg
    with pytest.raises(ConfigError, match="^evaluation.suites: unknown suite 'x'"):
        suites.run_suite(None, "x", None)
    assert suites.check_data("ruler", None)["source"] == "generated"
    with pytest.raises(LongRoPE2Error, match="generates its own data"):
        suites.task_overrides("passkey", None)
    with pytest.raises(ConfigError, match=r"^evaluation.mmlu.tasks: unknown mmlu tasks \['nope'\]"):
        suites.select_tasks("mmlu", ["anatomy", "nope"])
    assert suites.select_tasks("mmlu", ["astronomy", "mmlu_anatomy"]) == ["mmlu_anatomy", "mmlu_astronomy"]


def test_absent_data_fails_fast_naming_the_repo(tmp_path):
    """Empty caches, no data_dir, Hub offline mode NOT set by the caller: a one-line error within seconds."""
    unset = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_DATASETS_CACHE=str(tmp_path / "hf/datasets"),
               HF_HUB_CACHE=str(tmp_path / "hf/hub"))
    code = ("import json\nfrom longrope2.errors import ConfigError\n"
            "from longrope2.evaluation.suites import check_data\n"
            "out = {}\nfor s in ('longbench', 'mmlu'):\n    try:\n        check_data(s, None)\n"
            "    except ConfigError as e:\n        out[s] = [e.key, str(e)]\nprint(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    for suite, repo in (("longbench", "Xnhyacinth/LongBench"), ("mmlu", "cais/mmlu")):
        key, msg = errors[suite]
        assert key == f"evaluation.{suite}.data_dir" and msg.startswith(f"evaluation.{suite}.data_dir: ")
        assert "\n" not in msg and repo in msg
        assert f"hf download --repo-type dataset {repo} --local-dir DIR" in msg
        assert "datasets cache" in msg and "evaluation.suites" in msg
    assert not (tmp_path / "hf/hub").exists() or not any((tmp_path / "hf/hub").iterdir())


def test_bad_mirrors_are_named(tmp_path, mmlu_mirror):
    with pytest.raises(ConfigError, match=r"^evaluation.mmlu.data_dir: .*nope is not a usable local mirror of the "
                                          r"Hub dataset cais/mmlu: no such directory; .*hf download"):
        suites.check_data("mmlu", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no README.md"):
        suites.check_data("mmlu", tmp_path / "empty")
    # the full suite needs all 57 subjects; the mirror holds two
    with pytest.raises(ConfigError, match=r"README.md configs lack abstract_algebra, business_ethics, .* and 50 more"):
        suites.check_data("mmlu", mmlu_mirror)
    got = suites.check_data("mmlu", mmlu_mirror, tasks=list(MMLU_TEST))
    assert got == {"suite": "mmlu", "repo": "cais/mmlu", "source": "data_dir", "data_dir": str(mmlu_mirror.resolve()),
                   "tasks": ["mmlu_anatomy", "mmlu_astronomy"]}
    # a clone without git-lfs, and a config whose dev split is missing
    broken = write_mirror(tmp_path / "broken", {"anatomy": {"test": mmlu_rows("anatomy", "test", 1)},
                                                "astronomy": {"test": [], "dev": []}}, MMLU_SCHEMA)
    (broken / "astronomy/test-00000-of-00001.parquet").write_text("version https://git-lfs.github.com/spec/v1\noid x\n")
    with pytest.raises(ConfigError) as e:
        suites.check_data("mmlu", broken, tasks=list(MMLU_TEST))
    assert "configs declare no split anatomy/dev" in str(e.value) and "Git LFS pointers" in str(e.value)
    assert "\n" not in str(e.value)


def test_task_overrides_reach_the_mirror(mmlu_mirror, tmp_path):
    cfg = suites.task_overrides("mmlu", mmlu_mirror, tasks=["anatomy"], cache_dir=tmp_path)
    assert cfg == {"group": "longrope2_mmlu", "task": ["mmlu_anatomy"],
                   "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
                   "metadata": {"version": 1, "suite": "mmlu", "repo": "cais/mmlu"},
                   "dataset_path": str(mmlu_mirror.resolve()), "dataset_kwargs": {"cache_dir": str(tmp_path)},
                   "num_fewshot": 5}
    lb = suites.task_overrides("longbench", None)
    assert "dataset_path" not in lb and "num_fewshot" not in lb and len(lb["task"]) == 16


def test_retention():
    assert suites.retention(0.45, 0.5) == pytest.approx(0.9)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError):
            suites.retention(0.5, bad)


# --------------------------------------------------------------------------------------------------
# end to end through lm_eval.simple_evaluate on the fake mirrors
# --------------------------------------------------------------------------------------------------


def test_mmlu_oracle_contrary_and_micro_average(mmlu_mirror, tmp_path):
    kw = dict(tasks=list(MMLU_TEST), cache_dir=tmp_path / "datasets")
    oracle = LetterLM(lambda doc: doc["answer"])
    res = suites.run_suite(oracle, "mmlu", mmlu_mirror, **kw)
    assert res["suite"] == "mmlu" and res["source"] == "data_dir" and res["num_fewshot"] == 5
    assert res["score"] == 1.0 and res["n"] == 4
    assert res["tasks"]["mmlu_anatomy"] == {"metric": "acc", "score": 1.0, "stderr": 0.0, "n": 3}
    assert {k: v for k, v in res["tasks"]["mmlu_astronomy"].items() if k != "stderr"} == {"metric": "acc", "score": 1.0,
                                                                                        "n": 1}
    assert res["samples"]["mmlu_anatomy"] == [{"doc_id": i, "score": 1.0} for i in range(3)]
    # 5-shot from the mirror's dev split (first_n), then the test question
    ctx = oracle.contexts[0]
    assert ctx.count("Answer:") == 6 and all(f"anatomy dev question {i}?" in ctx for i in range(5))
    assert "validation" not in ctx and "anatomy test question" in ctx.split("Answer:")[-2]

    contrary = suites.run_suite(LetterLM(lambda doc: (doc["answer"] + 1) % 4), "mmlu", mmlu_mirror, **kw)
    assert contrary["score"] == 0.0 and {t["score"] for t in contrary["tasks"].values()} == {0.0}

    # right on anatomy only: micro average 3/4 (lm-eval's weight_by_size), not the task mean 1/2
    anatomy_only = LetterLM(lambda doc: doc["answer"] if doc["subject"] == "anatomy" else (doc["answer"] + 1) % 4)
    half = suites.run_suite(anatomy_only, "mmlu", mmlu_mirror, **kw)
    assert half["score"] == pytest.approx(0.75)
    assert suites.retention(half["score"], res["score"]) == pytest.approx(0.75)
    limited = suites.run_suite(oracle, "mmlu", mmlu_mirror, limit=2, seed=3, **kw)
    assert limited["n"] == 3 and limited["seed"] == 3 and limited["limit"] == 2


def test_prefilled_datasets_cache_is_the_fallback(mmlu_mirror, tmp_path):
    """No data_dir: a datasets cache holding cais/mmlu's configs serves check_data and the run, Hub off."""
    import datasets

    cache, mirror = tmp_path / "datasets", tmp_path / "mmlu"  # Arrow files are named after the dataset: mmlu-test.arrow
    shutil.copytree(mmlu_mirror, mirror)
    for subject in MMLU_TEST:  # build the Arrow cache from the mirror, then file it under the repo's name
        datasets.load_dataset(str(mirror), name=subject, cache_dir=str(cache))
    (built,) = [p for p in cache.iterdir() if p.is_dir()]
    built.rename(cache / "cais___mmlu")
    assert suites.check_data("mmlu", None, tasks=list(MMLU_TEST), cache_dir=cache)["source"] == "cache"
    res = suites.run_suite(LetterLM(lambda doc: doc["answer"]), "mmlu", None, tasks=list(MMLU_TEST), cache_dir=cache)
    assert res["source"] == "cache" and res["score"] == 1.0 and res["n"] == 4


def test_hub_offline_is_restored(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    from longrope2 import hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with hub.offline():
        assert datasets.config.HF_HUB_OFFLINE and huggingface_hub.constants.is_offline_mode()
        assert os.environ["HF_HUB_OFFLINE"] == os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert not datasets.config.HF_HUB_OFFLINE and not huggingface_hub.constants.HF_HUB_OFFLINE
    assert "HF_HUB_OFFLINE" not in os.environ and "HF_DATASETS_OFFLINE" not in os.environ
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: unreachable, so cache only
    assert not hub.hub_reachable(timeout=0.5)
    with hub.hub_or_cache():
        assert datasets.config.HF_HUB_OFFLINE
    assert not datasets.config.HF_HUB_OFFLINE


def test_longbench_oracle_and_contrary(longbench_mirror, tmp_path):
    kw = dict(tasks=["passage_count", "trec"], cache_dir=tmp_path / "datasets")
    oracle = DocAnswerLM(lambda doc: doc["answers"][0])
    res = suites.run_suite(oracle, "longbench", longbench_mirror, **kw)
    assert res["score"] == 1.0 and res["n"] == 5 and res["num_fewshot"] == 0
    assert {t: (v["metric"], v["score"], v["n"]) for t, v in res["tasks"].items()} == {
        "longbench_passage_count": ("count_score", 1.0, 2), "longbench_trec": ("classification_score", 1.0, 3)}
    assert res["samples"]["longbench_trec"] == [{"doc_id": i, "score": 1.0} for i in range(3)]
    # lm-eval's own generation settings, made explicitly greedy for LongContextLM
    settings = {(g["max_gen_toks"], g["temperature"], g["do_sample"]) for g in oracle.gen_kwargs}
    assert settings == {(32, 0.0, False), (64, 0.0, False)}

    wrong = DocAnswerLM(lambda doc: "Person" if doc["all_classes"] else "99")
    bad = suites.run_suite(wrong, "longbench", longbench_mirror, **kw)
    # trec docs 0..2 have gold Location, Number, Person: only doc 2 is right
    assert bad["tasks"]["longbench_passage_count"]["score"] == 0.0
    assert bad["tasks"]["longbench_trec"]["score"] == pytest.approx(1 / 3)
    assert bad["score"] == pytest.approx((0.0 + 1 / 3) / 2)  # mean of task scores, not of samples (1/5)
