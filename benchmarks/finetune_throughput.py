"""Fine-tuning step throughput and peak memory: the pipeline's loop vs a naive one (JSON out).

pipeline: per-row short/long RoPE, per-document masks derived by transformers from position ids,
          activation checkpointing, chunked cross-entropy (never the logits of a whole row);
naive:    HF forward with ``labels=`` (full-vocabulary logits), a dense float L x L mask per row, no
          checkpointing.

    python benchmarks/finetune_throughput.py --random scale --length 1024 --batch 4
    python benchmarks/finetune_throughput.py --random smollm2 --length 32768 --batch 1 --attn flex_attention  # GPU

MFU uses the PaLM count: 6 N + 12 layers x heads x head_dim x L flops per token (fwd + bwd), against the
device's dense bf16 peak given by --peak-tflops (H100 SXM 989, H200 989).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _variants import emit, run_variant  # noqa: E402
from evaluator import SHAPES  # noqa: E402


def rows(batch: int, length: int, l0: int, vocab: int, seed: int = 0):
    """Half short rows (documents of <= L0 with restarting positions), half long rows."""
    import torch

    rng = np.random.default_rng(seed)
    ids = torch.from_numpy(rng.integers(3, vocab, (batch, length)))
    pos = torch.zeros(batch, length, dtype=torch.long)
    for b in range(batch):
        if b % 2 == 0:
            t = 0
            while t < length:
                n = min(int(rng.integers(l0 // 2, l0)), length - t)
                pos[b, t : t + n] = torch.arange(n)
                t += n
        else:
            pos[b] = torch.arange(length)
    return ids, pos


def dense_mask(pos, dtype):
    """Additive float mask [B, 1, L, L]: causal and within a document (what a naive loop materializes)."""
    import torch

    doc = (pos == 0).cumsum(-1)
    L = pos.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=pos.device).tril()
    allowed = causal[None] & (doc[:, :, None] == doc[:, None, :])
    return torch.zeros(allowed.shape, dtype=dtype, device=pos.device).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def child(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from longrope2 import rope
    from longrope2.models import device_and_dtype
    from longrope2.stages.finetune import CausalLMLoss

    device, dtype = device_and_dtype()
    shape = dict(SHAPES[args.random])
    theta = shape.pop("rope_theta")
    cfg = LlamaConfig(**shape, max_position_embeddings=args.l0, tie_word_embeddings=True,
                      rope_parameters={"rope_type": "default", "rope_theta": theta})
    cfg._attn_implementation = args.attn if args.variant == "pipeline" else "sdpa"
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(cfg).to(device).train()
    geom = rope.RopeGeometry.from_hf_config(cfg, original_length=args.l0)
    scaling = rope.longrope2(geom, args.length)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0)
    ids, pos = rows(args.batch, args.length, args.l0, cfg.vocab_size)
    ids, pos = ids.to(device), pos.to(device)
    if args.variant == "pipeline":
        lm.base_model.rotary_emb = rope.RowwiseRotary(scaling, device)
        if args.checkpointing == "on":
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = CausalLMLoss(lm, 4096)

        def step():
            with autocast:
                nll, n = model(ids, pos, ids)
            (nll / n).backward()
    else:
        rope.apply_scaling(lm, scaling)
        mask = dense_mask(pos, torch.float32 if device.type == "cpu" else torch.bfloat16)

        def step():
            with autocast:
                out = lm(input_ids=ids, position_ids=pos, attention_mask=mask, labels=ids, use_cache=False)
            out.loss.backward()

    def timed():
        t0 = time.perf_counter()
        step()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # after building the model and the batch
    timed()  # warm-up (allocations, kernels)
    times = [timed() for _ in range(args.steps)]
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
    tok_s = args.batch * args.length / float(np.median(times))
    n_params = sum(p.numel() for p in lm.parameters())
    flops_per_token = 6 * n_params + 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * args.length
    res = {"variant": args.variant, "tokens_per_s": round(tok_s, 1), "step_s": round(float(np.median(times)), 4),
           "peak_mib": round(peak, 1), "params": n_params, "device": str(device), "attn": cfg._attn_implementation,
           "checkpointing": args.checkpointing if args.variant == "pipeline" else "off",
           "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None}
    if device.type == "cuda":
        res["mfu"] = round(tok_s * flops_per_token / (args.peak_tflops * 1e12), 4)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--random", choices=list(SHAPES), default="scale")
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--l0", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--checkpointing", choices=["on", "off"], default="on", help="activation checkpointing (pipeline)")
    ap.add_argument("--attn", default="sdpa", help="pipeline attention implementation (sdpa, flex_attention, ...)")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--variants", nargs="+", default=["pipeline", "naive"])
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(child(args)))
        return
    result = {"model": f"random:{args.random}", "length": args.length, "l0": args.l0, "batch": args.batch}
    for v in args.variants:
        result[v] = run_variant(__file__, v)
    p, n = result.get("pipeline", {}), result.get("naive", {})
    if "tokens_per_s" in p and "tokens_per_s" in n:
        result["speedup"] = round(p["tokens_per_s"] / n["tokens_per_s"], 2)
        result["memory_ratio_naive_over_pipeline"] = round(n["peak_mib"] / max(p["peak_mib"], 1e-3), 2)
    emit(result, args.out)


if __name__ == "__main__":
    main()
