"""Mixed context window fine-tuning (LongRoPE2 §3.3) of the base model under one method's factors.

Rows of the target length (or ``finetune.row_length``, where an experiment caps them to what its GPUs
hold) come from :mod:`longrope2.packing`: short rows (documents <= L0, original RoPE, per-document
attention) and long rows (rescaled RoPE, full attention); each row picks its RoPE by
``max(position_ids)+1 > L0`` through :class:`rope.RowwiseRotary`. Every token is supervised (LM loss)
in both row types. ``--no-mixed`` is the paper's ablation, made fair: exactly the same rows and tokens
as the mixed run, only every row uses the long factors.

The loop: AdamW (0.9, 0.95), weight decay 0, clip 1.0, linear warm-up + cosine, gradient accumulation,
bf16 autocast on GPU, activation checkpointing, and a chunked cross-entropy that never holds the
logits of a whole row. Checkpoints (model, optimizer, scheduler, step, RNG) go to ``--checkpoint-dir``
every ``checkpoint_every`` steps; a restarted run resumes and ends with the same weights. Under
``torchrun`` it runs DDP or FSDP (``finetune.parallel``), with NCCL on GPUs and gloo on CPU.

Attention masks: transformers builds the per-document causal mask from the restarting position ids.
On CPU (``sdpa``) that is a boolean mask per row; long-only batches take SDPA's causal fast path. On
GPU set ``finetune.attn_implementation: flex_attention`` (block-sparse BlockMask, nothing dense) or
``flash_attention_2`` (variable-length kernels from the same position ids) where installed.
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .. import models, progress, rope
from ..artifacts import StageRun, verify_inputs
from ..checkpoints import Checkpoints, fingerprint
from ..corpus import TokenizedCorpus
from ..errors import ConfigError
from ..needles import IGNORE_INDEX, NeedleBuilder
from ..packing import Packer, RowSpec
from ..training import warmup_cosine

NAME = "finetune"
HELP = "mixed context window fine-tuning of one method (resumable; DDP/FSDP under torchrun)"
CONFIG_KEYS = ("experiment.seed", "model.geometry", "extension.target_length", "needles.template",
               *(f"finetune.{k}" for k in ("steps", "batch_size", "grad_accum", "lr", "min_lr_ratio", "warmup_steps",
                                           "short_fraction", "needle_fraction", "answer_weight", "checkpoint_every",
                                           "gradient_checkpointing", "ce_chunk", "parallel", "attn_implementation",
                                           "row_length")))
#: arguments naming input artifacts, checked against their producers' manifests before any work
INPUTS = ("model", "corpus", "factors")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="base model folder")
    p.add_argument("--corpus", required=True, metavar="DIR", help="tokenized corpus (train split)")
    p.add_argument("--factors", required=True, metavar="FILE", help="the method's factors JSON")
    p.add_argument("--label", required=True, help="method name (e.g. longrope2, longrope2_no_mixed)")
    p.add_argument("--no-mixed", action="store_true", help="ablation: the same rows, long factors on every row")
    p.add_argument("--checkpoint-dir", metavar="DIR", help="resumable checkpoints (default <out>/../.checkpoints/<label>)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps with a checkpoint (resumable; no export)")


class CausalLMLoss(torch.nn.Module):
    """Wraps a causal LM so DDP/FSDP see one forward: summed token NLL and token count of a batch.

    With ``answer_weight`` w and an ``answers`` mask, the sum becomes ``count * (token mean + w * answer
    mean)``: a needle's few answer tokens keep their weight next to thousands of text tokens, alike in short
    and long rows (as pretraining weighs them), while every token stays supervised."""

    def __init__(self, lm, chunk: int, answer_weight: float = 0.0):
        super().__init__()
        self.lm, self.chunk, self.answer_weight = lm, chunk, answer_weight

    def forward(self, input_ids, position_ids, labels, answers=None):
        # no KV cache: with one, transformers would not derive per-document masks from position_ids
        hidden = self.lm.base_model(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
        target = labels[:, 1:]
        keep = target != IGNORE_INDEX
        rows, tgt = hidden[:, :-1][keep], target[keep]
        head = self.lm.get_output_embeddings()
        total = hidden.new_zeros((), dtype=torch.float32)
        for i in range(0, len(tgt), self.chunk):
            # recomputed in backward: at most `chunk` rows of vocabulary logits exist at any time
            total = total + checkpoint(_ce_sum, head, rows[i : i + self.chunk], tgt[i : i + self.chunk], use_reentrant=False)
        count = keep.sum()
        if self.answer_weight and answers is not None:
            is_answer = answers[:, 1:] & keep
            n_answer = is_answer.sum()
            answer_sum = _ce_sum(head, hidden[:, :-1][is_answer], target[is_answer])  # a few rows: no chunks
            total = total + self.answer_weight * count * answer_sum / n_answer.clamp(min=1)
        return total, count


def _ce_sum(head, rows, tgt):
    return F.cross_entropy(head(rows).float(), tgt, reduction="sum")


def setup_distributed():
    """(rank, world, device) -- a single process unless launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def wrap(model: torch.nn.Module, world: int, mode: str, device):
    if world == 1:
        return model
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.lm.base_model.layers:
            fully_shard(layer)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def state_dicts(model, opt):
    """Full (unsharded) model and optimizer state on CPU, the same for DDP, FSDP and one process."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, opt, options=opts)


def save_checkpoint(ckpts: Checkpoints, model, opt, sched, step: int, log: list, rank: int, world: int) -> None:
    """Full model/optimizer state gathered on every rank, written atomically by rank 0."""
    model_sd, opt_sd = state_dicts(model, opt)
    if rank == 0:
        ckpts.save(step, {"step": step, "model": model_sd, "optimizer": opt_sd, "scheduler": sched.state_dict(),
                          "torch_rng": torch.get_rng_state(), "log": log})
    if world > 1:
        dist.barrier()


def load_state_dicts(model, opt, model_sd, opt_sd):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
    set_model_state_dict(model, model_sd, options=opts)
    set_optimizer_state_dict(model, opt, opt_sd, options=opts)


def row_length(cfg: dict) -> int:
    """Tokens of a training row: the target length, or ``finetune.row_length`` where the experiment caps it
    (above L0, so long rows exist, and at most the target)."""
    target, cap = cfg["extension"]["target_length"], cfg["finetune"]["row_length"]
    if cap is None:
        return target
    l0 = cfg["model"]["geometry"]["original_length"]
    if not l0 < cap <= target:
        raise ConfigError("finetune.row_length", f"{cap} must be above L0={l0} and at most the target {target}")
    return cap


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    p, seed = cfg["finetune"], cfg["experiment"]["seed"]
    geom = rope.RopeGeometry.from_mapping(cfg["model"]["geometry"])
    length = row_length(cfg)  # the target, unless the experiment caps its rows
    scaling = models.load_factors(args.factors, geom)
    rank, world, device = setup_distributed()
    torch.manual_seed(seed)
    lm, tok = models.load_pretrained(args.model, device=device, dtype=torch.float32,
                                     attn_implementation=p["attn_implementation"])
    lm.base_model.rotary_emb = rope.RowwiseRotary(scaling, device, always_long=args.no_mixed)
    if p["gradient_checkpointing"]:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.train()
    model = wrap(CausalLMLoss(lm, p["ce_chunk"], p["answer_weight"]), world, p["parallel"], device)
    opt = torch.optim.AdamW(model.parameters(), lr=p["lr"], betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: warmup_cosine(step, p["steps"], p["warmup_steps"], p["min_lr_ratio"]))
    spec = RowSpec(length, geom.original_length, p["short_fraction"], seed, needle_fraction=p["needle_fraction"])
    train = TokenizedCorpus(args.corpus, "train")
    needles = NeedleBuilder(train, tok, cfg["needles"]["template"], seed) if p["needle_fraction"] else None
    packer = Packer(train, spec, tok.bos_token_id, needles)
    rows_per_step = p["batch_size"] * p["grad_accum"] * world

    # a checkpoint resumes only under the same config subset, inputs and row recipe (--no-mixed)
    ckpts = Checkpoints(Path(args.checkpoint_dir or Path(out).parent / ".checkpoints" / f"finetune-{args.label}"),
                        fingerprint({**cfg, "no_mixed": args.no_mixed},
                                    verify_inputs([args.model, args.corpus, args.factors])))
    start, log = 0, []
    if (state := ckpts.load()) is not None:
        load_state_dicts(model, opt, state["model"], state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start, log = state["step"], state["log"]
        if rank == 0:
            print(f"resuming from step {start} ({ckpts.resumed_from})", flush=True)
    prior_wall = log[-1]["wall_s"] if log else 0.0

    steps = p["steps"] if args.max_steps is None else min(p["steps"], args.max_steps)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    t0 = time.perf_counter() - (log[-1]["wall_s"] if log else 0.0)
    tokens = log[-1]["tokens"] if log else 0
    bar = progress.bar(range(start, steps), initial=start, total=steps, desc=f"finetune {args.label}", enabled=rank == 0)
    for step in bar:
        loss_sum, n_tok, n_long = 0.0, 0, 0
        for micro in range(p["grad_accum"]):
            first = step * rows_per_step + (micro * world + rank) * p["batch_size"]
            b = {k: v.to(device) for k, v in packer.batch(range(first, first + p["batch_size"])).items()}
            with autocast:
                nll, count = model(b["input_ids"], b["position_ids"], b["labels"], b["answers"])
            # normalise by this micro-batch's tokens; accumulation averages micro-batches
            (nll / count.clamp(min=1) / p["grad_accum"]).backward()
            loss_sum += float(nll.detach())
            n_tok += int(count)
            n_long += int(b["is_long"].sum())
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        tokens += rows_per_step * length
        wall = time.perf_counter() - t0
        rec = {"step": step + 1, "loss": loss_sum / max(n_tok, 1), "lr": sched.get_last_lr()[0],
               "grad_norm": float(grad_norm), "long_rows": n_long, "tokens": tokens, "wall_s": round(wall, 2)}
        log.append(rec)
        bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{tokens / wall:.0f}")
        if step + 1 < p["steps"] and ((step + 1) % p["checkpoint_every"] == 0 or step + 1 == steps):
            save_checkpoint(ckpts, model, opt, sched, step + 1, log, rank, world)
    if steps < p["steps"]:  # --max-steps: a slice of the run, resumable from its checkpoint, no export
        if rank == 0:
            print(f"stopped at step {steps} of {p['steps']} (checkpoint in {ckpts.directory})", flush=True)
    else:
        model_sd, _ = state_dicts(model, opt)
        if rank == 0:
            export(cfg, out, args, scaling, model_sd, log, prior_wall)
            ckpts.clear()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def export(cfg, out, args, scaling, model_sd, log, prior_wall: float) -> None:
    """Save the fine-tuned weights with the method's rope parameters (stock transformers loads it).

    The weights go into a fresh copy of the base model: the trained one may be FSDP-sharded and has
    the training-only rotary module and checkpointing wrappers."""
    lm, tok = models.load_pretrained(args.model, device="cpu", dtype=torch.float32)
    lm.load_state_dict({k.removeprefix("lm."): v for k, v in model_sd.items()})
    subset = {**cfg, "label": args.label, "no_mixed": args.no_mixed}
    with StageRun("finetune", out, subset, inputs=[args.model, args.corpus, args.factors], seed=cfg["experiment"]["seed"],
                  prior_wall_s=prior_wall, extra={"train_wall_s": log[-1]["wall_s"], "tokens": log[-1]["tokens"]}) as run_:
        models.save_model(run_.path("model"), lm, tok, scaling)
        run_.write_json("rope.json", scaling.to_dict() | {"finetuned": args.label, "no_mixed": args.no_mixed})
        run_.write_csv("train_log.csv", log)
    print(f"fine-tuned {args.label}: {len(log)} steps, {log[-1]['tokens']} tokens, final loss {log[-1]['loss']:.4f}, "
          f"{log[-1]['tokens'] / log[-1]['wall_s']:.0f} tok/s -> {out}")
