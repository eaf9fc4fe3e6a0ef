# LongRoPE2 pipeline. Default experiment: config/config.yaml; others: --configfile config/experiments/X.yaml
from snakemake.utils import min_version

min_version("9.20")


configfile: "config/config.yaml"


if config["experiment"].get("seeds"):

    # replicates (the paper experiment): the whole DAG once per seed, then the tables across seeds
    include: "rules/seeds.smk"

    rule all:
        default_target: True
        input:
            SEEDS_OUT / "seeds.md",
            [getattr(rules, f"seed{seed}_all").input for seed in SEEDS],

else:

    include: "rules/common.smk"
    include: "rules/analysis.smk"
    include: "rules/base_model.smk"
    include: "rules/search.smk"
    include: "rules/finetune.smk"
    include: "rules/evaluation.smk"

    rule all:
        default_target: True
        input:
            all_targets(),
