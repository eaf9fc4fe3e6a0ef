"""Needle-PPL evaluator vs the naive full-logits one: time and peak memory at one length (JSON out).

Variants: ``fast`` (the pipeline's: last layer and LM head only at the labelled positions), ``whole`` (every
layer at every position, LM head only at the labelled ones), ``naive`` (full-vocabulary logits everywhere).

    python benchmarks/evaluator.py --model results/scale/base_model/model --length 1024 --out benchmarks/runs/evaluator.json
    python benchmarks/evaluator.py --random smollm2 --length 32768 --batch 1   # SmolLM2-135M shape, random weights

Each variant runs in a fresh subprocess so peak memory (CUDA max allocated, or CPU max RSS above the
process's RSS after loading the model) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _variants import emit, run_variant  # noqa: E402

SHAPES = {
    # vocab, hidden, layers, heads, kv heads, head_dim, intermediate, rope base
    "smollm2": dict(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, head_dim=64, intermediate_size=1536, rope_theta=100000.0),
    "scale": dict(vocab_size=2048, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=4, head_dim=32, intermediate_size=384, rope_theta=10000.0),
}


def build(args):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from longrope2.models import device_and_dtype

    device, dtype = device_and_dtype()
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    else:
        shape = dict(SHAPES[args.random])
        theta = shape.pop("rope_theta")
        cfg = LlamaConfig(**shape, max_position_embeddings=args.length, tie_word_embeddings=True,
                          rope_parameters={"rope_type": "default", "rope_theta": theta})
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg).to(dtype)
    return model.to(device).eval(), device


def child(args) -> dict:
    import torch

    from longrope2 import scoring

    model, device = build(args)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (args.batch, args.length), generator=g).to(device)
    labels = torch.full_like(ids, -100)
    labels[:, -8:] = ids[:, -8:]  # a needle answer: the last 8 tokens
    fn = scoring.score_naive if args.variant == "naive" else scoring.score
    if args.variant == "whole":
        scoring._subset_ok = lambda *a: False  # the decoder runs whole
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # after loading the model
    fn(model, ids[:, :64], labels[:, :64])  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = fn(model, ids, labels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024)
    return {"variant": args.variant, "seconds": min(times), "peak_mib": round(peak, 1),
            "nll": out.nll.tolist(), "device": str(device),
            "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model folder")
    src.add_argument("--random", choices=list(SHAPES), help="random weights of a known shape")
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variant", choices=["fast", "whole", "naive"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(child(args)))
        return
    results = {"length": args.length, "batch": args.batch, "model": args.model or f"random:{args.random}"}
    for variant in ("fast", "whole", "naive"):
        results[variant] = run_variant(__file__, variant)
    f, w, n = results.get("fast", {}), results.get("whole", {}), results.get("naive", {})
    if "seconds" in f and "seconds" in w:
        results["speedup_vs_whole"] = round(w["seconds"] / f["seconds"], 2)
        results["max_abs_nll_diff_vs_whole"] = max(abs(a - b) for a, b in zip(f["nll"], w["nll"]))
    if "seconds" in f and "seconds" in n:
        results["speedup"] = round(n["seconds"] / f["seconds"], 2)
        results["memory_ratio"] = round(n["peak_mib"] / max(f["peak_mib"], 1e-3), 2)
        results["max_abs_nll_diff"] = max(abs(a - b) for a, b in zip(f["nll"], n["nll"]))
    emit(results, args.out)


if __name__ == "__main__":
    main()
