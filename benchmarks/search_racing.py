"""Cost of the LongRoPE2 search with and without racing (successive halving), same seed and budget.

Runs the full protocol (every candidate on the full needle set) and the raced search on the scale
model's search set, then reports for each: final best fitness, sample-forwards and wall time in all,
the sample-forwards / wall time at which it first reached the full protocol's final best fitness, and
its best candidate's needle-PPL on the search set and on the held-out set with 95% intervals. Goals:
racing spends <= 25% of the full protocol's sample-forwards, and its best candidate's held-out PPL lies
inside the full protocol's held-out interval.

    python benchmarks/search_racing.py --results results/scale --out benchmarks/search_racing.json
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _variants import emit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=Path("results/scale"), help="an experiment's results folder")
    ap.add_argument("--config", nargs="+", default=["config/config.yaml"])
    ap.add_argument("--generations", type=int, help="override search.generations")
    ap.add_argument("--race-samples", type=int, default=4)
    ap.add_argument("--race-keep", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch

    from longrope2 import config, models, rope
    from longrope2.stages.search import ppl_interval
    from longrope2.checkpoints import GenerationLog
    from longrope2.needles import load_set
    from longrope2.scoring import Evaluator
    from longrope2.search import Search, SearchConfig, Space

    torch.set_num_threads(args.threads)
    cfg = config.load(args.config)
    sc = cfg["search"]
    geom, target = rope.RopeGeometry.from_mapping(cfg["model"]["geometry"]), cfg["extension"]["target_length"]
    data = load_set(args.results / "needles" / "search_needle.npz")
    heldout = load_set(args.results / "needles" / "heldout_needle.npz")
    model, _ = models.load_pretrained(args.results / "base_model" / "model")
    space = Space.longrope2(geom, target)
    base = SearchConfig(sc["population"], args.generations or sc["generations"], sc["parents"], sc["mutants"],
                        sc["crossovers"], sc["mutation_p"], sc["initial"])
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, racing in (("paper_protocol", False), ("racing", True)):
            scfg = SearchConfig(**{**base.__dict__, "racing": racing, "race_samples": args.race_samples,
                                   "race_keep": args.race_keep})
            fitness = Evaluator(model, data["input_ids"], data["labels"], sc["batch_tokens"])
            search = Search(space, fitness, scfg, cfg["experiment"]["seed"], GenerationLog(Path(tmp) / f"{name}.jsonl", name))
            best = search.run()
            scaling = space.scaling(best)
            check = Evaluator(model, heldout["input_ids"], heldout["labels"], sc["batch_tokens"])
            runs[name] = {"trace": search.trace, "best": best,
                          "search_set": ppl_interval(*fitness.per_sample(scaling), cfg["experiment"]["seed"]),
                          "heldout": ppl_interval(*check.per_sample(scaling), cfg["experiment"]["seed"])}
    target_nll = runs["paper_protocol"]["trace"][-1]["best_nll"]
    result = {"samples": int(data["input_ids"].shape[0]), "length": int(data["input_ids"].shape[1]),
              "generations": base.generations, "race_samples": args.race_samples, "race_keep": args.race_keep}
    for name, r in runs.items():
        t = r["trace"]
        hit = next((x for x in t if x["best_nll"] <= target_nll + 1e-12), None)
        result[name] = {
            "best_needle_ppl": math.exp(t[-1]["best_nll"]), "best_d_rcd": r["best"][0],
            "candidates": t[-1]["evaluated"], "sample_forwards": t[-1]["sample_forwards"], "wall_s": t[-1]["wall_s"],
            "reached_paper_best_at": None if hit is None else {
                "generation": hit["generation"], "sample_forwards": hit["sample_forwards"], "wall_s": hit["wall_s"]},
            "best_search_set": r["search_set"], "best_heldout": r["heldout"],
        }
    full, raced = result["paper_protocol"], result["racing"]
    ref = full["best_heldout"]["ppl"]
    result["goals"] = {
        "sample_forward_ratio": raced["sample_forwards"] / full["sample_forwards"],
        "ratio_at_most_0.25": raced["sample_forwards"] <= 0.25 * full["sample_forwards"],
        "racing_heldout_inside_full_interval": ref["lo"] <= raced["best_heldout"]["ppl"]["estimate"] <= ref["hi"],
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
