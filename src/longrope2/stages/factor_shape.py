"""The shape of the searched LongRoPE2 factors against the one the paper describes: NTK-like below the real
critical dimension d_rcd (``lambda_i = lambda_{d_rcd}^(i/d_rcd)``), searched above it (at least the scale
factor s), beside the paper's NTK curve, with d_rcd and the theoretical d_tcd marked; and, scaled by s
around d_rcd, the published LongRoPE2 factors of Llama-3-8B and Phi-4-mini (``longrope2.published``).

Writes ``factor_shape.png`` and ``factor_shape.json`` (per pair: the factor, NTK's, the NTK fill, the
region; and a summary: how far the pairs below d_rcd are from the NTK fill, the searched pairs over s).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .. import models, published, rope
from ..artifacts import StageRun
from ..errors import ConfigError

NAME = "factor-shape"
HELP = "searched LongRoPE2 factors against the paper's shape (NTK-like below d_rcd, searched above) in a figure"
CONFIG_KEYS = ("model.geometry", "extension.target_length")
#: arguments naming input artifacts, checked against their producers' manifests before any work
INPUTS = ("factors",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--factors", required=True, metavar="FILE", help="the LongRoPE2 search's factors.json")


def shape(scaling: rope.RopeScaling, d_rcd: int) -> dict:
    """Per-pair comparison with the paper's shape, and its summary."""
    geom, target = scaling.geometry, scaling.target_length
    s = target / geom.original_length
    lam = np.asarray(scaling.long_factor)
    ntk = rope.ntk(geom, target).long_factor
    fill = lam[d_rcd] ** (np.arange(geom.n_pairs) / d_rcd)  # the NTK fill anchored at d_rcd, drawn over all pairs
    below, above = lam[:d_rcd], lam[d_rcd:]
    pairs = [{"i": i, "factor": float(lam[i]), "ntk": float(ntk[i]), "ntk_fill": float(fill[i]),
              "region": "ntk_fill" if i < d_rcd else "searched"} for i in range(geom.n_pairs)]
    summary = {
        "d_rcd": d_rcd, "d_tcd": rope.critical_dim(geom), "scale": s, "n_pairs": geom.n_pairs,
        # 0 for a LongRoPE2 candidate: the pairs below d_rcd are the NTK fill by construction
        "below_max_rel_dev_from_ntk_fill": float(np.max(np.abs(below / fill[:d_rcd] - 1))) if d_rcd else 0.0,
        "searched_over_s": {"min": float(above.min() / s), "max": float(above.max() / s)},
        "searched_at_least_s": bool(np.all(above >= s - 1e-9)),
        "searched_nondecreasing": bool(np.all(np.diff(above) >= -1e-9)),
        # > 1: the searched pairs are rescaled more than NTK rescales them
        "searched_over_ntk_mean": float(np.mean(above / ntk[d_rcd:])),
    }
    return {"method": scaling.method, "summary": summary, "pairs": pairs,
            "published": {p.name: {"source": p.source, "d_rcd": p.d_rcd, "scale": p.target_length / p.original_length,
                                   "n_pairs": len(p.long_factor)} for p in published.PUBLISHED.values()}}


def plot(scaling: rope.RopeScaling, result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sm = result["summary"]
    d_rcd, s = sm["d_rcd"], sm["scale"]
    geom, target = scaling.geometry, scaling.target_length
    idx = np.arange(geom.n_pairs)
    lam = np.asarray(scaling.long_factor)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    a1.axvspan(d_rcd - 0.5, geom.n_pairs - 0.5, color="tab:orange", alpha=0.08, label="searched pairs")
    a1.plot(idx, rope.ntk(geom, target).long_factor, "-", color="tab:blue", lw=1.2, label="NTK (paper)")
    a1.plot(idx, [p["ntk_fill"] for p in result["pairs"]], "--", color="tab:green", lw=1,
            label=r"NTK fill $\lambda_{d_{rcd}}^{i/d_{rcd}}$")
    a1.axhline(s, color="tab:gray", lw=0.8, ls="-.", label=f"s = {s:g} (PI)")
    a1.plot(idx, lam, "k.-", lw=1.5, ms=5, label=f"{scaling.method} (searched)")
    a1.axvline(d_rcd, color="tab:red", ls=":", label=f"$d_{{rcd}}$ = {d_rcd}")
    a1.axvline(sm["d_tcd"], color="tab:purple", ls=":", label=f"$d_{{tcd}}$ = {sm['d_tcd']}")
    a1.set_yscale("log")
    a1.set_xlabel("rotary pair index i")
    a1.set_ylabel(r"rescale factor $\lambda_i$")
    a1.set_title("NTK-like below $d_{rcd}$, searched above")
    a1.legend(fontsize=7)
    # the same shape across models: factor / s against the pair's offset from its d_rcd
    a2.plot(idx - d_rcd, lam / s, "k.-", lw=1.5, ms=5, label=f"this experiment (s = {s:g})")
    for p in published.PUBLISHED.values():
        ps = p.target_length / p.original_length
        a2.plot(np.arange(len(p.long_factor)) - p.d_rcd, np.asarray(p.long_factor) / ps, ".-", lw=1, ms=3,
                label=f"{p.name} (published, s = {ps:g})")
    a2.axvline(0, color="tab:red", ls=":")
    a2.axhline(1, color="tab:gray", lw=0.8, ls="-.")
    a2.set_yscale("log")
    a2.set_xlabel(r"pair index relative to $d_{rcd}$ ($i - d_{rcd}$)")
    a2.set_ylabel(r"$\lambda_i / s$")
    a2.set_title("against the published LongRoPE2 factors")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    scaling = models.load_factors(args.factors, rope.RopeGeometry.from_mapping(cfg["model"]["geometry"]))
    if scaling.target_length != cfg["extension"]["target_length"]:
        raise ConfigError("--factors", f"extends to {scaling.target_length}, extension.target_length is "
                                       f"{cfg['extension']['target_length']}")
    d_rcd = scaling.extra.get("d_rcd")
    if not isinstance(d_rcd, int) or d_rcd < 1:
        raise ConfigError("--factors", f"has no d_rcd >= 1 (got {d_rcd!r}); the shape is LongRoPE2's (NTK fill below "
                                       "d_rcd, searched above)")
    result = shape(scaling, d_rcd)
    with StageRun("factor_shape", out, cfg, inputs=[args.factors], seed=None, extra={"method": scaling.method}) as run_:
        run_.write_json("factor_shape.json", result)
        plot(scaling, result, run_.path("factor_shape.png"))
    sm = result["summary"]
    print(f"{scaling.method}: d_rcd={d_rcd} (d_tcd={sm['d_tcd']}), below d_rcd max deviation from the NTK fill "
          f"{sm['below_max_rel_dev_from_ntk_fill']:.2e}, searched / s in [{sm['searched_over_s']['min']:.3f}, "
          f"{sm['searched_over_s']['max']:.3f}] -> {out}")
