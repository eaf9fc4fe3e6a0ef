"""`longrope2 plan` (per-stage jobs, GPUs, GPU-hours, disk from longrope2.resources), the fine-tuning
launcher (torchrun on one node, srun + torchrun across nodes) and the longest-row estimate."""

import re
import warnings

import pytest

from conftest import REPO, run_cli
from longrope2 import config, plan, resources

EXPERIMENTS = [None, "llama3-8b-128k", "phi3-mini-128k"]


def load(experiment=None, extra=None):
    files = [REPO / "config/config.yaml"] + ([REPO / f"config/experiments/{experiment}.yaml"] if experiment else [])
    cfg = config.load_files(files)
    return config.validate(config.deep_merge(cfg, extra) if extra else cfg)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_plan_rows_are_resources_numbers(experiment):
    cfg = load(experiment)
    size = resources.model_size(cfg, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = plan.plan(cfg)
        for r in rows:
            res = resources.stage_resources(r.stage, cfg, size)
            assert (r.gpus, r.nodes, r.hours) == (res["gpu"], res["nodes"], res["runtime"] / 60)
            assert r.gpu_hours == pytest.approx(r.jobs * res["gpu"] * res["runtime"] / 60)
            assert r.kept == pytest.approx(r.jobs * resources.stage_disk(r.stage, cfg, size)["kept"])
    assert {r.stage for r in rows} <= set(resources.STAGES)
    if experiment:  # a real model: the fine-tuning export is the model in fp32, its checkpoints 2 x 12 B/param
        ft = next(r for r in rows if r.stage == "finetune")
        assert ft.kept == pytest.approx(ft.jobs * 4 * size.parameters)
        assert ft.scratch == pytest.approx(2 * resources.CKPT_BYTES * size.parameters)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_plan_cli_prints_the_table_and_totals(experiment):
    files = ["config/config.yaml"] + ([f"config/experiments/{experiment}.yaml"] if experiment else [])
    out = run_cli("plan", "--config", *files, cwd=REPO).stdout
    cfg = load(experiment)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = plan.plan(cfg)
    total = re.search(r"^total\s+(\d+)\s+([\d.]+)", out, flags=re.M)
    assert int(total.group(1)) == sum(r.jobs for r in rows)
    assert float(total.group(2)) == pytest.approx(sum(r.gpu_hours for r in rows), abs=0.05)
    assert "ESTIMATES" in out and "measured" in out
    if experiment:  # the 8B-class configs say their rows are capped below the target
        assert f"finetune.row_length caps rows at {cfg['finetune']['row_length']}" in out
        assert "warning" not in out
        search = re.search(r"^search\s+\d+\s+(\d+)", out, flags=re.M)
        assert int(search.group(1)) == cfg["cluster"]["search_gpus"] == 8


def test_search_fan_out_divides_its_wall_time():
    one = load("llama3-8b-128k", {"cluster": {"search_gpus": 1}})
    eight = load("llama3-8b-128k")
    size = resources.model_size(one, None)
    a, b = (resources.stage_resources("search", c, size) for c in (one, eight))
    assert b["gpu"] == 8 and a["gpu"] == 1
    assert b["runtime"] < a["runtime"] / 7
    with pytest.raises(Exception, match="gpus_per_node"):
        resources.stage_resources("search", load("llama3-8b-128k", {"cluster": {"search_gpus": 16}}), size)


def test_launcher_one_gpu_one_node_several_nodes():
    assert resources.launcher(1) == ""
    assert resources.launcher(8) == "torchrun --standalone --nproc-per-node=8 --no-python"
    multi = resources.launcher(16, 2)
    assert multi.startswith("srun --ntasks-per-node=1 ")
    assert "--nnodes=2 --nproc-per-node=8" in multi and "--rdzv-backend=c10d" in multi
    assert "$SLURM_JOB_NODELIST" in multi and multi.endswith("--no-python")


def test_finetune_across_nodes():
    cfg = load("phi3-mini-128k", {"cluster": {"finetune_gpus": 16}, "finetune": {"row_length": None}})
    size = resources.model_size(cfg, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 128k rows: ~71 GB per GPU on 16 GPUs (estimate) fits 80 GB
        res = resources.stage_resources("finetune", cfg, size)
    assert (res["gpu"], res["nodes"]) == (16, 2)
    assert res["threads"] == 8 * 8  # per node (one task per node)
    with pytest.raises(Exception, match="whole nodes"):
        resources.stage_resources("finetune", load("phi3-mini-128k", {"cluster": {"finetune_gpus": 12}}), size)


def test_longest_row_is_where_memory_meets_the_gpu():
    cfg = load("llama3-8b-128k")
    size = resources.model_size(cfg, None)
    usable = 80e9 * (1 - resources.GPU_RESERVE)
    L = resources.longest_row(cfg, size, 8)
    assert resources.finetune_gpu_bytes(cfg, size, 8, L) <= usable < resources.finetune_gpu_bytes(cfg, size, 8, L + 1024)
    assert resources.longest_row(load("llama3-8b-128k", {"cluster": {"gpu_mem_gb": 141}}), size, 8) > 131072


def test_finetune_row_length_is_checked():
    from longrope2.stages.finetune import row_length

    cfg = load("llama3-8b-128k")
    assert row_length(cfg) == 65536
    assert row_length(load("llama3-8b-128k", {"finetune": {"row_length": None}})) == 131072
    with pytest.raises(Exception, match="above L0"):
        row_length(load("llama3-8b-128k", {"finetune": {"row_length": 4096}}))
