"""Job resources of every stage -- threads, host memory, wall time, GPUs -- from the model's size and the
experiment, so a cluster scheduler (the SLURM profile) gets requests that fit the job.

Rules read them as ``threads: R["search"]["threads"]`` and ``resources: mem_mb=..., runtime=lambda wc,
attempt: R["search"]["runtime"] * attempt, gpu=R["search"]["gpu"]``. Pure arithmetic, no torch: the
Snakefile imports this while it parses.

Everything here is an ESTIMATE, not a measurement of the run:

- parameters are exact for dense decoder configs (Llama / Mistral / Qwen / Phi-3 shapes) and what the
  experiment declares otherwise; memory and time are modelled from them with the constants below;
- time assumes ~40% of a GPU's 989 TFLOP/s dense bf16 peak (H100 class; the README measured 37% for
  the pipeline's evaluator and 62% for flex-attention fine-tuning on an H200, but 15% with ``sdpa``) and
  ~50 GFLOP/s for a CPU job (61 measured for the scale model's pretraining on this 2-core machine),
  then adds a 1.5x margin and a 10-minute floor. Retries ask ``runtime x attempt`` and the long stages
  resume from their checkpoints, so an underestimate costs a resubmission, not the work done;
- host memory (``mem_mb``) is what the process holds in RAM; GPU memory is only used to choose how many
  GPUs fine-tuning needs and to warn when a job will not fit.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

# --- assumptions (each one an estimate; see the module docstring) ------------------------------------
GPU_PEAK_FLOPS = 989e12  #: dense bf16 FLOP/s of one H100-class GPU
GPU_MFU = 0.40  #: achieved fraction of the peak for forward passes and flex/flash-attention training
TRAIN_MFU = {"flex_attention": 0.40, "flash_attention_2": 0.40, "sdpa": 0.15, "eager": 0.10}  #: README
CPU_FLOPS = 50e9  #: FLOP/s of one CPU job (fp32; extra threads barely help these small models)
TIME_MARGIN = 1.5  #: estimated seconds are multiplied by this before rounding up
RUNTIME_FLOOR_MIN = 10  #: no job asks for less (start-up, imports, scheduling granularity)
READ_BYTES_S = 0.5e9  #: reading or writing weights on a shared file system
DOWNLOAD_BYTES_S = 25e6  #: Hugging Face Hub download (import-model)
BASE_MB = 2000  #: a Python process with torch + transformers imported
GPU_BASE_MB = 4000  #: the same with CUDA initialised (host side), per process
TINY_MB = 1000  #: stages that load no model (tables, baselines, critical dimensions)
HOST_OVERHEAD = 1.5  #: host copies while loading weights (safetensors read + dtype conversion)
GPU_RESERVE = 0.10  #: share of each GPU kept for the CUDA context, allocator fragmentation, NCCL
ADAM_BYTES = 16  #: fp32 master weight + fp32 grad + two fp32 Adam moments, per parameter
CKPT_BYTES = 12  #: a fine-tuning checkpoint: fp32 weights + two Adam moments, per parameter
LAYER_ACT_BYTES = 34  #: bf16 activation bytes per token per hidden unit of one layer (Korthikanti et
#  al. 2022, without the attention-score term that flash/flex attention never materialises)
FWD_ACT_BYTES = 32  #: peak bytes per token per hidden unit of a no-grad forward (one layer live)

#: the CLI stage names
STAGES = ("critical-dims", "corpus", "import-model", "pretrain", "retrieval", "needles", "search", "baseline",
          "export", "finetune", "evaluate", "ruler-data", "ruler", "suite", "ruler-tables", "tables")
#: Snakemake rule names (and other spellings) -> stage
ALIASES = {"critical_dims": "critical-dims", "import_model": "import-model", "evaluate_training_free": "evaluate", "evaluate_finetuned": "evaluate",
           "ruler_data": "ruler-data", "ruler_training_free": "ruler", "ruler_finetuned": "ruler", "table_ruler": "ruler-tables",
           "suite_training_free": "suite", "suite_finetuned": "suite",
           "table_training_free": "tables", "table_finetune": "tables", "table": "tables",
           "import_as_is": "import-model", "factor_shape": "tables", "factor-shape": "tables",
           "seeds_summary": "tables", "seeds": "tables"}
#: threads of CPU jobs. Pretraining runs alone and takes both cores; a second thread barely speeds up the
#: scale model's forwards, so the other stages take one each and two jobs share the 2-core machine
CPU_THREADS = {"corpus": 2, "import-model": 2, "pretrain": 2, "retrieval": 1, "search": 1, "finetune": 1,
               "evaluate": 1, "ruler": 1, "ruler-data": 1}
RULER_NEW_TOKENS = 128  #: the longest answer budget of RULER's tasks (NIAH)


@dataclass(frozen=True)
class ModelSize:
    """What the estimates need to know about the model."""

    parameters: int
    layers: int
    hidden_size: int
    vocab_size: int


# --- model size ----------------------------------------------------------------------------------------
def count_parameters(hf: Mapping[str, Any]) -> int:
    """Parameters of a decoder-only transformer from its Hugging Face ``config.json``: embeddings,
    attention with grouped KV heads, gated MLP (x experts for MoE), RMS norms, tied or untied LM head.
    Exact for Llama/Mistral/Phi-3/SmolLM shapes; biases only where the config flags them."""
    hf = hf.get("text_config") or hf
    h, layers, vocab = hf["hidden_size"], hf["num_hidden_layers"], hf["vocab_size"]
    heads = hf["num_attention_heads"]
    kv = hf.get("num_key_value_heads") or heads
    head_dim = hf.get("head_dim") or h // heads
    inter = hf.get("intermediate_size") or 4 * h
    experts = hf.get("num_local_experts") or hf.get("num_experts") or 1
    q, k = heads * head_dim, kv * head_dim
    attn = h * q + 2 * h * k + q * h + (q + 2 * k + h if hf.get("attention_bias") else 0)
    mlp = experts * (3 * h * inter + (2 * inter + h if hf.get("mlp_bias") else 0)) + (h * experts if experts > 1 else 0)
    per_layer = attn + mlp + 2 * h  # two RMSNorm weights
    tied = hf.get("tie_word_embeddings", True)  # transformers' default when the key is absent
    return vocab * h * (1 if tied else 2) + layers * per_layer + h


def size_from_hf_config(hf: Mapping[str, Any]) -> ModelSize:
    text = hf.get("text_config") or hf
    return ModelSize(count_parameters(hf), text["num_hidden_layers"], text["hidden_size"], text["vocab_size"])


def scale_model_size(cfg: Mapping) -> ModelSize:
    """The scale model the pretrain stage builds: a tied LlamaForCausalLM, KV heads = heads."""
    m, g = cfg["scale_model"], cfg["model"]["geometry"]
    vocab = cfg["tokenizer"]["vocab_size"]
    hf = {"hidden_size": m["hidden_size"], "num_hidden_layers": m["layers"], "num_attention_heads": m["heads"],
          "num_key_value_heads": m["heads"], "head_dim": g["head_dim"], "intermediate_size": m["intermediate_size"],
          "vocab_size": vocab, "tie_word_embeddings": True}
    return size_from_hf_config(hf)


def model_size(cfg: Mapping, imported_config: Path | str | None) -> ModelSize:
    """The imported model's own config.json when it exists, else the size the experiment declares
    (``model.size``, for a model not yet downloaded), else the scale model's architecture."""
    if imported_config is not None and Path(imported_config).is_file():
        hf = json.loads(Path(imported_config).read_text())
        try:
            return size_from_hf_config(hf)
        except KeyError as e:
            if not cfg["model"].get("size"):
                raise ConfigError("model.size", f"{imported_config} has no {e.args[0]}: declare the model's size "
                                  "(parameters, layers, hidden_size, vocab_size)") from None
    declared = cfg["model"].get("size")
    if declared:
        size = ModelSize(int(declared["parameters"]), int(declared["layers"]), int(declared["hidden_size"]),
                         int(declared["vocab_size"]))
        cut = cfg["model"].get("slice")
        if cut and cut["layers"] < size.layers:  # a rehearsal's slice: the embeddings and its layers' share
            embed = size.vocab_size * size.hidden_size
            per_layer = max(0, size.parameters - embed) / size.layers
            size = ModelSize(int(embed + cut["layers"] * per_layer), cut["layers"], size.hidden_size, size.vocab_size)
        return size
    if cfg["model"]["source"] == "scale":
        return scale_model_size(cfg)
    raise ConfigError("model.size", f"{cfg['model'].get('id')!r} is not imported yet, so its size is unknown: declare "
                      "model.size: {parameters, layers, hidden_size, vocab_size} in the experiment config")


# --- workloads -----------------------------------------------------------------------------------------
def forward_flops(size: ModelSize, length: int) -> float:
    """One causal forward of a ``length``-token row: 2 N per token + causal attention (QK^T and AV)."""
    return 2.0 * size.parameters * length + 2.0 * size.layers * length**2 * size.hidden_size


def train_flops(size: ModelSize, length: int, checkpointing: bool) -> float:
    """Forward + backward (2x forward) of one row: 6 N per token, 8 N with activation checkpointing's
    recomputed forward; attention likewise."""
    k = 4.0 if checkpointing else 3.0
    return k * forward_flops(size, length)


def eval_lengths(cfg: Mapping) -> list[int]:
    """The evaluation stage's lengths (L0 x each multiple up to the target, and the target)."""
    from .needles import eval_lengths as lengths

    return lengths(cfg["model"]["geometry"]["original_length"], cfg["extension"]["target_length"],
                   cfg["needles"]["eval_length_multiples"])


def retrieval_lengths(cfg: Mapping) -> list[int]:
    l0 = cfg["model"]["geometry"]["original_length"]
    return [int(m * l0) for m in cfg["retrieval"]["length_multiples"]]


def search_forwards(cfg: Mapping) -> float:
    """Sample-forwards of one search at the target length: every candidate (initial + children of each
    generation; an upper bound, duplicates are cached) on all samples, or with racing on the racing
    samples and the kept share on the rest."""
    s, n = cfg["search"], cfg["needles"]["search_samples"]
    candidates = s["initial"] + s["generations"] * (s["mutants"] + s["crossovers"])
    race = s.get("racing", {})
    if race.get("enabled"):
        first = min(race["samples"], n)
        per = first + race["keep"] * (n - first)
    else:
        per = n
    return candidates * per


def _heads(cfg: Mapping, size: ModelSize) -> int:
    return max(1, size.hidden_size // cfg["model"]["geometry"]["head_dim"])


# --- memory --------------------------------------------------------------------------------------------
def _mib(nbytes: float) -> int:
    return int(math.ceil(nbytes / 2**20))


def ruler_workload(cfg: Mapping) -> list[tuple[int, int]]:
    """(length, samples) the RULER stage scores: tasks x samples + heat-map cells + passkey, per length."""
    from .config import evaluation_lengths

    ev = cfg["evaluation"]
    suites = set(ev["suites"])
    def per_length(L: int) -> int:
        n = next((a["samples"] for a in ev["ruler"].get("samples_at", []) if a["length"] == L), ev["ruler"]["samples"])
        return (len(ev["ruler"]["tasks"]) * n if "ruler" in suites else 0) \
            + (ev["niah"]["depths"] * ev["niah"]["samples"] if "niah" in suites else 0) \
            + (ev["passkey"]["samples"] if "passkey" in suites else 0)

    return [(L, per_length(L)) for L in evaluation_lengths(cfg)]


def generation_flops(size: ModelSize, length: int, new_tokens: int) -> float:
    """Prefill of a ``length``-token prompt, then ``new_tokens`` cached decode steps attending to it."""
    return forward_flops(size, length) + new_tokens * (2.0 * size.parameters + 4.0 * size.layers * length * size.hidden_size)


def forward_act_bytes(cfg: Mapping, size: ModelSize, length: int, batch_tokens: int, cpu: bool) -> float:
    """Peak activations of a no-grad forward batch (one layer live at a time). On CPU (fp32) the
    attention scores of a row are materialised too."""
    rows = max(1, batch_tokens // length)
    act = rows * length * size.hidden_size * FWD_ACT_BYTES * (2 if cpu else 1)
    if cpu:
        act += rows * _heads(cfg, size) * length**2 * 4
    return act


def forward_gpu_bytes(cfg: Mapping, size: ModelSize, length: int, batch_tokens: int) -> float:
    """GPU memory of a forward stage: bf16 weights + activations of one batch."""
    return 2.0 * size.parameters + forward_act_bytes(cfg, size, length, batch_tokens, cpu=False)


def train_act_bytes(cfg: Mapping, size: ModelSize, rows: int, length: int, cpu: bool, ckpt: bool,
                    attn: str) -> float:
    """Activations of ``rows`` training rows. With activation checkpointing: every layer's input (fp32:
    the residual stream stays fp32 under bf16 autocast with fp32 weights) + one layer recomputed in
    backward; without: every layer's activations. Plus the attention's own: the boolean per-document
    mask transformers builds for ``sdpa``, the scores for ``eager`` / CPU; nothing for flex/flash."""
    h, layers, heads = size.hidden_size, size.layers, _heads(cfg, size)
    per_layer = LAYER_ACT_BYTES * (2 if cpu else 1)  # CPU trains in fp32
    per_token = h * (4 * layers + per_layer) if ckpt else h * layers * (per_layer + 8)
    scores = heads * length**2 * 4 * (1 if ckpt else layers)
    if cpu or attn == "eager":
        extra = scores + length**2
    elif attn == "sdpa":
        extra = length**2
    else:
        extra = 0
    return rows * (length * per_token + extra)


def finetune_row_length(cfg: Mapping) -> int:
    """Tokens of one fine-tuning row: ``finetune.row_length`` where an experiment caps it (rows of the
    target length do not fit its GPUs), else the target length."""
    return int(cfg["finetune"].get("row_length") or cfg["extension"]["target_length"])


def finetune_gpu_bytes(cfg: Mapping, size: ModelSize, gpus: int, length: int | None = None) -> float:
    """Per-GPU memory of fine-tuning on ``gpus`` GPUs: 16 B/param (FSDP shards them; DDP keeps a full
    copy per GPU) + activations of ``finetune.batch_size`` rows of ``length`` tokens (default: the row
    length) + the parameters FSDP holds unsharded while computing (fp32 embeddings and LM head of the
    root, ~3 layers in flight). Every GPU holds whole rows: data parallelism only, no sequence/context
    parallelism, so the activations of a row do not shrink with more GPUs."""
    ft = cfg["finetune"]
    n = size.parameters
    if ft.get("parallel", "ddp") == "fsdp" and gpus > 1:
        embed = 2 * size.vocab_size * size.hidden_size
        layer = max(0, n - embed) / size.layers
        states = ADAM_BYTES * n / gpus + 4 * (embed + 3 * layer)
    else:
        states = ADAM_BYTES * n
    act = train_act_bytes(cfg, size, ft["batch_size"], length or finetune_row_length(cfg), cpu=False,
                          ckpt=ft.get("gradient_checkpointing", True), attn=ft.get("attn_implementation", "sdpa"))
    return states + act


def longest_row(cfg: Mapping, size: ModelSize, gpus: int, step: int = 1024) -> int:
    """The longest fine-tuning row (a multiple of ``step`` tokens; 0: none) whose per-GPU memory on ``gpus``
    GPUs fits ``cluster.gpu_mem_gb``, by this module's memory model (activation checkpointing with fp32
    layer inputs, flex/flash attention storing no scores): an ESTIMATE, not a measurement."""
    usable = cfg.get("cluster", {}).get("gpu_mem_gb", 80) * 1e9 * (1 - GPU_RESERVE)
    lo, hi = 0, cfg["extension"]["target_length"] // step + 1  # fits(lo), and searched up to the target + step
    if finetune_gpu_bytes(cfg, size, gpus, hi * step) <= usable:
        return hi * step
    while hi - lo > 1:  # memory grows with the length
        mid = (lo + hi) // 2
        if finetune_gpu_bytes(cfg, size, gpus, mid * step) <= usable:
            lo = mid
        else:
            hi = mid
    return lo * step


def finetune_gpus(cfg: Mapping, size: ModelSize) -> int:
    """``cluster.finetune_gpus`` where set (more than ``gpus_per_node``: a multi-node job, in whole nodes);
    else the fewest GPUs (up to one node; 1 under DDP, which does not shard) whose per-GPU share fits
    ``cluster.gpu_mem_gb``. When none does, that most with a warning: the estimate says the job will run
    out of GPU memory. Note that the GPU count is also the data-parallel world size, and the stage's
    rows per step are ``batch_size x grad_accum x world``: more GPUs, larger steps."""
    cl = cfg.get("cluster", {})
    usable = cl.get("gpu_mem_gb", 80) * 1e9 * (1 - GPU_RESERVE)
    if cl.get("finetune_gpus"):
        g, per_node = int(cl["finetune_gpus"]), cl.get("gpus_per_node", 8)
        if g > per_node and g % per_node:
            raise ConfigError("cluster.finetune_gpus", f"{g} GPUs span nodes of {per_node}: ask for whole nodes "
                              f"(a multiple of gpus_per_node)")
        if finetune_gpu_bytes(cfg, size, g) > usable:
            warnings.warn(f"finetune: ~{finetune_gpu_bytes(cfg, size, g) / 1e9:.0f} GB per GPU on {g} GPUs (estimate) "
                          f"exceeds cluster.gpu_mem_gb={cl.get('gpu_mem_gb', 80)}", stacklevel=2)
        return g
    most = cl.get("gpus_per_node", 8) if cfg["finetune"].get("parallel", "ddp") == "fsdp" else 1
    for g in range(1, most + 1):
        if finetune_gpu_bytes(cfg, size, g) <= usable:
            return g
    need, ft = finetune_gpu_bytes(cfg, size, most) / 1e9, cfg["finetune"]
    warnings.warn(f"finetune: ~{need:.0f} GB per GPU on {most} GPU(s) (estimate; {ft.get('parallel', 'ddp')}, "
                  f"batch_size {ft['batch_size']} x {finetune_row_length(cfg)} tokens) exceeds "
                  f"cluster.gpu_mem_gb={cl.get('gpu_mem_gb', 80)}: it will likely run out of GPU memory "
                  f"(rows of at most ~{longest_row(cfg, size, most)} tokens fit: finetune.row_length)",
                  stacklevel=2)
    return most


def _check_forward_fits(stage: str, cfg: Mapping, size: ModelSize, length: int, batch_tokens: int) -> None:
    usable = cfg.get("cluster", {}).get("gpu_mem_gb", 80) * 1e9 * (1 - GPU_RESERVE)
    need = forward_gpu_bytes(cfg, size, length, batch_tokens)
    if need > usable:
        warnings.warn(f"{stage}: ~{need / 1e9:.0f} GB on one GPU at {length} tokens (estimate) exceeds "
                      f"cluster.gpu_mem_gb={cfg.get('cluster', {}).get('gpu_mem_gb', 80)}", stacklevel=3)


# --- time ----------------------------------------------------------------------------------------------
def _minutes(seconds: float) -> int:
    return max(RUNTIME_FLOOR_MIN, int(math.ceil(seconds * TIME_MARGIN / 60.0)))


def _flop_rate(gpus: int, mfu: float = GPU_MFU) -> float:
    return gpus * GPU_PEAK_FLOPS * mfu if gpus else CPU_FLOPS


# --- per stage -----------------------------------------------------------------------------------------
def stage_resources(stage: str, cfg: Mapping, size: ModelSize) -> dict:
    """``{"threads", "mem_mb", "runtime", "gpu"}`` of one stage (CLI or rule name): host memory in MiB,
    runtime in minutes for the first attempt, GPUs (0: CPU job; the scale model runs on the CPU).

    Estimates (module docstring): real models run bf16 forwards on one GPU (retrieval up to its longest
    multiple of L0, search and evaluate at their lengths) and fine-tune on :func:`finetune_gpus`; their
    host RAM is what loading the weights takes (fine-tuning: see the phases below), activations live on
    the GPU. The scale model runs in fp32 on the CPU, activations in host RAM. Time is FLOPs over the
    assumed rate plus reading weights and writing checkpoints; the workload counts are upper bounds
    (every search candidate scored, every row a full-attention row). Tokenizing stages (corpus, needles),
    tables and export are small and get fixed guesses or the floor."""
    stage = ALIASES.get(stage, stage)
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    real = cfg["model"]["source"] != "scale"
    cl = cfg.get("cluster", {})
    target = cfg["extension"]["target_length"]
    n = size.parameters
    seconds, gpu = 0.0, 0

    if stage == "pretrain":  # always the scale model, on the CPU
        sm, pt = scale_model_size(cfg), cfg["pretrain"]
        length = max(c["length"] for c in pt["curriculum"])
        rows = pt["steps"] * pt["batch_size"]
        seconds = rows * train_flops(sm, length, False) / CPU_FLOPS
        act = train_act_bytes(cfg, sm, pt["batch_size"], length, cpu=True, ckpt=False, attn="sdpa")
        mem = BASE_MB * 2**20 + ADAM_BYTES * sm.parameters * 1.2 + act
    elif stage in ("retrieval", "search", "evaluate"):
        # the search scores candidates on every GPU it gets (one evaluator each): cluster.search_gpus
        gpu = (int(cl.get("search_gpus", 1)) if stage == "search" else 1) if real else 0
        if gpu > cl.get("gpus_per_node", 8):
            raise ConfigError("cluster.search_gpus", f"{gpu} exceeds gpus_per_node={cl.get('gpus_per_node', 8)}: "
                              "the search's evaluators are threads of one process, on one node")
        if stage == "retrieval":
            lengths, batch = retrieval_lengths(cfg), cfg["retrieval"]["batch_tokens"]
            forwards = [(L, 2 * cfg["retrieval"]["samples"]) for L in lengths]  # single + multi needle
            data = 0.0  # samples are built one batch at a time
        elif stage == "search":
            lengths, batch = [target], cfg["search"]["batch_tokens"]
            forwards = [(target, search_forwards(cfg))]
            data = 16.0 * cfg["needles"]["search_samples"] * target  # int64 ids + labels
        else:
            lengths = eval_lengths(cfg)
            batch = cfg.get("evaluation", {}).get("batch_tokens", cfg["search"]["batch_tokens"])
            rows = cfg["needles"]["eval_samples"] + cfg["needles"]["ppl_samples"]  # needle + plain sets
            forwards = [(L, rows) for L in lengths]
            data = 8.0 * rows * max(lengths)
        longest = max(lengths)
        flops = sum(k * forward_flops(size, L) for L, k in forwards)
        seconds = flops / _flop_rate(gpu) + 4.0 * n / READ_BYTES_S  # weights are stored in fp32
        if gpu:
            _check_forward_fits(stage, cfg, size, longest, batch)
            # one process: the model copies are loaded one after the other, each moved to its GPU
            mem = gpu * GPU_BASE_MB * 2**20 + 2.0 * n * HOST_OVERHEAD + data
        else:
            act = forward_act_bytes(cfg, size, longest, batch, cpu=True)
            mem = BASE_MB * 2**20 + 4.0 * n * HOST_OVERHEAD + data + act
    elif stage == "ruler":
        gpu = 1 if real else 0
        work = ruler_workload(cfg)
        longest, batch = max(L for L, _ in work), cfg["evaluation"]["batch_size"]
        flops = sum(k * generation_flops(size, L, RULER_NEW_TOKENS) for L, k in work)
        seconds = flops / _flop_rate(gpu) + 4.0 * n / READ_BYTES_S + 30.0  # + lm-eval's set-up
        if gpu:
            _check_forward_fits(stage, cfg, size, longest, batch * longest)
            mem = GPU_BASE_MB * 2**20 + 2.0 * n * HOST_OVERHEAD
        else:
            mem = BASE_MB * 2**20 + 4.0 * n * HOST_OVERHEAD + forward_act_bytes(cfg, size, longest, batch * longest, cpu=True)
    elif stage == "suite":  # LongBench (16 tasks, <= 200 docs each, prompts up to the window) or MMLU 5-shot
        gpu = 1 if real else 0
        ev = cfg["evaluation"]
        window = min(target, 32768)
        lb = 16 * (ev["longbench"]["limit"] or 200) * generation_flops(size, window, RULER_NEW_TOKENS)
        mmlu = 57 * (ev["mmlu"]["limit"] or 250) * 4 * forward_flops(size, 700)
        seconds = max(lb, mmlu) / _flop_rate(gpu) + 4.0 * n / READ_BYTES_S + 60.0
        mem = (GPU_BASE_MB * 2**20 + 2.0 * n * HOST_OVERHEAD) if gpu else \
            BASE_MB * 2**20 + 4.0 * n * HOST_OVERHEAD + forward_act_bytes(cfg, size, window, window, cpu=True)
    elif stage == "ruler-data":  # tokenizing prompts: one task at every evaluation length
        lengths = [L for L, _ in ruler_workload(cfg)]
        mem = BASE_MB * 2**20 + 64.0 * max(lengths) * 64
        # NVIDIA's haystack search tokenizes a few prompts per sample: ~1 s per 100k tokens of prompts
        seconds = 60.0 + sum(L * cfg["evaluation"]["ruler"]["samples"] for L in lengths) / 1e5
    elif stage == "finetune":
        ft = cfg["finetune"]
        ckpt = ft.get("gradient_checkpointing", True)
        saves = max(0, (ft["steps"] - 1) // ft["checkpoint_every"])
        io = saves * CKPT_BYTES * n / READ_BYTES_S + 4.0 * n / READ_BYTES_S
        if real:
            gpu = finetune_gpus(cfg, size)
            # every rank runs batch_size x grad_accum rows per step: the time per step does not depend on gpu
            rows = ft["steps"] * ft["batch_size"] * ft["grad_accum"]
            mfu = TRAIN_MFU.get(ft.get("attn_implementation", "sdpa"), GPU_MFU)
            seconds = rows * train_flops(size, finetune_row_length(cfg), ckpt) / _flop_rate(1, mfu) + io
            # host RAM, the largest of: every rank loading the fp32 model before moving it to its GPU; rank 0
            # gathering fp32 weights + Adam state for a checkpoint and then loading a fresh copy to export;
            # every rank reading the whole checkpoint when it resumes (a retry)
            # (per node: a multi-node job asks --mem per node, and rank 0's node holds the gathered state)
            local = min(gpu, cl.get("gpus_per_node", 8))
            phases = (local * 4.0 * n, (CKPT_BYTES + 4.0) * n, local * CKPT_BYTES * n)
            mem = local * GPU_BASE_MB * 2**20 + 1.2 * max(phases)
        else:
            rows = ft["steps"] * ft["batch_size"] * ft["grad_accum"]
            seconds = rows * train_flops(size, finetune_row_length(cfg), ckpt) / CPU_FLOPS + io
            act = train_act_bytes(cfg, size, ft["batch_size"], finetune_row_length(cfg), cpu=True, ckpt=ckpt,
                                  attn=ft.get("attn_implementation", "sdpa"))
            mem = BASE_MB * 2**20 + 1.2 * (ADAM_BYTES + 4.0) * n + act  # + a fresh fp32 copy to export
    elif stage == "import-model":
        if real:
            src = cfg["model"]["source"]
            seconds = (2.0 * n / DOWNLOAD_BYTES_S if src == "hub" else 0.0) + 8.0 * n / READ_BYTES_S
            mem = BASE_MB * 2**20 + 4.0 * n * (2.0 if src == "gguf" else HOST_OVERHEAD)  # loaded in fp32 on CPU
        else:
            mem = TINY_MB * 2**20
    elif stage == "needles":
        tokens = 2 * cfg["needles"]["search_samples"] * target
        mem = BASE_MB * 2**20 + 3 * 16.0 * tokens  # int64 ids + labels, with copies while building
    elif stage == "corpus":
        mem = (BASE_MB + (2000 if cfg["corpus"].get("source", "stdlib") == "stdlib" else 6000)) * 2**20
        seconds = 20 * 60 if cfg["corpus"].get("source", "stdlib") == "stdlib" else 40 * 60  # a guess
    elif stage == "export":  # writes config.json and links the base weights: loads no weights
        mem = BASE_MB * 2**20
    else:  # critical-dims, baseline, tables
        mem = TINY_MB * 2**20

    if gpu:
        threads = cl.get("cpus_per_gpu", 8) * gpu
    else:
        threads = CPU_THREADS.get(stage, 1)
    nodes = max(1, math.ceil(gpu / cl.get("gpus_per_node", 8)))
    return {"threads": int(threads // nodes), "mem_mb": _mib(mem), "runtime": _minutes(seconds),
            "gpu": int(gpu), "nodes": int(nodes)}


def all_stage_resources(cfg: Mapping, imported_config: Path | str | None) -> dict[str, dict]:
    """:func:`stage_resources` of every stage, the model sized once; keyed by CLI stage name and also by
    rule name (``evaluate_finetuned``, ``baseline``, ...), so a rule can look itself up either way."""
    size = model_size(cfg, imported_config)
    out = {stage: stage_resources(stage, cfg, size) for stage in STAGES}
    return out | {alias: out[stage] for alias, stage in ALIASES.items()}


# --- launch -----------------------------------------------------------------------------------------------
RDZV_PORT = 29500  #: the c10d rendezvous port of a multi-node fine-tuning job, on its first node


def launcher(gpus: int, nodes: int = 1) -> str:
    """The prefix that starts a stage command on ``gpus`` GPUs of ``nodes`` nodes, the command itself
    unchanged: nothing for one GPU; ``torchrun --standalone`` (one process per GPU) on one node; on
    several, ``srun`` starts one torchrun per node of the SLURM job, meeting at a c10d rendezvous on its
    first node (SLURM's environment names the nodes and the job)."""
    if gpus <= 1:
        return ""
    if nodes <= 1:
        return f"torchrun --standalone --nproc-per-node={gpus} --no-python"
    return (f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 torchrun --nnodes={nodes} "
            f"--nproc-per-node={gpus // nodes} --rdzv-backend=c10d --rdzv-id=\"$SLURM_JOB_ID\" "
            f"--rdzv-endpoint=\"$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1):{RDZV_PORT}\" --no-python")


# --- disk ---------------------------------------------------------------------------------------------------
DOC_TOKENS = {"stdlib": 2_000, "hf_dataset": 100_000, "text_dir": 20_000}  #: a guess per document (PG19: a book)
TEXT_BYTES_PER_TOKEN = 4  #: a prompt written as text (JSONL), about 4 characters per token
SMALL_BYTES = 1e6  #: metrics, manifests, tables, factor files


def stage_disk(stage: str, cfg: Mapping, size: ModelSize) -> dict[str, float]:
    """Bytes one job of a stage leaves on disk (``kept``) and holds while it runs (``scratch``: resumable
    checkpoints, deleted when it finishes). ESTIMATES: weights are exact (fp32 safetensors, 4 B/param),
    corpus and prompt sizes are guesses from the config (see DOC_TOKENS)."""
    stage = ALIASES.get(stage, stage)
    n, target = size.parameters, cfg["extension"]["target_length"]
    kept, scratch = SMALL_BYTES, 0.0
    if stage == "import-model":
        kept = 4.0 * n
    elif stage == "pretrain":
        sm = scale_model_size(cfg)
        kept, scratch = 4.0 * sm.parameters, 2 * CKPT_BYTES * sm.parameters
    elif stage == "finetune":  # the fp32 export; two resumable checkpoints kept while training
        kept, scratch = 4.0 * n, 2 * CKPT_BYTES * n
    elif stage == "corpus":
        c = cfg["corpus"]
        docs = c.get("max_documents") or 1000
        tok_bytes = 2 if cfg.get("tokenizer", {}).get("vocab_size", size.vocab_size) <= 65536 else 4
        kept = docs * DOC_TOKENS.get(c.get("source", "stdlib"), 20_000) * (tok_bytes + 1)
    elif stage == "needles":  # search + held-out sets, needle + plain, int64 ids and labels
        kept = 4 * cfg["needles"]["search_samples"] * target * 16.0
    elif stage == "ruler-data":  # one task at every length
        kept = sum(L * n_ for L, n_ in ruler_workload(cfg)) * TEXT_BYTES_PER_TOKEN / max(1, len(_tasks(cfg)))
    elif stage in ("ruler", "suite"):  # per-sample logs with their prompts
        kept = sum(L * n_ for L, n_ in ruler_workload(cfg)) * TEXT_BYTES_PER_TOKEN if stage == "ruler" else 50e6
    return {"kept": kept, "scratch": scratch}


def _tasks(cfg: Mapping) -> list[str]:
    """What the RULER stage scores at every length (as rules/common.smk's EVAL_TASKS)."""
    ev = cfg["evaluation"]
    suites = ev["suites"]
    return ((ev["ruler"]["tasks"] if "ruler" in suites else []) + (["niah_depth"] if "niah" in suites else [])
            + (["passkey"] if "passkey" in suites else []))
