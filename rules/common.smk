# Helpers shared by the .smk files: config validation, paths, each stage's config subset and resources.
import os
import shlex
import sys
from pathlib import Path

# Rules call the `longrope2` console script; put the interpreter running Snakemake first on PATH so an
# un-activated virtualenv (.venv/bin/snakemake) works too.
os.environ.update(
    PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
)

try:
    from longrope2 import config as lr2config
    from longrope2 import methods as lr2methods
    from longrope2 import resources as lr2resources
    from longrope2.errors import ConfigError
    from longrope2.stages import CONFIG_KEYS
    from longrope2.stages import baselines as lr2baselines
    from longrope2.stages import import_model as lr2import
    from longrope2.stages import ruler_data as lr2ruler_data
except ImportError as e:
    raise WorkflowError(
        f"the longrope2 package is not importable ({e}); run `bash install.sh` and use .venv/bin/snakemake"
    )

try:
    lr2config.validate(config)
except ConfigError as e:
    raise WorkflowError(f"invalid config: {e}")

EXP = config["experiment"]["name"]
RESULTS = Path("results") / EXP
LOGS = Path("logs") / EXP
BENCH = Path("benchmarks") / "runs" / EXP
IMPORTED = Path("resources") / EXP / "base_model"
# the already-extended checkpoint the as_is method evaluates (extension.as_is), imported beside the base model
AS_IS_IMPORTED = Path("resources") / EXP / "as_is"
SPLITS = ["train", "validation", "test"]
IS_SCALE = config["model"]["source"] == "scale"
SEARCHED = config["search"]["methods"]
TRAINING_FREE = lr2methods.training_free(config)
# the training-free rows RULER scores before fine-tuning (evaluation.ruler.training_free; the base always)
RULER_TRAINING_FREE = lr2methods.ruler_training_free(config)
BASELINES = [m for m in TRAINING_FREE if m not in SEARCHED]
FINETUNED = lr2methods.finetuned(config)
EVAL_LENGTHS = lr2config.evaluation_lengths(config)
SUITES = config["evaluation"]["suites"]
# tasks the RULER stage scores at every length: RULER's tasks, the heat map's grid, passkey
EVAL_TASKS = (
    (config["evaluation"]["ruler"]["tasks"] if "ruler" in SUITES else [])
    + (["niah_depth"] if "niah" in SUITES else [])
    + (["passkey"] if "passkey" in SUITES else [])
)
# lm-eval's own suites, run on real models: LongBench and MMLU
MODEL_SUITES = [s for s in SUITES if s in ("longbench", "mmlu")]
# per-stage threads / mem_mb / runtime (minutes, attempt 1) / gpu, from the model's size and the lengths
RES = lr2resources.all_stage_resources(
    config,
    (
        None
        if IS_SCALE or not (IMPORTED / "model" / "config.json").is_file()
        else IMPORTED / "model" / "config.json"
    ),
)


wildcard_constraints:
    method="|".join(TRAINING_FREE),
    searched="|".join(SEARCHED),
    baseline="|".join(BASELINES),
    ft="|".join(FINETUNED),
    task="|".join(EVAL_TASKS) or "-",
    length=r"\d+",
    suite="longbench|mmlu",


def stage_config(stage):
    """The config subset a stage reads, as canonical JSON: the rule's params and the CLI's --config-json,
    so editing a key reruns exactly the jobs of the stages that read it. (A function, so Snakemake does
    not read the JSON's braces as wildcards.)"""
    subset = lr2config.subset_json(config, CONFIG_KEYS[stage])
    return lambda wildcards: subset


def runtime(stage):
    """Minutes for attempt n: a job killed at its walltime is retried with more (and resumes)."""
    return lambda wildcards, attempt: RES[stage]["runtime"] * attempt


def launcher(stage):
    """The prefix that starts a stage's command on its GPUs: nothing for one, torchrun for several on one
    node, srun + torchrun across nodes (longrope2.resources.launcher); the command itself is unchanged.
    """
    return lr2resources.launcher(RES[stage]["gpu"], RES[stage]["nodes"])


def multinode(stage):
    """SLURM resources of a job spanning nodes: one task per node (the plugin's `mpi` mode: the job's own
    srun starts them, one torchrun each); nothing for a one-node job."""
    nodes = RES[stage]["nodes"]
    return {"mpi": "srun", "tasks": nodes, "tasks_per_gpu": 0} if nodes > 1 else {}


def devices(wildcards, resources):
    """`--devices N`: the search scores candidates on the N GPUs its job gets (one evaluator each); with one
    GPU or none the stage uses its default device (the GPU if there is one, else the CPU).
    """
    return f"--devices {resources.gpu}" if resources.gpu > 1 else ""


def folder(output_key):
    """The stage folder (--out): the parent of one of the rule's declared outputs."""

    def out(wildcards, output):
        return str(Path(getattr(output, output_key)).parent)

    return out


def optional_input(flag, key):
    """`FLAG PATH` (shell-quoted) when the rule has that input, nothing otherwise."""

    def arg(wildcards, input):
        value = getattr(input, key)
        return f"{flag} {shlex.quote(str(value))}" if value else ""

    return arg


def base_model():
    """HF folder of the base model: pretrained here (scale model) or imported (real models)."""
    return RESULTS / "base_model" / "model" if IS_SCALE else IMPORTED / "model"


def as_is_model():
    """The checkpoint as_is evaluates: extension.as_is when set, else the experiment's own model."""
    return AS_IS_IMPORTED / "model" if config["extension"]["as_is"] else base_model()


def method_model(method):
    """The weights a method is exported, evaluated and fine-tuned with: the base model, except for as_is."""
    return as_is_model() if lr2methods.get(method).reads_checkpoint else base_model()


def training_free_model(wildcards):
    return method_model(wildcards.method)


def finetune_model(wildcards):
    return method_model(lr2methods.base_method(wildcards.ft))


def import_config(as_is):
    """import-model's config subset: the base model's keys, or extension.as_is for the as_is checkpoint."""
    subset = lr2config.subset_json(config, lr2import.config_keys(as_is))
    return lambda wildcards: subset


def tokenizer():
    """The base model's tokenizer: trained by the corpus stage (scale model) or imported with the model,
    so data stages never wait for (or rerun after) pretraining."""
    return CORPUS / "tokenizer" if IS_SCALE else IMPORTED / "model"


CORPUS = RESULTS / "corpus"
CORPUS_FILES = [
    CORPUS / "corpus.json",
    *[CORPUS / f"{split}.bin" for split in SPLITS],
    *[CORPUS / f"{split}.idx.npy" for split in SPLITS],
] + ([CORPUS / "tokenizer"] if IS_SCALE else [])


def method_factors(method):
    """factors.json of a method: the search's output for searched methods, the baseline stage's otherwise."""
    if method in SEARCHED:
        return RESULTS / "search" / method / "factors.json"
    return RESULTS / "factors" / method / "factors.json"


def factors_file(wildcards):
    return method_factors(wildcards.method)


def searched_factors(wildcards):
    """Only the rcd baselines read LongRoPE2's d_rcd; the others depend on the geometry alone."""
    if lr2methods.get(wildcards.baseline).needs_d_rcd:
        return method_factors("longrope2")
    return []


def checkpoint_model(wildcards):
    """Only as_is reads a checkpoint (its config.json's rope parameters)."""
    if lr2methods.get(wildcards.baseline).reads_checkpoint:
        return as_is_model()
    return []


def baseline_config(wildcards):
    """baseline's config subset for one method: only fixed_factors reads extension.fixed_factors."""
    return lr2config.subset_json(config, lr2baselines.config_keys(wildcards.baseline))


def finetune_factors(wildcards):
    """The factors a fine-tuning run trains with (the no-mixed ablation uses LongRoPE2's)."""
    return method_factors(lr2methods.base_method(wildcards.ft))


def before_metrics(ft):
    """Training-free metrics of the same method: the 'before' rows of the fine-tuning table."""
    return (
        RESULTS / "eval" / "training_free" / lr2methods.base_method(ft) / "metrics.json"
    )


RULER_DATA = RESULTS / "ruler_data"
RULER_TABLES = RESULTS / "tables" / "ruler"


def ruler_data_config(wildcards):
    """ruler-data's config subset for one task: only the keys that task reads, so editing e.g.
    evaluation.passkey.samples reruns the passkey job alone."""
    return lr2config.subset_json(config, lr2ruler_data.config_keys(wildcards.task))


def ruler_data_dirs():
    """The (task, length) data folders the RULER stage scores: ruler_data/<task>/<length>, every task at
    every evaluation length (named one by one, so a length dropped from evaluation.lengths is not scored
    even when its folder is still on disk)."""
    return [RULER_DATA / t / str(L) for t in EVAL_TASKS for L in EVAL_LENGTHS]


def ruler_data_files():
    return [
        d / name for d in ruler_data_dirs() for name in ("samples.jsonl", "task.json")
    ]


def suite_window(wildcards):
    """LongBench prompts are cut to the model's window: L0 for the original RoPE, the target otherwise."""
    method = getattr(wildcards, "method", None)
    if method == "none":
        return config["model"]["geometry"]["original_length"]
    return config["extension"]["target_length"]


def all_targets():
    return [
        RESULTS / "critical_dims" / "critical_dims.json",
        RESULTS / "critical_dims" / "critical_dims.png",
        RESULTS / "base_model" / "retrieval" / "retrieval.json",
        RESULTS / "tables" / "training_free" / "training_free.csv",
        RESULTS / "tables" / "finetune" / "finetune_comparison.csv",
        RESULTS / "factor_shape" / "factor_shape.png",
        *[
            RESULTS / "models" / "training_free" / m / "rope.json"
            for m in TRAINING_FREE
        ],
        RULER_TABLES / "ruler.csv",
    ]
