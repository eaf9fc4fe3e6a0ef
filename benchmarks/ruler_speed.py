"""RULER through lm-eval: LongContextLM vs lm-eval's stock HFLM, same model, same samples (JSON out).

    python benchmarks/ruler_speed.py --out benchmarks/ruler_speed.json            # 16 samples per (task, length)
    python benchmarks/ruler_speed.py --out /tmp/ruler_speed.json --quick          # 4 samples, 1 repeat

Offline: a byte-level BPE tokenizer trained on standard-library sources (as the tests do) with a Llama-style
BOS post-processor, and a random-init Llama (4 layers, hidden 128, 4 heads of 32, rope_theta 1e4, L0 = 256)
exported with the LongRoPE2 seed factors to 1024 tokens (``models.save_model``) and loaded back with
``from_pretrained``. RULER samples of a few tasks at each length are written as JSONL and evaluated with
``harness.run`` (``simple_evaluate`` over inline task configs) through both LMs, greedy, same batch size.

LMs: ``ours`` (LongContextLM as the pipeline builds it: left-padded batches of mixed prompt lengths and
prompt-lookup drafting, ``draft_tokens`` 16), ``ours_no_draft`` (the same with ``draft_tokens=0``: one token
per row and forward, like HFLM) and ``stock`` (HFLM). The random-init model falls into short loops
("papapa...", "::::"), which drafting guesses almost perfectly: ``ours`` over ``stock`` is an upper end for
drafting, ``ours_no_draft`` over ``stock`` what batching and the decoding loop alone give.

Per (LM, length): wall seconds of the whole ``harness.run`` (min/median/max over --repeats, after one
warm-up run on the first sample of each task), samples/s from the median, the seconds spent inside
``generate_until``, per-task scores, and whether scores and predictions agree with the stock LM's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from longrope2.artifacts import cpu_model

TASKS = ("niah_single_1", "niah_multikey_1", "vt", "fwe")
LENGTHS = (512, 1024)
L0, TARGET = 256, 1024
SHAPE = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
             head_dim=32, max_position_embeddings=L0, tie_word_embeddings=True)


def build_tokenizer(docs: list[str], out: Path):
    """The tests' tokenizer kind (byte-level BPE, digits split), adding one BOS like a Llama tokenizer, so
    HFLM's default encoding equals LongContextLM's and the RULER generator's (BOS + text)."""
    from tokenizers import processors

    from longrope2.corpus import train_tokenizer

    tok = train_tokenizer(docs, vocab_size=1024, out_dir=out)
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.bos_token_id)])
    tok.save_pretrained(out)
    return tok


def build_model(tok, folder: Path, longrope: bool):
    """A random-init Llama saved with LongRoPE2's seed factors (L0 256 -> 1024), or plain; loaded back."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from longrope2 import models, rope

    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                      **SHAPE)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    geom = rope.RopeGeometry.from_hf_config(cfg, original_length=L0)
    scaling = rope.longrope2(geom, TARGET) if longrope else rope.none(geom, TARGET)
    models.save_model(folder, model, tok, scaling)
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return loaded, scaling


def write_samples(tok, haystack: str, root: Path, length: int, n: int) -> tuple[list[dict], dict]:
    from longrope2.evaluation import harness, ruler

    configs, shapes = [], {}
    for task in TASKS:
        docs = ruler.generate(task, length, n, tok, haystack, seed=0)
        path = root / f"{task}-{length}.jsonl"
        path.write_text("".join(json.dumps(d) + "\n" for d in docs))
        configs.append(harness.task_config(task, length, path, cache_dir=root / "datasets"))
        counts = Counter(d["prompt_tokens"] for d in docs)
        shapes[task] = {"max_new_tokens": docs[0]["max_new_tokens"], "prompt_tokens_min": min(counts),
                        "prompt_tokens_max": max(counts), "distinct_prompt_lengths": len(counts)}
    return configs, shapes


class Timed:
    """Wraps an LM's generate_until to add up the seconds spent in it."""

    def __init__(self, lm):
        self.seconds = 0.0
        inner = lm.generate_until

        def wrapped(requests, *a, **kw):
            t0 = time.perf_counter()
            try:
                return inner(requests, *a, **kw)
            finally:
                self.seconds += time.perf_counter() - t0

        lm.generate_until = wrapped


def measure(lm, configs, repeats: int) -> dict:
    from longrope2.evaluation import harness

    timer = Timed(lm)
    harness.run(lm, configs, limit=1)  # warm-up: datasets' Arrow cache, first-call overheads
    walls, gens, res = [], [], None
    for _ in range(repeats):
        timer.seconds = 0.0
        t0 = time.perf_counter()
        out = harness.run(lm, configs)
        walls.append(time.perf_counter() - t0)
        gens.append(timer.seconds)
        preds = {name: [r["prediction"] for r in recs] for name, recs in out["samples"].items()}
        if res is not None and preds != res["predictions"]:
            raise SystemExit(f"{type(lm).__name__}: predictions changed between repeats")
        res = {"predictions": preds, "scores": {n: t["score"] for n, t in out["tasks"].items()},
               "n": sum(t["n"] for t in out["tasks"].values())}
    med = statistics.median(walls)
    return {
        "wall_s": {"min": round(min(walls), 3), "median": round(med, 3), "max": round(max(walls), 3)},
        "generate_until_s_median": round(statistics.median(gens), 3),
        "samples": res["n"],
        "samples_per_s": round(res["n"] / med, 3),
        "samples_per_s_best": round(res["n"] / min(walls), 3),  # from the fastest run: least disturbed by others
        "scores": res["scores"],
        "_predictions": res["predictions"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--quick", action="store_true", help="4 samples per (task, length), 1 repeat")
    ap.add_argument("--n", type=int, help="samples per (task, length) (default 16, --quick 4)")
    ap.add_argument("--repeats", type=int, help="timed runs per (LM, length) (default 3, --quick 1)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the same for both LMs)")
    ap.add_argument("--plain", action="store_true", help="no LongRoPE2 factors (rope_type default)")
    ap.add_argument("--draft-tokens", type=int, default=16, help="LongContextLM draft_tokens of `ours` (default 16, "
                    "LongContextLM's own default)")
    args = ap.parse_args()
    n = args.n or (4 if args.quick else 16)
    repeats = args.repeats or (1 if args.quick else 3)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # read when tqdm is imported; bars off for both LMs
    import logging

    import torch
    import transformers
    from importlib import metadata

    from lm_eval.models.huggingface import HFLM

    from longrope2.artifacts import git_commit
    from longrope2.corpus import stdlib_documents
    from longrope2.evaluation.lm import LongContextLM
    from longrope2.generation import switch_length

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ruler_speed-") as tmp:
        root = Path(tmp)
        docs = [d.text for _, d in zip(range(60), stdlib_documents())]
        tok = build_tokenizer(docs, root / "tokenizer")
        model, scaling = build_model(tok, root / "model", longrope=not args.plain)
        haystack = "\n\n".join(docs)
        per_length = {}
        for length in LENGTHS:
            configs, shapes = write_samples(tok, haystack, root, length, n)
            lms = {"ours": LongContextLM(model, tok, max_length=length, batch_size=args.batch_size,
                                         draft_tokens=args.draft_tokens),
                   "ours_no_draft": LongContextLM(model, tok, max_length=length, batch_size=args.batch_size,
                                                  draft_tokens=0),
                   "stock": HFLM(pretrained=model, tokenizer=tok, max_length=length, batch_size=args.batch_size,
                                 device="cpu", dtype="float32")}
            res = {side: measure(lm, configs, repeats) for side, lm in lms.items()}
            preds = {side: r.pop("_predictions") for side, r in res.items()}
            entry = {**res, "task_shapes": shapes}
            line = []
            for side in ("ours", "ours_no_draft"):
                same = sum(x == y for name in preds[side] for x, y in zip(preds[side][name], preds["stock"][name]))
                tag = "" if side == "ours" else "_no_draft"
                entry["speedup" + tag] = round(res[side]["samples_per_s"] / res["stock"]["samples_per_s"], 2)
                entry["scores_equal" + tag] = res[side]["scores"] == res["stock"]["scores"]
                entry["predictions_equal" + tag] = f"{same}/{res[side]['samples']}"
                line.append(f"{side} {res[side]['samples_per_s']:.2f} samples/s ({entry['speedup' + tag]}x, scores equal "
                            f"{entry['scores_equal' + tag]}, predictions equal {same}/{res[side]['samples']})")
            per_length[str(length)] = entry
            print(f"length {length}: {', '.join(line)}, stock {res['stock']['samples_per_s']:.2f} samples/s", flush=True)
        rp = model.config.rope_parameters
        sides = ("ours", "ours_no_draft", "stock")
        tot = {side: sum(per_length[k][side]["samples"] for k in per_length) /
               sum(per_length[k][side]["wall_s"]["median"] for k in per_length) for side in sides}
        best = {side: sum(per_length[k][side]["samples"] for k in per_length) /
                sum(per_length[k][side]["wall_s"]["min"] for k in per_length) for side in sides}
    speedup = round(tot["ours"] / tot["stock"], 2)
    result = {
        "setup": {
            "tasks": list(TASKS), "lengths": list(LENGTHS), "samples_per_task": n, "repeats": repeats,
            "warmup": "one harness.run with limit=1 per (LM, length)", "batch_size": args.batch_size,
            "decoding": "greedy; max_gen_toks from each task config (same for both LMs), until=[] (+ eos text)",
            "timed": "wall seconds of harness.run (lm_eval.simple_evaluate incl. request building and scoring)",
            "model": {"arch": "LlamaForCausalLM, random init (seed 0)", **SHAPE, "vocab_size": model.config.vocab_size,
                      "rope_theta": 10000.0, "dtype": "float32", "device": "cpu",
                      "rope_type": rp["rope_type"], "scaling": scaling.method,
                      "original_max_position_embeddings": L0 if not args.plain else None,
                      "rope_switch_length": switch_length(model),
                      "note": ("LongRoPE2 seed factors (rope.longrope2 without search), short 1 / long >= s; every "
                               "prompt is already past L0 at the first forward, so stock generate is exact here too")
                      if not args.plain else "plain RoPE"},
            "tokenizer": "byte-level BPE, vocab 1024, trained on 60 stdlib sources, Llama-style BOS post-processor",
            "stock": "lm_eval.models.huggingface.HFLM(pretrained=<model object>, tokenizer=<tokenizer object>, "
                     "max_length=<length>, batch_size=<batch_size>, device='cpu', dtype='float32'): left-padded "
                     "batches of mixed prompt lengths, model.generate",
            "ours": "longrope2.evaluation.lm.LongContextLM(model, tokenizer, max_length=<length>, "
                    f"batch_size=<batch_size>, draft_tokens={args.draft_tokens}): greedy_generate over left-padded "
                    "batches of mixed prompt lengths (same side of L0), prompt-lookup drafting",
            "ours_no_draft": "the same with draft_tokens=0: one token per row and forward",
        },
        "machine": {
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "lm_eval": metadata.version("lm_eval"),
            "git_commit": git_commit(),
        },
        "results": per_length,
        "overall": {"ours_samples_per_s": round(tot["ours"], 3), "stock_samples_per_s": round(tot["stock"], 3),
                    "speedup": speedup,
                    "speedup_best": round(best["ours"] / best["stock"], 2),
                    "ours_no_draft_samples_per_s": round(tot["ours_no_draft"], 3),
                    "speedup_no_draft": round(tot["ours_no_draft"] / tot["stock"], 2),
                    "speedup_no_draft_best": round(best["ours_no_draft"] / best["stock"], 2),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                    "scores_equal": all(v["scores_equal"] for v in per_length.values()),
                    "scores_equal_no_draft": all(v["scores_equal_no_draft"] for v in per_length.values()),
                    "goal": "ours >= 3x stock samples/s at equal scores",
                    "goal_met": speedup >= 3 and all(v["scores_equal"] for v in per_length.values())},
        "total_wall_s": round(time.perf_counter() - t_start, 1),
    }
    text = json.dumps(result, indent=2, sort_keys=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    o = result["overall"]
    print(f"overall: ours {o['ours_samples_per_s']} samples/s, stock {o['stock_samples_per_s']} samples/s, "
          f"speedup {o['speedup']}x (no drafting: {o['ours_no_draft_samples_per_s']} samples/s, "
          f"{o['speedup_no_draft']}x), scores equal {o['scores_equal']}, goal met {o['goal_met']} "
          f"({result['machine']['cpu_model']}, {result['machine']['torch_threads']} torch thread(s), "
          f"{result['total_wall_s']} s)")


if __name__ == "__main__":
    main()
