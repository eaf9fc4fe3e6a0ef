"""Stage 1 -- critical-dimension analysis (geometry only, no weights).

Writes ``critical_dims.json`` (d_tcd, d10_tcd and, per rotary pair, its period, its rotations inside
L0 and inside the target, and every training-free baseline's factor at the target) and
``critical_dims.png`` (periods vs pair index with L0/target marked; factor curves of all methods).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from .. import config as cfgmod
from .. import methods as registry
from .. import rope
from ..artifacts import StageRun

NAME = "critical-dims"
HELP = "stage 1: critical dimensions, periods and baseline factor curves of the RoPE geometry"
CONFIG_KEYS = ("model.geometry", "extension.target_length", "critical_dims")
#: arguments naming input artifacts, checked against their producers' manifests before any work
INPUTS = ()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-figure", action="store_true", help="skip the figure (JSON only)")


#: geometries of real models, for the share of pairs below d10_tcd / in [d10_tcd, d_tcd) / at or above d_tcd
REAL_MODELS = {
    "Llama-3-8B": rope.RopeGeometry(head_dim=128, rope_base=500000.0, original_length=8192),
    "Phi-3-mini": rope.RopeGeometry(head_dim=96, rope_base=10000.0, original_length=2048),
    "SmolLM2-135M": rope.RopeGeometry(head_dim=64, rope_base=100000.0, original_length=8192),
}


def pair_split(geom: rope.RopeGeometry) -> dict[str, float]:
    """Percent of rotary pairs fully trained (< d10_tcd), in the d_rcd search band, and beyond d_tcd."""
    d10, d = rope.critical_dim_10(geom), rope.critical_dim(geom)
    n = geom.n_pairs
    return {"below_d10_tcd": round(100 * d10 / n, 1), "search_band": round(100 * (d - d10) / n, 1),
            "from_d_tcd": round(100 * (n - d) / n, 1)}


def closest_real_model(split: dict[str, float]) -> dict[str, Any]:
    """The real model whose split is nearest (largest per-share difference, in points)."""
    gaps = {name: max(abs(split[k] - v) for k, v in pair_split(g).items()) for name, g in REAL_MODELS.items()}
    name = min(gaps, key=gaps.get)
    return {"model": name, "max_gap_points": round(gaps[name], 1), "split": pair_split(REAL_MODELS[name]),
            "all": {m: {"split": pair_split(g), "max_gap_points": round(gaps[m], 1)} for m, g in REAL_MODELS.items()}}


def analyse(geom: rope.RopeGeometry, target: int) -> dict[str, Any]:
    """All numbers of stage 1 as a JSON-able dict."""
    d_tcd, d10 = rope.critical_dim(geom), rope.critical_dim_10(geom)
    s = rope.scale_factor(geom, target)
    methods = {name: rope.build(name, geom, target) for name in registry.GEOMETRY_BASELINES}
    # LongRoPE2's search seed (d_rcd = d_tcd, all searched pairs = s) shows where the search starts
    methods["longrope2_init"] = rope.longrope2(geom, target)
    per = rope.periods(geom)
    rot_l0, rot_target = rope.rotations(geom, geom.original_length), rope.rotations(geom, target)
    pairs = []
    for i in range(geom.n_pairs):
        pairs.append(
            {
                "pair": i,
                "dims": [2 * i, 2 * i + 1],
                "period": float(per[i]),
                "rotations_L0": float(rot_l0[i]),
                "rotations_target": float(rot_target[i]),
                "factors": {m: float(sc.long_factor[i]) for m, sc in methods.items()},
            }
        )
    return {
        "d_tcd": d_tcd,
        "d10_tcd": d10,
        "d_tcd_continuous": rope.continuous_critical_dim(geom),
        "rotary_dim": geom.rotary_dim,
        "head_dim": geom.head_dim,
        "partial_rotary_factor": geom.partial_rotary_factor,
        "n_pairs": geom.n_pairs,
        "rope_base": geom.rope_base,
        "original_length": geom.original_length,
        "target_length": target,
        "scale": s,
        "ood_bound": f"lambda_i >= {s:g} for i >= {d_tcd}",
        "pair_split": pair_split(geom),
        "closest_real_model": closest_real_model(pair_split(geom)),
        "attention_factor": {m: sc.attention_factor for m, sc in methods.items()},
        "ntk_base": methods["ntk"].extra["new_base"],
        "ntk_static_base": methods["ntk_static"].extra["new_base"],
        "pairs": pairs,
    }


def plot(result: dict[str, Any], path, dpi: int = 120) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = np.array([p["pair"] for p in result["pairs"]])
    per = np.array([p["period"] for p in result["pairs"]])
    l0, tgt = result["original_length"], result["target_length"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.semilogy(idx, per, "o-", ms=3, color="k", label="period $T_i$")
    ax1.axhline(l0, color="tab:blue", ls="--", label=f"$L_0$ = {l0}")
    ax1.axhline(tgt, color="tab:red", ls="--", label=f"target = {tgt}")
    ax1.axvline(result["d_tcd"], color="tab:purple", ls=":", label=f"$d_{{tcd}}$ = {result['d_tcd']}")
    ax1.axvline(result["d10_tcd"], color="tab:gray", ls=":", label=f"$d^{{10}}_{{tcd}}$ = {result['d10_tcd']}")
    ax1.set_xlabel("rotary pair index i")
    ax1.set_ylabel("period (tokens)")
    ax1.set_title(f"RoPE periods (d={result['rotary_dim']}, b={result['rope_base']:g})")
    ax1.legend(fontsize=7)
    for m in result["pairs"][0]["factors"]:
        ax2.semilogy(idx, [p["factors"][m] for p in result["pairs"]], label=m)
    ax2.axhline(result["scale"], color="k", lw=0.6, ls="--")
    ax2.axvline(result["d_tcd"], color="tab:purple", ls=":")
    ax2.set_xlabel("rotary pair index i")
    ax2.set_ylabel(r"rescale factor $\lambda_i$")
    ax2.set_title(f"factors at target (s = {result['scale']:g})")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, metadata={"Software": None})
    plt.close(fig)


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    geom = cfgmod.geometry(cfg)
    target = cfg["extension"]["target_length"]
    result = analyse(geom, target)
    with StageRun("critical_dims", out, cfg, seed=None) as run_:
        run_.write_json("critical_dims.json", result)
        if not args.no_figure:
            plot(result, run_.path("critical_dims.png"), cfg["critical_dims"]["figure_dpi"])
    sp, near = result["pair_split"], result["closest_real_model"]
    print(
        f"pairs below d10_tcd / band / from d_tcd: {sp['below_d10_tcd']:g}/{sp['search_band']:g}/{sp['from_d_tcd']:g}% "
        f"(closest real model {near['model']}, {near['max_gap_points']:g} points)\n"
        f"d_tcd={result['d_tcd']} d10_tcd={result['d10_tcd']} rotary_dim={result['rotary_dim']} "
        f"s={result['scale']:g} ntk_base={result['ntk_base']:.4g} -> {out}"
    )
