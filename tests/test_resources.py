"""Job resources (longrope2.resources) with real model shapes, and the SLURM profile's dry run."""

import importlib.util
import json
import re
import warnings

import pytest

from conftest import REPO, snakemake
from longrope2 import config, resources
from longrope2.errors import ConfigError

LLAMA3_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
             "intermediate_size": 14336, "vocab_size": 128256, "tie_word_embeddings": False}
SMOLLM2_135M = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True}
PHI3_MINI = {"hidden_size": 3072, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
             "intermediate_size": 8192, "vocab_size": 32064, "tie_word_embeddings": False}

CPU_STAGES = ("critical-dims", "corpus", "import-model", "needles", "baseline", "export", "ruler-data", "ruler-tables",
              "tables")
ONE_GPU_RULES = ("retrieval", "search", "evaluate_training_free", "evaluate_finetuned", "ruler_training_free",
                 "ruler_finetuned", "suite_training_free", "suite_finetuned")
GPU_RULES = ("finetune", *ONE_GPU_RULES)


def load(experiment=None, extra=None):
    files = [REPO / "config/config.yaml"] + ([REPO / f"config/experiments/{experiment}.yaml"] if experiment else [])
    cfg = config.load_files(files)
    if extra:
        cfg = config.deep_merge(cfg, extra)
    return config.validate(cfg)


def quiet_resources(cfg, imported=None):
    """all_stage_resources, with the 'will not fit' warnings the 80 GB default gives for 128k recorded."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = resources.all_stage_resources(cfg, imported)
    return res, [str(w.message) for w in caught]


@pytest.mark.parametrize("shape, expected", [(LLAMA3_8B, 8.03e9), (SMOLLM2_135M, 1.35e8), (PHI3_MINI, 3.82e9)])
def test_parameter_count_of_real_shapes(shape, expected):
    assert resources.count_parameters(shape) == pytest.approx(expected, rel=0.005)


def test_parameter_count_is_exact_for_llama3_8b():
    # embeddings 525.3M + LM head 525.3M + 32 x 218.1M + final norm
    assert resources.count_parameters(LLAMA3_8B) == 8_030_261_248


def test_imported_config_json_wins_over_declared_size(tmp_path):
    cfg = load("llama3-8b-128k")
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_135M | {"model_type": "llama"}))
    size = resources.model_size(cfg, tmp_path / "config.json")
    assert size == resources.ModelSize(134_515_008, 30, 576, 49152)
    # not imported yet: the experiment's declared size
    assert resources.model_size(cfg, tmp_path / "missing.json").parameters == 8_030_261_248


def test_scale_model_size_from_its_architecture():
    size = resources.model_size(load(), None)
    # 2048 x 128 tied embeddings + 4 layers x (4 x 128 x 256 attention (4 heads of 64) + 3 x 128 x 384 MLP
    # + 2 norms) + norm
    assert size == resources.ModelSize(1_377_408, 4, 128, 2048)


def test_real_model_without_size_is_a_one_line_error():
    cfg = load("llama3-8b-128k")
    del cfg["model"]["size"]
    with pytest.raises(ConfigError) as e:
        resources.all_stage_resources(cfg, None)
    assert e.value.key == "model.size"
    assert "\n" not in str(e.value)
    assert "declare model.size" in str(e.value)


def test_schema_fills_cluster_defaults_and_checks_model_size():
    cfg = load()
    assert cfg["cluster"] == {"gpu_mem_gb": 80, "gpus_per_node": 8, "cpus_per_gpu": 8}
    with pytest.raises(ConfigError, match=r"model\.size\.layers"):
        load("llama3-8b-128k", {"model": {"size": {"layers": "32"}}})


def test_llama3_8b_128k_resources():
    cfg = load("llama3-8b-128k")
    size = resources.model_size(cfg, None)
    res, warned = quiet_resources(cfg)
    n = size.parameters

    # fine-tuning: sharded across GPUs, threads per GPU; host RAM holds at least rank 0's gathered 16 B/param
    ft = res["finetune"]
    assert ft["gpu"] > 1
    assert ft["threads"] == 8 * ft["gpu"]
    assert ft["mem_mb"] * 2**20 >= 16 * n
    # the per-GPU share is 16 B/param divided by the GPU count, the rest (activations, unsharded layers) fixed
    a, b = (resources.finetune_gpu_bytes(cfg, size, g) for g in (2, 4))
    assert a - b == pytest.approx(16 * n / 2 - 16 * n / 4)
    # 128k rows of an 8B model: activations alone (~87 GB per row, fp32 residual checkpoints) exceed 80 GB,
    # so the experiment caps its rows (finetune.row_length) below the longest row the model says fits
    assert not any("finetune" in w for w in warned)
    assert cfg["finetune"]["row_length"] <= resources.longest_row(cfg, size, ft["gpu"]) < 131072
    _, uncapped = quiet_resources(load("llama3-8b-128k", {"finetune": {"row_length": None}}))
    assert any("finetune" in w and "gpu_mem_gb=80" in w for w in uncapped)

    # forward stages: one GPU (the search: one evaluator on each of its GPUs), host RAM for at least the
    # bf16 weights (16 GB)
    for stage in ("search", "evaluate", "retrieval"):
        gpus = cfg["cluster"]["search_gpus"] if stage == "search" else 1
        assert res[stage]["gpu"] == gpus, stage
        assert res[stage]["threads"] == 8 * gpus, stage
        assert res[stage]["mem_mb"] * 2**20 >= 2 * n, stage
    assert res["search"]["runtime"] > res["evaluate"]["runtime"] > resources.RUNTIME_FLOOR_MIN

    for stage in CPU_STAGES:
        assert res[stage]["gpu"] == 0, stage
    # import-model holds the model in fp32 on the CPU
    assert res["import-model"]["mem_mb"] * 2**20 >= 4 * n
    for r in res.values():
        assert all(isinstance(v, int) and v >= 0 for v in r.values())
        assert r["runtime"] >= resources.RUNTIME_FLOOR_MIN and r["threads"] >= 1 and r["mem_mb"] > 0


def test_finetune_takes_the_fewest_gpus_that_fit():
    cfg = load("llama3-8b-128k", {"cluster": {"gpu_mem_gb": 141}, "finetune": {"row_length": None}})  # H200
    del cfg["cluster"]["finetune_gpus"]  # the experiment fixes 8; here the model chooses
    size = resources.model_size(cfg, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fits: no warning
        g = resources.stage_resources("finetune", cfg, size)["gpu"]
    usable = 141e9 * (1 - resources.GPU_RESERVE)
    assert g == 4
    assert resources.finetune_gpu_bytes(cfg, size, g) <= usable < resources.finetune_gpu_bytes(cfg, size, g - 1)
    # a shorter target needs fewer GPUs
    short = load("llama3-8b-128k", {"cluster": {"gpu_mem_gb": 141},
                                      "extension": {"target_length": 32768, "methods": ["pi", "longrope2"], "fixed_factors": None},
                                      "evaluation": {"lengths": [4096, 32768]},
                                      "finetune": {"row_length": None, "methods": ["pi", "longrope2"]}})
    del short["cluster"]["finetune_gpus"]
    assert resources.stage_resources("finetune", short, size)["gpu"] < g


def test_smollm2_runs_on_one_gpu_per_job():
    res, warned = quiet_resources(load("smollm2-32k"))
    assert not warned
    assert {s: res[s]["gpu"] for s in ("retrieval", "search", "finetune", "evaluate")} == dict.fromkeys(
        ("retrieval", "search", "finetune", "evaluate"), 1)
    assert all(res[s]["gpu"] == 0 for s in CPU_STAGES)


def test_default_scale_experiment_runs_on_cpu_with_todays_threads():
    res, warned = quiet_resources(load())
    assert not warned
    assert all(r["gpu"] == 0 for r in res.values())
    assert {s: res[s]["threads"] for s in resources.STAGES} == {
        "critical-dims": 1, "corpus": 2, "import-model": 2, "pretrain": 2, "retrieval": 1, "needles": 1,
        "search": 1, "baseline": 1, "export": 1, "finetune": 1, "evaluate": 1, "ruler-data": 1, "ruler": 1,
        "suite": 1, "ruler-tables": 1, "tables": 1}
    # a 1.1M-parameter model: a few GB at most, and the time floor for all but pretraining (13 min measured)
    assert all(r["mem_mb"] <= 4000 for r in res.values())
    assert res["pretrain"]["runtime"] >= 15


def test_rule_names_are_accepted():
    cfg = load("llama3-8b-128k")
    size = resources.model_size(cfg, None)
    res, _ = quiet_resources(cfg)
    assert res["evaluate_training_free"] == res["evaluate"]
    assert resources.stage_resources("evaluate_finetuned", cfg, size) == resources.stage_resources("evaluate", cfg, size)
    assert resources.stage_resources("table_finetune", cfg, size) == resources.stage_resources("tables", cfg, size)
    with pytest.raises(ValueError, match="unknown stage"):
        resources.stage_resources("train", cfg, size)


# --- the SLURM profile ------------------------------------------------------------------------------------
def dry_run_jobs(stdout: str) -> list[tuple[str, dict]]:
    """(rule, resources + threads) of every job block of a dry run's output (no threads line: 1)."""
    jobs = []
    for block in re.split(r"^(?=(?:local)?rule \w+:)", stdout, flags=re.M)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        res = re.search(r"^\s+resources: (.*)$", block, flags=re.M)
        threads = re.search(r"^\s+threads: (\d+)$", block, flags=re.M)
        jobs.append((rule, dict(re.findall(r"(\w+)=([^,]*)", res.group(1) if res else ""))
                     | {"threads": threads.group(1) if threads else "1"}))
    return jobs


@pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
                    reason="snakemake-executor-plugin-slurm is not installed")
def test_slurm_profile_dry_run_requests(workdir):
    """Every job of the 128k Llama experiment asks SLURM for what longrope2.resources computes."""
    # a dry run caps threads at --cores (1 unless given); a SLURM run does not
    proc = snakemake("--profile", "profiles/slurm", "-n", "--cores", "1024",
                     "--configfile", "config/experiments/llama3-8b-128k.yaml", cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cfg = load("llama3-8b-128k")
    expected, _ = quiet_resources(cfg)
    jobs = [(r, res) for r, res in dry_run_jobs(proc.stdout) if r != "all"]
    assert {r for r, _ in jobs} >= {"import_model", "search", "finetune", "evaluate_training_free", "evaluate_finetuned"}
    for rule, res in jobs:
        stage = resources.ALIASES.get(rule, rule)
        gpu = int(res.get("gpu", 0))
        if rule == "finetune":
            assert gpu >= 2, (rule, res)
            assert int(res["nodes"]) == expected[stage]["nodes"] == 1, (rule, res)
        elif rule == "search":
            assert gpu == cfg["cluster"]["search_gpus"] > 1, (rule, res)
        elif rule in ONE_GPU_RULES:
            assert gpu == 1, (rule, res)
        else:
            assert gpu == 0, (rule, res)
        assert res.get("slurm_partition") == ("gpu" if rule in GPU_RULES else "cpu"), (rule, res)
        assert "cpus_per_task" not in res, (rule, res)
        assert int(res["mem_mb"]) == expected[stage]["mem_mb"], (rule, res)
        assert int(res["runtime"]) == expected[stage]["runtime"], (rule, res)
        assert int(res["threads"]) == expected[stage]["threads"], (rule, res)


def test_profile_sets_no_cpus_per_task_and_retries():
    import yaml

    prof = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert prof["executor"] == "slurm" and prof["retries"] >= 1
    assert "cpus_per_task" not in prof["default-resources"]
    assert all("cpus_per_task" not in v for v in prof["set-resources"].values())
    gpu_rules = {r for r, v in prof["set-resources"].items() if v["slurm_partition"] == "gpu"}
    assert gpu_rules == set(GPU_RULES)
