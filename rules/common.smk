# Helpers shared by the .smk files: config validation, paths, the stage command line.
import os
import sys
from pathlib import Path

# Rules call the `longrope2` console script; put the interpreter running Snakemake first on PATH so an
# un-activated virtualenv (.venv/bin/snakemake) works too.
os.environ.update(
    PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
)

try:
    from longrope2 import config as lr2config
    from longrope2.errors import ConfigError
except ImportError as e:
    raise WorkflowError(
        f"the longrope2 package is not importable ({e}); run `bash install.sh` and use .venv/bin/snakemake"
    )


def _config_files():
    """The config files the stage CLIs read: the workflow default first, then --configfile ones, in order."""
    default = "config/config.yaml"
    extra = [
        str(f)
        for f in workflow.configfiles
        if os.path.abspath(f) != os.path.abspath(default)
    ]
    return [default] + extra


CONFIG_FILES = _config_files()
try:
    lr2config.validate(config)
    if lr2config.load(CONFIG_FILES) != config:
        raise ConfigError(
            "--config",
            "overrides given on the command line are not seen by the stage CLIs; put them in a file "
            "and pass it with --configfile",
        )
except ConfigError as e:
    raise WorkflowError(f"invalid config: {e}")

EXP = config["experiment"]["name"]
RESULTS = Path("results") / EXP
LOGS = Path("logs") / EXP
BENCH = Path("benchmarks") / "runs" / EXP
IMPORTED = Path("resources") / EXP / "base_model"
SPLITS = ["train", "validation", "test"]
IS_SCALE = config["model"]["source"] == "scale"
SEARCHED = config["search"]["methods"]
BASELINES = ["none", "pi", "ntk_static", "ntk", "yarn", "ntk_rcd", "yarn_rcd"]
# the training-free table: original RoPE, the configured methods, the d_rcd-anchored baselines, ablations
TRAINING_FREE_METHODS = list(
    dict.fromkeys(
        ["none", *config["extension"]["methods"], "ntk_rcd", "yarn_rcd", *SEARCHED]
    )
)
NO_MIXED_SUFFIX = "_no_mixed"
FINETUNED = list(config["finetune"]["methods"]) + (
    [f"longrope2{NO_MIXED_SUFFIX}"] if config["finetune"]["no_mixed_ablation"] else []
)
GPU_STAGES = config["model"]["source"] != "scale"


wildcard_constraints:
    method="[a-z0-9_]+",
    searched="|".join(SEARCHED),
    ft="[a-z0-9_]+",


def stage_cmd(stage):
    """The exact command a researcher can run by hand for a stage (output folder appended by the rule)."""
    return f"longrope2 {stage} --config {' '.join(CONFIG_FILES)}"


def base_model():
    """HF folder of the base model: pretrained here (scale model) or imported (real models)."""
    return RESULTS / "base_model" / "model" if IS_SCALE else IMPORTED / "model"


def corpus_tokenizer():
    """The corpus of a real model is tokenized with its own tokenizer; the scale model trains one."""
    return [] if IS_SCALE else [IMPORTED / "model"]


def method_factors(method):
    """factors.json of a method: the search's output for searched methods, the baselines stage's otherwise."""
    if method in SEARCHED:
        return RESULTS / "search" / method / "factors.json"
    return RESULTS / "factors" / f"{method}.json"


def factors_file(wildcards):
    return method_factors(wildcards.method)


def finetune_factors(wildcards):
    """The factors a fine-tuning run trains with (the no-mixed ablation uses LongRoPE2's)."""
    return method_factors(wildcards.ft.removesuffix(NO_MIXED_SUFFIX))


def before_metrics(ft):
    """Training-free metrics of the same method: the 'before' rows of the fine-tuning table."""
    method = ft.removesuffix(NO_MIXED_SUFFIX)
    return RESULTS / "eval" / "training_free" / method / "metrics.json"


def all_targets():
    return [
        RESULTS / "critical_dims" / "critical_dims.json",
        RESULTS / "critical_dims" / "critical_dims.png",
        RESULTS / "base_model" / "retrieval" / "retrieval.json",
        RESULTS / "tables" / "training_free" / "training_free.csv",
        RESULTS / "tables" / "finetune" / "finetune_comparison.csv",
        *[
            RESULTS / "models" / "training_free" / m / "rope.json"
            for m in TRAINING_FREE_METHODS
        ],
    ]
