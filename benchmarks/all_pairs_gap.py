"""Why the all-pairs search ablation beats LongRoPE2 before fine-tuning: the factor space or the search budget.

Both searches get the same budget and objective (needle-PPL at the target); they differ in the space. In
LongRoPE2's, pairs >= d_rcd take factors in [s, 2s] and pairs below follow NTK anchored at pair d_rcd; in
the ablation's every pair is free in [1, 2s]. For one experiment's results this scores, on the search set
and on the held-out set (per sample, paired), these factor vectors:

- ``longrope2`` and ``all_pairs``: the two searches' best candidates, as written by the search stage
  (``--other`` names another searched method to compare with, e.g. ``longrope``; its rows take its name);
- ``all_pairs_low+longrope2_high``: the ablation's factors below LongRoPE2's d_rcd, LongRoPE2's above
  (LongRoPE2 with its NTK fill replaced);
- ``all_pairs_high>=s``: the ablation's candidate with the pairs >= LongRoPE2's d_rcd raised into [s, 2s]
  (the bound alone, no NTK fill);
- ``longrope2_space_nearest``: the point of LongRoPE2's space closest to the ablation's candidate (its
  pairs >= d clipped into [s, 2s], NTK fill below), best on the search set over every d in [d10_tcd, d_tcd];
- ``longrope2_budget_x<k>``: LongRoPE2's search rerun with k times the generations (same seed and config:
  its first generations repeat the stage's, and with k = 1 its best is the stage's);
- references (``yarn``, ``ntk``).

If the in-space points stay where LongRoPE2's best is while leaving the NTK fill out recovers the
ablation's score, the space is the cause; if a longer search closes the gap, the budget is.

    python benchmarks/all_pairs_gap.py --results results/paper-seed1234 --out benchmarks/all_pairs_gap_machine-d_seed1234.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _variants import emit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, required=True, help="an experiment's results folder (searched with --other too)")
    ap.add_argument("--other", default="longrope2_all_pairs", help="the searched method LongRoPE2 is compared with")
    ap.add_argument("--budget-multiple", type=int, default=4, help="generations of the longer LongRoPE2 search, as a multiple")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch

    from longrope2 import artifacts, models, rope, stats
    from longrope2.checkpoints import GenerationLog
    from longrope2.needles import load_set
    from longrope2.scoring import Evaluator
    from longrope2.search import Search, Space
    from longrope2.stages.search import ppl_interval, search_config

    torch.set_num_threads(args.threads)
    search_dir = args.results / "search"
    manifest = json.loads((search_dir / "longrope2" / "manifest.json").read_text())
    cfg = manifest["config"]
    seed, sc = cfg["experiment"]["seed"], cfg["search"]
    geom, target = rope.RopeGeometry.from_mapping(cfg["model"]["geometry"]), cfg["extension"]["target_length"]
    s = rope.scale_factor(geom, target)
    lr2 = json.loads((search_dir / "longrope2" / "factors.json").read_text())
    other = json.loads((search_dir / args.other / "factors.json").read_text())
    a, b, d_a = np.asarray(lr2["long_factor"]), np.asarray(other["long_factor"]), int(lr2["d_rcd"])
    o = "all_pairs" if args.other == "longrope2_all_pairs" else args.other  # the JSON's names for it

    model, _ = models.load_pretrained(args.results / "base_model" / "model")
    sets = {name: load_set(args.results / "needles" / f"{name}_needle.npz") for name in ("search", "heldout")}
    evals = {name: Evaluator(model, d["input_ids"], d["labels"], sc["batch_tokens"]) for name, d in sets.items()}
    space = Space.longrope2(geom, target)

    candidates = {
        "longrope2": rope.longrope2(geom, target, d_a, a[d_a:]),
        o: rope.longrope(geom, target, b),
        f"{o}_low+longrope2_high": rope.longrope(geom, target, np.concatenate([b[:d_a], a[d_a:]])),
        f"{o}_high>=s": rope.longrope(geom, target, np.concatenate([b[:d_a], np.clip(b[d_a:], s, 2 * s)])),
        "yarn": rope.yarn(geom, target),
        "ntk": rope.ntk(geom, target),
    }
    # the nearest in-space point to the ablation's candidate, for each d_rcd the search explores
    nearest = {}
    for d in space.strata:
        scaling = space.scaling(space.make(d, b[d:]))
        nearest[d] = (scaling, evals["search"](scaling)[0])
    d_near = min(nearest, key=lambda d: nearest[d][1])
    candidates["longrope2_space_nearest"] = nearest[d_near][0]

    # LongRoPE2's search with k times the generations, everything else as the stage ran it
    scfg = search_config(sc, None)
    scfg.generations *= args.budget_multiple
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        longer = Search(space, evals["search"], scfg, seed, GenerationLog(Path(tmp) / "gen.jsonl", "budget"))
        best = longer.run()
    budget_name = f"longrope2_budget_x{args.budget_multiple}"
    candidates[budget_name] = space.scaling(best)
    budget = {"generations": scfg.generations, "candidates": len(longer.cache),
              "sample_forwards": longer.trace[-1]["sample_forwards"], "wall_s": round(time.time() - t0, 1),
              "d_rcd": int(best[0]),
              # per generation: the first ones should repeat the stage's trace.csv (same seed)
              "best_needle_ppl_by_generation": [round(math.exp(g["best_nll"]), 6) for g in longer.trace]}

    # the least factor any point of LongRoPE2's space gives each pair: the NTK fill anchored at s from d_tcd
    d_tcd = rope.critical_dim(geom)
    floor = np.concatenate([rope.ntk_below(geom, d_tcd, s), np.full(geom.n_pairs - d_tcd, s)])
    scores = {name: {k: ev.per_sample(sc_) for k, ev in evals.items()} for name, sc_ in candidates.items()}
    result = {
        "results": str(args.results), "other": args.other, "seed": seed, "machine": artifacts.device_description(),
        "scale_factor": s, "d_tcd": d_tcd, "d10_tcd": rope.critical_dim_10(geom),
        "longrope2_d_rcd": d_a, "nearest_d_rcd": d_near,
        "nearest_by_d_rcd_search_ppl": {str(d): math.exp(v[1]) for d, v in nearest.items()},
        "budget_search": budget,
        # the pairs where the other candidate lies outside LongRoPE2's space, below its floor
        f"{o}_below_space_floor": [int(i) for i in np.flatnonzero(b < floor - 1e-9)],
        "candidates": {},
    }
    for name, by_set in scores.items():
        row = {"long_factor": [round(float(x), 4) for x in candidates[name].long_factor]}
        for k, (nll, hit) in by_set.items():
            row[k] = ppl_interval(nll, hit, seed)
            ref_nll = scores["longrope2"][k][0]
            # mean per-sample NLL minus LongRoPE2's best (nats, paired; < 0: better than LongRoPE2)
            row[k]["minus_longrope2"] = stats.paired_bootstrap_diff(nll, ref_nll, seed=seed).as_dict()
        result["candidates"][name] = row
    emit(result, args.out)


if __name__ == "__main__":
    main()
