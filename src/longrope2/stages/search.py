"""Factor search stage: LongRoPE2 (needle-PPL, pairs >= d_rcd, d_rcd searched), LongRoPE v1 (all pairs,
[1, 1.25 s], plain PPL) and the paper's two ablations, all with the same engine (``longrope2.search``).

Outputs ``factors.json`` (keys ``method``, ``d_rcd``, ``long_factor``, ``short_factor``,
``attention_factor``, ``fitness`` and the HF rope parameters), ``trace.csv`` (per generation) and
``search.png``. Resumes from its per-generation log in ``--checkpoint-dir`` after a kill.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from pathlib import Path

import numpy as np

from .. import methods, models, progress, rope, stats
from ..artifacts import StageRun, verify_inputs
from ..checkpoints import GenerationLog, fingerprint
from ..errors import ConfigError
from ..needles import load_set
from ..scoring import Evaluator, EvaluatorPool
from ..search import Search, SearchConfig, Space

NAME = "search"
HELP = "evolutionary search of per-pair rescale factors (LongRoPE2, LongRoPE, ablations)"
CONFIG_KEYS = ("experiment.seed", "model.geometry", "extension.target_length", "search.population",
               "search.generations", "search.parents", "search.mutants", "search.crossovers", "search.mutation_p",
               "search.initial", "search.batch_tokens", "search.racing", "search.stratified",
               "search.heldout_references")
#: arguments naming input artifacts, checked against their producers' manifests before any work
INPUTS = ("model", "needles")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="base model folder")
    p.add_argument("--needles", required=True, metavar="DIR", help="needles stage folder")
    p.add_argument("--method", required=True, choices=methods.SEARCHED_METHODS, help="which search to run")
    p.add_argument("--checkpoint-dir", metavar="DIR", help="per-generation log to resume from (default <out>/../.checkpoints)")
    p.add_argument("--racing", choices=["on", "off"], help="override search.racing.enabled")
    p.add_argument("--devices", nargs="+", metavar="DEV",
                   help="score candidates on these devices, one model copy and evaluator each: a GPU count N "
                        "(cuda:0..N-1; the rule passes its gpu resource) or device names (cuda:1 cpu ...); "
                        "default one device. The result does not depend on it")


def devices(spec: list[str] | None) -> list:
    """The evaluators' devices: ``None`` -> the default device (a GPU where present, else the CPU); ``["N"]``
    -> the first N GPUs (N = 0: the CPU); otherwise the named devices."""
    import torch

    if not spec:
        return [models.device_and_dtype()[0]]
    if len(spec) == 1 and spec[0].isdigit():
        n = int(spec[0])
        if n == 0:
            return [torch.device("cpu")]
        if n > torch.cuda.device_count():
            raise ConfigError("--devices", f"{n} GPUs asked, {torch.cuda.device_count()} visible")
        return [torch.device("cuda", i) for i in range(n)]
    return [torch.device(d) for d in spec]


def make_space(kind: str, geom, target: int, method: str) -> tuple[Space, list[np.ndarray]]:
    if kind == "longrope2":
        return Space.longrope2(geom, target, method), []
    seeds = [rope.pi(geom, target).long_factor, rope.ntk(geom, target).long_factor, rope.yarn(geom, target).long_factor]
    if kind == "v1":
        return Space.all_pairs(geom, target, 1.25, method), seeds
    return Space.all_pairs(geom, target, 2.0, method), seeds


def ppl_interval(nll: np.ndarray, hit: np.ndarray, seed: int) -> dict:
    """PPL of the labelled tokens (exp of the mean per-sample NLL) and accuracy, each with a 95% interval."""
    mean = stats.bootstrap_mean(nll, seed=seed)
    acc = stats.wilson(int(hit.sum()), len(hit))
    return {"n": len(nll), "ppl": {"estimate": math.exp(mean.estimate), "lo": math.exp(mean.lo), "hi": math.exp(mean.hi)},
            "accuracy": acc.as_dict()}


def overlap(a: dict, b: dict) -> bool:
    """Whether two intervals (``lo``/``hi`` mappings) overlap: the check's "agree"."""
    return a["lo"] <= b["hi"] and b["lo"] <= a["hi"]


def overfit_check(best: tuple[np.ndarray, np.ndarray], held: tuple[np.ndarray, np.ndarray],
                  references: dict[str, tuple[np.ndarray, np.ndarray]], seed: int) -> dict:
    """The best candidate on the search set and on held-out samples, and against unselected references.

    Search-set and held-out documents can differ in difficulty (a split of a few dozen documents): then
    every method, selected or not, scores worse on one of them and the two intervals part for reasons
    that are not the search's. The paired difference best - reference (per-sample NLL, same samples) is
    the same on both sets unless the search fitted its own samples; ``references`` holds each reference's
    per-sample (NLL, exact match) on the search set and on held-out."""
    check = {"search_set": ppl_interval(*best, seed), "heldout": ppl_interval(*held, seed)}
    check["agree"] = overlap(check["search_set"]["ppl"], check["heldout"]["ppl"])  # the two 95% intervals overlap
    check["references"] = {}
    for name, (ref_search, ref_held) in references.items():
        diff = [stats.paired_bootstrap_diff(best[0], ref_search[0], seed=seed).as_dict(),
                stats.paired_bootstrap_diff(held[0], ref_held[0], seed=seed).as_dict()]
        check["references"][name] = {
            "ppl": {"search_set": ppl_interval(*ref_search, seed)["ppl"], "heldout": ppl_interval(*ref_held, seed)["ppl"]},
            # mean per-sample NLL of the best minus the reference's (nats; < 0: the best is better)
            "best_minus_reference": {"search_set": diff[0], "heldout": diff[1]},
            "agree": overlap(*diff),
        }
    return check


def counts(values) -> dict[str, int]:
    return {str(d): n for d, n in sorted(Counter(values).items())}


def search_config(sc: dict, racing: str | None) -> SearchConfig:
    race = sc["racing"]
    enabled = race["enabled"] if racing is None else racing == "on"
    return SearchConfig(sc["population"], sc["generations"], sc["parents"], sc["mutants"], sc["crossovers"],
                        sc["mutation_p"], sc["initial"], enabled, race["samples"], race["keep"], sc["stratified"])


def plot(trace: list[dict], best: rope.RopeScaling, geom, target: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    g = [t["generation"] for t in trace]
    a1.plot(g, [math.exp(t["best_nll"]) for t in trace], "o-", label="best")
    a1.plot(g, [math.exp(t["median_nll"]) for t in trace], "s--", label="median")
    a1.set_xlabel("generation")
    a1.set_ylabel("fitness (PPL of labelled tokens)")
    a1.set_yscale("log")
    a1.legend()
    a1.set_title(f"{best.method} search")
    idx = np.arange(geom.n_pairs)
    for name in ("pi", "ntk", "yarn"):
        a2.plot(idx, rope.METHODS[name](geom, target).long_factor, lw=1, label=name)
    a2.plot(idx, best.long_factor, "k.-", lw=2, label=f"{best.method} (d_rcd={best.extra.get('d_rcd')})")
    a2.axvline(rope.critical_dim(geom), color="tab:purple", ls=":", label="d_tcd")
    a2.set_yscale("log")
    a2.set_xlabel("rotary pair index i")
    a2.set_ylabel(r"$\lambda_i$")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    sc, seed = cfg["search"], cfg["experiment"]["seed"]
    geom, target = rope.RopeGeometry.from_mapping(cfg["model"]["geometry"]), cfg["extension"]["target_length"]
    method = methods.get(args.method)
    objective = f"search_{method.objective}"
    scfg = search_config(sc, args.racing)
    if scfg.parents > scfg.population:
        raise ConfigError("search.parents", f"must not exceed search.population={scfg.population}")
    subset = {**cfg, "method": args.method, "racing": scfg.racing}
    data = load_set(Path(args.needles) / f"{objective}.npz")
    # one model copy and evaluator per device; the search hands them candidates and gathers in order
    fitness = EvaluatorPool([Evaluator(models.load_pretrained(args.model, device=d)[0], data["input_ids"], data["labels"],
                                       sc["batch_tokens"]) for d in devices(args.devices)])
    model = fitness.first.model
    space, seeds = make_space(method.space, geom, target, args.method)
    ckpt_dir = Path(args.checkpoint_dir or Path(out).parent / ".checkpoints" / f"search-{args.method}")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    # a log of another config subset or other inputs is set aside, never resumed
    log = GenerationLog(ckpt_dir / "generations.jsonl", fingerprint(subset, verify_inputs([args.model, args.needles])))
    bar = progress.bar(total=scfg.generations + 1, desc=f"search {args.method}")

    def report(t: dict) -> None:
        bar.n = t["generation"] + 1
        bar.set_postfix(best_ppl=f"{math.exp(t['best_nll']):.3f}", d_rcd=t["best_d_rcd"],
                        cand_s=f"{t['evaluated'] / max(t['wall_s'], 1e-9):.2f}")
        bar.refresh()

    search = Search(space, fitness, scfg, seed, log, seeds, report)
    best = search.run()
    bar.close()
    scaling = space.scaling(best)
    nll, acc = search.cache[best]["nll"], search.cache[best]["acc"]
    heldout = load_set(Path(args.needles) / f"{objective.replace('search_', 'heldout_')}.npz")
    held_eval = Evaluator(model, heldout["input_ids"], heldout["labels"], sc["batch_tokens"])
    on_search, on_held = fitness.per_sample(scaling), held_eval.per_sample(scaling)
    references = {}
    for name in sc["heldout_references"]:
        ref = rope.METHODS[name](geom, target)
        references[name] = (fitness.per_sample(ref), held_eval.per_sample(ref))
    check = overfit_check(on_search, on_held, references, seed)
    a, b = check["search_set"]["ppl"], check["heldout"]["ppl"]
    result = scaling.to_dict() | {
        "fitness": {"objective": objective, "nll": nll, "ppl": math.exp(nll), "accuracy": acc},
        "best_on_heldout": check,
        "search": {"evaluated": len(search.cache), "sample_forwards": fitness.sample_forwards,
                   "generations": scfg.generations, "racing": scfg.racing, "wall_s": round(search.wall, 1),
                   "stratified": scfg.stratified,
                   # children per d_rcd (duplicates included) and distinct candidates scored per d_rcd
                   "d_rcd_proposed": counts(d for rec in log.read() for d in rec.get("proposed_d_rcd", [])),
                   "d_rcd_evaluated": counts(d for d, _ in search.cache),
                   "d_tcd": rope.critical_dim(geom), "d10_tcd": rope.critical_dim_10(geom)},
    }
    with StageRun("search", out, subset, inputs=[args.model, args.needles], seed=seed,
                  prior_wall_s=search.resumed_wall) as run_:
        run_.write_json("factors.json", result)
        run_.write_csv("trace.csv", search.trace)
        plot(search.trace, scaling, geom, target, run_.path("search.png"))
    print(f"{args.method}: d_rcd={scaling.extra.get('d_rcd')} (d_tcd={rope.critical_dim(geom)}) "
          f"{objective} ppl={math.exp(nll):.4f} acc={acc:.3f}; best on search set / held-out: "
          f"{a['estimate']:.3f} [{a['lo']:.3f}, {a['hi']:.3f}] / {b['estimate']:.3f} [{b['lo']:.3f}, {b['hi']:.3f}] "
          f"(n={check['heldout']['n']}) after {len(search.cache)} candidates, "
          f"{fitness.sample_forwards} sample-forwards, {search.wall:.0f}s -> {out}")
    for name, r in check["references"].items():
        d = r["best_minus_reference"]
        print(f"  best - {name} (mean NLL per sample, paired): search set {d['search_set']['estimate']:+.3f} "
              f"[{d['search_set']['lo']:+.3f}, {d['search_set']['hi']:+.3f}], held-out {d['heldout']['estimate']:+.3f} "
              f"[{d['heldout']['lo']:+.3f}, {d['heldout']['hi']:+.3f}] ({'agree' if r['agree'] else 'differ'})")
