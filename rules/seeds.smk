# Replicates (experiment.seeds, e.g. the `paper` experiment): the whole DAG once per seed, as Snakemake
# modules of this workflow (experiments <name>-seed<S>, their rules prefixed seed<S>_), then the mean and
# a 95% interval across seeds of every table.
import copy
from pathlib import Path

from longrope2 import config as lr2config
from longrope2 import resources as lr2resources
from longrope2.errors import ConfigError
from longrope2.stages import CONFIG_KEYS

try:
    lr2config.validate(config)
except ConfigError as e:
    raise WorkflowError(f"invalid config: {e}")

PAPER = config["experiment"]["name"]
SEEDS = config["experiment"]["seeds"]
SEED_RUNS = [Path("results") / f"{PAPER}-seed{s}" for s in SEEDS]
SEEDS_OUT = Path("results") / PAPER / "seeds"
SEEDS_RES = lr2resources.stage_resources(
    "tables", config, lr2resources.model_size(config, None)
)


def seed_config(seed):
    """The experiment as one replicate: its own name and seed, no replicates of its own."""
    cfg = copy.deepcopy(config)
    cfg["experiment"].update(name=f"{PAPER}-seed{seed}", seed=seed, seeds=[])
    return cfg


for SEED in SEEDS:
    SEED_MODULE = f"seed{SEED}_"

    module:
        name: SEED_MODULE
        snakefile:
            "../Snakefile"
        config:
            seed_config(SEED)

    use rule * from SEED_MODULE as SEED_MODULE*


rule seeds_summary:
    """Mean and 95% interval across seeds of every table (the base's retrieval check, RULER, retention,
    comparisons, needle metrics, the searched d_rcd, the search's over-fitting check).
    """
    input:
        tables=[
            run / "tables" / rel
            for run in SEED_RUNS
            for rel in (
                "ruler/ruler.csv",
                "training_free/training_free.csv",
                "finetune/finetune_comparison.csv",
            )
        ],
        retrieval=[
            run / "base_model" / "retrieval" / "retrieval.json" for run in SEED_RUNS
        ],
        factors=[
            run / "search" / m / "factors.json"
            for run in SEED_RUNS
            for m in config["search"]["methods"]
        ],
    output:
        md=report(
            SEEDS_OUT / "seeds.md", caption="../report/seeds.rst", category="6. Seeds"
        ),
        csv=[
            SEEDS_OUT / f"{name}.csv"
            for name in (
                "base_retrieval",
                "ruler",
                "ruler_tasks",
                "retention",
                "comparisons",
                "training_free",
                "finetune",
                "needle_comparisons",
                "d_rcd",
                "overfit",
            )
        ],
        manifest=SEEDS_OUT / "manifest.json",
    log:
        Path("logs") / PAPER / "seeds_summary.log",
    benchmark:
        Path("benchmarks") / "runs" / PAPER / "seeds_summary.tsv"
    localrule: True
    conda:
        "../envs/longrope2.yaml"
    threads: SEEDS_RES["threads"]
    resources:
        mem_mb=SEEDS_RES["mem_mb"],
        runtime=SEEDS_RES["runtime"],
    params:
        config=lambda wildcards: lr2config.subset_json(config, CONFIG_KEYS["seeds"]),
        runs=SEED_RUNS,
        out=SEEDS_OUT,
    shell:
        "longrope2 seeds --config-json {params.config:q} --runs {params.runs:q} --out {params.out:q} "
        "> {log:q} 2>&1"
